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
