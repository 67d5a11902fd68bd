//! The hash-chained audit log, sealed once per batch, and its verifier.
//!
//! Rules:
//! - a chain has a 16-byte id (one per cryptod boot); its records have
//!   consecutive `seq`;
//! - a record is the encoded [`AuditRecord`] (a CBOR map, not signed on its
//!   own); record `n`'s `prev_hash` is SHA-256 of record `n-1`'s encoded
//!   bytes; record 0 has 32 zero bytes;
//! - the first boot's chain starts at `seq` 0; a later boot's chain continues
//!   from the head the collector last acknowledged before the restart (sealed
//!   with cryptod's state): its first record has `seq` = head `seq` + 1 and
//!   `prev_hash` = the head's hash, so all boots form one log
//!   ([`verify_log`] checks it whole);
//! - `entry_id` = the first 16 bytes of SHA-256(chain_id || u64be(seq)), unique
//!   per record without drawing on the DRBG;
//! - records are shipped in batches: [`AuditLog::seal`] ends each batch with
//!   one seal, a COSE_Sign1 by the root key (content type `audit_seal`,
//!   payload [`AuditSeal`]: chain id, first and last `seq`, the last record's
//!   hash). Through the hash links the seal covers every record before it,
//!   so one signature per batch replaces one per record;
//! - records wait in a bounded outbox until the collector acks their batch
//!   (an ack covers every sealed batch up to its `seq`; unsealed records are
//!   never acknowledged); when the outbox is full, appending is refused and
//!   the caller refuses the operation (`unavailable`): records are never
//!   dropped.
//!
//! A stored log is the sequence of records and seals in the order cryptod
//! made them: each batch's records, then its seal ([`Batch::items`]).

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::msg::{
    self, AuditAction, AuditRecord, AuditResult, AuditSeal, Metadata, MAX_AUDIT_BATCH,
};
use sha2::{Digest, Sha256};

use crate::keys::kid_for;

/// Default outbox capacity, in records.
pub const DEFAULT_OUTBOX: usize = 256;
/// Most record bytes in one batch, so that an `audit_log` message (records,
/// seal, framing) stays well under the 64 KiB message limit.
pub const MAX_BATCH_BYTES: usize = 48 * 1024;

/// Group commit: unsealed records are sealed without waiting for the
/// batch in flight once they are this many ([`AuditLog::seal_due`]).
pub const GROUP_RECORDS: usize = 64;
/// Group commit: unsealed records are sealed without waiting for the batch
/// in flight once the oldest is this old (seconds).
pub const GROUP_WAIT_SECS: u64 = 1;

/// What happened, for one audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Who acted (the peer VM, or `cryptod` for its own actions).
    pub actor: String,
    /// What happened.
    pub action: AuditAction,
    /// The outcome.
    pub result: AuditResult,
    /// What it happened to (operator, volume, token id, key id).
    pub target: Option<String>,
    /// Extra detail (reasons, request id, operator, device).
    pub metadata: Metadata,
    /// An `outcome` record's enforcer-signed outcome, as received.
    pub evidence: Option<Vec<u8>>,
}

impl Event {
    /// An event without target or metadata.
    pub fn new(actor: &str, action: AuditAction, result: AuditResult) -> Event {
        Event {
            actor: actor.into(),
            action,
            result,
            target: None,
            metadata: Metadata::new(),
            evidence: None,
        }
    }

    /// Sets the target.
    pub fn target(mut self, target: &str) -> Event {
        self.target = Some(target.into());
        self
    }

    /// Adds a metadata entry.
    pub fn meta(mut self, key: &str, value: &str) -> Event {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// Why a record could not be appended, or a batch not sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditError {
    /// The outbox is full until the collector acks.
    Full,
    /// The record or seal could not be encoded or signed (a field breaks the schema).
    Encoding,
    /// `seq` cannot go higher.
    Exhausted,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuditError::Full => "audit outbox is full",
            AuditError::Encoding => "audit record or seal could not be encoded or signed",
            AuditError::Exhausted => "audit seq exhausted",
        })
    }
}

impl core::error::Error for AuditError {}

/// A stored record: its chain, `seq` and the SHA-256 of its encoded bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The record's chain.
    pub chain_id: [u8; 16],
    /// The record's `seq`.
    pub seq: u64,
    /// SHA-256 of the record's encoded bytes.
    pub hash: [u8; 32],
}

/// A record not yet sealed.
#[derive(Debug)]
struct Unsealed {
    seq: u64,
    bytes: Vec<u8>,
    hash: [u8; 32],
}

/// A sealed batch: consecutive records and the seal over the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// `seq` of the first record.
    pub first_seq: u64,
    /// `seq` of the last record.
    pub last_seq: u64,
    /// The encoded records, in `seq` order.
    pub records: Vec<Vec<u8>>,
    /// The seal (COSE_Sign1, content type `audit_seal`).
    pub seal: Vec<u8>,
    /// SHA-256 of the last record.
    head_hash: [u8; 32],
}

impl Batch {
    /// The batch as the `audit_log` message cryptod ships.
    pub fn to_message(&self) -> msg::AuditLog {
        msg::AuditLog { records: self.records.clone(), seal: self.seal.clone() }
    }

    /// The batch's log items in the order a collector stores them: the
    /// records, then the seal.
    pub fn items(&self) -> impl Iterator<Item = &[u8]> {
        self.records.iter().map(Vec::as_slice).chain(core::iter::once(self.seal.as_slice()))
    }
}

/// The writer's side: the chain head, the records not yet sealed, and the
/// outbox of sealed batches not yet acknowledged.
#[derive(Debug)]
pub struct AuditLog {
    chain_id: [u8; 16],
    next_seq: u64,
    prev_hash: [u8; 32],
    unsealed: Vec<Unsealed>,
    /// Oldest first; a `Vec`, not a `VecDeque` (acks take batches off the
    /// front in one `drain`: image size, issue 14).
    sealed: Vec<Batch>,
    /// Records in `sealed`.
    sealed_records: usize,
    capacity: usize,
    acked: Option<Head>,
    /// When the oldest unsealed record was appended (unix seconds).
    unsealed_since: u64,
}

