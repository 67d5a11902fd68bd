//! The signed, hash-chained audit log and its verifier.
//!
//! Rules:
//! - a chain has a 16-byte id (one per cryptod boot); its records have
//!   consecutive `seq`;
//! - record `n`'s `prev_hash` is SHA-256 of record `n-1`'s signed bytes (the
//!   whole COSE_Sign1); record 0 has 32 zero bytes;
//! - the first boot's chain starts at `seq` 0; a later boot's chain continues
//!   from the head the collector last acknowledged before the restart (sealed
//!   with cryptod's state): its first record has `seq` = head `seq` + 1 and
//!   `prev_hash` = the head's hash, so all boots form one log
//!   ([`verify_log`] checks it whole);
//! - `entry_id` = the first 16 bytes of SHA-256(chain_id || u64be(seq)), unique
//!   per record without drawing on the DRBG;
//! - each record is a COSE_Sign1 (content type `audit_record`) by the root key;
//! - records wait in a bounded outbox until the collector acks their `seq`
//!   (an ack covers everything up to it); when the outbox is full, appending
//!   is refused and the caller refuses the operation (`unavailable`): records
//!   are never dropped.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use ed25519_dalek::{SigningKey, VerifyingKey};
use portcullis_proto::cose::{self, ContentType, CoseError};
use portcullis_proto::msg::{AuditAction, AuditRecord, AuditResult, Metadata};
use sha2::{Digest, Sha256};

use crate::keys::kid_for;

/// Default outbox capacity, in records.
pub const DEFAULT_OUTBOX: usize = 256;

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
}

impl Event {
    /// An event without target or metadata.
    pub fn new(actor: &str, action: AuditAction, result: AuditResult) -> Event {
        Event { actor: actor.into(), action, result, target: None, metadata: Metadata::new() }
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

/// Why a record could not be appended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditError {
    /// The outbox is full until the collector acks.
    Full,
    /// The record could not be encoded or signed (a field breaks the schema).
    Encoding,
    /// `seq` cannot go higher.
    Exhausted,
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuditError::Full => "audit outbox is full",
            AuditError::Encoding => "audit record could not be encoded or signed",
            AuditError::Exhausted => "audit seq exhausted",
        })
    }
}

/// A stored record: its chain, `seq` and the SHA-256 of its signed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// The record's chain.
    pub chain_id: [u8; 16],
    /// The record's `seq`.
    pub seq: u64,
    /// SHA-256 of the record's signed bytes.
    pub hash: [u8; 32],
}

impl core::error::Error for AuditError {}

/// The writer's side: the chain head and the outbox of unacked records.
#[derive(Debug)]
pub struct AuditLog {
    chain_id: [u8; 16],
    next_seq: u64,
    prev_hash: [u8; 32],
    outbox: VecDeque<(u64, Vec<u8>)>,
    capacity: usize,
    acked: Option<Head>,
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
            outbox: VecDeque::new(),
            capacity: capacity.max(1),
            acked: after,
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
        self.outbox.len().saturating_add(n) <= self.capacity
    }

    /// Signs `event` as the next record with `key`; returns the signed bytes
    /// (also kept in the outbox until acked).
    pub fn append(
        &mut self,
        key: &SigningKey,
        event: Event,
        now: u64,
    ) -> Result<Vec<u8>, AuditError> {
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
        };
        let payload = record.to_cbor().map_err(|_| AuditError::Encoding)?;
        let kid = kid_for(&key.verifying_key());
        let signed = cose::sign(key, &kid, ContentType::AuditRecord, &payload)
            .map_err(|_| AuditError::Encoding)?;
        self.prev_hash = Sha256::digest(&signed).into();
        self.outbox.push_back((self.next_seq, signed.clone()));
        self.next_seq = after;
        Ok(signed)
    }

    /// The collector stored everything up to `seq` of chain `chain_id`; drops
    /// those records from the outbox and returns how many. Acks for another
    /// chain are ignored.
    pub fn ack(&mut self, chain_id: &[u8; 16], seq: u64) -> usize {
        if chain_id != &self.chain_id {
            return 0;
        }
        let before = self.outbox.len();
        while self.outbox.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((seq, signed)) = self.outbox.pop_front() {
                let hash = Sha256::digest(&signed).into();
                self.acked = Some(Head { chain_id: self.chain_id, seq, hash });
            }
        }
        before - self.outbox.len()
    }

    /// Records not yet acked, oldest first (for retransmission).
    pub fn pending(&self) -> impl Iterator<Item = &[u8]> {
        self.pending_with_seq().map(|(_, r)| r)
    }

    /// Records not yet acked with their `seq`, oldest first.
    pub fn pending_with_seq(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.outbox.iter().map(|(seq, r)| (*seq, r.as_slice()))
    }

    /// How many records wait for an ack.
    pub fn pending_len(&self) -> usize {
        self.outbox.len()
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
    /// SHA-256 of the last record's signed bytes (what the next record links to).
    pub head_hash: [u8; 32],
    /// The first record's `prev_hash` (what this run links to).
    pub first_prev_hash: [u8; 32],
}

