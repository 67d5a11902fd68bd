//! The guest's side of its contract with dom0's `portcullis host` service
//! (`docs/xen.md`, "Configuration from dom0"): where the service leaves
//! this domain's configuration items, names and persist acknowledgements,
//! and the two waits built on them.
//!
//! Everything the service gives domain `<id>` lives under
//! `/local/domain/<id>/portcullis/` (dom0's, read-only to the domain):
//! the items, `names/<name>` (the domain id of each Portcullis guest),
//! `ready` (written last) and `persist-ack/<key>`. The domain writes only
//! `/local/domain/<id>/data/portcullis-persist/<key>`.
//!
//! The waits are generic over the xenstore client's [`StoreRing`], so they
//! are tested on the host against a simulated daemon; errors are the
//! platform's, naming the operation and the node.

use alloc::format;
use alloc::string::String;

use portcullis_platform::{ConfigItem, DomId, IoCause, IoDetail, IoOp, PlatformError};
use sha2::{Digest, Sha256};

use crate::xenstore::wire::{Errno, XsError};
use crate::xenstore::{Client, StoreRing, Tx};

/// How long [`persist`] waits for dom0's acknowledgement, nanoseconds.
pub const PERSIST_ACK_TIMEOUT_NS: u64 = 5_000_000_000;
/// How often [`wait_ready`] says again that it is waiting, nanoseconds.
pub const READY_NOTICE_EVERY_NS: u64 = 30_000_000_000;
/// The first domain id Xen reserves (`DOMID_FIRST_RESERVED`); no guest has
/// it or a larger one.
pub const DOMID_FIRST_RESERVED: u16 = 0x7ff0;
/// Longest wait on a watch before the node is read again anyway, in case
/// xenstored withheld an event (it sends one only if the watcher may read
/// the node when it fires), nanoseconds.
pub const RECHECK_EVERY_NS: u64 = 1_000_000_000;
/// Most bytes of a Portcullis domain name looked up in `names/`.
pub const NAME_MAX: usize = 64;

/// The xenstore key of a configuration item: its name with `.` as `-`
/// (xenstored accepts only letters, digits and `-/_@` in paths).
pub fn store_key(item: ConfigItem) -> String {
    item.name().replace('.', "-")
}

/// `/local/domain/<id>/portcullis`: the directory dom0 configures.
pub fn base(domid: DomId) -> String {
    format!("/local/domain/{}/portcullis", u32::from(domid.0))
}

/// Where dom0 leaves configuration item `item`.
pub fn config_path(domid: DomId, item: ConfigItem) -> String {
    format!("{}/{}", base(domid), store_key(item))
}

/// Where dom0 leaves the domain id of the Portcullis guest `name`.
pub fn name_path(domid: DomId, name: &str) -> String {
    format!("{}/names/{name}", base(domid))
}

/// The node dom0 writes last, once this domain is configured.
pub fn ready_path(domid: DomId) -> String {
    format!("{}/ready", base(domid))
}

/// Where the domain hands a persisted item to dom0 (its own `data`
/// directory, the only place under its `/local/domain/<id>` it may write).
pub fn persist_path(domid: DomId, item: ConfigItem) -> String {
    format!("/local/domain/{}/data/portcullis-persist/{}", u32::from(domid.0), store_key(item))
}

/// Where dom0 acknowledges a persisted item once it is durable.
pub fn ack_path(domid: DomId, item: ConfigItem) -> String {
    format!("{}/persist-ack/{}", base(domid), store_key(item))
}

/// Where dom0 publishes, for the domain `reader` (cryptod), its
/// measurement of domain `dom`'s launched image:
/// `/local/domain/<reader>/portcullis/measurements/<dom>`, 64 lowercase
/// hex digits of the SHA-256 of the kernel file the toolstack loaded.
pub fn measurement_path(reader: DomId, dom: DomId) -> String {
    format!("{}/measurements/{}", base(reader), u32::from(dom.0))
}

/// Parses a measurement dom0 left at `node`: exactly 64 lowercase hex
/// digits. Anything else is an error naming the node.
pub fn parse_measurement(node: &str, value: &[u8]) -> Result<[u8; 32], PlatformError> {
    let bad = || {
        PlatformError::Io(
            IoDetail::new(IoOp::StoreRead, IoCause::Other("not 64 lowercase hex digits")).on(node),
        )
    };
    portcullis_platform::parse_measurement_hex(value).ok_or_else(bad)
}