impl AuditLog {
    /// A new chain with id `chain_id` and an outbox of `capacity` records.
    pub fn new(chain_id: [u8; 16], capacity: usize) -> AuditLog {
        AuditLog::resume(chain_id, capacity, None)
    }

    /// A new chain `chain_id` that continues after `after` (the head an
    /// earlier boot's collector acknowledged), or starts at `seq` 0.
    pub fn resume(chain_id: [u8; 16], capacity: usize, after: Option<Head>) -> AuditLog {
        AuditLog {
            chain_id,
            // u64::MAX itself is never written: append refuses then.
            next_seq: after.map_or(0, |h| h.seq.saturating_add(1)),
            prev_hash: after.map_or([0; 32], |h| h.hash),
            unsealed: Vec::new(),
            sealed: Vec::new(),
            sealed_records: 0,
            capacity: capacity.max(1),
            acked: after,
            unsealed_since: 0,
        }
    }

    /// The last record the collector acknowledged (of this chain, or the
    /// head this chain continues): what cryptod seals for its next boot.
    pub fn acked_head(&self) -> Option<Head> {
        self.acked
    }

    /// The chain id.
    pub fn chain_id(&self) -> &[u8; 16] {
        &self.chain_id
    }

    /// Whether `n` more records fit in the outbox.
    pub fn has_room(&self, n: usize) -> bool {
        self.pending_len().saturating_add(n) <= self.capacity
    }

    /// Encodes `event` as the next record, linked to the one before; returns
    /// its encoded bytes (kept until sealed and acked). No signature: the
    /// next [`AuditLog::seal`] covers it.
    pub fn append(&mut self, event: Event, now: u64) -> Result<&[u8], AuditError> {
        if !self.has_room(1) {
            return Err(AuditError::Full);
        }
        let after = self.next_seq.checked_add(1).ok_or(AuditError::Exhausted)?;
        let record = AuditRecord {
            chain_id: self.chain_id,
            seq: self.next_seq,
            entry_id: entry_id(&self.chain_id, self.next_seq),
            prev_hash: self.prev_hash,
            actor: event.actor,
            action: event.action,
            result: event.result,
            timestamp: now,
            target: event.target,
            metadata: (!event.metadata.is_empty()).then_some(event.metadata),
            evidence: event.evidence,
        };
        let bytes = record.to_cbor().map_err(|_| AuditError::Encoding)?;
        if bytes.len() > msg::MAX_AUDIT_RECORD_LEN {
            return Err(AuditError::Encoding);
        }
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        self.prev_hash = hash;
        if self.unsealed.is_empty() {
            self.unsealed_since = now;
        }
        self.unsealed.push(Unsealed { seq: self.next_seq, bytes, hash });
        self.next_seq = after;
        Ok(self.unsealed.last().map_or(&[][..], |u| u.bytes.as_slice()))
    }

    /// Seals every record appended since the last seal with `key` (whose
    /// key id is `kid`): one signature per batch of at most
    /// [`MAX_AUDIT_BATCH`] records and [`MAX_BATCH_BYTES`] bytes. Returns
    /// how many batches it made. On an error nothing is sealed.
    pub fn seal(&mut self, key: &SigningKey, kid: &[u8], now: u64) -> Result<usize, AuditError> {
        let mut made = Vec::new();
        let mut rest = self.unsealed.as_slice();
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0usize;
            for u in rest {
                if n == MAX_AUDIT_BATCH
                    || (n > 0 && bytes.saturating_add(u.bytes.len()) > MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes = bytes.saturating_add(u.bytes.len());
                n += 1;
            }
            let Some((batch, tail)) = rest.split_at_checked(n) else { break };
            let (Some(first), Some(last)) = (batch.first(), batch.last()) else { break };
            let seal = AuditSeal {
                chain_id: self.chain_id,
                first_seq: first.seq,
                last_seq: last.seq,
                head_hash: last.hash,
                timestamp: now,
            };
            let payload = seal.to_cbor().map_err(|_| AuditError::Encoding)?;
            let signed = cose::sign(key, kid, ContentType::AuditSeal, &payload)
                .map_err(|_| AuditError::Encoding)?;
            made.push((n, first.seq, last.seq, last.hash, signed));
            rest = tail;
        }
        let count = made.len();
        let mut records = core::mem::take(&mut self.unsealed).into_iter();
        for (n, first_seq, last_seq, head_hash, seal) in made {
            let batch: Vec<Vec<u8>> = records.by_ref().take(n).map(|u| u.bytes).collect();
            self.sealed_records = self.sealed_records.saturating_add(batch.len());
            self.sealed.push(Batch { first_seq, last_seq, records: batch, seal, head_hash });
        }
        Ok(count)
    }

    /// Group commit: whether the unsealed records should be sealed now.
    /// Yes when there are some and no sealed batch is waiting for the
    /// collector's ack (nothing in flight: a lone request is sealed at
    /// once), or when they already fill a batch ([`GROUP_RECORDS`]), or
    /// when the oldest waited [`GROUP_WAIT_SECS`] (the collector is slow or
    /// gone). Otherwise they wait for the batch in flight to be acked and
    /// then share one seal and one collector write: the requests that
    /// arrive during a collector write are committed together.
    pub fn seal_due(&self, now: u64) -> bool {
        !self.unsealed.is_empty()
            && (self.sealed.is_empty()
                || self.unsealed.len() >= GROUP_RECORDS
                || now.saturating_sub(self.unsealed_since) >= GROUP_WAIT_SECS)
    }