/// How a chain breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainErrorKind {
    /// No records at all.
    Empty,
    /// Not a signed audit record (cut short, not COSE, wrong content type or bad payload).
    Malformed,
    /// Signed by no key given, or the signature does not verify.
    BadSignature,
    /// A record of another chain.
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
    /// `prev_hash` is not the hash of the record before (a changed or swapped record).
    BrokenLink,
    /// `entry_id` is not the one derived from chain id and `seq`.
    BadEntryId,
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
    /// Position of the offending record in the input.
    pub index: usize,
    /// What is wrong there.
    pub kind: ChainErrorKind,
}

impl fmt::Display for ChainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "audit chain breaks at record {}: ", self.index)?;
        match self.kind {
            ChainErrorKind::Empty => f.write_str("no records"),
            ChainErrorKind::Malformed => f.write_str("not a signed audit record"),
            ChainErrorKind::BadSignature => {
                f.write_str("signature does not verify under any given key")
            }
            ChainErrorKind::WrongChain => f.write_str("record of another chain"),
            ChainErrorKind::Gap { expected, found } => {
                write!(f, "gap: expected seq {expected}, found {found}")
            }
            ChainErrorKind::Reordered { expected, found } => {
                write!(f, "out of order: expected seq {expected}, found {found}")
            }
            ChainErrorKind::BrokenLink => {
                f.write_str("prev_hash does not match the previous record")
            }
            ChainErrorKind::BadEntryId => f.write_str("entry_id does not match chain id and seq"),
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
    /// SHA-256 of that record's signed bytes.
    pub hash: [u8; 32],
}

/// Verifies a run of signed audit records against the given public keys:
/// signatures, content type, one chain, consecutive `seq`, entry ids and hash
/// links. The first record may be any `seq`; if it is 0 its `prev_hash` must
/// be zero. Returns where and how it first breaks.
pub fn verify_chain<R: AsRef<[u8]>>(
    records: &[R],
    keys: &[VerifyingKey],
) -> Result<Summary, ChainError> {
    let mut summary: Option<Summary> = None;
    for (index, bytes) in records.iter().enumerate() {
        let bytes = bytes.as_ref();
        let err = |kind| ChainError { index, kind };
        let verified = cose::verify(bytes, ContentType::AuditRecord, |kid| {
            keys.iter().find(|k| kid_for(k)[..] == *kid).copied()
        })
        .map_err(|e| {
            err(match e {
                CoseError::BadSignature | CoseError::UnknownKid | CoseError::WrongAlgorithm => {
                    ChainErrorKind::BadSignature
                }
                _ => ChainErrorKind::Malformed,
            })
        })?;
        let record = AuditRecord::from_cbor(&verified.payload)
            .map_err(|_| err(ChainErrorKind::Malformed))?;
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
                    let later = records
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
                s.head_hash = hash;
            }
        }
        if record.entry_id != entry_id(&record.chain_id, record.seq) {
            return Err(err(ChainErrorKind::BadEntryId));
        }
    }
    summary.ok_or(ChainError { index: 0, kind: ChainErrorKind::Empty })
}

/// [`verify_chain`], then checks that the chain reaches `anchor` and that the
/// record at the anchor's `seq` is the anchored one: a cut-off tail is
/// reported at `index = records.len()`.
pub fn verify_chain_to<R: AsRef<[u8]>>(
    records: &[R],
    keys: &[VerifyingKey],
    anchor: Anchor,
) -> Result<Summary, ChainError> {
    let summary = verify_chain(records, keys)?;
    if summary.last_seq < anchor.seq {
        return Err(ChainError {
            index: records.len(),
            kind: ChainErrorKind::TruncatedTail {
                expected_last: anchor.seq,
                found_last: summary.last_seq,
            },
        });
    }
    if anchor.seq >= summary.first_seq {
        let offset = usize::try_from(anchor.seq - summary.first_seq).unwrap_or(usize::MAX);
        let at = records.get(offset).map(|r| <[u8; 32]>::from(Sha256::digest(r.as_ref())));
        if at != Some(anchor.hash) {
            return Err(ChainError { index: offset, kind: ChainErrorKind::AnchorMismatch });
        }
    }
    Ok(summary)
}

