//! The hosted backend's rules, with several domains opened in one process
//! (each domain is a separate `HostedBackend`; all sharing goes through the
//! world's files, exactly as between processes).

use std::time::Duration;

use portcullis_hosted::{HostedBackend, HostedError, HostedPlatform, World};
use portcullis_platform::{ConfigItem, Platform, PlatformError};
use portcullis_vchan::backend::UnmapNotify;
use portcullis_vchan::{
    Backend, BackendError, ClientConfig, DomId, GrantRef, Port, ServerConfig, SharedMem, Vchan,
    Wait,
};

const SHORT: Duration = Duration::from_millis(20);
const LONG: Duration = Duration::from_secs(10);

struct Setup {
    _dir: tempfile::TempDir,
    world: World,
    a: HostedBackend,
    b: HostedBackend,
    c: HostedBackend,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let world = World::create(dir.path()).unwrap();
    let ids: Vec<DomId> =
        ["alpha", "beta", "gamma"].iter().map(|n| world.add_domain(n).unwrap()).collect();
    assert_eq!(ids, [DomId(1), DomId(2), DomId(3)]);
    Setup {
        a: world.backend(ids[0]).unwrap(),
        b: world.backend(ids[1]).unwrap(),
        c: world.backend(ids[2]).unwrap(),
        world,
        _dir: dir,
    }
}

fn read(b: &mut HostedBackend, path: &str) -> Result<Option<String>, BackendError> {
    let mut buf = [0u8; 64];
    Ok(b.store_read(path, &mut buf)?.map(|n| String::from_utf8(buf[..n].to_vec()).unwrap()))
}

#[test]
fn launcher_registers_names_and_config() {
    let s = setup();
    assert_eq!(s.world.add_domain("alpha"), Err(HostedError::Exists));
    assert_eq!(s.world.add_domain("../x"), Err(HostedError::BadName));
    assert_eq!(s.world.resolve("beta").unwrap(), Some(DomId(2)));
    assert_eq!(s.world.resolve("delta").unwrap(), None);
    assert!(matches!(World::create(s.world.dir()), Err(HostedError::Exists)));

    s.world.set_config(DomId(1), ConfigItem::Settings, b"mode=test\n").unwrap();
    let mut p = HostedPlatform::open(s.world.clone(), DomId(1)).unwrap();
    assert_eq!((p.domid(), p.name()), (DomId(1), "alpha"));
    let mut buf = [0u8; 16];
    assert_eq!(p.config(ConfigItem::Settings, &mut buf), Ok(10));
    assert_eq!(&buf[..10], b"mode=test\n");
    assert_eq!(p.config(ConfigItem::Settings, &mut [0; 4]), Err(PlatformError::BadConfig));
    assert_eq!(p.config(ConfigItem::KeyEncryptionKey, &mut buf), Err(PlatformError::MissingConfig));
    assert_eq!(p.resolve("gamma"), Ok(DomId(3)));
    assert_eq!(p.resolve("Domain-0"), Ok(DomId(0)));
    assert_eq!(p.resolve("nobody"), Err(PlatformError::UnknownDomain));

    let (mut x, mut y) = ([0u8; 32], [0u8; 32]);
    p.hw_entropy(&mut x).unwrap();
    p.hw_entropy(&mut y).unwrap();
    assert_ne!(x, y);
    assert_ne!(x, [0u8; 32]);
    let t0 = p.monotonic_ns();
    assert!(p.monotonic_ns() >= t0);
    assert!(p.now_unix() > 1_700_000_000);
}