    /// The collector stored everything up to `seq` of chain `chain_id`:
    /// drops the sealed batches that ends at or before `seq` from the outbox
    /// and returns how many records left. Acks for another chain, and for
    /// records not sealed yet, are ignored.
    pub fn ack(&mut self, chain_id: &[u8; 16], seq: u64) -> usize {
        if chain_id != &self.chain_id {
            return 0;
        }
        let mut dropped = 0;
        let n = self.sealed.iter().take_while(|b| b.last_seq <= seq).count();
        for b in self.sealed.drain(..n) {
            dropped += b.records.len();
            self.sealed_records = self.sealed_records.saturating_sub(b.records.len());
            self.acked = Some(Head { chain_id: self.chain_id, seq: b.last_seq, hash: b.head_hash });
        }
        dropped
    }

    /// Sealed batches not yet acked, oldest first (shipped, and shipped
    /// again after the collector reconnects).
    pub fn pending(&self) -> impl Iterator<Item = &Batch> {
        self.sealed.iter()
    }

    /// The `seq` of the oldest record not yet acked (sealed or not).
    pub fn oldest_pending(&self) -> Option<u64> {
        self.sealed.first().map(|b| b.first_seq).or(self.unsealed.first().map(|u| u.seq))
    }

    /// How many records wait for an ack (sealed or not).
    pub fn pending_len(&self) -> usize {
        self.sealed_records.saturating_add(self.unsealed.len())
    }

    /// How many records wait for the next seal.
    pub fn unsealed_len(&self) -> usize {
        self.unsealed.len()
    }

    /// The sequence number the next record will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }
}

/// `entry_id` of record `seq` in chain `chain_id`.
pub fn entry_id(chain_id: &[u8; 16], seq: u64) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(chain_id);
    h.update(seq.to_be_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// What a verified chain covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The chain.
    pub chain_id: [u8; 16],
    /// `seq` of the first record given.
    pub first_seq: u64,
    /// `seq` of the last record given.
    pub last_seq: u64,
    /// Number of records.
    pub records: usize,
    /// Number of seals.
    pub seals: usize,
    /// `seq` of the last record a seal covers (`None`: no seal).
    pub sealed_last: Option<u64>,
    /// Records after the last seal (an unsealed tail).
    pub unsealed: usize,
    /// SHA-256 of the last record's encoded bytes (what the next record links to).
    pub head_hash: [u8; 32],
    /// The first record's `prev_hash` (what this run links to).
    pub first_prev_hash: [u8; 32],
}

/// How a chain breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainErrorKind {
    /// No records at all.
    Empty,
    /// Neither an audit record nor an audit seal (cut short, not CBOR,
    /// wrong content type or bad payload).
    Malformed,
    /// A seal signed by no key given, or whose signature does not verify.
    BadSignature,
    /// A record or seal of another chain.
    WrongChain,
    /// `seq` skips ahead: records `expected..found` are missing.
    Gap {
        /// The `seq` that should have come.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// Records out of order (the expected `seq` comes later, or `seq` goes back).
    Reordered {
        /// The `seq` that should have come.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// `prev_hash` is not the hash of the record before: this record or the
    /// one before it was changed, or swapped in.
    BrokenLink,
    /// `entry_id` is not the one derived from chain id and `seq`.
    BadEntryId,
    /// A seal with no record since the previous seal (a seal repeated or moved).
    EmptySeal,
    /// A seal's range is not the records since the previous seal: a seal
    /// was dropped, moved or reordered.
    SealRange {
        /// First `seq` since the previous seal.
        expected_first: u64,
        /// The last record's `seq`.
        expected_last: u64,
        /// The seal's `first_seq`.
        found_first: u64,
        /// The seal's `last_seq`.
        found_last: u64,
    },
    /// A seal's head hash is not the hash of the last record: a record of
    /// the batch was changed.
    SealMismatch,
    /// The chain ends before the anchor's `seq`: its tail was cut off.
    TruncatedTail {
        /// The anchor's last `seq`.
        expected_last: u64,
        /// The last `seq` present.
        found_last: u64,
    },
    /// The record at the anchor's `seq` is not the anchored one.
    AnchorMismatch,
}

/// Where and how a chain breaks: `index` is the position in the input
/// (`records.len()` for a cut-off tail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainError {
    /// Position of the offending record or seal in the input.
    pub index: usize,
    /// What is wrong there.
    pub kind: ChainErrorKind,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit chain breaks at item {}: ", self.index)?;
        match self.kind {
            ChainErrorKind::Empty => f.write_str("no records"),
            ChainErrorKind::Malformed => f.write_str("neither an audit record nor an audit seal"),
            ChainErrorKind::BadSignature => {
                f.write_str("seal signature does not verify under any given key")
            }
            ChainErrorKind::WrongChain => f.write_str("record or seal of another chain"),
            ChainErrorKind::Gap { expected, found } => {
                write!(f, "gap: expected seq {expected}, found {found}")
            }
            ChainErrorKind::Reordered { expected, found } => {
                write!(f, "out of order: expected seq {expected}, found {found}")
            }
            ChainErrorKind::BrokenLink => f.write_str(
                "prev_hash does not match the previous record (it or the record before it was \
                 changed)",
            ),
            ChainErrorKind::BadEntryId => f.write_str("entry_id does not match chain id and seq"),
            ChainErrorKind::EmptySeal => {
                f.write_str("a seal with no record since the previous seal (repeated or moved)")
            }
            ChainErrorKind::SealRange {
                expected_first,
                expected_last,
                found_first,
                found_last,
            } => {
                write!(
                    f,
                    "seal covers seq {found_first}..={found_last}, but the records since the \
                     previous seal are {expected_first}..={expected_last} (a seal dropped, moved \
                     or reordered)"
                )
            }
            ChainErrorKind::SealMismatch => f.write_str(
                "seal's head hash is not the hash of the last record (a record of the batch was \
                 changed)",
            ),
            ChainErrorKind::TruncatedTail { expected_last, found_last } => {
                write!(f, "truncated: chain ends at seq {found_last}, anchor is {expected_last}")
            }
            ChainErrorKind::AnchorMismatch => {
                f.write_str("record at the anchor's seq is not the anchored one")
            }
        }
    }
}

impl core::error::Error for ChainError {}

