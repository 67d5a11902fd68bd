//! Two endpoints in one process over the simulator.

use std::time::{Duration, Instant};

use portcullis_vchan::layout::{self, Dir};
use portcullis_vchan::sim::{Hypervisor, SimBackend, SimMem};
use portcullis_vchan::{
    Backend, ClientConfig, DomId, GrantRef, LayoutError, PeerState, ServerConfig, SharedMem, Vchan,
    VchanError, PEER_CHECK,
};

const SERVER: DomId = DomId(3);
const CLIENT: DomId = DomId(7);
const PORT: u32 = 5000;
/// Upper bound for waits that must succeed; never reached in a passing run.
const SAFETY: Option<Duration> = Some(Duration::from_secs(20));
/// A zero timeout: "is an event pending right now?".
const NOW: Option<Duration> = Some(Duration::ZERO);

fn server_cfg(read_min: usize, write_min: usize) -> ServerConfig {
    ServerConfig { client: CLIENT, port: PORT, read_min, write_min }
}

fn client_cfg() -> ClientConfig {
    ClientConfig { server: SERVER, port: PORT }
}

fn pair(
    hv: &Hypervisor,
    read_min: usize,
    write_min: usize,
) -> (Vchan<SimBackend>, Vchan<SimBackend>) {
    let server = Vchan::server(hv.domain(SERVER), server_cfg(read_min, write_min)).unwrap();
    let client = Vchan::client(hv.domain(CLIENT), client_cfg()).unwrap();
    (server, client)
}

/// A raw view of the server's control page, as a third party mapping it.
fn raw_page(hv: &Hypervisor) -> SimMem {
    let base = format!("/local/domain/{}/data/vchan/{}/{}", SERVER.0, CLIENT.0, PORT);
    let gref: u32 = hv.store_peek(&format!("{base}/ring-ref")).unwrap().parse().unwrap();
    hv.domain(CLIENT).map(SERVER, &[GrantRef(gref)], true, None).unwrap()
}