#[test]
fn measurements_are_dom0s_and_read_strictly() {
    let s = setup();
    let mut gamma = HostedPlatform::open(s.world.clone(), DomId(3)).unwrap();
    assert_eq!(gamma.measurement(DomId(1)), Err(PlatformError::MissingConfig));
    s.world.set_measurement(DomId(1), &[0xab; 32]).unwrap();
    assert_eq!(gamma.measurement(DomId(1)), Ok([0xab; 32]));
    assert_eq!(s.world.measurement(DomId(1)).unwrap(), Some([0xab; 32]));
    // Published again (a new image started under the same domain): the new one.
    s.world.set_measurement(DomId(1), &[0x01; 32]).unwrap();
    assert_eq!(gamma.measurement(DomId(1)), Ok([0x01; 32]));
    // The domain cannot change dom0's node.
    let mut a = s.a;
    let fake = "ab".repeat(32);
    assert_eq!(
        a.store_write("/local/domain/1/measurement", &fake, DomId(3)),
        Err(BackendError::Denied)
    );
    // One it made itself before dom0 published is not a measurement.
    let mut b = s.b;
    b.store_write("/local/domain/2/measurement", &fake, DomId(3)).unwrap();
    assert_eq!(s.world.measurement(DomId(2)), Err(HostedError::BadMeasurement));
    let e = gamma.measurement(DomId(2)).unwrap_err();
    assert!(e.to_string().contains("/local/domain/2/measurement"), "{e}");
    assert_eq!(s.world.set_measurement(DomId(9), &[0; 32]), Err(HostedError::NoSuchDomain));
}

#[test]
fn store_permissions_are_xenstores() {
    let mut s = setup();
    // Only under one's own home, never another's.
    assert_eq!(s.a.store_write("/local/domain/2/data/x", "1", DomId(2)), Err(BackendError::Denied));
    assert_eq!(s.a.store_write("/tool/x", "1", DomId(2)), Err(BackendError::Denied));
    // The toolstack's name node is readable by all but writable by none.
    assert_eq!(read(&mut s.c, "/local/domain/1/name"), Ok(Some("alpha".into())));
    assert_eq!(
        s.a.store_write("/local/domain/1/name", "evil", DomId(1)),
        Err(BackendError::Denied)
    );
    assert_eq!(s.a.store_remove("/local/domain/1"), Err(BackendError::Denied));
    assert_eq!(read(&mut s.c, "/local/domain/1/name"), Ok(Some("alpha".into())));

    // Readers are per key: owner and named reader only (and dom0).
    s.a.store_write("/local/domain/1/data/k", "v1", DomId(2)).unwrap();
    assert_eq!(read(&mut s.a, "/local/domain/1/data/k"), Ok(Some("v1".into())));
    assert_eq!(read(&mut s.b, "/local/domain/1/data/k"), Ok(Some("v1".into())));
    assert_eq!(read(&mut s.c, "/local/domain/1/data/k"), Err(BackendError::Denied));
    let mut dom0 = s.world.backend(DomId(0)).unwrap();
    assert_eq!(read(&mut dom0, "/local/domain/1/data/k"), Ok(Some("v1".into())));
    assert_eq!(s.b.store_remove("/local/domain/1/data"), Err(BackendError::Denied));

    // Lengths: the full length is reported even if the buffer is short.
    let mut short = [0u8; 1];
    assert_eq!(s.b.store_read("/local/domain/1/data/k", &mut short), Ok(Some(2)));
    assert_eq!(&short, b"v");

    // Malformed paths are refused, not resolved.
    for bad in ["local/x", "/local/domain/1/../2/x", "/local/domain/1/data/"] {
        assert_eq!(s.a.store_write(bad, "1", DomId(2)), Err(BackendError::Store), "{bad}");
    }

    // Removal and watches.
    assert_eq!(s.b.store_wait("/", Some(SHORT)), Ok(Wait::Event));
    assert_eq!(s.b.store_wait("/", Some(SHORT)), Ok(Wait::TimedOut));
    s.a.store_remove("/local/domain/1/data").unwrap();
    assert_eq!(s.b.store_wait("/", Some(LONG)), Ok(Wait::Event));
    assert_eq!(read(&mut s.b, "/local/domain/1/data/k"), Ok(None));
}

