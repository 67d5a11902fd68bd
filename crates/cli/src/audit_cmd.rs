//! `portcullis audit-collect` (the collector cryptod ships its audit records
//! to) and `portcullis audit verify` (checks a collected log).
//!
//! The log file is a CBOR sequence (RFC 8742) of byte strings, each holding
//! one log item exactly as cryptod sent it: an audit record (an encoded
//! `audit-record` map) or the seal that ends a batch (a COSE_Sign1 by the
//! root key); each batch's records come first, then its seal. The
//! collector stores every batch it has received with one write and one
//! fsync (group commit) before it acknowledges the last `seq` of each
//! chain, so a record cryptod dropped from its outbox is always on disk; a
//! batch cut off by a crash (records after the file's last seal) was never
//! acknowledged: the collector cuts it when it starts, and cryptod sends it
//! again.

use crate::{keyfile, socket, Failure};
use clap::{Args, Subcommand};
use ed25519_dalek::VerifyingKey;
use portcullis_apps::common::{port, resolve_dom};
use portcullis_apps::link::{Channel, Framed, LinkError};
use portcullis_apps::net::connect;
use portcullis_authority::audit::{verify_log, ChainErrorKind, LogCheck, LogErrorKind};
use portcullis_hosted::{HostedPlatform, World};
use portcullis_proto::cose::{self, ContentType};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::key::kid_for;
use portcullis_proto::msg::{
    AuditAck, AuditAction, AuditLog, AuditRecord, AuditResult, AuditSeal, OutcomeClaims,
};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Largest item accepted in a log (a record or a seal is a few hundred bytes).
const MAX_RECORD: u64 = 64 * 1024;
/// Shortest time between two "stored seq" lines (the last is always said).
const STORED_LINE_EVERY: Duration = Duration::from_secs(1);

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check a collected audit log: signatures, hash chain, sequence gaps,
    /// truncation. Exit 0 only if it checks out; otherwise say where it breaks.
    Verify {
        /// The root public key (root.pub from `portcullis provision`).
        #[arg(long)]
        root: PathBuf,
        /// The highest seq the collector acknowledged (from its output): the
        /// sealed log must reach it. Chains link across restarts, so this
        /// anchors the whole log, not only the last chain.
        #[arg(long)]
        expect_last: Option<u64>,
        /// Accept records after the log's last seal (a batch a crash cut
        /// off before its seal was stored): they are reported, not
        /// verified by any signature. Refused without this flag.
        #[arg(long)]
        allow_unsealed_tail: bool,
        /// Once it checks out, also print one line per record: seq, actor,
        /// action, result, target, metadata; a decision whose token has an
        /// outcome record also shows `outcome=` and `signer=`.
        #[arg(long)]
        list: bool,
        /// An enforcer's pinned outcome key: SIGNER=PUBFILE (e.g.
        /// `unlock_agent=agent-outcome.pub`); may be repeated. Outcome
        /// records of that signer must be signed by it. Every outcome
        /// record's signature is verified in any case (with the key it names).
        #[arg(long = "outcome-key")]
        outcome_keys: Vec<String>,
        /// The log file.
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct CollectArgs {
    /// The hosted world directory (from the launcher).
    #[arg(long, required_unless_present = "socket", conflicts_with = "socket")]
    world: Option<PathBuf>,
    /// Connect to this UNIX socket instead of a hosted world: under Xen,
    /// `vchan-socket-proxy` in client mode relaying cryptod's audit vchan.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// This collector's domain name in the world.
    #[arg(long, default_value = "collector")]
    domain: String,
    /// cryptod's domain name.
    #[arg(long, default_value = "cryptod")]
    cryptod: String,
    /// The log file to append to (created if absent).
    #[arg(long)]
    out: PathBuf,
}

/// Parses a log: the records, and the byte offset where a cut-off tail
/// starts (if the last item is incomplete).
pub fn read_log(bytes: &[u8]) -> Result<(Vec<Vec<u8>>, Option<usize>), String> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let start = at;
        let head = bytes[at];
        if head >> 5 != 2 {
            return Err(format!("byte {start}: not a CBOR byte string (record {})", records.len()));
        }
        let info = head & 0x1f;
        at += 1;
        let len = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let n = 1usize << (info - 24);
                let Some(b) = bytes.get(at..at + n) else { return Ok((records, Some(start))) };
                at += n;
                b.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
            }
            _ => {
                return Err(format!(
                    "byte {start}: unsupported length encoding (record {})",
                    records.len()
                ))
            }
        };
        if len > MAX_RECORD {
            return Err(format!("byte {start}: record {} claims {len} bytes", records.len()));
        }
        let end = at + len as usize;
        let Some(body) = bytes.get(at..end) else { return Ok((records, Some(start))) };
        records.push(body.to_vec());
        at = end;
    }
    Ok((records, None))
}