fn pattern(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Streams `total` bytes each way with odd chunk sizes, interleaving the two
/// directions so the indices wrap several times.
fn stream(server: &mut Vchan<SimBackend>, client: &mut Vchan<SimBackend>, total: usize) {
    let up = pattern(1, total);
    let down = pattern(2, total);
    let (mut up_sent, mut up_got, mut down_sent, mut down_got) = (0, Vec::new(), 0, Vec::new());
    let mut buf = vec![0u8; 5000];
    let chunks = [1usize, 7, 333, 1024, 4095, 17];
    let mut i = 0;
    while up_got.len() < total || down_got.len() < total {
        let c = chunks[i % chunks.len()];
        i += 1;
        let end = (up_sent + c).min(total);
        up_sent += client.write(&up[up_sent..end]).unwrap();
        let end = (down_sent + c * 3).min(total);
        down_sent += server.write(&down[down_sent..end]).unwrap();
        let n = server.read(&mut buf[..c.min(5000)]).unwrap();
        up_got.extend_from_slice(&buf[..n]);
        let n = client.read(&mut buf[..(c * 2).min(5000)]).unwrap();
        down_got.extend_from_slice(&buf[..n]);
        assert!(i < 1_000_000, "no progress");
    }
    assert_eq!(up_got, up);
    assert_eq!(down_got, down);
}

#[test]
fn data_crosses_wrap_for_each_order() {
    for (read_min, write_min, left, right) in [
        (1024, 2048, 10, 11),
        (2048, 1024, 11, 10),
        (4096, 4096, 12, 12),
        (65536, 65536, 16, 16),
        (1 << 20, 2048, 20, 11),
    ] {
        let hv = Hypervisor::new();
        let (mut server, mut client) = pair(&hv, read_min, write_min);
        let g = server.geometry().unwrap();
        assert_eq!((g.order(Dir::Left), g.order(Dir::Right)), (left, right));
        assert_eq!(client.geometry(), Some(g));
        let size = g.ring_size(Dir::Left).max(g.ring_size(Dir::Right));
        stream(&mut server, &mut client, 3 * size + 123);
        // Fill to exactly the ring size, then one more byte does not fit.
        let full = vec![0x5a; g.ring_size(Dir::Left)];
        assert_eq!(client.write(&full).unwrap(), full.len());
        assert_eq!(client.write(&[1]).unwrap(), 0);
        assert_eq!(client.buffer_space().unwrap(), 0);
        assert_eq!(server.data_ready().unwrap(), full.len());
    }
}

#[repr(C)]
#[allow(dead_code)]
struct CVchanInterface {
    left_cons: u32,
    left_prod: u32,
    right_cons: u32,
    right_prod: u32,
    left_order: u16,
    right_order: u16,
    cli_live: u8,
    srv_live: u8,
    cli_notify: u8,
    srv_notify: u8,
    grants: [u32; 0],
}

#[test]
fn offsets_match_the_c_struct() {
    use core::mem::offset_of;
    assert_eq!(offset_of!(CVchanInterface, left_cons), layout::LEFT_CONS);
    assert_eq!(offset_of!(CVchanInterface, left_prod), layout::LEFT_PROD);
    assert_eq!(offset_of!(CVchanInterface, right_cons), layout::RIGHT_CONS);
    assert_eq!(offset_of!(CVchanInterface, right_prod), layout::RIGHT_PROD);
    assert_eq!(offset_of!(CVchanInterface, left_order), layout::LEFT_ORDER);
    assert_eq!(offset_of!(CVchanInterface, right_order), layout::RIGHT_ORDER);
    assert_eq!(offset_of!(CVchanInterface, cli_live), layout::CLI_LIVE);
    assert_eq!(offset_of!(CVchanInterface, srv_live), layout::SRV_LIVE);
    assert_eq!(offset_of!(CVchanInterface, cli_notify), layout::CLI_NOTIFY);
    assert_eq!(offset_of!(CVchanInterface, srv_notify), layout::SRV_NOTIFY);
    assert_eq!(offset_of!(CVchanInterface, grants), layout::GRANTS);
    assert_eq!(core::mem::size_of::<CVchanInterface>(), 24);
}

fn bytes(page: &SimMem, off: usize, len: usize) -> Vec<u8> {
    let mut v = vec![0; len];
    page.read_bytes(off, &mut v);
    v
}

#[test]
fn page_bytes_in_page_rings() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1000, 2000);
    let page = raw_page(&hv);
    // Orders 10 (left) and 11 (right), both in the page, no grants.
    assert_eq!(bytes(&page, 16, 4), [10, 0, 11, 0]);
    // cli_live 1 (connected), srv_live 1, cli_notify WRITE (set by the
    // server at init), srv_notify WRITE (set by the client at connect).
    assert_eq!(bytes(&page, 20, 4), [1, 1, 1, 1]);
    assert_eq!(bytes(&page, 0, 16), [0; 16]);

    // Client to server data lands at offset 1024, and left.prod counts it.
    assert_eq!(client.write(b"hello").unwrap(), 5);
    assert_eq!(bytes(&page, 1024, 5), b"hello");
    assert_eq!(bytes(&page, 4, 4), 5u32.to_le_bytes());
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).unwrap(), 5);
    assert_eq!(bytes(&page, 0, 4), 5u32.to_le_bytes());

    // Server to client data lands at offset 2048, counted by right.prod.
    assert_eq!(server.write(b"world!").unwrap(), 6);
    assert_eq!(bytes(&page, 2048, 6), b"world!");
    assert_eq!(bytes(&page, 12, 4), 6u32.to_le_bytes());
    assert_eq!(client.read(&mut buf).unwrap(), 6);
    assert_eq!(bytes(&page, 8, 4), 6u32.to_le_bytes());

    // Close: our live byte goes to 0 (exited).
    client.close();
    assert_eq!(bytes(&page, 20, 2), [0, 1]);
    server.close();
    assert_eq!(bytes(&page, 20, 2), [0, 0]);
}

#[test]
fn page_bytes_granted_rings() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 8192, 4096);
    let page = raw_page(&hv);
    assert_eq!(bytes(&page, 16, 4), [13, 0, 12, 0]);
    // Three grants: two for the left ring, then one for the right.
    let grants: Vec<GrantRef> =
        (0..3).map(|i| GrantRef(page.load_u32(layout::grant_offset(i)))).collect();
    let mut other = hv.domain(CLIENT);
    let left = other.map(SERVER, &grants[..2], false, None).unwrap();
    let right = other.map(SERVER, &grants[2..], false, None).unwrap();
    // Nothing beyond the grant list is written in the control page.
    assert!(bytes(&page, 36, 4096 - 36).iter().all(|b| *b == 0));

    let data = pattern(9, 5000);
    assert_eq!(client.write(&data).unwrap(), 5000);
    assert_eq!(bytes(&left, 0, 5000), data);
    assert_eq!(server.write(&data[..100]).unwrap(), 100);
    assert_eq!(bytes(&right, 0, 100), &data[..100]);
    let mut buf = vec![0; 8192];
    assert_eq!(server.read(&mut buf).unwrap(), 5000);
    assert_eq!(client.read(&mut buf).unwrap(), 100);
}