#[test]
fn grants_map_contiguously_and_only_for_the_grantee() {
    let mut s = setup();
    let mut refs = [GrantRef(0); 3];
    let mem = s.a.share(DomId(2), &mut refs, None).unwrap();
    assert_eq!(mem.len(), 3 * 4096);
    mem.write_bytes(4090, b"0123456789ab");
    mem.store_u32(2 * 4096 + 8, 0xdead_beef);

    assert_eq!(s.c.map(DomId(1), &refs, true, None).unwrap_err(), BackendError::Map);
    assert_eq!(s.b.map(DomId(3), &refs, true, None).unwrap_err(), BackendError::Map);
    assert_eq!(s.b.map(DomId(1), &[GrantRef(0)], true, None).unwrap_err(), BackendError::Map);

    let seen = s.b.map(DomId(1), &refs, true, None).unwrap();
    let mut buf = [0u8; 12];
    seen.read_bytes(4090, &mut buf);
    assert_eq!(&buf, b"0123456789ab");
    assert_eq!(seen.load_u32(2 * 4096 + 8), 0xdead_beef);
    seen.store_u8(5, 7);
    assert_eq!(mem.load_u8(5), 7);

    // A subset, out of order: still one region, page by page.
    let pick = s.b.map(DomId(1), &[refs[2], refs[0]], false, None).unwrap();
    assert_eq!(pick.len(), 2 * 4096);
    assert_eq!(pick.load_u32(8), 0xdead_beef);
    assert_eq!(pick.load_u8(4096 + 5), 7);

    s.b.unmap(pick);
    s.b.unmap(seen);
    s.a.unshare(mem);
    assert_eq!(s.b.map(DomId(1), &refs, true, None).unwrap_err(), BackendError::Map);
}

#[test]
#[should_panic(expected = "read-only")]
fn read_only_mappings_refuse_writes() {
    let mut s = setup();
    let mut refs = [GrantRef(0)];
    let _mem = s.a.share(DomId(2), &mut refs, None).unwrap();
    let ro = s.b.map(DomId(1), &refs, false, None).unwrap();
    ro.store_u8(0, 1);
}

#[test]
#[should_panic(expected = "outside")]
fn accesses_are_bounds_checked() {
    let mut s = setup();
    let mut refs = [GrantRef(0)];
    let mem = s.a.share(DomId(2), &mut refs, None).unwrap();
    mem.read_bytes(4090, &mut [0u8; 8]);
}

#[test]
fn event_channels_notify_wait_and_time_out() {
    let mut s = setup();
    let unbound = s.a.alloc_unbound(DomId(2)).unwrap();
    assert_eq!(s.c.bind_interdomain(DomId(1), unbound), Err(BackendError::Denied));
    assert_eq!(s.b.bind_interdomain(DomId(1), Port(999)), Err(BackendError::EventChannel));
    let local = s.b.bind_interdomain(DomId(1), unbound).unwrap();
    assert_eq!(
        s.b.bind_interdomain(DomId(1), unbound),
        Err(BackendError::EventChannel),
        "a port binds once"
    );

    assert_eq!(s.a.wait(unbound, Some(SHORT)), Ok(Wait::TimedOut));
    s.b.notify(local).unwrap();
    s.b.notify(local).unwrap();
    assert_eq!(s.a.wait(unbound, Some(LONG)), Ok(Wait::Event));
    assert_eq!(s.a.wait(unbound, Some(SHORT)), Ok(Wait::TimedOut), "events coalesce");
    s.a.notify(unbound).unwrap();
    assert_eq!(s.b.wait(local, Some(LONG)), Ok(Wait::Event));
    assert_eq!(s.a.notify(Port(77)), Err(BackendError::EventChannel));

    // wait_any over several ports finds the one that fired.
    let other = s.a.alloc_unbound(DomId(3)).unwrap();
    let from_c = s.c.bind_interdomain(DomId(1), other).unwrap();
    s.c.notify(from_c).unwrap();
    assert_eq!(s.a.wait_any(&[unbound, other], Some(LONG)), Ok(Some(other)));
    assert_eq!(s.a.wait_any(&[unbound, other], Some(SHORT)), Ok(None));

    // A waiter in another thread is woken.
    let mut a2 = s.a.clone();
    let waiter = std::thread::spawn(move || a2.wait(unbound, Some(LONG)));
    std::thread::sleep(SHORT);
    s.b.notify(local).unwrap();
    assert_eq!(waiter.join().unwrap(), Ok(Wait::Event));

    // After one end closes, the other's notifications are dropped.
    s.b.unbind(local);
    assert_eq!(s.b.notify(local), Err(BackendError::EventChannel));
    s.a.notify(unbound).unwrap();
}