/// A known point of a chain (e.g. from the collector's last ack or a sealed
/// head): its last `seq` and that record's hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// The last `seq` known to exist.
    pub seq: u64,
    /// SHA-256 of that record's encoded bytes.
    pub hash: [u8; 32],
}

/// One item of a log, read but not verified.
enum Item {
    Record(AuditRecord),
    Seal,
}

/// Tells a record (a CBOR map) from a seal (a tagged COSE_Sign1) and reads
/// a record; `None` for anything else.
fn classify(bytes: &[u8]) -> Option<Item> {
    match bytes.first()? {
        0xa0..=0xbf => AuditRecord::from_cbor(bytes).ok().map(Item::Record),
        0xd2 => Some(Item::Seal),
        _ => None,
    }
}

/// Verifies a seal's signature under one of `keys` and reads it.
fn open_seal(bytes: &[u8], keys: &[VerifyingKey]) -> Result<AuditSeal, ChainErrorKind> {
    let verified = cose::verify(bytes, ContentType::AuditSeal, |kid| {
        keys.iter().find(|k| kid_for(k)[..] == *kid).copied()
    })
    .map_err(|e| match e {
        CoseError::BadSignature | CoseError::UnknownKid | CoseError::WrongAlgorithm => {
            ChainErrorKind::BadSignature
        }
        _ => ChainErrorKind::Malformed,
    })?;
    AuditSeal::from_cbor(&verified.payload).map_err(|_| ChainErrorKind::Malformed)
}

/// Verifies a run of one chain's log items (records and the seals after
/// each batch) against the given public keys: each seal's signature, chain
/// id, range (exactly the records since the previous seal) and head hash;
/// one chain, consecutive `seq`, entry ids and hash links between records.
/// The first record may be any `seq`; if it is 0 its `prev_hash` must be
/// zero. Records after the last seal are counted in [`Summary::unsealed`]
/// (whether that is acceptable is the caller's call). Returns where and how
/// it first breaks.
pub fn verify_chain<R: AsRef<[u8]>>(
    items: &[R],
    keys: &[VerifyingKey],
) -> Result<Summary, ChainError> {
    let mut summary: Option<Summary> = None;
    // The first record since the last seal.
    let mut batch_first: Option<u64> = None;
    for (index, bytes) in items.iter().enumerate() {
        let bytes = bytes.as_ref();
        let err = |kind| ChainError { index, kind };
        let record = match classify(bytes).ok_or(err(ChainErrorKind::Malformed))? {
            Item::Record(r) => r,
            Item::Seal => {
                let seal = open_seal(bytes, keys).map_err(err)?;
                let Some(s) = summary.as_mut() else { return Err(err(ChainErrorKind::EmptySeal)) };
                if seal.chain_id != s.chain_id {
                    return Err(err(ChainErrorKind::WrongChain));
                }
                let Some(first) = batch_first.take() else {
                    return Err(err(ChainErrorKind::EmptySeal));
                };
                if seal.first_seq != first || seal.last_seq != s.last_seq {
                    return Err(err(ChainErrorKind::SealRange {
                        expected_first: first,
                        expected_last: s.last_seq,
                        found_first: seal.first_seq,
                        found_last: seal.last_seq,
                    }));
                }
                if seal.head_hash != s.head_hash {
                    return Err(err(ChainErrorKind::SealMismatch));
                }
                s.seals += 1;
                s.sealed_last = Some(s.last_seq);
                s.unsealed = 0;
                continue;
            }
        };
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        match &mut summary {
            None => {
                if record.seq == 0 && record.prev_hash != [0; 32] {
                    return Err(err(ChainErrorKind::BrokenLink));
                }
                summary = Some(Summary {
                    chain_id: record.chain_id,
                    first_seq: record.seq,
                    last_seq: record.seq,
                    records: 1,
                    seals: 0,
                    sealed_last: None,
                    unsealed: 1,
                    head_hash: hash,
                    first_prev_hash: record.prev_hash,
                });
            }
            Some(s) => {
                if record.chain_id != s.chain_id {
                    return Err(err(ChainErrorKind::WrongChain));
                }
                let expected = s.last_seq.saturating_add(1);
                if record.seq != expected {
                    let later = items
                        .get(index + 1..)
                        .unwrap_or(&[])
                        .iter()
                        .any(|r| seq_of(r.as_ref()) == Some(expected));
                    let kind = if record.seq < expected || later {
                        ChainErrorKind::Reordered { expected, found: record.seq }
                    } else {
                        ChainErrorKind::Gap { expected, found: record.seq }
                    };
                    return Err(err(kind));
                }
                if record.prev_hash != s.head_hash {
                    return Err(err(ChainErrorKind::BrokenLink));
                }
                s.last_seq = record.seq;
                s.records += 1;
                s.unsealed += 1;
                s.head_hash = hash;
            }
        }
        batch_first.get_or_insert(record.seq);
        if record.entry_id != entry_id(&record.chain_id, record.seq) {
            return Err(err(ChainErrorKind::BadEntryId));
        }
    }
    summary.ok_or(ChainError { index: 0, kind: ChainErrorKind::Empty })
}

/// The index and hash of the record `seq` among `items` (not verified).
fn record_at<R: AsRef<[u8]>>(items: &[R], seq: u64) -> Option<(usize, [u8; 32])> {
    items.iter().enumerate().find_map(|(i, b)| {
        let b = b.as_ref();
        match classify(b)? {
            Item::Record(r) if r.seq == seq => Some((i, Sha256::digest(b).into())),
            _ => None,
        }
    })
}

/// [`verify_chain`], then checks that the chain reaches `anchor` and that the
/// record at the anchor's `seq` is the anchored one: a cut-off tail is
/// reported at `index = items.len()`.
pub fn verify_chain_to<R: AsRef<[u8]>>(
    items: &[R],
    keys: &[VerifyingKey],
    anchor: Anchor,
) -> Result<Summary, ChainError> {
    let summary = verify_chain(items, keys)?;
    if summary.last_seq < anchor.seq {
        return Err(ChainError {
            index: items.len(),
            kind: ChainErrorKind::TruncatedTail {
                expected_last: anchor.seq,
                found_last: summary.last_seq,
            },
        });
    }
    if anchor.seq >= summary.first_seq {
        match record_at(items, anchor.seq) {
            Some((_, hash)) if hash == anchor.hash => {}
            found => {
                let index = found.map_or(items.len(), |(i, _)| i);
                return Err(ChainError { index, kind: ChainErrorKind::AnchorMismatch });
            }
        }
    }
    Ok(summary)
}