#[test]
fn notify_bits_gate_events() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 2048);
    let page = raw_page(&hv);
    // The client's connect woke the server.
    server.wait(NOW).unwrap();
    assert_eq!(server.wait(NOW), Err(VchanError::Timeout));

    // The server asked for WRITE notifications at init: the first client
    // write sends an event and consumes the request.
    client.write(b"a").unwrap();
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), 0);
    server.wait(NOW).unwrap();
    // Without a request, the next write sends nothing.
    client.write(b"b").unwrap();
    assert_eq!(server.wait(NOW), Err(VchanError::Timeout));

    // A server read that drains the ring asks for the next write again.
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).unwrap(), 2);
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), layout::NOTIFY_WRITE);
    client.write(b"c").unwrap();
    server.wait(NOW).unwrap();

    // The client asked for WRITE at connect; nobody asked for READ.
    assert_eq!(page.load_u8(layout::SRV_NOTIFY), layout::NOTIFY_WRITE);
    assert_eq!(server.read(&mut buf[..1]).unwrap(), 1);
    assert_eq!(client.wait(NOW), Err(VchanError::Timeout));

    // A writer that finds the ring full asks for READ; the reader's next
    // read then signals it.
    let big = vec![7u8; 1024];
    assert_eq!(client.write(&big).unwrap(), 1024);
    assert_eq!(client.write(b"x").unwrap(), 0);
    // (The client asks in srv_notify, the byte the server consults.)
    assert_eq!(page.load_u8(layout::SRV_NOTIFY) & layout::NOTIFY_READ, layout::NOTIFY_READ);
    assert_eq!(server.read(&mut buf).unwrap(), 8);
    assert_eq!(page.load_u8(layout::SRV_NOTIFY) & layout::NOTIFY_READ, 0);
    client.wait(NOW).unwrap();

    // buffer_space and data_ready arm requests in the peer's byte.
    page.store_u8(layout::SRV_NOTIFY, 0);
    client.buffer_space().unwrap();
    assert_eq!(page.load_u8(layout::SRV_NOTIFY), layout::NOTIFY_READ);
    client.data_ready().unwrap();
    assert_eq!(page.load_u8(layout::SRV_NOTIFY), layout::NOTIFY_READ | layout::NOTIFY_WRITE);
}

/// A quiet reader is not woken by writes, and reads all of them later;
/// back from quiet, the next write wakes it again.
#[test]
fn a_quiet_reader_gets_no_events_and_loses_no_data() {
    use portcullis_vchan::frame::Transport;
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 1024);
    let page = raw_page(&hv);
    server.wait(NOW).unwrap(); // the client's connect
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), layout::NOTIFY_WRITE);

    server.set_quiet(true);
    assert!(server.is_quiet());
    // The standing request is withdrawn: the write sends nothing.
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), 0);
    client.write(b"ab").unwrap();
    assert_eq!(server.wait(NOW), Err(VchanError::Timeout));
    // Reading (through the framing's transport too) makes no new request,
    // even when it drains the ring.
    let mut buf = [0u8; 8];
    assert_eq!(Transport::recv(&mut server, &mut buf[..1]).unwrap(), 1);
    assert_eq!(Transport::recv(&mut server, &mut buf).unwrap(), 1);
    assert_eq!(&buf[..1], b"b");
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), 0);
    client.write(b"c").unwrap();
    assert_eq!(server.wait(NOW), Err(VchanError::Timeout));

    // Not quiet: the request is made at once; nothing written while quiet
    // is lost, and the next write wakes the reader.
    server.set_quiet(false);
    assert_eq!(page.load_u8(layout::CLI_NOTIFY), layout::NOTIFY_WRITE);
    assert_eq!(Transport::recv(&mut server, &mut buf).unwrap(), 1);
    assert_eq!(&buf[..1], b"c");
    client.write(b"d").unwrap();
    server.wait(NOW).unwrap();
    // A request the writer already took still delivers its one event.
    assert_eq!(Transport::recv(&mut server, &mut buf).unwrap(), 1);
    client.write(b"e").unwrap(); // takes the request made by the drain
    server.set_quiet(true);
    server.wait(NOW).unwrap();
    assert_eq!(server.read(&mut buf).unwrap(), 1);
}