#[test]
fn reaping_performs_unmap_notifications() {
    let mut s = setup();
    let port = s.a.alloc_unbound(DomId(2)).unwrap();
    let theirs = s.b.bind_interdomain(DomId(1), port).unwrap();
    let mut refs = [GrantRef(0)];
    let page = s.a.share(DomId(2), &mut refs, None).unwrap();
    // Domain b maps a's page with a notification on byte 20, then "dies".
    let notify = UnmapNotify { offset: 20, port: theirs };
    let mapped = s.b.map(DomId(1), &refs, true, Some(notify)).unwrap();
    mapped.store_u8(20, 1);
    std::mem::forget(mapped);
    s.b.store_write("/local/domain/2/data/x", "1", DomId(1)).unwrap();
    assert_eq!(page.load_u8(20), 1);

    s.world.reap(DomId(2)).unwrap();
    assert_eq!(page.load_u8(20), 0);
    assert_eq!(s.a.wait(port, Some(LONG)), Ok(Wait::Event));
    assert_eq!(read(&mut s.a, "/local/domain/2/data/x"), Ok(None));
    assert_eq!(read(&mut s.a, "/local/domain/2/name"), Ok(Some("beta".into())));
    // The dead domain's port is gone; ours is unbound again.
    s.a.notify(port).unwrap();
    let again = s.world.backend(DomId(2)).unwrap().bind_interdomain(DomId(1), port);
    assert!(again.is_ok());
}

#[test]
fn vchan_between_threads_wraps_its_rings() {
    let s = setup();
    let config = ServerConfig { client: DomId(2), port: 5, read_min: 1024, write_min: 2048 };
    let mut server = Vchan::server(s.a.clone(), config).unwrap();
    let client = std::thread::spawn({
        let b = s.b.clone();
        move || {
            let cfg = ClientConfig { server: DomId(1), port: 5 };
            let mut c = Vchan::client_wait(b, cfg, Some(LONG)).unwrap();
            let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
            c.write_all(&data, Some(LONG)).unwrap();
            let mut back = vec![0u8; data.len()];
            c.read_exact(&mut back, Some(LONG)).unwrap();
            assert_eq!(back, data);
        }
    });
    server.wait_connected(Some(LONG)).unwrap();
    let mut got = vec![0u8; 100_000];
    server.read_exact(&mut got, Some(LONG)).unwrap();
    server.write_all(&got, Some(LONG)).unwrap();
    client.join().unwrap();
}

#[test]
fn copies_at_every_alignment_leave_neighbours_alone() {
    let mut s = setup();
    let mut refs = [GrantRef(0); 3];
    let mem = s.a.share(DomId(2), &mut refs, None).unwrap();
    let peer = s.b.map(DomId(1), &refs, false, None).unwrap();
    for off in [0usize, 1, 3, 7, 8, 4093, 4095] {
        for len in [0usize, 1, 5, 8, 9, 23, 4100] {
            mem.write_bytes(0, &vec![0xee; 3 * 4096]);
            let data: Vec<u8> = (0..len).map(|i| (i * 31 + off) as u8).collect();
            mem.write_bytes(off, &data);
            let mut back = vec![0u8; len];
            peer.read_bytes(off, &mut back);
            assert_eq!(back, data, "off {off} len {len}");
            if off > 0 {
                assert_eq!(peer.load_u8(off - 1), 0xee);
            }
            assert_eq!(peer.load_u8(off + len), 0xee);
        }
    }
}

#[test]
fn dropping_a_mapping_performs_its_unmap_notification() {
    let mut s = setup();
    let port = s.a.alloc_unbound(DomId(2)).unwrap();
    let theirs = s.b.bind_interdomain(DomId(1), port).unwrap();
    let mut refs = [GrantRef(0)];
    let page = s.a.share(DomId(2), &mut refs, None).unwrap();
    let notify = UnmapNotify { offset: 21, port: theirs };
    let mapped = s.b.map(DomId(1), &refs, true, Some(notify)).unwrap();
    mapped.store_u8(21, 1);
    assert_eq!(s.a.wait(port, Some(SHORT)), Ok(Wait::TimedOut));
    drop(mapped);
    assert_eq!(page.load_u8(21), 0);
    assert_eq!(s.a.wait(port, Some(LONG)), Ok(Wait::Event));
    // Performed once: reaping later finds nothing left to do.
    page.store_u8(21, 1);
    s.world.reap(DomId(2)).unwrap();
    assert_eq!(page.load_u8(21), 1);
}
