//! Role-restricted decoding and encoding (`Message::decode_for`,
//! `Message::encode_for`): a role decodes its own types exactly as
//! `Message::decode` does and refuses every other type with the error (and
//! so the wire answer) of a type name outside the schema; it encodes the
//! types it sends exactly as `Message::encode` does and refuses the rest.

mod msg_samples;

use ciborium::Value;
use portcullis_proto::envelope::{
    AnyRole, DecodeError, EncodeError, KindSet, Message, MsgType, Role, MAX_MESSAGE_LEN,
};
use portcullis_proto::msg::ErrorMsg;

/// Receives and sends the types whose bits are `B`.
enum Only<const B: u32> {}

impl<const B: u32> Role for Only<B> {
    const RECEIVES: KindSet = KindSet::from_bits(B);
    const SENDS: KindSet = KindSet::from_bits(B);
}

/// Receives nothing.
type Nothing = Only<0>;

fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

fn from_bytes(bytes: &[u8]) -> Value {
    ciborium::de::from_reader(bytes).unwrap()
}

/// `bytes` (an envelope map) with its `type` replaced by `name`.
fn with_type(bytes: &[u8], name: &str) -> Vec<u8> {
    let Value::Map(mut entries) = from_bytes(bytes) else { panic!("not a map") };
    for (k, v) in &mut entries {
        if k.as_text() == Some("type") {
            *v = Value::Text(name.into());
        }
    }
    to_bytes(&Value::Map(entries))
}

/// `bytes` (an envelope map) without the entry `key`.
fn without(bytes: &[u8], key: &str) -> Vec<u8> {
    let Value::Map(entries) = from_bytes(bytes) else { panic!("not a map") };
    to_bytes(&Value::Map(entries.into_iter().filter(|(k, _)| k.as_text() != Some(key)).collect()))
}

/// `bytes` (an envelope map) with `key` set to `value`.
fn with(bytes: &[u8], key: &str, value: Value) -> Vec<u8> {
    let Value::Map(mut entries) = from_bytes(bytes) else { panic!("not a map") };
    for (k, v) in &mut entries {
        if k.as_text() == Some(key) {
            *v = value.clone();
        }
    }
    to_bytes(&Value::Map(entries))
}

/// Encoded samples of every type, with their type.
fn encoded_samples() -> Vec<(MsgType, Vec<u8>)> {
    MsgType::ALL
        .iter()
        .flat_map(|&k| msg_samples::samples(k).into_iter().map(move |m| (k, m.encode().unwrap())))
        .collect()
}

/// Variants of an envelope of type `kind` that a receiver must judge the
/// same way whatever the type: as is, with a hostile body, without a body,
/// with another version, with an unknown envelope key.
fn variants(bytes: &[u8]) -> Vec<Vec<u8>> {
    vec![
        bytes.to_vec(),
        with(bytes, "body", Value::Integer(7.into())),
        with(bytes, "body", Value::Map(vec![(Value::Text("x".into()), Value::Null)])),
        without(bytes, "body"),
        with(bytes, "v", Value::Integer(2.into())),
        {
            let Value::Map(mut entries) = from_bytes(bytes) else { panic!("not a map") };
            entries.push((Value::Text("extra".into()), Value::Null));
            to_bytes(&Value::Map(entries))
        },
    ]
}

/// Checks role `A` against every sample: its own types decode exactly as
/// `Message::decode` decodes them; every other type gives what the same
/// bytes give with a type name outside the schema, and the same answer.
/// The types it sends encode exactly as `Message::encode` encodes them; any
/// other is refused as not sent.
fn check_receiver<A: Role>() {
    for &kind in MsgType::ALL {
        for msg in msg_samples::samples(kind) {
            let got = msg.encode_for::<A>();
            if A::SENDS.contains(kind) {
                assert_eq!(got, msg.encode(), "{kind:?} is sent");
            } else {
                assert_eq!(got, Err(EncodeError::NotSent(kind)), "{kind:?} is not sent");
            }
        }
    }
    for (kind, bytes) in encoded_samples() {
        for bytes in variants(&bytes) {
            let got = Message::decode_for::<A>(&bytes);
            if A::RECEIVES.contains(kind) {
                assert_eq!(got, Message::decode(&bytes), "{kind:?} is received");
            } else {
                let unknown = Message::decode(&with_type(&bytes, "no_such_type"));
                assert_eq!(got, unknown, "{kind:?} is not received by {:?}", A::RECEIVES);
                let (got, unknown) = (got.unwrap_err(), unknown.unwrap_err());
                assert_eq!(ErrorMsg::for_decode_error(&got), ErrorMsg::for_decode_error(&unknown));
            }
        }
    }
}

#[test]
fn any_kind_is_plain_decode() {
    assert_eq!(AnyRole::RECEIVES, KindSet::ALL);
    assert_eq!(AnyRole::SENDS, KindSet::ALL);
    for (kind, bytes) in encoded_samples() {
        let msg = Message::decode_for::<AnyRole>(&bytes).unwrap();
        assert_eq!(msg.kind(), kind);
        assert_eq!(Ok(msg), Message::decode(&bytes));
    }
    check_receiver::<AnyRole>();
}