#[test]
fn close_is_seen_and_releases_everything() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 65536, 65536);
    assert!(server.is_open() && client.is_open());
    assert_eq!(hv.grant_count(SERVER), 1 + 16 + 16);
    client.write(b"last words").unwrap();
    server.wait(NOW).unwrap();
    client.close();
    assert_eq!(hv.port_count(CLIENT), 0);
    // The close signalled the server, which sees the client gone ...
    server.wait(NOW).unwrap();
    assert!(!server.is_open());
    // ... but still gets the data written before it left, then an error.
    let mut buf = [0u8; 64];
    assert_eq!(server.read(&mut buf).unwrap(), 10);
    assert_eq!(&buf[..10], b"last words");
    assert_eq!(server.read(&mut buf), Err(VchanError::PeerClosed));
    assert_eq!(server.write(b"x"), Err(VchanError::PeerClosed));
    assert_eq!(server.read_blocking(&mut buf, SAFETY), Err(VchanError::PeerClosed));
    server.shutdown();
    assert_eq!(server.read(&mut buf), Err(VchanError::Closed));
    assert_eq!(hv.grant_count(SERVER), 0);
    assert_eq!(hv.port_count(SERVER), 0);
    assert!(hv.store_peek("/local/domain/3/data/vchan/7/5000/ring-ref").is_none());
}

#[test]
fn server_close_is_seen_by_client() {
    let hv = Hypervisor::new();
    let (server, mut client) = pair(&hv, 1024, 1024);
    drop(server);
    client.wait(NOW).unwrap();
    assert!(!client.is_open());
    assert_eq!(client.read(&mut [0u8; 4]), Err(VchanError::PeerClosed));
    assert_eq!(client.write(b"x"), Err(VchanError::PeerClosed));
}

#[test]
fn crashed_peer_is_seen_through_unmap_notify() {
    let hv = Hypervisor::new();
    let (mut server, client) = pair(&hv, 1024, 1024);
    server.wait(NOW).unwrap();
    // The client domain dies without closing.
    std::mem::forget(client);
    hv.destroy(CLIENT);
    server.wait(NOW).unwrap();
    assert!(!server.is_open());
    assert_eq!(server.read(&mut [0u8; 4]), Err(VchanError::PeerClosed));
}

/// `xl destroy` of the unikernel holding `end`: it never runs again (no
/// close, no unmap notification, no event); Xen closes its ports.
fn destroy_unikernel(hv: &Hypervisor, end: Vchan<SimBackend>, dom: DomId) {
    std::mem::forget(end);
    hv.kill(dom);
}

/// A wait that must end by noticing a destroyed peer: within a few
/// [`PEER_CHECK`]s, far before its timeout.
fn noticed_soon(started: Instant) {
    let took = started.elapsed();
    assert!(took < PEER_CHECK * 5, "noticed after {took:?}");
}

#[test]
fn destroyed_server_is_noticed_by_a_waiting_client() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 1024);
    client.write(b"request").unwrap();
    server.wait(NOW).unwrap();
    assert_eq!(server.read(&mut [0u8; 16]).unwrap(), 7);
    // A live peer that says nothing: the checks find it bound; a timeout.
    let started = Instant::now();
    assert_eq!(client.wait(Some(PEER_CHECK + PEER_CHECK / 4)), Err(VchanError::Timeout));
    assert!(started.elapsed() >= PEER_CHECK);
    // Its live byte still says connected.
    destroy_unikernel(&hv, server, SERVER);
    assert_eq!(client.peer_state(), Some(PeerState::Connected));
    let started = Instant::now();
    assert_eq!(client.wait(SAFETY), Err(VchanError::PeerClosed));
    noticed_soon(started);
}

