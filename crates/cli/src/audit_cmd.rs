//! `portcullis audit-collect` (the collector cryptod ships its audit records
//! to) and `portcullis audit verify` (checks a collected log).
//!
//! The log file is a CBOR sequence (RFC 8742) of byte strings, each holding
//! one signed audit record (a COSE_Sign1) exactly as cryptod sent it. The
//! collector appends and fsyncs a record before it acknowledges it, so a
//! record cryptod dropped from its outbox is always on disk; a record cut off
//! by a crash was never acknowledged and is sent again.

use crate::{keyfile, socket, Failure};
use clap::{Args, Subcommand};
use portcullis_apps::common::{port, resolve_dom};
use portcullis_apps::link::{Channel, Framed, LinkError};
use portcullis_apps::net::connect;
use portcullis_authority::audit::{verify_log, ChainErrorKind, LogErrorKind};
use portcullis_hosted::{HostedPlatform, World};
use portcullis_proto::danger;
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{AuditAck, AuditRecord};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest record accepted in a log (a signed record is a few hundred bytes).
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Check a collected audit log: signatures, hash chain, sequence gaps,
    /// truncation. Exit 0 only if it checks out; otherwise say where it breaks.
    Verify {
        /// The root public key (root.pub from `portcullis provision`).
        #[arg(long)]
        root: PathBuf,
        /// The highest seq the collector acknowledged (from its output): the
        /// last chain must reach it. Chains link across restarts, so this
        /// anchors the whole log, not only the last chain.
        #[arg(long)]
        expect_last: Option<u64>,
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

fn chain_and_seq(record: &[u8]) -> Option<([u8; 16], u64)> {
    let opened = danger::open_unverified(record).ok()?;
    let r = AuditRecord::from_cbor(&opened.get_unverified().payload).ok()?;
    Some((r.chain_id, r.seq))
}

/// Opens the log, drops a cut-off tail left by a crash, and returns the
/// highest stored seq per chain.
pub(crate) fn open_log(path: &Path) -> Result<(File, HashMap<[u8; 16], u64>), Failure> {
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let (records, cut) = read_log(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(at) = cut {
        println!("audit-collect: dropping a cut-off record at byte {at} (never acknowledged; cryptod resends it)");
        f.set_len(at as u64).map_err(|e| format!("{}: {e}", path.display()))?;
        f.sync_all().map_err(|e| format!("{}: {e}", path.display()))?;
    }
    f.seek(SeekFrom::End(0)).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut last = HashMap::new();
    for r in &records {
        if let Some((chain, seq)) = chain_and_seq(r) {
            let e = last.entry(chain).or_insert(seq);
            *e = (*e).max(seq);
        }
    }
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

/// Stores and acknowledges records from one connection until it breaks,
/// or until `keep_going` (asked between records) says to stop. Returns
/// whether any message arrived.
pub(crate) fn serve_link<C: Channel>(
    link: &mut Framed<C>,
    file: &mut File,
    last: &mut HashMap<[u8; 16], u64>,
    out: &Path,
    keep_going: &dyn Fn() -> bool,
) -> Result<bool, Failure> {
    let mut used = false;
    loop {
        if !keep_going() {
            return Ok(used);
        }
        let first = match link.recv_blocking(Duration::from_millis(500)) {
            Ok(m) => m,
            Err(LinkError::Timeout) => continue,
            Err(e) => {
                println!("audit-collect: link: {e}; reconnecting");
                return Ok(used);
            }
        };
        used = true;
        // Group commit: take everything already waiting, write it, one
        // fsync, then acknowledge the highest seq of each chain.
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
            let Some((chain, seq)) = chain_and_seq(&log.record) else {
                println!("audit-collect: ignoring an unreadable record");
                continue;
            };
            if last.get(&chain).is_none_or(|&l| seq > l) {
                buf.extend_from_slice(&bstr_header(log.record.len()));
                buf.extend_from_slice(&log.record);
                last.insert(chain, seq);
            }
            match acks.iter_mut().find(|(c, _)| *c == chain) {
                Some(a) => a.1 = a.1.max(seq),
                None => acks.push((chain, seq)),
            }
        }
        if !buf.is_empty() {
            file.write_all(&buf)
                .and_then(|()| file.sync_data())
                .map_err(|e| format!("{}: {e}", out.display()))?;
        }
        for (chain_id, seq) in acks {
            println!("audit-collect: stored seq {seq}");
            let ack = Message::AuditAck(AuditAck { chain_id, seq });
            if let Err(e) = link.send_blocking(&ack, Duration::from_secs(5)) {
                println!("audit-collect: ack: {e}; reconnecting");
                return Ok(used);
            }
        }
    }
}

pub fn run(cmd: AuditCmd) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Verify { root, expect_last, file } => {
            let summary = verify_file(&root, expect_last, &file)?;
            println!("{summary}");
            Ok(())
        }
    }
}