#[test]
fn a_receiver_of_nothing_refuses_every_type_as_unknown() {
    for (kind, bytes) in encoded_samples() {
        assert_eq!(
            Message::decode_for::<Nothing>(&bytes),
            Err(DecodeError::UnknownType),
            "{kind:?}"
        );
    }
    check_receiver::<Nothing>();
}

#[test]
fn a_receiver_of_one_type_decodes_only_that_type() {
    // One receiver per type (const generics need the sets spelled out).
    check_receiver::<Only<{ 1 << 0 }>>();
    check_receiver::<Only<{ 1 << 1 }>>();
    check_receiver::<Only<{ 1 << 2 }>>();
    check_receiver::<Only<{ 1 << 3 }>>();
    check_receiver::<Only<{ 1 << 4 }>>();
    check_receiver::<Only<{ 1 << 5 }>>();
    check_receiver::<Only<{ 1 << 6 }>>();
    check_receiver::<Only<{ 1 << 7 }>>();
    check_receiver::<Only<{ 1 << 8 }>>();
    check_receiver::<Only<{ 1 << 9 }>>();
    check_receiver::<Only<{ 1 << 10 }>>();
    check_receiver::<Only<{ 1 << 11 }>>();
    check_receiver::<Only<{ 1 << 12 }>>();
    check_receiver::<Only<{ 1 << 13 }>>();
    check_receiver::<Only<{ 1 << 14 }>>();
    check_receiver::<Only<{ 1 << 15 }>>();
    check_receiver::<Only<{ 1 << 16 }>>();
    check_receiver::<Only<{ 1 << 17 }>>();
    check_receiver::<Only<{ 1 << 18 }>>();
    check_receiver::<Only<{ 1 << 19 }>>();
    check_receiver::<Only<{ 1 << 20 }>>();
    check_receiver::<Only<{ 1 << 21 }>>();
    assert_eq!(MsgType::ALL.len(), 22, "add a receiver above for the new type");
}

/// The five requests cryptod serves, the entropy chunk and the ack: a
/// realistic mixed set.
enum ServerLike {}

impl Role for ServerLike {
    const RECEIVES: KindSet = KindSet::of(&[
        MsgType::TotpValidateReq,
        MsgType::TokenIssueReq,
        MsgType::TokenRevokeReq,
        MsgType::KeysetReq,
        MsgType::RevocationListReq,
        MsgType::EntropyPub,
        MsgType::AuditAck,
    ]);
    const SENDS: KindSet = KindSet::of(&[MsgType::Keyset, MsgType::Error, MsgType::AuditLog]);
}

#[test]
fn a_mixed_receiver_decodes_its_set_and_refuses_the_rest() {
    check_receiver::<ServerLike>();
    let refused: Vec<MsgType> =
        MsgType::ALL.iter().copied().filter(|&k| !ServerLike::RECEIVES.contains(k)).collect();
    assert_eq!(refused.len(), 15);
    // The schema's code for all of them.
    for kind in refused {
        let bytes = msg_samples::samples(kind)[0].encode().unwrap();
        let e = Message::decode_for::<ServerLike>(&bytes).unwrap_err();
        assert_eq!(e, DecodeError::UnknownType);
        assert_eq!(ErrorMsg::for_decode_error(&e).code.as_str(), "unknown_type");
    }
}

#[test]
fn size_and_version_are_judged_before_the_type() {
    let big = vec![0u8; MAX_MESSAGE_LEN + 1];
    assert_eq!(Message::decode_for::<Nothing>(&big), Err(DecodeError::TooLarge));
    let keyset = msg_samples::samples(MsgType::KeysetReq)[0].encode().unwrap();
    let v2 = with(&keyset, "v", Value::Integer(2.into()));
    assert_eq!(Message::decode_for::<Nothing>(&v2), Err(DecodeError::UnsupportedVersion(2)));
    let mut trailing = keyset.clone();
    trailing.push(0);
    assert_eq!(Message::decode_for::<Nothing>(&trailing), Err(DecodeError::TrailingBytes));
}

#[test]
fn kind_sets() {
    assert_eq!(KindSet::of(MsgType::ALL), KindSet::ALL);
    assert_eq!(KindSet::ALL.iter().collect::<Vec<_>>(), MsgType::ALL);
    assert_eq!(KindSet::EMPTY.iter().count(), 0);
    assert_eq!(KindSet::from_bits(u32::MAX), KindSet::ALL);
    assert_eq!(KindSet::ALL.bits(), (1 << MsgType::ALL.len()) - 1);
    let a = KindSet::of(&[MsgType::Error, MsgType::Keyset]);
    let b = KindSet::of(&[MsgType::Keyset, MsgType::AuditAck]);
    assert_eq!(
        a.union(b).iter().collect::<Vec<_>>(),
        [MsgType::AuditAck, MsgType::Keyset, MsgType::Error]
    );
    for &k in MsgType::ALL {
        assert_eq!(a.contains(k), matches!(k, MsgType::Error | MsgType::Keyset));
        assert!(KindSet::ALL.contains(k));
        assert!(!KindSet::EMPTY.contains(k));
        assert_eq!(KindSet::of(&[k]).iter().collect::<Vec<_>>(), [k]);
    }
}