#[test]
fn destroyed_client_is_noticed_by_a_waiting_server() {
    let hv = Hypervisor::new();
    let (mut server, client) = pair(&hv, 1024, 1024);
    server.wait(NOW).unwrap();
    destroy_unikernel(&hv, client, CLIENT);
    // Waiting without a timeout ends too (in a thread, so that a
    // regression fails here rather than hanging the test run).
    let started = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(server.wait(None)));
    assert_eq!(rx.recv_timeout(SAFETY.unwrap()), Ok(Err(VchanError::PeerClosed)));
    noticed_soon(started);
}

#[test]
fn destroyed_peer_bytes_still_in_the_ring_are_read_first() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 1024);
    server.write(b"answer").unwrap();
    client.wait(NOW).unwrap();
    destroy_unikernel(&hv, server, SERVER);
    // The answer's event was consumed and the bytes not read yet: the
    // wait that notices the peer gone returns them first.
    assert_eq!(client.wait(SAFETY), Ok(()));
    let mut buf = [0u8; 16];
    assert_eq!(client.read(&mut buf).unwrap(), 6);
    assert_eq!(&buf[..6], b"answer");
    assert_eq!(client.wait(SAFETY), Err(VchanError::PeerClosed));
}

#[test]
fn destroyed_peer_is_noticed_while_our_bytes_wait_unread() {
    // The peer never read (it was paused, then destroyed): the wait, in
    // its short slices between repeated signals, checks after each.
    let hv = Hypervisor::new();
    let (server, mut client) = pair(&hv, 1024, 1024);
    client.write(b"request").unwrap();
    destroy_unikernel(&hv, server, SERVER);
    let started = Instant::now();
    assert_eq!(client.wait(SAFETY), Err(VchanError::PeerClosed));
    noticed_soon(started);
}

#[test]
fn a_server_waiting_for_its_client_is_not_taken_for_a_dead_peer() {
    // Before a client binds, the server's port is unbound by design.
    let hv = Hypervisor::new();
    let mut server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 1024)).unwrap();
    let started = Instant::now();
    assert_eq!(server.wait_connected(Some(PEER_CHECK + PEER_CHECK / 4)), Err(VchanError::Timeout));
    assert!(started.elapsed() >= PEER_CHECK);
}

#[test]
fn server_reinit_accepts_a_new_client() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 4096, 4096);
    client.write(b"one").unwrap();
    client.close();
    assert!(!server.is_open());
    // Before re-init a new client would find the old, dead page: the
    // server tears down and publishes a fresh one.
    server.reinit().unwrap();
    assert_eq!(hv.grant_count(SERVER), 3);
    assert!(server.is_open());
    let mut client = Vchan::client(hv.domain(CLIENT), client_cfg()).unwrap();
    server.wait_connected(SAFETY).unwrap();
    client.write(b"two").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(server.read(&mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"two");
    stream(&mut server, &mut client, 20_000);
    // A client cannot re-init.
    assert_eq!(client.reinit(), Err(VchanError::NotServer));
}

#[test]
fn client_needs_a_published_server() {
    let hv = Hypervisor::new();
    assert_eq!(
        Vchan::client(hv.domain(CLIENT), client_cfg()).err(),
        Some(VchanError::NotPublished)
    );
    // Another domain cannot use a vchan published for CLIENT.
    let _server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 1024)).unwrap();
    let base = format!("/local/domain/{}/data/vchan/{}/{}", SERVER.0, 9, PORT);
    hv.store_poke(&format!("{base}/ring-ref"), "8", SERVER, DomId(9));
    hv.store_poke(&format!("{base}/event-channel"), "1", SERVER, DomId(9));
    assert!(Vchan::client(hv.domain(DomId(9)), client_cfg()).is_err());
}

