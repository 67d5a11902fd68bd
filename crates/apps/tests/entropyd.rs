//! entropyd's driver over the vchan simulator with a fake platform.

mod support;

use portcullis_apps::settings::{Problem, SettingsError};

use std::time::Duration;

use portcullis_apps::common::{port, AppError};
use portcullis_apps::entropyd::{EntropydDriver, DRBG_VERSION};
use portcullis_platform::{DomId, PlatformError};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::EntropyPub;
use portcullis_vchan::sim::{Hypervisor, SimBackend};
use portcullis_vchan::VchanError;
use support::*;

fn boot(
    settings: &str,
    names: &[(&str, DomId)],
) -> (Hypervisor, FakePlatform, EntropydDriver<SimBackend>) {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, ENTROPYD, "entropyd").with_names(names).settings(settings);
    let d = EntropydDriver::new(&mut p).unwrap();
    (hv, p, d)
}

fn chunks(link: &mut portcullis_apps::link::Link<SimBackend>) -> Vec<EntropyPub> {
    drain(link)
        .into_iter()
        .map(|m| match m {
            Message::EntropyPub(e) => e,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn only_allow_listed_domains_get_a_channel() {
    let (hv, mut p, mut d) =
        boot("allow=cryptod\n", &[("cryptod", CRYPTOD), ("policy_pd", POLICY_PD)]);
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    d.publish(&mut p).unwrap();
    let got = chunks(&mut c);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].drbg_version, DRBG_VERSION);
    assert_eq!(got[0].entropy_chunk.len(), 64);
    assert_eq!(
        try_client(&hv, POLICY_PD, ENTROPYD, port::ENTROPY).err(),
        Some(VchanError::NotPublished)
    );
}

#[test]
fn chunks_are_numbered_and_never_repeat() {
    let (hv, mut p, mut d) = boot("chunk=32\n", &[("cryptod", CRYPTOD)]);
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    for _ in 0..5 {
        d.publish(&mut p).unwrap();
    }
    let got = chunks(&mut c);
    assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    for (i, a) in got.iter().enumerate() {
        assert_eq!(a.entropy_chunk.len(), 32);
        for b in &got[i + 1..] {
            assert_ne!(a.entropy_chunk, b.entropy_chunk);
            assert_ne!(a.nonce, b.nonce);
        }
    }
}

#[test]
fn a_subscriber_that_leaves_gets_a_fresh_ring_when_it_returns() {
    let (hv, mut p, mut d) = boot("", &[("cryptod", CRYPTOD)]);
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    d.publish(&mut p).unwrap();
    d.publish(&mut p).unwrap(); // unread: waits in the ring
    c.chan().shutdown();
    // Back before entropyd noticed: the old ring is not to be found.
    assert_eq!(
        try_client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY).err(),
        Some(VchanError::NotPublished)
    );
    d.publish(&mut p).unwrap(); // notices, publishes afresh
    assert!(p.console_out.contains("cryptod left; listening again"));
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    assert!(chunks(&mut c).is_empty(), "nothing of the old connection");
    d.publish(&mut p).unwrap();
    assert_eq!(chunks(&mut c).len(), 1);
}

#[test]
fn a_subscriber_created_again_is_followed_to_its_new_id() {
    let (hv, mut p, mut d) = boot("", &[("cryptod", CRYPTOD)]);
    hv.kill(CRYPTOD);
    p.names.insert("cryptod".into(), DomId(11));
    p.advance(Duration::from_secs(2));
    d.publish(&mut p).unwrap();
    assert!(p.console_out.contains("cryptod is now dom11 (was dom1)"));
    let mut c = client(&hv, DomId(11), ENTROPYD, port::ENTROPY);
    d.publish(&mut p).unwrap();
    assert!(!chunks(&mut c).is_empty());
}