/// How a whole log (the chains of every boot, oldest first) breaks, beyond
/// what breaks one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogErrorKind {
    /// One chain breaks (`index` is the offending item in the whole log).
    Chain(ChainErrorKind),
    /// The first chain does not start at `seq` 0: the log's beginning is
    /// missing (earlier records or whole chains dropped, or chains swapped).
    MissingStart {
        /// `seq` of the log's first record.
        first_seq: u64,
    },
    /// A chain after the first starts at `seq` 0: a second beginning
    /// (a chain moved, or one provisioning's log appended to another's).
    SecondStart,
    /// A chain's id appears again after another chain (a chain replayed).
    RepeatedChain,
    /// A chain continues from a `seq` the chain before it does not reach:
    /// that chain's tail, or whole chains, were dropped.
    MissingLink {
        /// The `seq` the chain continues from.
        link_seq: u64,
        /// The last `seq` of the chain before it.
        found_last: u64,
    },
    /// A chain continues from a `seq` before the previous chain's first.
    LinkBeforeChain {
        /// The `seq` the chain continues from.
        link_seq: u64,
        /// The first `seq` of the chain before it.
        found_first: u64,
    },
    /// A chain's first `prev_hash` is not the hash of the record it
    /// continues from (chains dropped, swapped or from another history).
    LinkMismatch,
    /// Records no seal covers before another chain starts (a collector
    /// never stores them so: they were added or their seal dropped).
    Unsealed {
        /// `seq` of the first record no seal covers.
        first_seq: u64,
        /// How many.
        count: usize,
    },
    /// Records after the log's last seal (a collector cut off mid-batch,
    /// or records appended): refused unless allowed ([`LogCheck`]).
    UnsealedTail {
        /// `seq` of the first record no seal covers.
        first_seq: u64,
        /// How many.
        count: usize,
    },
    /// The log's sealed part ends before the anchor: the last chain (or
    /// whole chains) cut.
    TruncatedTail {
        /// The anchor (highest `seq` the collector acknowledged).
        expected_last: u64,
        /// The last sealed `seq` present.
        found_last: u64,
    },
}

/// Where and how a log breaks: `index` is an item index in the whole log
/// (`items.len()` for a cut-off tail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogError {
    /// Position of the offending item.
    pub index: usize,
    /// What is wrong there.
    pub kind: LogErrorKind,
}

impl core::error::Error for LogError {}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LogErrorKind::Chain(kind) => ChainError { index: self.index, kind }.fmt(f),
            kind => {
                write!(f, "audit log breaks at item {}: ", self.index)?;
                match kind {
                    LogErrorKind::MissingStart { first_seq } => write!(
                        f,
                        "the log starts at seq {first_seq}, not 0: its beginning is missing"
                    ),
                    LogErrorKind::SecondStart => {
                        f.write_str("a second chain starts at seq 0 (moved or foreign chain)")
                    }
                    LogErrorKind::RepeatedChain => {
                        f.write_str("a chain appears again after another chain (replayed)")
                    }
                    LogErrorKind::MissingLink { link_seq, found_last } => write!(
                        f,
                        "chain continues from seq {link_seq}, but the chain before it ends at \
                         seq {found_last}: records or chains are missing"
                    ),
                    LogErrorKind::LinkBeforeChain { link_seq, found_first } => write!(
                        f,
                        "chain continues from seq {link_seq}, before the previous chain's \
                         first seq {found_first}"
                    ),
                    LogErrorKind::LinkMismatch => f.write_str(
                        "chain does not continue from the record before it (chains dropped, \
                         swapped or replayed)",
                    ),
                    LogErrorKind::Unsealed { first_seq, count } => write!(
                        f,
                        "{count} record(s) from seq {first_seq} are covered by no seal before \
                         the next chain (added, or their seal dropped)"
                    ),
                    LogErrorKind::UnsealedTail { first_seq, count } => write!(
                        f,
                        "unsealed tail: {count} record(s) from seq {first_seq} after the last \
                         seal are covered by no signature"
                    ),
                    LogErrorKind::TruncatedTail { expected_last, found_last } => write!(
                        f,
                        "truncated: the sealed log ends at seq {found_last}, anchor is \
                         {expected_last}"
                    ),
                    LogErrorKind::Chain(_) => Ok(()),
                }
            }
        }
    }
}

/// What [`verify_log`] requires beyond a sound log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogCheck {
    /// The highest `seq` the collector acknowledged: the sealed log must
    /// reach it (this anchors the whole sequence).
    pub expect_last: Option<u64>,
    /// Accept records after the log's last seal (reported in
    /// [`LogSummary::unsealed_tail`], not verified by any signature).
    pub allow_unsealed_tail: bool,
}

/// What a verified log covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    /// Each chain, oldest first, with `(start, end)` item indexes.
    pub chains: Vec<(Summary, usize, usize)>,
    /// Records of a chain after the point the next chain continues from:
    /// stored by the collector, but not acknowledged before cryptod stopped.
    pub superseded: usize,
    /// Records after the log's last seal (only with
    /// [`LogCheck::allow_unsealed_tail`]).
    pub unsealed_tail: usize,
}

/// The chain id of a record or seal, without verifying it (to split a log
/// into runs).
fn chain_of(bytes: &[u8]) -> Option<[u8; 16]> {
    match classify(bytes)? {
        Item::Record(r) => Some(r.chain_id),
        Item::Seal => {
            let v = portcullis_proto::danger::open_unverified(bytes).ok()?;
            AuditSeal::from_cbor(&v.get_unverified().payload).ok().map(|s| s.chain_id)
        }
    }
}