#[test]
fn client_rejects_malformed_store_values_and_orders() {
    let hv = Hypervisor::new();
    let server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 2048)).unwrap();
    let base = "/local/domain/3/data/vchan/7/5000";
    let good_ref = hv.store_peek(&format!("{base}/ring-ref")).unwrap();
    for bad in ["", "0", "-8", "8x", "99999999999"] {
        hv.store_poke(&format!("{base}/ring-ref"), bad, SERVER, CLIENT);
        assert_eq!(
            Vchan::client(hv.domain(CLIENT), client_cfg()).err(),
            Some(VchanError::BadStoreValue),
            "{bad:?}"
        );
    }
    hv.store_poke(&format!("{base}/ring-ref"), &good_ref, SERVER, CLIENT);
    let page = raw_page(&hv);
    for (left, right, err) in [
        (9, 11, LayoutError::OrderOutOfRange(9)),
        (10, 21, LayoutError::OrderOutOfRange(21)),
        (10, 10, LayoutError::RingsOverlap),
        (10, 20, LayoutError::GrantsOverlapRing),
    ] {
        page.store_u16(layout::LEFT_ORDER, left);
        page.store_u16(layout::RIGHT_ORDER, right);
        assert_eq!(
            Vchan::client(hv.domain(CLIENT), client_cfg()).err(),
            Some(VchanError::Layout(err))
        );
    }
    // Orders claiming granted rings whose grants are not ours to map.
    page.store_u16(layout::LEFT_ORDER, 12);
    page.store_u32(layout::grant_offset(0), 12345);
    assert!(matches!(
        Vchan::client(hv.domain(CLIENT), client_cfg()).err(),
        Some(VchanError::Backend(_))
    ));
    // Failed attempts leave no ports behind.
    assert_eq!(hv.port_count(CLIENT), 0);
    drop(server);
}

#[test]
fn orders_changed_after_connect_are_ignored() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 2048);
    let page = raw_page(&hv);
    page.store_u16(layout::LEFT_ORDER, 20);
    page.store_u16(layout::RIGHT_ORDER, 0xffff);
    stream(&mut server, &mut client, 10_000);
}

#[test]
fn bad_indices_close_the_channel() {
    let hv = Hypervisor::new();
    let (mut server, client) = pair(&hv, 1024, 2048);
    let page = raw_page(&hv);
    // The "client" claims more data than the 1 KiB left ring can hold.
    page.store_u32(layout::LEFT_PROD, 1025);
    assert_eq!(server.read(&mut [0u8; 4]), Err(VchanError::BrokenPeer));
    assert_eq!(page.load_u8(layout::SRV_LIVE), 0);
    assert_eq!(server.read(&mut [0u8; 4]), Err(VchanError::Closed));
    assert_eq!(hv.grant_count(SERVER), 0);
    // The client sees the server gone.
    assert!(!client.is_open());

    // A consumer index running ahead of the producer is also broken.
    let hv = Hypervisor::new();
    let (mut server, _client) = pair(&hv, 1024, 2048);
    raw_page(&hv).store_u32(layout::RIGHT_CONS, 1);
    assert_eq!(server.write(b"x"), Err(VchanError::BrokenPeer));
}

#[test]
fn blocking_exchange_between_threads() {
    let hv = Hypervisor::new();
    let mut server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 2048)).unwrap();
    let hv2 = hv.clone();
    let data = pattern(5, 300_000);
    let expect = data.clone();
    let t = std::thread::spawn(move || {
        let mut client = Vchan::client_wait(hv2.domain(CLIENT), client_cfg(), SAFETY).unwrap();
        client.write_all(&data, SAFETY).unwrap();
        let mut ack = [0u8; 3];
        client.read_exact(&mut ack, SAFETY).unwrap();
        assert_eq!(&ack, b"ack");
    });
    server.wait_connected(SAFETY).unwrap();
    let mut got = vec![0u8; expect.len()];
    server.read_exact(&mut got, SAFETY).unwrap();
    assert!(got == expect);
    server.write_all(b"ack", SAFETY).unwrap();
    t.join().unwrap();
}

/// A client waiting (`client_wait`) in another thread, then the server
/// publishing: the client connects and its bytes arrive.
fn client_connects_once_published(hv: &Hypervisor) {
    let hv2 = hv.clone();
    let t = std::thread::spawn(move || {
        let mut c = Vchan::client_wait(hv2.domain(CLIENT), client_cfg(), SAFETY).unwrap();
        c.write_all(b"hi", SAFETY).unwrap();
        c
    });
    let mut server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 1024)).unwrap();
    let mut buf = [0u8; 2];
    server.read_exact(&mut buf, SAFETY).unwrap();
    assert_eq!(&buf, b"hi");
    drop(t.join().unwrap());
}

#[test]
fn client_waits_for_publication() {
    client_connects_once_published(&Hypervisor::new());
}

