//! Waiting for a peer a guest needs (any creation order works).

mod support;

use portcullis_apps::net::{await_dom, AWAIT_NOTICE_EVERY};
use portcullis_platform::DomId;
use portcullis_vchan::sim::Hypervisor;
use support::*;

#[test]
fn a_guest_created_before_its_peer_waits_for_it_saying_so() {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, UNLOCKER, "unlocker");
    p.names_at.push((45_000_000_000, "cryptod".into(), CRYPTOD));
    assert_eq!(await_dom(&mut p, "unlocker", "cryptod").unwrap(), CRYPTOD);
    assert!(p.mono_ns >= 45_000_000_000, "returned only once the name appeared");
    assert!(p.mono_ns < 47_000_000_000, "and soon after: {}", p.mono_ns);
    assert_eq!(AWAIT_NOTICE_EVERY, 30);
    assert_eq!(
        p.lines_with("unlocker: waiting for cryptod"),
        2,
        "at 0 and 30 s: {}",
        p.console_out
    );
}

#[test]
fn a_peer_that_is_there_and_dom0_need_no_wait() {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, UNLOCKER, "unlocker").with_names(&[("cryptod", CRYPTOD)]);
    assert_eq!(await_dom(&mut p, "unlocker", "cryptod").unwrap(), CRYPTOD);
    assert_eq!(await_dom(&mut p, "unlocker", "dom0").unwrap(), DomId(0));
    assert_eq!(p.mono_ns, 0);
    assert!(p.console_out.is_empty());
}

#[test]
fn a_call_to_a_cryptod_destroyed_meanwhile_fails_within_seconds_not_at_its_timeout() {
    use std::time::{Duration, Instant};

    use portcullis_apps::common::{port, CALL_TIMEOUT};
    use portcullis_apps::link::LinkError;
    use portcullis_proto::msg::{KeysetReq, RequestId};
    use portcullis_vchan::{FrameError, VchanError, PEER_CHECK};

    let hv = Hypervisor::new();
    let mut cryptod = server(&hv, CRYPTOD, UNLOCKER, port::CRYPTOD);
    let mut unlocker = client(&hv, UNLOCKER, CRYPTOD, port::CRYPTOD);
    let started = Instant::now();
    let caller = std::thread::spawn(move || {
        let req = KeysetReq { request_id: RequestId([1; 16]) }.into();
        (unlocker.call(&req, CALL_TIMEOUT), started.elapsed())
    });
    // cryptod takes the request, then is destroyed before it answers:
    // `xl destroy` of a unikernel, no unmap notification, no event.
    let deadline = Instant::now() + Duration::from_secs(20);
    while drain(&mut cryptod).is_empty() {
        assert!(Instant::now() < deadline, "the request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::mem::forget(cryptod);
    hv.kill(CRYPTOD);
    let (answer, took) = caller.join().unwrap();
    assert!(
        matches!(answer, Err(LinkError::Frame(FrameError::Vchan(VchanError::PeerClosed)))),
        "{answer:?}"
    );
    assert!(took < PEER_CHECK * 5 && took < CALL_TIMEOUT, "noticed after {took:?}");
}