/// Reads dom0's measurement of `dom` in this domain's (`me`)
/// `measurements/`: absent is [`PlatformError::MissingConfig`], a
/// malformed value an error naming the node.
// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
pub fn measurement<R: StoreRing>(
    c: &mut Client<R>,
    me: DomId,
    dom: DomId,
) -> Result<[u8; 32], PlatformError> {
    let node = measurement_path(me, dom);
    match c.read(Tx::NONE, &node).map_err(|e| store_error(IoOp::StoreRead, &node, e))? {
        Some(value) => parse_measurement(&node, &value),
        None => Err(PlatformError::MissingConfig),
    }
}

/// The cause of a store failure, as a platform error carries it.
pub fn store_cause(e: XsError) -> IoCause {
    match e {
        XsError::Daemon(errno) => IoCause::Store(errno.name()),
        XsError::Request => IoCause::Invalid,
        XsError::Protocol => IoCause::Protocol,
        XsError::Transport => IoCause::Transport,
        XsError::Timeout => IoCause::Timeout,
    }
}

/// A store failure of `op` on `path` as the platform reports it: a refusal
/// (`EACCES`/`EPERM`) is [`PlatformError::Denied`], anything else keeps
/// the operation, the node and the store's error.
pub fn store_error(op: IoOp, path: &str, e: XsError) -> PlatformError {
    match e {
        XsError::Daemon(Errno::Acces | Errno::Perm) => PlatformError::Denied,
        e => PlatformError::Io(IoDetail::new(op, store_cause(e)).on(path)),
    }
}

/// Whether `name` can be looked up: 1 to [`NAME_MAX`] letters, digits,
/// `-` or `_` (one path component, nothing xenstored would refuse).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Parses the value dom0 left at `node` (a `names/<name>` entry) as a
/// domain id: decimal digits only, at most 5, below
/// [`DOMID_FIRST_RESERVED`]. Anything else is an error naming the node.
pub fn parse_domid(node: &str, value: &[u8]) -> Result<DomId, PlatformError> {
    let bad = |why| PlatformError::Io(IoDetail::new(IoOp::Resolve, IoCause::Other(why)).on(node));
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return Err(bad("not a domain id (1 to 5 decimal digits)"));
    }
    let id = value.iter().fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'));
    match u16::try_from(id) {
        Ok(id) if id < DOMID_FIRST_RESERVED => Ok(DomId(id)),
        _ => Err(bad("domain id out of range (at least DOMID_FIRST_RESERVED)")),
    }
}

/// The lowercase hex SHA-256 of `bytes`, as dom0 acknowledges them.
pub fn hex_sha256(bytes: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = Sha256::digest(bytes);
    let mut out = [0u8; 64];
    for (pair, b) in out.chunks_exact_mut(2).zip(digest.iter()) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
    out
}

fn now<R: StoreRing>(c: &mut Client<R>, op: IoOp, path: &str) -> Result<u64, PlatformError> {
    c.ring().now_ns().map_err(|e| store_error(op, path, e))
}

/// Looks up the Portcullis guest `name` in this domain's `names/`:
/// absent is [`PlatformError::UnknownDomain`], a malformed value an error
/// naming the node.
pub fn resolve<R: StoreRing>(
    c: &mut Client<R>,
    me: DomId,
    name: &str,
) -> Result<DomId, PlatformError> {
    if !valid_name(name) {
        return Err(PlatformError::Io(IoDetail::new(IoOp::Resolve, IoCause::Invalid).on(name)));
    }
    let node = name_path(me, name);
    match c.read(Tx::NONE, &node).map_err(|e| store_error(IoOp::StoreRead, &node, e))? {
        Some(value) => parse_domid(&node, &value),
        None => Err(PlatformError::UnknownDomain),
    }
}