/// Verifies a whole log: the records and seals of every boot's chain,
/// oldest first. Each chain must verify ([`verify_chain`]); the first must
/// start at `seq` 0; each later one must continue from a record of the
/// chain just before it (its first `prev_hash` is that record's hash, its
/// first `seq` the next); no chain may appear twice; every record but an
/// allowed unsealed tail must be covered by a seal. With
/// [`LogCheck::expect_last`] (the highest `seq` the collector
/// acknowledged), the sealed log must reach it, which anchors the whole
/// sequence.
pub fn verify_log<R: AsRef<[u8]>>(
    items: &[R],
    keys: &[VerifyingKey],
    check: LogCheck,
) -> Result<LogSummary, LogError> {
    let mut chains: Vec<(Summary, usize, usize)> = Vec::new();
    let mut superseded = 0usize;
    let mut start = 0usize;
    if items.is_empty() {
        return Err(LogError { index: 0, kind: LogErrorKind::Chain(ChainErrorKind::Empty) });
    }
    while start < items.len() {
        let id = chain_of(items[start].as_ref());
        let mut end = start + 1;
        while id.is_some() && end < items.len() && chain_of(items[end].as_ref()) == id {
            end += 1;
        }
        let run = &items[start..end];
        let summary = verify_chain(run, keys)
            .map_err(|e| LogError { index: start + e.index, kind: LogErrorKind::Chain(e.kind) })?;
        let err = |kind| Err(LogError { index: start, kind });
        match chains.last() {
            None if summary.first_seq != 0 => {
                return err(LogErrorKind::MissingStart { first_seq: summary.first_seq })
            }
            None => {}
            Some(_) if summary.first_seq == 0 => return err(LogErrorKind::SecondStart),
            Some(_) if chains.iter().any(|(c, _, _)| c.chain_id == summary.chain_id) => {
                return err(LogErrorKind::RepeatedChain)
            }
            Some((prev, prev_start, prev_end)) => {
                if prev.unsealed > 0 {
                    let first_seq = prev.last_seq - (prev.unsealed as u64 - 1);
                    let index = record_at(&items[*prev_start..*prev_end], first_seq)
                        .map_or(*prev_start, |(i, _)| prev_start + i);
                    return Err(LogError {
                        index,
                        kind: LogErrorKind::Unsealed { first_seq, count: prev.unsealed },
                    });
                }
                let link_seq = summary.first_seq - 1;
                if link_seq > prev.last_seq {
                    return err(LogErrorKind::MissingLink { link_seq, found_last: prev.last_seq });
                }
                if link_seq < prev.first_seq {
                    return err(LogErrorKind::LinkBeforeChain {
                        link_seq,
                        found_first: prev.first_seq,
                    });
                }
                let hash = record_at(&items[*prev_start..*prev_end], link_seq).map(|(_, h)| h);
                if hash != Some(summary.first_prev_hash) {
                    return err(LogErrorKind::LinkMismatch);
                }
                let extra = prev.last_seq - link_seq;
                superseded =
                    superseded.saturating_add(usize::try_from(extra).unwrap_or(usize::MAX));
            }
        }
        chains.push((summary, start, end));
        start = end;
    }
    let mut unsealed_tail = 0;
    if let Some((last, last_start, last_end)) = chains.last() {
        if last.unsealed > 0 {
            let first_seq = last.last_seq - (last.unsealed as u64 - 1);
            if !check.allow_unsealed_tail {
                let index = record_at(&items[*last_start..*last_end], first_seq)
                    .map_or(*last_start, |(i, _)| last_start + i);
                return Err(LogError {
                    index,
                    kind: LogErrorKind::UnsealedTail { first_seq, count: last.unsealed },
                });
            }
            unsealed_tail = last.unsealed;
        }
        if let Some(want) = check.expect_last {
            let sealed = last.sealed_last.or(chains.iter().rev().find_map(|c| c.0.sealed_last));
            if sealed.is_none_or(|s| s < want) {
                return Err(LogError {
                    index: items.len(),
                    kind: LogErrorKind::TruncatedTail {
                        expected_last: want,
                        found_last: sealed.unwrap_or(0),
                    },
                });
            }
        }
    }
    Ok(LogSummary { chains, superseded, unsealed_tail })
}