/// How a whole log (the chains of every boot, oldest first) breaks, beyond
/// what breaks one chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogErrorKind {
    /// One chain breaks (`index` is the offending record in the whole log).
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
    /// The log ends before the anchor: the last chain (or whole chains) cut.
    TruncatedTail {
        /// The anchor (highest `seq` the collector acknowledged).
        expected_last: u64,
        /// The last `seq` present.
        found_last: u64,
    },
}

/// Where and how a log breaks: `index` is a record index in the whole log
/// (`records.len()` for a cut-off tail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogError {
    /// Position of the offending record.
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
                write!(f, "audit log breaks at record {}: ", self.index)?;
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
                    LogErrorKind::TruncatedTail { expected_last, found_last } => write!(
                        f,
                        "truncated: the log ends at seq {found_last}, anchor is {expected_last}"
                    ),
                    LogErrorKind::Chain(_) => Ok(()),
                }
            }
        }
    }
}

/// What a verified log covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSummary {
    /// Each chain, oldest first, with `(start, end)` record indexes.
    pub chains: Vec<(Summary, usize, usize)>,
    /// Records of a chain after the point the next chain continues from:
    /// stored by the collector, but not acknowledged before cryptod stopped.
    pub superseded: usize,
}

/// The chain id of a record, without verifying it (to split a log into runs).
fn chain_of(bytes: &[u8]) -> Option<[u8; 16]> {
    let v = portcullis_proto::danger::open_unverified(bytes).ok()?;
    AuditRecord::from_cbor(&v.get_unverified().payload).ok().map(|r| r.chain_id)
}