/// Under xenstored a client that looks before the server has published gets
/// "permission denied", not "no such node": the server's `data` directory
/// exists and only the server may read it. That means "not published yet".
#[test]
fn client_waits_through_permission_denied_before_publication() {
    let hv = Hypervisor::new();
    let data = format!("/local/domain/{}/data", SERVER.0);
    hv.store_poke(&data, "", SERVER, SERVER);
    let mut probe = hv.domain(CLIENT);
    let ring_ref = format!("{data}/vchan/{}/{PORT}/ring-ref", CLIENT.0);
    assert_eq!(
        probe.store_read(&ring_ref, &mut [0u8; 8]),
        Err(portcullis_vchan::BackendError::Denied)
    );
    assert!(matches!(
        Vchan::client(hv.domain(CLIENT), client_cfg()),
        Err(VchanError::NotPublished)
    ));
    client_connects_once_published(&hv);
}

/// Xen's `vchan-socket-proxy --mode=server` (xen-utils 4.17) waits for the
/// client's live byte with `libxenvchan_wait`, then reads the ring only after
/// the *next* event. When the client's "connected" event and the event for
/// its first write coalesce (both arrive before the proxy takes the first
/// one, which a busy dom0 makes likely), no further event comes and the
/// proxy never reads the request. A client waiting for an answer must
/// signal again while its bytes sit unconsumed.
#[test]
fn client_rekicks_a_server_that_lost_the_write_event() {
    use std::sync::mpsc;
    let hv = Hypervisor::new();
    let mut server = Vchan::server(hv.domain(SERVER), server_cfg(1024, 1024)).unwrap();
    let (written_tx, written_rx) = mpsc::channel();
    let client_hv = hv.clone();
    let client = std::thread::spawn(move || {
        let mut client = Vchan::client(client_hv.domain(CLIENT), client_cfg()).unwrap();
        assert_eq!(client.write(b"ping").unwrap(), 4);
        written_tx.send(()).unwrap();
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf, SAFETY).map(|()| (buf, client.rekicks()))
    });
    // The proxy was blocked in libxenvchan_wait while both events arrived:
    // it takes one (coalesced) event and sees the client connected.
    written_rx.recv().unwrap();
    server.wait(SAFETY).unwrap();
    server.wait_connected(NOW).unwrap();
    // Its data loop: select() on the event channel, then read.
    let woke = server.wait(Some(Duration::from_secs(5)));
    assert_eq!(woke, Ok(()), "the client's request was never signalled again");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf, SAFETY).unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong", SAFETY).unwrap();
    let (answer, rekicks) = client.join().unwrap().unwrap();
    assert_eq!(&answer, b"pong");
    assert!(rekicks >= 1);
}

#[test]
fn an_unpublished_ring_cannot_be_found_by_a_reconnecting_client() {
    use portcullis_vchan::PeerState;
    let hv = Hypervisor::new();
    let (mut server, client) = pair(&hv, 4096, 4096);
    assert_eq!(server.peer_state(), Some(PeerState::Connected));
    server.unpublish().unwrap();
    server.write(b"for the first connection").unwrap();
    client.close();
    // The same domain comes back before the server noticed: it must not
    // map the old ring (and read what was written for its predecessor).
    assert_eq!(
        Vchan::client(hv.domain(CLIENT), client_cfg()).err(),
        Some(VchanError::NotPublished)
    );
    assert_eq!(server.peer_state(), Some(PeerState::Gone));
    server.reinit().unwrap();
    let mut client = Vchan::client(hv.domain(CLIENT), client_cfg()).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(client.read(&mut buf).unwrap(), 0, "a fresh ring");
    // A client cannot unpublish.
    assert_eq!(client.unpublish(), Err(VchanError::NotServer));
}

/// Bounds a wait that a lost wake-up would turn into a time-out (the test
/// then fails on that `Timeout`).
const WAKE: Option<Duration> = Some(Duration::from_secs(5));