/// The `seq` of a record, without verifying it (to tell a reordering from a gap).
fn seq_of(bytes: &[u8]) -> Option<u64> {
    match classify(bytes)? {
        Item::Record(r) => Some(r.seq),
        Item::Seal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[6; 32])
    }

    fn kid() -> [u8; 8] {
        kid_for(&key().verifying_key())
    }

    fn event() -> Event {
        Event::new("unlocker", AuditAction::TotpValidate, AuditResult::Ok).target("alice")
    }

    /// A chain of `batches.len()` sealed batches of the given sizes; the log
    /// items in stored order.
    fn log_of(chain_id: [u8; 16], batches: &[usize]) -> (AuditLog, Vec<Vec<u8>>) {
        let mut log = AuditLog::new(chain_id, 256);
        let mut t = 1000;
        for &n in batches {
            for _ in 0..n {
                log.append(event(), t).unwrap();
                t += 1;
            }
            assert_eq!(log.seal(&key(), &kid(), t).unwrap(), 1);
        }
        let items = log.pending().flat_map(|b| b.items().map(<[u8]>::to_vec)).collect();
        (log, items)
    }

    fn chain(batches: &[usize]) -> Vec<Vec<u8>> {
        log_of([0xab; 16], batches).1
    }

    fn verify(items: &[Vec<u8>]) -> Result<Summary, ChainError> {
        verify_chain(items, &[key().verifying_key()])
    }

    fn kind(items: &[Vec<u8>]) -> (usize, ChainErrorKind) {
        let e = verify(items).unwrap_err();
        (e.index, e.kind)
    }

    #[test]
    fn intact_chain_verifies_with_one_seal_per_batch() {
        // Batches of 3, 1 and 2 records: items r r r S r S r r S.
        let items = chain(&[3, 1, 2]);
        assert_eq!(items.len(), 9);
        let s = verify(&items).unwrap();
        assert_eq!((s.first_seq, s.last_seq, s.records, s.seals), (0, 5, 6, 3));
        assert_eq!((s.sealed_last, s.unsealed), (Some(5), 0));
        assert_eq!(s.head_hash, <[u8; 32]>::from(Sha256::digest(&items[7])));
        // A suffix starting at a batch verifies on its own.
        assert_eq!(verify(&items[4..]).unwrap().first_seq, 3);
    }

    #[test]
    fn every_flipped_byte_of_a_sealed_batch_is_detected() {
        let items = chain(&[3, 2]);
        for victim in 0..4 {
            for i in 0..items[victim].len() {
                let mut bad = items.clone();
                bad[victim][i] ^= 0x01;
                let e = verify(&bad).unwrap_err();
                assert!(e.index >= victim && e.index <= 3, "item {victim} byte {i}: {e}");
            }
        }
    }

    #[test]
    fn an_edited_record_inside_a_sealed_batch_is_refused() {
        let items = chain(&[3, 2]);
        let edit = |i: usize| {
            let mut r = AuditRecord::from_cbor(&items[i]).unwrap();
            r.actor = "mallory".into();
            let mut bad = items.clone();
            bad[i] = r.to_cbor().unwrap();
            bad
        };
        // A record in the middle: the next record's link breaks.
        assert_eq!(kind(&edit(1)), (2, ChainErrorKind::BrokenLink));
        // The batch's last record: the seal's head hash does not match.
        assert_eq!(kind(&edit(2)), (3, ChainErrorKind::SealMismatch));
        // Re-linking the rest of the batch does not help: the seal pins it.
        let mut bad = edit(1);
        let mut next = AuditRecord::from_cbor(&bad[2]).unwrap();
        next.prev_hash = Sha256::digest(&bad[1]).into();
        bad[2] = next.to_cbor().unwrap();
        assert_eq!(kind(&bad), (3, ChainErrorKind::SealMismatch));
    }

    #[test]
    fn a_dropped_or_reordered_seal_is_refused() {
        let items = chain(&[2, 2, 1]);
        // r0 r1 S01 r2 r3 S23 r4 S4
        let mut dropped = items.clone();
        dropped.remove(2);
        assert_eq!(
            kind(&dropped),
            (
                4,
                ChainErrorKind::SealRange {
                    expected_first: 0,
                    expected_last: 3,
                    found_first: 2,
                    found_last: 3
                }
            )
        );
        // A seal moved after the next batch's records.
        let mut moved = items.clone();
        let seal = moved.remove(2);
        moved.insert(4, seal);
        assert!(matches!(kind(&moved).1, ChainErrorKind::SealRange { .. }));
        // Two seals swapped.
        let mut swapped = items.clone();
        swapped.swap(2, 5);
        assert!(matches!(kind(&swapped), (2, ChainErrorKind::SealRange { .. })));
        // A seal repeated.
        let mut twice = items.clone();
        twice.insert(3, items[2].clone());
        assert_eq!(kind(&twice), (3, ChainErrorKind::EmptySeal));
        // A log starting with a seal.
        assert_eq!(kind(&items[2..]), (0, ChainErrorKind::EmptySeal));
    }

    #[test]
    fn a_seal_forged_with_another_key_is_refused() {
        let (_, items) = log_of([0xab; 16], &[2]);
        let other = SigningKey::from_bytes(&[7; 32]);
        let r1 = AuditRecord::from_cbor(&items[1]).unwrap();
        let payload = AuditSeal {
            chain_id: r1.chain_id,
            first_seq: 0,
            last_seq: 1,
            head_hash: Sha256::digest(&items[1]).into(),
            timestamp: 1,
        }
        .to_cbor()
        .unwrap();
        // Under its own kid, and claiming the real key's kid.
        for k in [kid_for(&other.verifying_key()), kid()] {
            let forged = cose::sign(&other, &k, ContentType::AuditSeal, &payload).unwrap();
            let bad = [items[0].clone(), items[1].clone(), forged];
            assert_eq!(kind(&bad), (2, ChainErrorKind::BadSignature));
        }
        // The same payload signed by the real key verifies (the test can fail).
        let real = cose::sign(&key(), &kid(), ContentType::AuditSeal, &payload).unwrap();
        assert!(verify(&[items[0].clone(), items[1].clone(), real]).is_ok());
    }

    #[test]
    fn batches_spliced_from_two_chains_are_refused() {
        let a = chain(&[2, 2]);
        let (_, b) = log_of([0xcd; 16], &[2, 2]);
        // b's second batch in place of a's: another chain's records.
        let spliced = [a[..3].to_vec(), b[3..].to_vec()].concat();
        assert_eq!(kind(&spliced), (3, ChainErrorKind::WrongChain));
        let keys = [key().verifying_key()];
        assert!(verify_log(&spliced, &keys, LogCheck::default()).is_err());
        // b's records relabelled as chain a: the links and b's seal break.
        let relabel = |bytes: &Vec<u8>| {
            let mut r = AuditRecord::from_cbor(bytes).unwrap();
            r.chain_id = [0xab; 16];
            r.entry_id = entry_id(&r.chain_id, r.seq);
            r.to_cbor().unwrap()
        };
        let mut relabelled = a[..3].to_vec();
        relabelled.extend(b[3..5].iter().map(relabel));
        relabelled.push(b[5].clone());
        assert_eq!(kind(&relabelled), (3, ChainErrorKind::BrokenLink));
        // A seal of chain b after chain a's records.
        let mut foreign_seal = a[..2].to_vec();
        foreign_seal.push(b[2].clone());
        assert_eq!(kind(&foreign_seal), (2, ChainErrorKind::WrongChain));
    }

    #[test]
    fn records_after_the_last_seal_are_an_unsealed_tail() {
        let (mut log, mut items) = log_of([0xab; 16], &[2]);
        let tail = log.append(event(), 5).unwrap().to_vec();
        items.push(tail);
        let s = verify(&items).unwrap();
        assert_eq!((s.sealed_last, s.unsealed), (Some(1), 1));
        let keys = [key().verifying_key()];
        assert_eq!(
            verify_log(&items, &keys, LogCheck::default()).unwrap_err(),
            LogError { index: 3, kind: LogErrorKind::UnsealedTail { first_seq: 2, count: 1 } }
        );
        let allow = LogCheck { allow_unsealed_tail: true, expect_last: Some(1) };
        assert_eq!(verify_log(&items, &keys, allow).unwrap().unsealed_tail, 1);
        // The anchor must be sealed: an unsealed record does not reach it.
        let beyond = LogCheck { allow_unsealed_tail: true, expect_last: Some(2) };
        assert!(matches!(
            verify_log(&items, &keys, beyond).unwrap_err().kind,
            LogErrorKind::TruncatedTail { expected_last: 2, found_last: 1 }
        ));
    }

    #[test]
    fn audit_chain_detects_a_gap_and_a_reordering() {
        let items = chain(&[5]);
        let mut gap = items.clone();
        gap.remove(2);
        assert_eq!(kind(&gap), (2, ChainErrorKind::Gap { expected: 2, found: 3 }));
        let mut swapped = items.clone();
        swapped.swap(1, 3);
        assert_eq!(kind(&swapped), (1, ChainErrorKind::Reordered { expected: 1, found: 3 }));
    }

    #[test]
    fn audit_chain_detects_a_truncated_tail() {
        let items = chain(&[3, 2]);
        let anchor = Anchor { seq: 4, hash: Sha256::digest(&items[5]).into() };
        let keys = [key().verifying_key()];
        assert!(verify_chain_to(&items, &keys, anchor).is_ok());
        assert_eq!(
            verify_chain_to(&items[..4], &keys, anchor),
            Err(ChainError {
                index: 4,
                kind: ChainErrorKind::TruncatedTail { expected_last: 4, found_last: 2 }
            })
        );
        // A last item cut short is malformed at its index.
        let mut cut = items.clone();
        let last = cut[6].len() - 10;
        cut[6].truncate(last);
        assert_eq!(kind(&cut), (6, ChainErrorKind::Malformed));
    }

    #[test]
    fn unknown_key_and_empty_input() {
        let items = chain(&[2]);
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(verify_chain(&items, &[other]).unwrap_err().kind, ChainErrorKind::BadSignature);
        assert_eq!(verify(&[]).unwrap_err().kind, ChainErrorKind::Empty);
    }

    #[test]
    fn only_sealed_batches_are_acknowledged() {
        let mut log = AuditLog::new([1; 16], 8);
        for _ in 0..3 {
            log.append(event(), 0).unwrap();
        }
        assert_eq!(log.ack(&[1; 16], 2), 0, "nothing sealed, nothing acked");
        log.seal(&key(), &kid(), 0).unwrap();
        log.append(event(), 0).unwrap();
        assert_eq!(log.ack(&[2; 16], 5), 0, "another chain's ack is ignored");
        assert_eq!(log.ack(&[1; 16], 1), 0, "a batch leaves only whole");
        assert_eq!(log.ack(&[1; 16], 9), 3, "the unsealed record stays");
        assert_eq!(log.acked_head().map(|h| h.seq), Some(2));
        assert_eq!((log.pending_len(), log.oldest_pending()), (1, Some(3)));
    }

    #[test]
    fn full_outbox_refuses_until_acked_and_big_batches_split() {
        let mut log = AuditLog::new([1; 16], 3);
        for _ in 0..3 {
            log.append(event(), 0).unwrap();
        }
        assert!(!log.has_room(1));
        assert_eq!(log.append(event(), 0), Err(AuditError::Full));
        assert_eq!(log.next_seq(), 3, "a refused record takes no seq");
        log.seal(&key(), &kid(), 0).unwrap();
        assert_eq!(log.ack(&[1; 16], 2), 3);
        assert!(log.append(event(), 0).is_ok());

        // More records than one batch holds: several seals, one log.
        let mut log = AuditLog::new([1; 16], 1000);
        for _ in 0..MAX_AUDIT_BATCH + 10 {
            log.append(event(), 0).unwrap();
        }
        assert_eq!(log.seal(&key(), &kid(), 0).unwrap(), 2);
        let items: Vec<Vec<u8>> =
            log.pending().flat_map(|b| b.items().map(<[u8]>::to_vec)).collect();
        assert_eq!(verify(&items).unwrap().seals, 2);
        for b in log.pending() {
            assert!(portcullis_proto::envelope::Message::AuditLog(b.to_message()).encode().is_ok());
        }
    }

    #[test]
    fn group_commit_seals_when_nothing_is_in_flight_or_enough_has_gathered() {
        let mut log = AuditLog::new([1; 16], 1000);
        assert!(!log.seal_due(0), "nothing to seal");
        log.append(event(), 10).unwrap();
        assert!(log.seal_due(10), "nothing in flight: a lone record is sealed at once");
        log.seal(&key(), &kid(), 10).unwrap();
        // Behind the batch in flight, records wait...
        for _ in 0..GROUP_RECORDS - 1 {
            log.append(event(), 11).unwrap();
            assert!(!log.seal_due(11));
        }
        // ...until their wait is over (timed from the oldest of them),
        assert!(!log.seal_due(11 + GROUP_WAIT_SECS - 1));
        assert!(log.seal_due(11 + GROUP_WAIT_SECS));
        // or they fill a group,
        log.append(event(), 11).unwrap();
        assert!(log.seal_due(11));
        // or the batch in flight is acknowledged.
        log.append(event(), 11).unwrap();
        assert_eq!(log.ack(&[1; 16], 0), 1);
        assert!(log.seal_due(11));
        // An ack that leaves a batch in flight keeps them waiting.
        log.seal(&key(), &kid(), 11).unwrap();
        log.append(event(), 12).unwrap();
        assert!(!log.seal_due(12));
    }
}