/// Verifies a whole log: the chains of every boot, oldest first. Each chain
/// must verify ([`verify_chain`]); the first must start at `seq` 0; each
/// later one must continue from a record of the chain just before it (its
/// first `prev_hash` is that record's hash, its first `seq` the next); no
/// chain may appear twice. With `expect_last` (the highest `seq` the
/// collector acknowledged), the last chain must reach it, which anchors the
/// whole sequence.
pub fn verify_log<R: AsRef<[u8]>>(
    records: &[R],
    keys: &[VerifyingKey],
    expect_last: Option<u64>,
) -> Result<LogSummary, LogError> {
    let mut chains: Vec<(Summary, usize, usize)> = Vec::new();
    let mut superseded = 0usize;
    let mut start = 0usize;
    if records.is_empty() {
        return Err(LogError { index: 0, kind: LogErrorKind::Chain(ChainErrorKind::Empty) });
    }
    while start < records.len() {
        let id = chain_of(records[start].as_ref());
        let mut end = start + 1;
        while id.is_some() && end < records.len() && chain_of(records[end].as_ref()) == id {
            end += 1;
        }
        let run = &records[start..end];
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
            Some((prev, prev_start, _)) => {
                let link_seq = summary.first_seq - 1;
                if link_seq > prev.last_seq {
                    return err(LogErrorKind::MissingLink { link_seq, found_last: prev.last_seq });
                }
                let Some(offset) = link_seq.checked_sub(prev.first_seq) else {
                    return err(LogErrorKind::LinkBeforeChain {
                        link_seq,
                        found_first: prev.first_seq,
                    });
                };
                let at = usize::try_from(offset)
                    .ok()
                    .and_then(|o| prev_start.checked_add(o))
                    .and_then(|i| records.get(i));
                let hash = at.map(|r| <[u8; 32]>::from(Sha256::digest(r.as_ref())));
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
    if let (Some(want), Some((last, _, _))) = (expect_last, chains.last()) {
        if last.last_seq < want {
            return Err(LogError {
                index: records.len(),
                kind: LogErrorKind::TruncatedTail {
                    expected_last: want,
                    found_last: last.last_seq,
                },
            });
        }
    }
    Ok(LogSummary { chains, superseded })
}

/// The `seq` of a record, without verifying it (to tell a reordering from a gap).
fn seq_of(bytes: &[u8]) -> Option<u64> {
    let v = portcullis_proto::danger::open_unverified(bytes).ok()?;
    AuditRecord::from_cbor(&v.get_unverified().payload).ok().map(|r| r.seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[6; 32])
    }

    fn chain(n: usize) -> (AuditLog, Vec<Vec<u8>>) {
        let mut log = AuditLog::new([0xab; 16], 64);
        let records = (0..n)
            .map(|i| {
                let e = Event::new("unlocker", AuditAction::TotpValidate, AuditResult::Ok)
                    .target("alice");
                log.append(&key(), e, 1000 + i as u64).unwrap()
            })
            .collect();
        (log, records)
    }

    fn verify(records: &[Vec<u8>]) -> Result<Summary, ChainError> {
        verify_chain(records, &[key().verifying_key()])
    }

    #[test]
    fn intact_chain_verifies() {
        let (_, records) = chain(5);
        let s = verify(&records).unwrap();
        assert_eq!((s.first_seq, s.last_seq, s.records), (0, 4, 5));
        assert_eq!(s.head_hash, <[u8; 32]>::from(Sha256::digest(&records[4])));
        // A suffix verifies on its own.
        assert_eq!(verify(&records[2..]).unwrap().first_seq, 2);
    }

    #[test]
    fn audit_chain_detects_a_flipped_byte() {
        let (_, records) = chain(4);
        for i in 0..records[2].len() {
            let mut bad = records.clone();
            bad[2][i] ^= 0x01;
            let e = verify(&bad).unwrap_err();
            assert_eq!(e.index, 2, "byte {i}: {e}");
            assert!(
                matches!(e.kind, ChainErrorKind::BadSignature | ChainErrorKind::Malformed),
                "byte {i}: {e}"
            );
        }
    }

    #[test]
    fn audit_chain_detects_a_gap() {
        let (_, mut records) = chain(5);
        records.remove(2);
        assert_eq!(
            verify(&records),
            Err(ChainError { index: 2, kind: ChainErrorKind::Gap { expected: 2, found: 3 } })
        );
    }

    #[test]
    fn audit_chain_detects_a_reordering() {
        let (_, mut records) = chain(5);
        records.swap(1, 3);
        assert_eq!(
            verify(&records),
            Err(ChainError { index: 1, kind: ChainErrorKind::Reordered { expected: 1, found: 3 } })
        );
    }

    #[test]
    fn audit_chain_detects_a_truncated_tail() {
        let (_, records) = chain(5);
        let anchor = Anchor { seq: 4, hash: Sha256::digest(&records[4]).into() };
        let keys = [key().verifying_key()];
        assert!(verify_chain_to(&records, &keys, anchor).is_ok());
        assert_eq!(
            verify_chain_to(&records[..3], &keys, anchor),
            Err(ChainError {
                index: 3,
                kind: ChainErrorKind::TruncatedTail { expected_last: 4, found_last: 2 }
            })
        );
        // A last record cut short is malformed at its index.
        let mut cut = records.clone();
        let last = cut[4].len() - 10;
        cut[4].truncate(last);
        assert_eq!(verify(&cut), Err(ChainError { index: 4, kind: ChainErrorKind::Malformed }));
    }

    #[test]
    fn a_replaced_record_breaks_the_link() {
        let (_, records) = chain(3);
        // Same seq, validly signed, but from a different history.
        let mut other = AuditLog::new([0xab; 16], 8);
        let mut forged = Vec::new();
        for i in 0..3 {
            let e = Event::new("mallory", AuditAction::TokenIssue, AuditResult::Ok);
            forged.push(other.append(&key(), e, i).unwrap());
        }
        let mixed = [records[0].clone(), forged[1].clone(), records[2].clone()];
        assert_eq!(verify(&mixed), Err(ChainError { index: 1, kind: ChainErrorKind::BrokenLink }));
        // Another chain's record.
        let mut third = AuditLog::new([0xcd; 16], 8);
        let r = third
            .append(&key(), Event::new("x", AuditAction::ChainStart, AuditResult::Ok), 0)
            .unwrap();
        let mixed = [records[0].clone(), r];
        assert_eq!(verify(&mixed).unwrap_err().kind, ChainErrorKind::WrongChain);
    }

    #[test]
    fn unknown_key_and_empty_input() {
        let (_, records) = chain(2);
        let other = SigningKey::from_bytes(&[7; 32]).verifying_key();
        assert_eq!(
            verify_chain(&records, &[other]).unwrap_err().kind,
            ChainErrorKind::BadSignature
        );
        assert_eq!(verify(&[]).unwrap_err().kind, ChainErrorKind::Empty);
    }

    #[test]
    fn full_outbox_refuses_until_acked() {
        let mut log = AuditLog::new([1; 16], 3);
        let ev = || Event::new("a", AuditAction::TokenIssue, AuditResult::Ok);
        for _ in 0..3 {
            log.append(&key(), ev(), 0).unwrap();
        }
        assert!(!log.has_room(1));
        assert_eq!(log.append(&key(), ev(), 0), Err(AuditError::Full));
        assert_eq!(log.next_seq(), 3, "a refused record takes no seq");
        assert_eq!(log.ack(&[2; 16], 5), 0, "another chain's ack is ignored");
        assert_eq!(log.ack(&[1; 16], 1), 2);
        assert_eq!(log.pending().count(), 1);
        assert!(log.append(&key(), ev(), 0).is_ok());
        let all: Vec<Vec<u8>> = log.pending().map(<[u8]>::to_vec).collect();
        assert_eq!(verify(&all).unwrap().first_seq, 2);
    }
}