/// Verifies a collected log; returns a summary, or says where it breaks.
pub fn verify_file(root: &Path, expect_last: Option<u64>, file: &Path) -> Result<String, Failure> {
    let key = keyfile::load(root)?.public;
    let meta = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.len() > 1 << 30 {
        return Err(Failure::Error(format!("{}: larger than 1 GiB", file.display())));
    }
    let bytes = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let (records, cut) = read_log(&bytes).map_err(Failure::Invalid)?;
    if let Some(at) = cut {
        return Err(Failure::Invalid(format!(
            "log truncated: record {} starting at byte {at} is cut off",
            records.len()
        )));
    }
    if records.is_empty() {
        return Err(Failure::Invalid("log holds no records".into()));
    }
    // One chain per cryptod boot; each continues from the one before, so
    // the log is checked whole (and the anchor anchors all of it).
    let summary = verify_log(&records, &[key], expect_last).map_err(|e| {
        let at = e.index;
        let what = match e.kind {
            LogErrorKind::Chain(ChainErrorKind::Gap { expected, found }) => {
                format!("gap: seq {expected} to {} missing", found.saturating_sub(1))
            }
            LogErrorKind::TruncatedTail { expected_last, found_last } => {
                return Failure::Invalid(format!(
                    "log truncated: it ends at seq {found_last}, but seq {expected_last} was \
                     acknowledged"
                ))
            }
            _ => e.to_string().split(": ").skip(1).collect::<Vec<_>>().join(": "),
        };
        Failure::Invalid(format!(
            "audit log breaks at record {at} (byte offset {}): {what}",
            offset_of(&records, at)
        ))
    })?;
    for (chain, start, _) in &summary.chains {
        println!(
            "chain {}: seq {}..={} ({} records from record {start}), head {}",
            hex::encode(chain.chain_id),
            chain.first_seq,
            chain.last_seq,
            chain.records,
            hex::encode(&chain.head_hash[..8])
        );
    }
    let superseded = match summary.superseded {
        0 => String::new(),
        n => format!("; {n} record(s) stored but not acknowledged before a restart"),
    };
    Ok(format!(
        "ok: {} records in {} linked chain(s), signatures and links verify{superseded}",
        records.len(),
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
    use portcullis_authority::audit::{AuditLog as Chain, Event};
    use portcullis_proto::msg::{AuditAction, AuditLog, AuditResult};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn records(n: usize) -> Vec<Vec<u8>> {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let mut chain = Chain::new([3; 16], 16);
        (0..n)
            .map(|i| {
                let event = Event::new("dom0", AuditAction::ChainStart, AuditResult::Ok);
                chain.append(&key, event, 1_900_000_000 + i as u64).unwrap()
            })
            .collect()
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

    #[test]
    fn a_link_is_stored_before_its_acks_resumed_after_a_restart_and_left_on_request() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let recs = records(3);
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
        for (i, r) in recs.iter().take(2).enumerate() {
            cryptod
                .send_blocking(
                    &Message::AuditLog(AuditLog { record: r.clone() }),
                    Duration::from_secs(5),
                )
                .unwrap();
            assert_eq!(ack_seq(&mut cryptod), i as u64);
            // Acknowledged means on disk.
            let (on_disk, cut) = read_log(&std::fs::read(&path).unwrap()).unwrap();
            assert_eq!((on_disk.len(), cut), (i + 1, None));
        }
        // A record sent again (cryptod restarted before the ack) is acked,
        // not stored twice.
        cryptod
            .send_blocking(
                &Message::AuditLog(AuditLog { record: recs[1].clone() }),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(ack_seq(&mut cryptod), 1);
        assert_eq!(read_log(&std::fs::read(&path).unwrap()).unwrap().0, recs[..2]);
        // The host asks it to stop (domid changed): it returns with the link up.
        keep.store(false, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !collector.is_finished() {
            assert!(std::time::Instant::now() < deadline, "the collector did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        collector.join().unwrap();
        // A new collector resumes after the last stored record.
        let (_, last) = open_log(&path).unwrap();
        assert_eq!(last.get(&[3; 16]), Some(&1));
    }
}
