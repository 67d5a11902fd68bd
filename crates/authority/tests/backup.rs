//! A state restored from a backup: cryptod's first chain says so
//! (`restored_from` in its `chain_start` record) until the collector has
//! acknowledged a record of that chain; after that the BACKUP section is no
//! longer pending and the next boot does not say it again.

use portcullis_authority::authority::Config;
use portcullis_authority::backup::{self, RecoveryKey, Restored};
use portcullis_authority::sealed::{self, section};
use portcullis_authority::{Authority, PeerId};
use portcullis_proto::msg::{AuditAck, AuditAction, AuditRecord};

mod common;
use common::*;

const T0: u64 = 1_700_000_000;

fn boot(state: sealed::SealedState) -> (Authority, AuditRecord, AuditRecord) {
    let mut a = Authority::new(Config::default(), state, T0).unwrap();
    let out = a.handle(&PeerId::new(2, "entropyd"), &entropy(1), T0, b"hw");
    let all: Vec<AuditRecord> = records(&out).iter().map(|r| audit_record(r)).collect();
    let first = all.first().cloned().expect("chain_start");
    assert_eq!(first.action, AuditAction::ChainStart);
    let last = all.last().cloned().expect("chain_start");
    (a, first, last)
}

fn restored_from(r: &AuditRecord) -> Option<String> {
    r.metadata.as_ref()?.get("restored_from").cloned()
}

#[test]
fn a_restored_state_is_noted_once_in_the_audit_log() {
    // Through a backup file, as `portcullis backup` does it.
    let key = RecoveryKey::from_bytes([5; 32]);
    let file = backup::create(&state(), &key, T0 - 60, [7; 16], [1; 32], [2; 12]).unwrap();
    let (h, mut st) = backup::open(&file, &key).unwrap();
    let r = Restored { backup_id: h.backup_id, created: h.created, pending: true };
    st.set_section(section::BACKUP, Some(r.encode()));

    let (mut a, first, last) = boot(st);
    assert_eq!(restored_from(&first).as_deref(), Some("07".repeat(16).as_str()));
    let kek = [9; 32];
    // Not acknowledged yet: still pending.
    let again = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    assert!(Restored::decode(again.section(section::BACKUP).unwrap()).unwrap().pending);
    let (_, first_again, _) = boot(again);
    assert!(restored_from(&first_again).is_some(), "said again: the first was never acknowledged");

    a.seal_audit(T0);
    a.handle(
        &PeerId::new(3, "collector"),
        &AuditAck { chain_id: last.chain_id, seq: last.seq }.into(),
        T0,
        b"",
    );
    let after = sealed::unseal(&a.export(&kek).unwrap(), &kek).unwrap();
    let sec = Restored::decode(after.section(section::BACKUP).unwrap()).unwrap();
    assert_eq!(sec, Restored { pending: false, ..r });
    let (_, next, _) = boot(after);
    assert_eq!(restored_from(&next), None, "the next boot does not say it again");
}

#[test]
fn a_malformed_backup_section_is_refused_at_start() {
    let mut st = state();
    st.set_section(section::BACKUP, Some(vec![1, 2, 3]));
    assert!(Authority::new(Config::default(), st, T0).is_err());
}

proptest::proptest! {
    /// Hostile input: any bytes as a backup, any text as a recovery key,
    /// any body as the section: an error, never a panic; a backup with any
    /// one byte changed never opens.
    #[test]
    fn hostile_backups_keys_and_sections_never_panic(
        bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
        text in "[cbdefghijklnrtuvA-Z -]{0,90}",
        at in 0usize..10_000,
    ) {
        let key = RecoveryKey::from_bytes([5; 32]);
        let _ = backup::open(&bytes, &key);
        let _ = RecoveryKey::parse(&text);
        let _ = Restored::decode(&bytes);
        let good = backup::create(&state(), &key, 1, [1; 16], [2; 32], [3; 12]).unwrap();
        let mut bad = good.clone();
        let i = at % bad.len();
        bad[i] ^= 0x80;
        proptest::prop_assert!(backup::open(&bad, &key).is_err());
        let mut longer = [&bytes[..], &good[..]].concat();
        longer.truncate(at.min(longer.len()));
        if longer != good {
            proptest::prop_assert!(backup::open(&longer, &key).is_err());
        }
    }
}
