//! What each guest decodes: one [`Accepts`] set per guest, the `A` of its
//! [`Link`](crate::link::Link)s.
//!
//! A guest image links only the body decoders of its own set
//! (`Message::decode_for`), and a message of any other type is refused as
//! `unknown_type`, as a type outside the schema is: to that guest it is one.
//! cryptod answers it so on a client link; a client guest reports it as a
//! bad message from its server.

use portcullis_proto::envelope::{Accepts, KindSet, MsgType};

/// cryptod: the five requests it serves to clients, the entropy chunk
/// (entropy link) and the collector's ack (audit link). One set for its
/// links: an ack or a chunk on a client link still decodes and is answered
/// `malformed` (`not_served`), never honoured, as before.
#[derive(Debug)]
pub enum Cryptod {}

impl Accepts for Cryptod {
    const KINDS: KindSet = KindSet::of(&[
        MsgType::TotpValidateReq,
        MsgType::TokenIssueReq,
        MsgType::TokenRevokeReq,
        MsgType::KeysetReq,
        MsgType::RevocationListReq,
        MsgType::EntropyPub,
        MsgType::AuditAck,
    ]);
}

/// entropyd: nothing. It only publishes; what a subscriber writes is
/// discarded undecoded ([`Framed::discard`](crate::link::Framed::discard)).
#[derive(Debug)]
pub enum Entropyd {}

impl Accepts for Entropyd {
    const KINDS: KindSet = KindSet::EMPTY;
}

/// The answers every client guest reads from cryptod besides its own: the
/// keyset and revocation list (trust refresh) and `error`.
const CLIENT_COMMON: KindSet =
    KindSet::of(&[MsgType::Keyset, MsgType::RevocationList, MsgType::Error]);

/// unlocker: cryptod's TOTP verdict and the unlock agent's result.
#[derive(Debug)]
pub enum Unlocker {}

impl Accepts for Unlocker {
    const KINDS: KindSet =
        CLIENT_COMMON.union(KindSet::of(&[MsgType::TotpValidateResp, MsgType::UnlockResult]));
}

/// policy_pd: cryptod's answers to its token issue and revoke requests.
#[derive(Debug)]
pub enum PolicyPd {}

impl Accepts for PolicyPd {
    const KINDS: KindSet =
        CLIENT_COMMON.union(KindSet::of(&[MsgType::TokenIssueResp, MsgType::TokenRevokeResp]));
}