fn bstr_header(len: usize) -> Vec<u8> {
    let mut h = Vec::with_capacity(9);
    match len {
        0..=23 => h.push(0x40 | len as u8),
        24..=0xff => h.extend_from_slice(&[0x58, len as u8]),
        0x100..=0xffff => {
            h.push(0x59);
            h.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            h.push(0x5a);
            h.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }
    h
}

/// Whether a log item is an audit record (a CBOR map) rather than a seal.
fn is_record(item: &[u8]) -> bool {
    matches!(item.first(), Some(0xa0..=0xbf))
}

/// A seal's payload, not verified (the collector stores; `audit verify` checks).
fn seal_of(item: &[u8]) -> Option<AuditSeal> {
    let opened = danger::open_unverified(item).ok()?;
    AuditSeal::from_cbor(&opened.get_unverified().payload).ok()
}

/// A batch as the collector checks it before storing: one chain,
/// consecutive records, and a seal (not verified) naming exactly them.
/// Returns the chain and the batch's `seq` range.
fn batch_range(log: &AuditLog) -> Result<([u8; 16], u64, u64), String> {
    let seal = seal_of(&log.seal).ok_or("the seal is not a readable audit seal")?;
    let mut expected = seal.first_seq;
    for r in &log.records {
        let r = AuditRecord::from_cbor(r).map_err(|e| format!("a record: {e}"))?;
        if r.chain_id != seal.chain_id || r.seq != expected {
            return Err(format!("record seq {} is not seq {expected} of the sealed chain", r.seq));
        }
        expected = expected.saturating_add(1);
    }
    if expected.checked_sub(1) != Some(seal.last_seq) {
        return Err(format!("the seal ends at seq {}, its records do not", seal.last_seq));
    }
    Ok((seal.chain_id, seal.first_seq, seal.last_seq))
}

/// Opens the log, drops a cut-off tail left by a crash (an item cut short,
/// or records after the last seal: never acknowledged, cryptod sends them
/// again), and returns the highest sealed seq per chain.
pub(crate) fn open_log(path: &Path) -> Result<(File, HashMap<[u8; 16], u64>), Failure> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let (items, cut) = read_log(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last = HashMap::new();
    // Where the last seal ends, and what follows it.
    let (mut at, mut sealed_end, mut tail) = (0usize, 0usize, 0usize);
    for item in &items {
        at += bstr_header(item.len()).len() + item.len();
        if let Some(seal) = seal_of(item) {
            let e = last.entry(seal.chain_id).or_insert(seal.last_seq);
            *e = (*e).max(seal.last_seq);
            (sealed_end, tail) = (at, 0);
        } else if is_record(item) {
            tail += 1;
        } else {
            return Err(Failure::Invalid(format!(
                "{}: item at byte {} is neither an audit record nor an audit seal (a log \
                 of another format?); move it aside",
                path.display(),
                at - item.len() - bstr_header(item.len()).len()
            )));
        }
    }
    if tail > 0 || cut.is_some() {
        println!(
            "audit-collect: dropping {tail} unsealed record(s){} after byte {sealed_end} \
             (never acknowledged; cryptod sends them again)",
            if cut.is_some() { " and a cut-off item" } else { "" }
        );
        f.set_len(sealed_end as u64).map_err(|e| format!("{}: {e}", path.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.seek(SeekFrom::End(0)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((f, last))
}

/// Runs the collector until killed.
pub fn collect(args: CollectArgs) -> Result<(), Failure> {
    let (mut file, mut last) = open_log(&args.out)?;
    println!(
        "audit-collect: {} chain(s) on disk; collecting into {}",
        last.len(),
        args.out.display()
    );
    if let Some(path) = &args.socket {
        loop {
            // The proxy accepts, then connects to cryptod's vchan; each
            // socket connection is one vchan connection.
            let Ok(mut link) = socket::connect(path, Duration::from_secs(5)) else { continue };
            println!("audit-collect: connected to {}", path.display());
            serve_link(&mut link, &mut file, &mut last, &args.out, &|| true)?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let world_dir = args.world.as_ref().ok_or("--world or --socket is required")?;
    let world =
        World::open(world_dir).map_err(|e| format!("world {}: {e}", world_dir.display()))?;
    let dom = world
        .resolve(&args.domain)
        .map_err(|e| format!("world: {e}"))?
        .ok_or_else(|| format!("no domain {:?} in the world", args.domain))?;
    let mut p = HostedPlatform::open(world, dom).map_err(|e| format!("platform: {e}"))?;
    let cryptod = resolve_dom(&mut p, &args.cryptod).map_err(|e| e.to_string())?;
    loop {
        let mut link = match connect(&mut p, cryptod, port::AUDIT, Duration::from_secs(5)) {
            Ok(l) => l,
            Err(_) => continue, // cryptod not (yet, or again) there: keep waiting
        };
        println!("audit-collect: connected to {}", args.cryptod);
        serve_link(&mut link, &mut file, &mut last, &args.out, &|| true)?;
    }
}

/// Stores and acknowledges audit batches from one connection until it
/// breaks, or until `keep_going` (asked between batches) says to stop.
/// Group commit: every batch already received is written with one write
/// and one fsync, then the highest `seq` of each chain is acknowledged, so
/// the callers whose records those batches hold share one commit. Returns
/// whether any message arrived.
pub(crate) fn serve_link<C: Channel>(
    link: &mut Framed<C>,
    file: &mut File,
    last: &mut HashMap<[u8; 16], u64>,
    out: &Path,
    keep_going: &dyn Fn() -> bool,
) -> Result<bool, Failure> {
    let mut used = false;
    let mut stored = StoredLine::default();
    loop {
        if !keep_going() {
            stored.flush();
            return Ok(used);
        }
        let first = match link.recv_blocking(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(LinkError::Timeout) => {
                stored.flush();
                continue;
            }
            Err(e) => {
                stored.flush();
                println!("audit-collect: link: {e}; reconnecting");
                return Ok(used);
            }
        };
        used = true;
        let mut batch = vec![first];
        while batch.len() < 256 {
            match link.poll() {
                Ok(Some(m)) => batch.push(m),
                _ => break,
            }
        }
        let mut acks: Vec<([u8; 16], u64)> = Vec::new();
        let mut buf = Vec::new();
        for msg in batch {
            let Message::AuditLog(log) = msg else { continue };
            let (chain, first_seq, last_seq) = match batch_range(&log) {
                Ok(r) => r,
                Err(e) => {
                    println!("audit-collect: ignoring an unreadable batch: {e}");
                    continue;
                }
            };
            match last.get(&chain) {
                // Sent again (cryptod did not see the ack): acked, not stored twice.
                Some(&l) if last_seq <= l => {}
                Some(&l) if first_seq <= l => {
                    println!(
                        "audit-collect: ignoring a batch (seq {first_seq}..={last_seq}) that \
                         overlaps what is stored (up to {l})"
                    );
                    continue;
                }
                _ => {
                    for item in log.records.iter().chain(std::iter::once(&log.seal)) {
                        buf.extend_from_slice(&bstr_header(item.len()));
                        buf.extend_from_slice(item);
                    }
                    last.insert(chain, last_seq);
                }
            }
            match acks.iter_mut().find(|(c, _)| *c == chain) {
                Some(a) => a.1 = a.1.max(last_seq),
                None => acks.push((chain, last_seq)),
            }
        }
        if !buf.is_empty() {
            file.write_all(&buf)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        for (chain_id, seq) in acks {
            stored.note(seq);
            let ack = Message::AuditAck(AuditAck { chain_id, seq });
            if let Err(e) = link.send_blocking(&ack, Duration::from_secs(5)) {
                stored.flush();
                println!("audit-collect: ack: {e}; reconnecting");
                return Ok(used);
            }
        }
    }
}

/// The collector's "stored seq N" line: at most one per
/// [`STORED_LINE_EVERY`], and the newest always said once the link is
/// idle (the demo waits for it), so a busy log costs no line per batch.
#[derive(Default)]
struct StoredLine {
    said_at: Option<Instant>,
    due: Option<u64>,
}

impl StoredLine {
    fn note(&mut self, seq: u64) {
        if self.said_at.is_some_and(|t| t.elapsed() < STORED_LINE_EVERY) {
            self.due = Some(seq);
        } else {
            println!("audit-collect: stored seq {seq}");
            self.said_at = Some(Instant::now());
            self.due = None;
        }
    }

    fn flush(&mut self) {
        if let Some(seq) = self.due.take() {
            println!("audit-collect: stored seq {seq}");
            self.said_at = Some(Instant::now());
        }
    }
}

pub fn run(cmd: AuditCmd) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Verify { root, expect_last, allow_unsealed_tail, list, outcome_keys, file } => {
            let check = LogCheck { expect_last, allow_unsealed_tail };
            let summary = verify_file_with(&root, check, &file)?;
            println!("{summary}");
            let pinned = outcome_keys
                .iter()
                .map(|s| {
                    let (name, path) = s
                        .split_once('=')
                        .ok_or_else(|| format!("--outcome-key {s:?}: not SIGNER=PUBFILE"))?;
                    Ok((name.to_string(), keyfile::load(Path::new(path))?.public))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            let (items, _) = read_log(&bytes).map_err(Failure::Invalid)?;
            let records: Vec<AuditRecord> =
                items.iter().filter_map(|i| AuditRecord::from_cbor(i).ok()).collect();
            let outcomes = verify_outcomes(&records, &pinned).map_err(Failure::Invalid)?;
            println!("ok: {} outcome record(s), enforcer signatures verify", outcomes.len());
            if list {
                for r in &records {
                    // seq actor action result target, then the metadata as
                    // key=value words (values are text without spaces
                    // except reasons: those are quoted).
                    let mut line = format!(
                        "record {} {} {} {} {}",
                        r.seq,
                        r.actor,
                        r.action.as_str(),
                        r.result.as_str(),
                        r.target.as_deref().unwrap_or("-")
                    );
                    for (k, v) in r.metadata.iter().flat_map(|m| m.iter()) {
                        if v.contains(char::is_whitespace) || v.is_empty() {
                            line.push_str(&format!(" {k}={v:?}"));
                        } else {
                            line.push_str(&format!(" {k}={v}"));
                        }
                    }
                    // The decision's outcome(s), next to it.
                    let cti = r.metadata.as_ref().and_then(|m| m.get("cti"));
                    if r.action != AuditAction::Outcome {
                        for o in outcomes.iter().filter(|o| cti == Some(&o.decision)) {
                            line.push_str(&format!(" outcome={} signer={}", o.outcome, o.signer));
                        }
                    }
                    println!("{line}");
                }
            }
            Ok(())
        }
    }
}

/// A verified outcome record: the decision (token id, hex) it reports on,
/// what the enforcer did, and who signed.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifiedOutcome {
    pub seq: u64,
    pub decision: String,
    pub outcome: &'static str,
    pub signer: String,
}

/// Checks every `outcome` record that carries evidence (those cryptod
/// accepted): the enforcer's COSE_Sign1 verifies under the key the record
/// names (`signer_key`), which must be the pinned key of its signer when
/// `pinned` has one, and the signed claims are what the record says
/// (decision = target, outcome, signer). Refused reports carry no evidence.
pub fn verify_outcomes(
    records: &[AuditRecord],
    pinned: &[(String, VerifyingKey)],
) -> Result<Vec<VerifiedOutcome>, String> {
    let mut out = Vec::new();
    for r in records.iter().filter(|r| r.action == AuditAction::Outcome) {
        let meta = |k: &str| r.metadata.as_ref().and_then(|m| m.get(k)).map(String::as_str);
        let accepted = matches!(r.result, AuditResult::Ok | AuditResult::Fail)
            || (r.result == AuditResult::Denied && meta("outcome").is_some());
        let fail = |what: String| format!("outcome record seq {}: {what}", r.seq);
        let Some(evidence) = r.evidence.as_deref() else {
            if accepted {
                return Err(fail("no enforcer-signed evidence".into()));
            }
            continue;
        };
        let signer = meta("signer").ok_or_else(|| fail("no signer".into()))?;
        let named = meta("signer_key")
            .and_then(|h| <[u8; 32]>::try_from(hex::decode(h).ok()?).ok())
            .and_then(|k| VerifyingKey::from_bytes(&k).ok())
            .ok_or_else(|| fail("no signer_key".into()))?;
        if let Some((_, want)) = pinned.iter().find(|(n, _)| n == signer) {
            if *want != named {
                return Err(fail(format!("signed by a key other than {signer}'s pinned key")));
            }
        }
        let object = cose::verify(evidence, ContentType::Outcome, |kid| {
            (kid == kid_for(&named).as_slice()).then_some(named)
        })
        .map_err(|e| fail(format!("enforcer signature: {e}")))?
        .into_inner();
        let c = OutcomeClaims::from_cbor(&object.payload)
            .map_err(|e| fail(format!("enforcer claims: {e}")))?;
        let decision = hex::encode(&c.decision);
        if r.target.as_deref() != Some(decision.as_str())
            || meta("outcome") != Some(c.outcome.as_str())
            || signer != c.enforcer
        {
            return Err(fail("the record does not say what the enforcer signed".into()));
        }
        out.push(VerifiedOutcome {
            seq: r.seq,
            decision,
            outcome: c.outcome.as_str(),
            signer: c.enforcer,
        });
    }
    Ok(out)
}

/// The root keys the log's seals may be signed by: `pinned` (root.pub),
/// then each root a `root_rotate` record in the log names, in log order,
/// each only if the root before it signed the succession (the record
/// carries the statement's fields and signature; `cose::rebuild` makes the
/// statement again and `succession::follow` checks it). A `root_rotate`
/// record whose statement does not verify is refused.
fn roots_from(
    pinned: ed25519_dalek::VerifyingKey,
    records: &[Vec<u8>],
) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
    use portcullis_proto::cose::{self, ContentType};
    use portcullis_proto::msg::{
        AuditAction, AuditRecord, AuditResult, RootSuccession, MAX_ROOT_CHAIN,
    };
    let mut roots = vec![pinned];
    for (i, item) in records.iter().enumerate() {
        let Ok(r) = AuditRecord::from_cbor(item) else { continue };
        let meta = |k: &str| r.metadata.as_ref().and_then(|m| m.get(k)).map(String::as_str);
        if r.action != AuditAction::Admin
            || r.result != AuditResult::Ok
            || meta("command") != Some("root_rotate")
        {
            continue;
        }
        let bad = |what: &str| format!("item {i}: root_rotate record: {what}");
        if roots.len() > MAX_ROOT_CHAIN {
            return Err(bad("more root rotations than a chain may hold"));
        }
        let num = |k: &str| meta(k).and_then(|v| v.parse::<u64>().ok());
        let bytes = |k: &str| meta(k).and_then(|v| hex::decode(v).ok());
        let (Some(version), Some(issued_at), Some(pubkey), Some(sig)) = (
            num("root_version"),
            num("root_issued_at"),
            bytes("root_pubkey").and_then(|b| <[u8; 32]>::try_from(b).ok()),
            bytes("root_sig").and_then(|b| <[u8; 64]>::try_from(b).ok()),
        ) else {
            return Err(bad("succession fields missing or malformed"));
        };
        let payload = RootSuccession { version, issued_at, pubkey }
            .to_cbor()
            .map_err(|e| bad(&format!("succession: {e}")))?;
        let current = roots[roots.len() - 1];
        let kid = portcullis_proto::key::kid_for(&current);
        let statement = cose::rebuild(&kid, ContentType::RootSuccession, &payload, &sig);
        let held = roots.len() as u64 - 1;
        match portcullis_proto::succession::follow(current, held, &[statement]) {
            Ok((next, v)) if v == held + 1 => roots.push(next),
            Ok(_) => return Err(bad("succession version is not the next one")),
            Err(e) => return Err(bad(&e.to_string())),
        }
    }
    Ok(roots)
}

/// Verifies a collected log (no unsealed tail allowed); returns a summary,
/// or says where it breaks.
pub fn verify_file(root: &Path, expect_last: Option<u64>, file: &Path) -> Result<String, Failure> {
    verify_file_with(root, LogCheck { expect_last, allow_unsealed_tail: false }, file)
}

/// Verifies a collected log: every record's link, every seal's signature
/// and range; returns a summary, or says where it breaks.
pub fn verify_file_with(root: &Path, check: LogCheck, file: &Path) -> Result<String, Failure> {
    let key = keyfile::load(root)?.public;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.len() > 1 << 30 {
        return Err(Failure::Error(format!("{}: larger than 1 GiB", file.display())));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (records, cut) = read_log(&bytes).map_err(Failure::Invalid)?;
    if let Some(at) = cut {
        return Err(Failure::Invalid(format!(
            "log truncated: item {} starting at byte {at} is cut off",
            records.len()
        )));
    }
    if records.is_empty() {
        return Err(Failure::Invalid("log holds no records".into()));
    }
    // One chain per cryptod boot; each continues from the one before, so
    // the log is checked whole (and the anchor anchors all of it).
    let roots = roots_from(key, &records).map_err(Failure::Invalid)?;
    if roots.len() > 1 {
        println!(
            "root chain: followed {} root rotation(s) from {} to {}",
            roots.len() - 1,
            hex::encode(portcullis_proto::key::kid_for(&key)),
            hex::encode(portcullis_proto::key::kid_for(&roots[roots.len() - 1]))
        );
    }
    let summary = verify_log(&records, &roots, check).map_err(|e| {
        let at = e.index;
        let what = match e.kind {
            LogErrorKind::Chain(ChainErrorKind::Gap { expected, found }) => {
                format!("gap: seq {expected} to {} missing", found.saturating_sub(1))
            }
            LogErrorKind::TruncatedTail { expected_last, found_last } => {
                return Failure::Invalid(format!(
                    "log truncated: its sealed part ends at seq {found_last}, but seq \
                     {expected_last} was acknowledged"
                ))
            }
            _ => e.to_string().split(": ").skip(1).collect::<Vec<_>>().join(": "),
        };
        Failure::Invalid(format!(
            "audit log breaks at item {at} (byte offset {}): {what}",
            offset_of(&records, at)
        ))
    })?;
    for (chain, start, _) in &summary.chains {
        println!(
            "chain {}: seq {}..={} ({} records in {} sealed batch(es) from item {start}), head {}",
            hex::encode(chain.chain_id),
            chain.first_seq,
            chain.last_seq,
            chain.records,
            chain.seals,
            hex::encode(&chain.head_hash[..8])
        );
    }
    let superseded = match summary.superseded {
        0 => String::new(),
        n => format!(
            "; {n} record(s) stored after the audit head cryptod had persisted before a \
             restart (superseded: sealed, but not anchored by the next chain)"
        ),
    };
    let tail = match summary.unsealed_tail {
        0 => String::new(),
        n => format!("; {n} record(s) after the last seal are NOT covered by a signature"),
    };
    let count: usize = summary.chains.iter().map(|(c, _, _)| c.records).sum();
    let seals: usize = summary.chains.iter().map(|(c, _, _)| c.seals).sum();
    Ok(format!(
        "ok: {count} records in {} linked chain(s) under {seals} seal(s), seals and links \
         verify{superseded}{tail}",
        summary.chains.len()
    ))
}

fn offset_of(records: &[Vec<u8>], index: usize) -> usize {
    records.iter().take(index).map(|r| bstr_header(r.len()).len() + r.len()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{SocketChannel, SocketLink};
    use portcullis_authority::audit::{AuditLog as Chain, Batch, Event};
    use portcullis_proto::msg::{AuditAction, AuditResult};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// `n` sealed batches of one record each.
    fn batches(n: usize) -> Vec<Batch> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let kid = portcullis_authority::keys::kid_for(&key.verifying_key());
        let mut chain = Chain::new([3; 16], 16);
        for i in 0..n {
            let event = Event::new("dom0", AuditAction::ChainStart, AuditResult::Ok);
            chain.append(event, 1_900_000_000 + i as u64).unwrap();
            chain.seal(&key, &kid, 1_900_000_000 + i as u64).unwrap();
        }
        chain.pending().cloned().collect()
    }

    fn ack_seq(link: &mut SocketLink) -> u64 {
        match link.recv_blocking(Duration::from_secs(5)).unwrap() {
            Message::AuditAck(a) => {
                assert_eq!(a.chain_id, [3; 16]);
                a.seq
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    fn items(batches: &[Batch]) -> Vec<Vec<u8>> {
        batches.iter().flat_map(|b| b.items().map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn a_link_is_stored_before_its_acks_resumed_after_a_restart_and_left_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let recs = batches(3);
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut cryptod = SocketLink::new(SocketChannel::new(theirs));
        let keep = Arc::new(AtomicBool::new(true));
        let collector = {
            let (path, keep) = (path.clone(), keep.clone());
            std::thread::spawn(move || {
                let (mut file, mut last) = open_log(&path).unwrap();
                let mut link = SocketLink::new(SocketChannel::new(ours));
                let used = serve_link(&mut link, &mut file, &mut last, &path, &|| {
                    keep.load(Ordering::Relaxed)
                })
                .unwrap();
                assert!(used);
            })
        };
        let send = |link: &mut SocketLink, b: &Batch| {
            link.send_blocking(&Message::AuditLog(b.to_message()), Duration::from_secs(5)).unwrap()
        };
        for (i, b) in recs.iter().take(2).enumerate() {
            send(&mut cryptod, b);
            assert_eq!(ack_seq(&mut cryptod), i as u64);
            // Acknowledged means on disk: the record and its seal.
            let (on_disk, cut) = read_log(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!((on_disk, cut), (items(&recs[..=i]), None));
        }
        // A batch sent again (cryptod restarted before the ack) is acked,
        // not stored twice.
        send(&mut cryptod, &recs[1]);
        assert_eq!(ack_seq(&mut cryptod), 1);
        assert_eq!(read_log(&std::fs::read(&path).unwrap()).unwrap().0, items(&recs[..2]));
        // A batch whose seal does not name its records is neither stored nor acked.
        let mut bad = recs[2].to_message();
        bad.seal = recs[1].seal.clone();
        cryptod.send_blocking(&Message::AuditLog(bad), Duration::from_secs(5)).unwrap();
        send(&mut cryptod, &recs[2]);
        assert_eq!(ack_seq(&mut cryptod), 2, "only the good batch is acknowledged");
        assert_eq!(read_log(&std::fs::read(&path).unwrap()).unwrap().0, items(&recs));
        // The host asks it to stop (domid changed): it returns with the link up.
        keep.store(false, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !collector.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the collector did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        collector.join().unwrap();
        // A new collector resumes after the last stored batch.
        let (_, last) = open_log(&path).unwrap();
        assert_eq!(last.get(&[3; 16]), Some(&2));
    }

    #[test]
    fn records_a_crash_left_after_the_last_seal_are_cut_when_the_log_is_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let recs = batches(2);
        // The second batch's record reached the disk, its seal did not.
        let mut bytes = Vec::new();
        for item in items(&recs[..1]).iter().chain(std::iter::once(&recs[1].records[0])) {
            bytes.extend_from_slice(&bstr_header(item.len()));
            bytes.extend_from_slice(item);
        }
        let sealed_len =
            bytes.len() - bstr_header(recs[1].records[0].len()).len() - recs[1].records[0].len();
        std::fs::write(&path, &bytes).unwrap();
        let (_, last) = open_log(&path).unwrap();
        assert_eq!(last.get(&[3; 16]), Some(&0));
        assert_eq!(std::fs::read(&path).unwrap().len(), sealed_len);
        // A file of another format is not cut: the collector refuses it.
        std::fs::write(&path, [0x43, 0x01, 0x02, 0x03]).unwrap();
        assert!(open_log(&path).is_err());
        assert_eq!(std::fs::read(&path).unwrap().len(), 4);
    }

    /// A log across a root rotation: a record sealed by the old root, the
    /// `root_rotate` record (its batch sealed by the new root, as cryptod
    /// does), and one more record under the new root; written as the
    /// collector writes it. `sig` replaces the statement's signature.
    fn rotated_log(dir: &Path, sig: Option<[u8; 64]>, with_rotate: bool) -> (PathBuf, PathBuf) {
        use portcullis_proto::msg::RootSuccession;
        let old = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let new = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
        let kid =
            |k: &ed25519_dalek::SigningKey| portcullis_proto::key::kid_for(&k.verifying_key());
        let body = RootSuccession {
            version: 1,
            issued_at: 1_900_000_001,
            pubkey: new.verifying_key().to_bytes(),
        };
        let statement = portcullis_proto::succession::sign(&old, &body).unwrap();
        let real: [u8; 64] = statement[statement.len() - 64..].try_into().unwrap();
        let mut chain = Chain::new([3; 16], 16);
        let mut batches = Vec::new();
        chain
            .append(Event::new("cryptod", AuditAction::ChainStart, AuditResult::Ok), 1_900_000_000)
            .unwrap();
        chain.seal(&old, &kid(&old), 1_900_000_000).unwrap();
        if with_rotate {
            let ev = Event::new("dom0", AuditAction::Admin, AuditResult::Ok)
                .meta("command", "root_rotate")
                .meta("root_version", "1")
                .meta("root_issued_at", "1900000001")
                .meta("root_pubkey", &hex::encode(body.pubkey))
                .meta("root_sig", &hex::encode(sig.unwrap_or(real)));
            chain.append(ev, 1_900_000_001).unwrap();
        }
        chain
            .append(Event::new("dom0", AuditAction::TokenIssue, AuditResult::Ok), 1_900_000_002)
            .unwrap();
        chain.seal(&new, &kid(&new), 1_900_000_002).unwrap();
        batches.extend(chain.pending().cloned());
        let mut bytes = Vec::new();
        for item in items(&batches) {
            bytes.extend(bstr_header(item.len()));
            bytes.extend(item);
        }
        let log = dir.join("audit.log");
        std::fs::write(&log, bytes).unwrap();
        let root = dir.join("root.pub");
        std::fs::write(&root, keyfile::encode_public(&old.verifying_key(), &kid(&old)).unwrap())
            .unwrap();
        (root, log)
    }

    #[test]
    fn audit_verify_follows_a_root_rotation_from_the_old_root_pub() {
        let dir = tempfile::tempdir().unwrap();
        let (root, log) = rotated_log(dir.path(), None, true);
        let ok = verify_file(&root, None, &log);
        assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
        // A forged succession (not signed by the old root) is refused.
        let (root, log) = rotated_log(dir.path(), Some([0x55; 64]), true);
        let err = verify_file(&root, None, &log).unwrap_err().to_string();
        assert!(err.contains("root_rotate record"), "{err}");
        // Without the succession record the new root's seals do not verify.
        let (root, log) = rotated_log(dir.path(), None, false);
        let err = verify_file(&root, None, &log).unwrap_err().to_string();
        assert!(err.contains("breaks at item"), "{err}");
    }
}