#[test]
fn a_subscriber_not_there_at_boot_is_served_when_it_appears() {
    let (hv, mut p, mut d) = boot("", &[]);
    assert!(p.console_out.contains("cryptod not there yet"));
    d.publish(&mut p).unwrap();
    p.names.insert("cryptod".into(), CRYPTOD);
    p.advance(Duration::from_secs(2));
    d.publish(&mut p).unwrap();
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    d.publish(&mut p).unwrap();
    // The chunk of the round that published the ring waited in it.
    assert_eq!(chunks(&mut c).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
}

/// A subscriber created after entropyd: with a platform that tells of
/// names changes, its ring and first chunk are there within one STEP of its
/// name appearing; without, at the periodic look-up (RESOLVE_EVERY s).
fn first_chunk_after_the_name_appears(watch_names: bool) -> Duration {
    let (hv, mut p, mut d) = boot("interval_ms=1000\n", &[]);
    p.watch_names = watch_names;
    d.publish(&mut p).unwrap();
    let appears = p.mono_ns + 300_000_000;
    p.names_at.push((appears, "cryptod".into(), CRYPTOD));
    for _ in 0..10 {
        d.rest(&mut p).unwrap();
        d.publish(&mut p).unwrap();
        if let Ok(mut c) = try_client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY) {
            assert_eq!(chunks(&mut c).len(), 1, "the round that published the ring sent a chunk");
            return Duration::from_nanos(p.mono_ns - appears);
        }
    }
    panic!("cryptod never served");
}

#[test]
fn a_subscriber_is_served_as_soon_as_its_name_appears() {
    let watched = first_chunk_after_the_name_appears(true);
    assert!(watched <= Duration::from_millis(200), "{watched:?}");
    let polled = first_chunk_after_the_name_appears(false);
    assert!(polled >= Duration::from_millis(700), "{polled:?}");
}

#[test]
fn without_hardware_entropy_it_fails_closed() {
    let hv = Hypervisor::new();
    let mut p = FakePlatform::new(&hv, ENTROPYD, "entropyd").with_names(&[("cryptod", CRYPTOD)]);
    p.entropy_broken = true;
    assert!(matches!(
        EntropydDriver::<SimBackend>::new(&mut p),
        Err(AppError::Platform(PlatformError::NoEntropy))
    ));
    // And a source that fails later stops publishing.
    p.entropy_broken = false;
    let mut d = EntropydDriver::<SimBackend>::new(&mut p).unwrap();
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    p.entropy_broken = true;
    assert!(d.publish(&mut p).is_err());
    assert!(chunks(&mut c).is_empty());
}

#[test]
fn a_chunk_size_out_of_range_is_refused() {
    let hv = Hypervisor::new();
    for bad in ["chunk=8\n", "chunk=100000\n"] {
        let mut p = FakePlatform::new(&hv, ENTROPYD, "entropyd").settings(bad);
        let e = EntropydDriver::<SimBackend>::new(&mut p).err().expect("refused");
        let AppError::Settings(s) = &e else { panic!("{e}") };
        assert!(
            matches!(
                **s,
                SettingsError::Line {
                    line: 1,
                    problem: Problem::OutOfRange { min: 32, max: 512 },
                    ..
                }
            ),
            "{e}"
        );
    }
}

#[test]
fn a_subscriber_whose_channel_cannot_be_published_at_start_gets_one_later() {
    // xenstored busy at start: the first store write fails. entropyd starts
    // all the same and publishes to cryptod once it looks the name up again.
    let hv = Hypervisor::new();
    hv.fail_store_writes(ENTROPYD, 1);
    let mut p = FakePlatform::new(&hv, ENTROPYD, "entropyd")
        .with_names(&[("cryptod", CRYPTOD)])
        .settings("allow=cryptod\n");
    let mut d = EntropydDriver::new(&mut p).unwrap();
    assert_eq!(
        p.lines_with(
            "entropyd: cryptod (dom1) not published to yet (link: transport: backend: store operation failed)"
        ),
        1,
        "{}",
        p.console_out
    );
    assert_eq!(
        try_client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY).err(),
        Some(VchanError::NotPublished)
    );
    // Names are looked up again every RESOLVE_EVERY seconds.
    p.advance(Duration::from_secs(2));
    d.publish(&mut p).unwrap();
    let mut c = client(&hv, CRYPTOD, ENTROPYD, port::ENTROPY);
    d.publish(&mut p).unwrap();
    assert!(!chunks(&mut c).is_empty(), "{}", p.console_out);
    assert_eq!(p.lines_with("entropyd: cryptod is dom1; publishing to it"), 1);
}