/// Hands `bytes` to dom0 at `path` in one node write (atomic), then waits
/// up to `timeout_ns` for the node `ack` to hold their lowercase hex
/// SHA-256, which dom0 writes only once they are durable on its disk. An
/// acknowledgement of other bytes (an earlier persist) does not count.
/// The wait is a watch on `ack`, registered before the write so no
/// acknowledgement can be missed, and removed after; without an event the
/// node is read again every [`RECHECK_EVERY_NS`] all the same.
///
/// A timeout is `Io(persist <ack>: timed out)`.
pub fn persist<R: StoreRing>(
    c: &mut Client<R>,
    path: &str,
    ack: &str,
    bytes: &[u8],
    timeout_ns: u64,
) -> Result<(), PlatformError> {
    let want = hex_sha256(bytes);
    let token = format!("portcullis-ack:{ack}");
    if !c.is_watched(ack, &token) {
        c.watch(ack, &token).map_err(|e| store_error(IoOp::StoreWatch, ack, e))?;
    }
    let result = write_and_wait(c, path, ack, &token, bytes, &want, timeout_ns);
    // Queued events of this token go with the watch; a failure to remove
    // it leaves only a watch that fires into nothing.
    let _ = c.unwatch(ack, &token);
    result
}

fn write_and_wait<R: StoreRing>(
    c: &mut Client<R>,
    path: &str,
    ack: &str,
    token: &str,
    bytes: &[u8],
    want: &[u8; 64],
    timeout_ns: u64,
) -> Result<(), PlatformError> {
    c.write(Tx::NONE, path, bytes).map_err(|e| store_error(IoOp::StoreWrite, path, e))?;
    let deadline = now(c, IoOp::Persist, ack)?.saturating_add(timeout_ns);
    loop {
        let got = c.read(Tx::NONE, ack).map_err(|e| store_error(IoOp::StoreRead, ack, e))?;
        if got.as_deref() == Some(&want[..]) {
            return Ok(());
        }
        let left = deadline.saturating_sub(now(c, IoOp::Persist, ack)?);
        if left == 0 {
            return Err(PlatformError::Io(IoDetail::new(IoOp::Persist, IoCause::Timeout).on(ack)));
        }
        // An event, or a second at most, then read again.
        c.wait_watch(token, Some(left.min(RECHECK_EVERY_NS)))
            .map_err(|e| store_error(IoOp::StoreWatch, ack, e))?;
    }
}

/// The directory of the names dom0 gave domain `domid` (`names/`).
pub fn names_dir(domid: DomId) -> String {
    format!("{}/names", base(domid))
}

/// The watch token of a domain's own `names/` directory.
pub const NAMES_TOKEN: &str = "portcullis-names";

/// Whether `names` (this domain's `names/` directory) changed since the
/// last call: a watch on it, registered on the first call (xenstored fires
/// it once then, so the first answer after registering is yes), and every
/// event queued for it taken, waiting at most `wait_ns` for one (0: only
/// what has arrived). A hint to look names up again, never a name itself.
pub fn names_changed<R: StoreRing>(
    c: &mut Client<R>,
    names: &str,
    wait_ns: u64,
) -> Result<bool, PlatformError> {
    if !c.is_watched(names, NAMES_TOKEN) {
        c.watch(names, NAMES_TOKEN).map_err(|e| store_error(IoOp::StoreWatch, names, e))?;
    }
    let mut changed = false;
    // Bounded: the client queues at most MAX_QUEUED_EVENTS events.
    for _ in 0..=crate::xenstore::client::MAX_QUEUED_EVENTS {
        let wait = if changed { 0 } else { wait_ns };
        if !c
            .wait_watch(NAMES_TOKEN, Some(wait))
            .map_err(|e| store_error(IoOp::StoreWatch, names, e))?
        {
            break;
        }
        changed = true;
    }
    Ok(changed)
}