/// Polls `cond` until it holds (bounded by `SAFETY`).
fn until(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + SAFETY.unwrap();
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "condition never held");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_reader_that_sleeps_is_woken_when_data_arrives() {
    // In-page ring (order 10) and a granted one (order 16).
    for read_min in [1024, 65536] {
        let hv = Hypervisor::new();
        let (mut server, mut client) = pair(&hv, read_min, 2048);
        let page = raw_page(&hv);
        // Use up the request the server made at init, without a new one.
        client.write(b"a").unwrap();
        let mut one = [0u8; 1];
        assert_eq!(server.read_unarmed(&mut one).unwrap(), 1);
        while server.wait(NOW).is_ok() {}
        assert_eq!(page.load_u8(layout::CLI_NOTIFY) & layout::NOTIFY_WRITE, 0);
        server.set_spin(0);
        std::thread::scope(|s| {
            let reader = s.spawn(|| {
                let mut buf = [0u8; 64];
                let n = server.read_blocking(&mut buf, WAKE);
                (n, buf[0], server.sleeps())
            });
            // The reader asks for an event only when it is about to sleep.
            until(|| page.load_u8(layout::CLI_NOTIFY) & layout::NOTIFY_WRITE != 0);
            std::thread::sleep(Duration::from_millis(20));
            client.write(b"b").unwrap();
            let (n, byte, sleeps) = reader.join().unwrap();
            assert_eq!(n, Ok(1), "the sleeping reader was not woken");
            assert_eq!(byte, b'b');
            assert!(sleeps >= 1, "the reader never slept");
        });
        // The announcement, then one event per request: the server's at
        // init, the reader's before it slept.
        assert_eq!(client.signals(), 3);
    }
}

#[test]
fn a_writer_blocked_on_a_full_ring_is_woken_when_space_frees() {
    for read_min in [1024, 4096] {
        let hv = Hypervisor::new();
        let (mut server, mut client) = pair(&hv, read_min, 2048);
        let page = raw_page(&hv);
        client.set_spin(0);
        let data = pattern(9, 3 * read_min + 17);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let r = client.write_all(&data, WAKE);
                (r, client.sleeps())
            });
            let mut got = Vec::new();
            let mut buf = vec![0u8; 300];
            while got.len() < data.len() {
                // Read only once the writer has asked to hear of it, that is
                // when it found the ring full and is about to sleep (or
                // sleeps); the unarmed read still answers that request.
                let full = || page.load_u8(layout::SRV_NOTIFY) & layout::NOTIFY_READ != 0;
                let left = data.len() - got.len();
                if left > read_min {
                    until(full);
                    std::thread::sleep(Duration::from_millis(5));
                }
                let n = server.read_unarmed(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                if n == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            let (r, sleeps) = writer.join().unwrap();
            assert_eq!(r, Ok(()), "the blocked writer was not woken");
            assert!(sleeps >= 1, "the writer never slept");
            assert!(got == data);
        });
    }
}

#[test]
fn a_reader_that_keeps_up_asks_for_no_events() {
    let hv = Hypervisor::new();
    let (mut server, mut client) = pair(&hv, 1024, 2048);
    let mut buf = vec![0u8; 4096];
    for i in 0..100u8 {
        assert_eq!(client.write(&[i; 64]).unwrap(), 64);
        // Data is ready each time: the blocking read never sleeps, so it
        // never asks the writer for an event.
        assert_eq!(server.read_blocking(&mut buf, WAKE).unwrap(), 64);
        assert!(buf[..64].iter().all(|b| *b == i));
    }
    // The only event: the answer to the request the server made at init.
    assert_eq!(client.signals(), 2, "the client's announcement and one write event");
    assert_eq!(server.sleeps(), 0);
    // The plain non-blocking read keeps libxenvchan's behaviour: reading
    // less than asked requests the next write's event.
    client.write(b"z").unwrap();
    assert_eq!(server.read(&mut buf).unwrap(), 1);
    client.write(b"y").unwrap();
    assert_eq!(client.signals(), 3);
}

#[test]
fn blocking_streams_lose_no_wakeup_whatever_the_spin() {
    for (read_min, spin) in [(1024, 0), (1024, 1), (4096, 0), (4096, 3), (65536, 0)] {
        let hv = Hypervisor::new();
        let (mut server, mut client) = pair(&hv, read_min, 1024);
        server.set_spin(spin);
        client.set_spin(spin);
        let data = pattern(11, 200_000);
        std::thread::scope(|s| {
            s.spawn(|| {
                for chunk in data.chunks(3000) {
                    client.write_all(chunk, WAKE).unwrap();
                }
                let mut ack = [0u8; 1];
                client.read_exact(&mut ack, WAKE).unwrap();
            });
            let mut got = vec![0u8; data.len()];
            let mut at = 0;
            while at < got.len() {
                let end = (at + 777).min(got.len());
                at += server.read_blocking(&mut got[at..end], WAKE).unwrap();
            }
            server.write_all(b"!", WAKE).unwrap();
            assert!(got == data, "order {read_min} spin {spin}");
        });
    }
}
