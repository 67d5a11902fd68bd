//! What each guest decodes and encodes: one [`Role`] per guest, the `A` of
//! its [`Link`](crate::link::Link)s.
//!
//! A guest image links only the body decoders and encoders of its own role
//! (`Message::decode_for`, `Message::encode_for`). A message of a type the
//! guest does not receive is refused as `unknown_type`, as a type outside
//! the schema is: to that guest it is one. cryptod answers it so on a
//! client link; a client guest reports it as a bad message from its
//! server. Sending a type outside the role is refused (`LinkError::Encode`).

use portcullis_proto::envelope::{KindSet, MsgType, Role};

/// cryptod: receives the six requests it serves to clients (the admin
/// command is considered on dom0's link only, by the authority), the entropy
/// chunk (entropy link) and the collector's ack (audit link); one set for
/// its links, so an ack or a chunk on a client link still decodes and is
/// answered `malformed` (`not_served`), never honoured. Sends the answers,
/// `error` and the audit records.
#[derive(Debug)]
pub enum Cryptod {}

impl Role for Cryptod {
    const RECEIVES: KindSet = KindSet::of(&[
        MsgType::TotpValidateReq,
        MsgType::TokenIssueReq,
        MsgType::TokenRevokeReq,
        MsgType::KeysetReq,
        MsgType::RevocationListReq,
        MsgType::AttestationReq,
        MsgType::EntropyPub,
        MsgType::AuditAck,
        MsgType::AdminReq,
        MsgType::OutcomeReport,
    ]);
    const SENDS: KindSet = KindSet::of(&[
        MsgType::TotpValidateResp,
        MsgType::TokenIssueResp,
        MsgType::TokenRevokeResp,
        MsgType::Keyset,
        MsgType::RevocationList,
        MsgType::Attestation,
        MsgType::Error,
        MsgType::AuditLog,
        MsgType::AdminResp,
        MsgType::OutcomeResp,
    ]);
}

/// entropyd: receives nothing (what a subscriber writes is discarded
/// undecoded, [`Framed::discard`](crate::link::Framed::discard)); sends the
/// entropy chunks.
#[derive(Debug)]
pub enum Entropyd {}

impl Role for Entropyd {
    const RECEIVES: KindSet = KindSet::EMPTY;
    const SENDS: KindSet = KindSet::of(&[MsgType::EntropyPub]);
}

/// What every client guest reads from cryptod besides its own answers: the
/// keyset and revocation list (trust refresh) and `error`.
const CLIENT_RECEIVES: KindSet =
    KindSet::of(&[MsgType::Keyset, MsgType::RevocationList, MsgType::Error]);

/// What every client guest asks cryptod for its trust refresh.
const CLIENT_SENDS: KindSet = KindSet::of(&[MsgType::KeysetReq, MsgType::RevocationListReq]);

/// unlocker: cryptod's attestation and TOTP verdict and the unlock agent's
/// result in; the attestation request, the TOTP request and the unlock
/// request out.
#[derive(Debug)]
pub enum Unlocker {}

impl Role for Unlocker {
    const RECEIVES: KindSet = CLIENT_RECEIVES.union(KindSet::of(&[
        MsgType::Attestation,
        MsgType::TotpValidateResp,
        MsgType::UnlockResult,
    ]));
    const SENDS: KindSet = CLIENT_SENDS.union(KindSet::of(&[
        MsgType::AttestationReq,
        MsgType::TotpValidateReq,
        MsgType::UnlockRequest,
    ]));
}

/// policy_pd: its token issue and revoke requests, the attestation of its
/// outcome key and its outcome report out; cryptod's answers in.
#[derive(Debug)]
pub enum PolicyPd {}

impl Role for PolicyPd {
    const RECEIVES: KindSet = CLIENT_RECEIVES.union(KindSet::of(&[
        MsgType::TokenIssueResp,
        MsgType::TokenRevokeResp,
        MsgType::Attestation,
        MsgType::OutcomeResp,
    ]));
    const SENDS: KindSet = CLIENT_SENDS.union(KindSet::of(&[
        MsgType::TokenIssueReq,
        MsgType::TokenRevokeReq,
        MsgType::AttestationReq,
        MsgType::OutcomeReport,
    ]));
}