/// Blocks until the node `ready` exists (dom0 wrote it after everything
/// else), with a watch on it (and a read every [`RECHECK_EVERY_NS`] without
/// an event). `waiting` is called once if it does not exist
/// yet, and again every `notice_every_ns` while it still does not.
// Out of line: a smaller image (issue 14, docs/benchmarks.md).
#[inline(never)]
pub fn wait_ready<R: StoreRing>(
    c: &mut Client<R>,
    ready: &str,
    notice_every_ns: u64,
    mut waiting: impl FnMut(),
) -> Result<(), PlatformError> {
    let token = format!("portcullis-ready:{ready}");
    c.watch(ready, &token).map_err(|e| store_error(IoOp::StoreWatch, ready, e))?;
    let result = (|| {
        let mut next_notice = now(c, IoOp::StoreWatch, ready)?;
        loop {
            if c.read(Tx::NONE, ready)
                .map_err(|e| store_error(IoOp::StoreRead, ready, e))?
                .is_some()
            {
                return Ok(());
            }
            let t = now(c, IoOp::StoreWatch, ready)?;
            if t >= next_notice {
                waiting();
                next_notice = t.saturating_add(notice_every_ns);
            }
            let left = next_notice.saturating_sub(t).min(RECHECK_EVERY_NS);
            c.wait_watch(&token, Some(left))
                .map_err(|e| store_error(IoOp::StoreWatch, ready, e))?;
        }
    })();
    let _ = c.unwatch(ready, &token);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xenstore::sim::{SimDaemon, MS, S};
    use crate::xenstore::wire::Op;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    const ME: DomId = DomId(5);

    fn client() -> Client<SimDaemon> {
        Client::new(SimDaemon::default())
    }

    fn hex(bytes: &[u8]) -> Vec<u8> {
        hex_sha256(bytes).to_vec()
    }

    #[test]
    fn a_names_change_is_seen_once_and_only_after_it_happens() {
        let mut c = client();
        let dir = names_dir(ME);
        assert_eq!(dir, "/local/domain/5/portcullis/names");
        // The first call registers the watch; xenstored fires it once.
        assert!(names_changed(&mut c, &dir, 10 * MS).unwrap());
        assert!(!names_changed(&mut c, &dir, 10 * MS).unwrap());
        // dom0 writes two names at once: one answer covers both events.
        let now = c.ring().now;
        c.ring().write_at(now + 20 * MS, &name_path(ME, "cryptod"), b"3");
        c.ring().write_at(now + 20 * MS, &name_path(ME, "entropyd"), b"2");
        assert!(!names_changed(&mut c, &dir, 5 * MS).unwrap());
        assert!(names_changed(&mut c, &dir, 100 * MS).unwrap());
        assert!(!names_changed(&mut c, &dir, 10 * MS).unwrap());
        // One a while later is a change of its own.
        let now = c.ring().now;
        c.ring().write_at(now + 30 * MS, &name_path(ME, "unlocker"), b"4");
        assert!(names_changed(&mut c, &dir, 100 * MS).unwrap());
        // A write elsewhere is no names change; the watch was registered once.
        let now = c.ring().now;
        c.ring().write_at(now + MS, "/local/domain/5/portcullis/ready", b"1");
        assert!(!names_changed(&mut c, &dir, 50 * MS).unwrap());
        let watches = c.ring().seen.iter().filter(|m| m.op() == Some(Op::Watch)).count();
        assert_eq!(watches, 1);
    }

    #[test]
    fn paths_follow_the_contract() {
        let me = DomId(12);
        assert_eq!(
            config_path(me, ConfigItem::RootPublicKey),
            "/local/domain/12/portcullis/root-pub"
        );
        assert_eq!(
            config_path(me, ConfigItem::SealedState),
            "/local/domain/12/portcullis/sealed-state"
        );
        assert_eq!(name_path(me, "cryptod"), "/local/domain/12/portcullis/names/cryptod");
        assert_eq!(ready_path(me), "/local/domain/12/portcullis/ready");
        assert_eq!(
            persist_path(me, ConfigItem::SealedState),
            "/local/domain/12/data/portcullis-persist/sealed-state"
        );
        assert_eq!(
            ack_path(me, ConfigItem::SealedState),
            "/local/domain/12/portcullis/persist-ack/sealed-state"
        );
        let ok = |k: &str| k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_@".contains(&b));
        for item in [
            ConfigItem::SealedState,
            ConfigItem::KeyEncryptionKey,
            ConfigItem::RootPublicKey,
            ConfigItem::Settings,
        ] {
            assert!(ok(&store_key(item)), "{}", store_key(item));
        }
    }

    #[test]
    fn domain_ids_from_dom0_are_checked() {
        let node = "/local/domain/5/portcullis/names/cryptod";
        assert_eq!(parse_domid(node, b"0"), Ok(DomId(0)));
        assert_eq!(parse_domid(node, b"7"), Ok(DomId(7)));
        assert_eq!(parse_domid(node, b"00012"), Ok(DomId(12)));
        assert_eq!(parse_domid(node, b"32751"), Ok(DomId(32751)));
        for bad in [
            &b""[..],
            b"32752",
            b"65535",
            b"99999",
            b"123456",
            b"-1",
            b"+1",
            b" 1",
            b"1\n",
            b"0x10",
            b"1\0",
            b"\xff",
        ] {
            let e = parse_domid(node, bad).unwrap_err();
            let PlatformError::Io(d) = e else { panic!("{bad:?}: {e:?}") };
            assert_eq!((d.op, d.subject()), (IoOp::Resolve, (node, false)), "{bad:?}");
            assert!(e.to_string().contains(node), "{e}");
        }
    }

    #[test]
    fn names_are_read_from_the_own_names_directory() {
        let mut c = client();
        c.ring().store.insert(b"/local/domain/5/portcullis/names/cryptod".to_vec(), b"3".to_vec());
        c.ring().store.insert(b"/local/domain/5/portcullis/names/evil".to_vec(), b"65535".to_vec());
        assert_eq!(resolve(&mut c, ME, "cryptod"), Ok(DomId(3)));
        assert_eq!(resolve(&mut c, ME, "unlocker"), Err(PlatformError::UnknownDomain));
        let e = resolve(&mut c, ME, "evil").unwrap_err();
        assert!(e.to_string().contains("/local/domain/5/portcullis/names/evil"), "{e}");
        // A name that is not one path component is not looked up at all.
        let before = c.ring().seen.len();
        for bad in ["", "../ready", "a/b", "x y", &"n".repeat(NAME_MAX + 1)] {
            assert!(matches!(resolve(&mut c, ME, bad), Err(PlatformError::Io(_))), "{bad:?}");
        }
        assert_eq!(c.ring().seen.len(), before);
    }

    #[test]
    fn measurements_are_read_strictly_from_the_own_directory() {
        let node = "/local/domain/5/portcullis/measurements/9";
        assert_eq!(measurement_path(ME, DomId(9)), node);
        let mut c = client();
        assert_eq!(measurement(&mut c, ME, DomId(9)), Err(PlatformError::MissingConfig));
        c.ring().store.insert(node.as_bytes().to_vec(), hex(b"kernel"));
        let want: [u8; 32] = Sha256::digest(b"kernel").into();
        assert_eq!(measurement(&mut c, ME, DomId(9)), Ok(want));
        let good = hex(b"kernel");
        let mut upper = good.clone();
        upper.make_ascii_uppercase();
        for bad in
            [&b""[..], &good[..63], &[good.clone(), b"0".to_vec()].concat(), &upper, &[b'g'; 64]]
        {
            let e = parse_measurement(node, bad).unwrap_err();
            assert!(e.to_string().contains(node), "{e}");
        }
    }

    #[test]
    fn hex_digest_is_lowercase_sha256() {
        assert_eq!(
            &hex_sha256(b"abc")[..],
            &b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"[..]
        );
    }

    const PATH: &str = "/local/domain/5/data/portcullis-persist/sealed-state";
    const ACK: &str = "/local/domain/5/portcullis/persist-ack/sealed-state";

    #[test]
    fn persist_returns_once_dom0_acknowledges_these_bytes() {
        let mut c = client();
        c.ring().write_at(S, ACK, &hex(b"state"));
        assert_eq!(persist(&mut c, PATH, ACK, b"state", PERSIST_ACK_TIMEOUT_NS), Ok(()));
        assert_eq!(c.ring().store.get(PATH.as_bytes()).map(Vec::as_slice), Some(&b"state"[..]));
        assert!(c.ring().now >= S && c.ring().now < 2 * S, "returned when the ack came");
        // Watched before the write (no ack can be missed), unwatched after.
        let ops: Vec<_> = c.ring().seen.iter().filter_map(|m| m.op()).collect();
        let first = |op| ops.iter().position(|&o| o == op).unwrap();
        assert!(first(Op::Watch) < first(Op::Write));
        assert_eq!(ops.last(), Some(&Op::Unwatch));
        assert!(c.ring().watches.is_empty());
        // Exactly one write of the item.
        assert_eq!(ops.iter().filter(|&&o| o == Op::Write).count(), 1);
    }

    #[test]
    fn an_ack_for_other_bytes_does_not_count_until_the_right_one_comes() {
        let mut c = client();
        c.ring().write_at(S, ACK, &hex(b"other"));
        c.ring().write_at(2 * S, ACK, b"not even hex");
        c.ring().write_at(3 * S, ACK, &hex(b"state"));
        assert_eq!(persist(&mut c, PATH, ACK, b"state", PERSIST_ACK_TIMEOUT_NS), Ok(()));
        assert!(c.ring().now >= 3 * S, "not before the right ack");
    }

    #[test]
    fn an_ack_left_from_an_earlier_persist_does_not_count() {
        let mut c = client();
        c.ring().store.insert(ACK.as_bytes().to_vec(), hex(b"earlier state"));
        let e = persist(&mut c, PATH, ACK, b"new state", PERSIST_ACK_TIMEOUT_NS).unwrap_err();
        assert_eq!(e, PlatformError::Io(IoDetail::new(IoOp::Persist, IoCause::Timeout).on(ACK)));
        assert_eq!(
            e.to_string(),
            "platform I/O failed: persist /local/domain/5/portcullis/persist-ack/sealed-state: \
             timed out"
        );
        let now = c.ring().now;
        assert!(
            (PERSIST_ACK_TIMEOUT_NS..PERSIST_ACK_TIMEOUT_NS + 100 * MS).contains(&now),
            "{now}"
        );
        // The bytes were handed over all the same (dom0 may still take them).
        assert_eq!(c.ring().store.get(PATH.as_bytes()).map(Vec::as_slice), Some(&b"new state"[..]));
        assert!(c.ring().watches.is_empty());
        // The same state again, acknowledged this time: no stale event of
        // the first wait gets in the way.
        c.ring().write_at(now + S, ACK, &hex(b"new state"));
        assert_eq!(persist(&mut c, PATH, ACK, b"new state", PERSIST_ACK_TIMEOUT_NS), Ok(()));
    }

    #[test]
    fn an_ack_whose_event_xenstored_withheld_is_still_seen() {
        let mut c = client();
        c.ring().write_at(2 * S, ACK, &hex(b"state"));
        // No watch events at all (xenstored sends none the watcher may not read).
        c.ring().drop_events = true;
        assert_eq!(persist(&mut c, PATH, ACK, b"state", PERSIST_ACK_TIMEOUT_NS), Ok(()));
        let now = c.ring().now;
        assert!((2 * S..4 * S).contains(&now), "{now}");
        let ready = "/local/domain/5/portcullis/ready";
        c.ring().write_at(now + 3 * S, ready, b"1");
        assert_eq!(wait_ready(&mut c, ready, READY_NOTICE_EVERY_NS, || {}), Ok(()));
        assert!(c.ring().now < now + 5 * S);
    }

    #[test]
    fn persist_without_dom0_times_out_naming_the_ack_node() {
        let mut c = client();
        let e = persist(&mut c, PATH, ACK, b"state", PERSIST_ACK_TIMEOUT_NS).unwrap_err();
        assert_eq!(e, PlatformError::Io(IoDetail::new(IoOp::Persist, IoCause::Timeout).on(ACK)));
        // A watch, not a busy loop: a read a second at most.
        assert!(c.ring().seen.len() < 12, "{} requests", c.ring().seen.len());
    }

    #[test]
    fn waiting_for_ready_says_so_once_and_every_30_seconds() {
        let ready = "/local/domain/5/portcullis/ready";
        let mut c = client();
        c.ring().write_at(20 * S, "/local/domain/5/portcullis/names/x", b"1");
        c.ring().write_at(70 * S, ready, b"1");
        let mut said = Vec::new();
        let r = wait_ready(&mut c, ready, READY_NOTICE_EVERY_NS, || said.push(0));
        assert_eq!(r, Ok(()));
        let now = c.ring().now;
        assert!((70 * S..71 * S).contains(&now), "{now}");
        assert_eq!(said.len(), 3, "at 0, 30 and 60 s");
        assert!(c.ring().watches.is_empty());
        assert!(c.ring().seen.len() < 80, "{} requests", c.ring().seen.len());

        // Already configured: no line at all.
        let mut c = client();
        c.ring().store.insert(ready.as_bytes().to_vec(), b"1".to_vec());
        let mut n = 0;
        assert_eq!(wait_ready(&mut c, ready, READY_NOTICE_EVERY_NS, || n += 1), Ok(()));
        assert_eq!(n, 0);
    }
}
