//! The versioned envelope `{ "v": 1, "type": "<name>", "body": { ... } }`:
//! [`Message`](crate::envelope::Message), its encoding and its decoding. The CBOR codec underneath is
//! `crate::cbor`; its errors are re-exported here.
//!
//! `protocol/messages.cddl` is the normative schema.

use alloc::vec::Vec;

use crate::cbor::{set_once, text_enum, Field, Reader, Writer};
pub use crate::cbor::{DecodeError, EncodeError, FieldError};
use crate::msg::{
    AdminReq, AdminResp, Attestation, AttestationReq, AuditAck, AuditLog, EntropyPub, ErrorMsg,
    Keyset, KeysetReq, OutcomeReport, OutcomeResp, RequestId, RevocationList, RevocationListReq,
    TokenIssueReq, TokenIssueResp, TokenRevokeReq, TokenRevokeResp, TotpValidateReq,
    TotpValidateResp, UnlockRequest, UnlockResult,
};

/// The only protocol version this crate speaks (the envelope's `v`).
pub const PROTOCOL_VERSION: u64 = 1;

/// Largest encoded envelope, in bytes; larger input is refused before parsing.
pub const MAX_MESSAGE_LEN: usize = 65536;

/// Deepest nesting of arrays, maps and tags accepted anywhere in an envelope
/// (the envelope map itself is level 1).
pub const MAX_DEPTH: usize = 16;

/// Declares the message types: `MsgType`, `Message` and the body dispatch.
macro_rules! messages {
    ( $( $(#[$vmeta:meta])* $variant:ident($body:ty) = $text:literal, )+ ) => {
        text_enum! {
            /// The envelope's `type`: one per message.
            pub enum MsgType {
                $( $(#[$vmeta])* $variant = $text, )+
            }
        }

        /// One protocol message: the typed body of an envelope.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$vmeta])* $variant($body), )+
        }

        impl Message {
            /// The message's type.
            pub const fn kind(&self) -> MsgType {
                match self {
                    $( Message::$variant(_) => MsgType::$variant, )+
                }
            }

            /// Encodes the body, for a sender `R` that sends it; every arm
            /// outside `R::SENDS` is a constant `false` guard, so a build
            /// links only its role's encoders.
            fn encode_body<R: Role>(&self, w: &mut Writer) -> Result<(), EncodeError> {
                match self {
                    $(
                        Message::$variant(body) if const { R::SENDS.contains(MsgType::$variant) } => {
                            Ok(body.encode(w)?)
                        }
                    )+
                    other => Err(EncodeError::NotSent(other.kind())),
                }
            }

            /// Decodes the body of a message of type `kind`, which `A`
            /// receives. Every arm outside `A::RECEIVES` is a constant `false`
            /// guard, so a receiver's build links only its own decoders.
            fn decode_body<A: Role>(
                kind: MsgType,
                r: &mut Reader<'_>,
            ) -> Result<Message, DecodeError> {
                match kind {
                    $(
                        MsgType::$variant if const { A::RECEIVES.contains(MsgType::$variant) } => {
                            <$body>::decode(r, "body").map(Message::$variant)
                        }
                    )+
                    // Unreachable: the caller refused every type outside
                    // `A::RECEIVES` already, with the same error.
                    _ => Err(DecodeError::UnknownType),
                }
            }
        }

        $(
            impl From<$body> for Message {
                fn from(body: $body) -> Message {
                    Message::$variant(body)
                }
            }
        )+
    };
}

messages! {
    /// entropyd publishes a chunk of entropy.
    EntropyPub(EntropyPub) = "entropy_pub",
    /// unlocker asks cryptod to check an operator's TOTP code.
    TotpValidateReq(TotpValidateReq) = "totp_validate_req",
    /// cryptod's answer to [`TotpValidateReq`].
    TotpValidateResp(TotpValidateResp) = "totp_validate_resp",
    /// A policy VM asks cryptod for a capability token.
    TokenIssueReq(TokenIssueReq) = "token_issue_req",
    /// cryptod's answer to [`TokenIssueReq`].
    TokenIssueResp(TokenIssueResp) = "token_issue_resp",
    /// Ask cryptod to revoke a token.
    TokenRevokeReq(TokenRevokeReq) = "token_revoke_req",
    /// cryptod's answer to [`TokenRevokeReq`].
    TokenRevokeResp(TokenRevokeResp) = "token_revoke_resp",
    /// Ask cryptod for an attestation of the requester.
    AttestationReq(AttestationReq) = "attestation_req",
    /// A signed attestation.
    Attestation(Attestation) = "attestation",
    /// A batch of hash-chained audit records and its signed seal.
    AuditLog(AuditLog) = "audit_log",
    /// The receiver has stored the audit batches up to a sequence number.
    AuditAck(AuditAck) = "audit_ack",
    /// Ask cryptod for its current signed keyset.
    KeysetReq(KeysetReq) = "keyset_req",
    /// A signed keyset.
    Keyset(Keyset) = "keyset",
    /// Ask cryptod for its current signed revocation list.
    RevocationListReq(RevocationListReq) = "revocation_list_req",
    /// A signed revocation list.
    RevocationList(RevocationList) = "revocation_list",
    /// unlocker asks the dom0 unlock agent to open a volume.
    UnlockRequest(UnlockRequest) = "unlock_request",
    /// The unlock agent's answer to [`UnlockRequest`].
    UnlockResult(UnlockResult) = "unlock_result",
    /// A request could not be handled.
    Error(ErrorMsg) = "error",
    /// dom0 sends cryptod an admin command signed by the admin key.
    AdminReq(AdminReq) = "admin_req",
    /// cryptod's answer to [`AdminReq`].
    AdminResp(AdminResp) = "admin_resp",
    /// An enforcer reports a signed outcome to cryptod.
    OutcomeReport(OutcomeReport) = "outcome_report",
    /// cryptod's answer to [`OutcomeReport`].
    OutcomeResp(OutcomeResp) = "outcome_resp",
}

/// A set of message types (a bit per [`MsgType`], in declaration order).
///
/// What a role decodes and encodes are such sets, fixed at compile time
/// through [`Role`]: see [`Message::decode_for`] and [`Message::encode_for`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KindSet(u32);

// One bit per type must fit.
const _: () = assert!(MsgType::ALL.len() <= 32);

impl KindSet {
    /// No type.
    pub const EMPTY: KindSet = KindSet(0);
    /// Every type of this protocol version.
    pub const ALL: KindSet = KindSet::of(MsgType::ALL);

    const fn bit(kind: MsgType) -> u32 {
        1 << kind as u32
    }

    /// The set of `kinds`.
    pub const fn of(kinds: &[MsgType]) -> KindSet {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= KindSet::bit(kinds[i]);
            i += 1;
        }
        KindSet(bits)
    }

    /// The set whose bits are `bits` (bit `i` is `MsgType::ALL[i]`); bits
    /// beyond the last type are dropped.
    pub const fn from_bits(bits: u32) -> KindSet {
        KindSet(bits & KindSet::ALL.0)
    }

    /// The set's bits (bit `i` is `MsgType::ALL[i]`).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether `kind` is in the set.
    pub const fn contains(self, kind: MsgType) -> bool {
        self.0 & KindSet::bit(kind) != 0
    }

    /// The types of both sets.
    pub const fn union(self, other: KindSet) -> KindSet {
        KindSet(self.0 | other.0)
    }

    /// The types in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = MsgType> {
        MsgType::ALL.iter().copied().filter(move |&k| self.contains(k))
    }
}

/// A role's messages: the types it decodes ([`Role::RECEIVES`]) and the
/// types it encodes ([`Role::SENDS`]). A type it does not receive is
/// refused with [`DecodeError::UnknownType`], the same error (and so the
/// same `unknown_type` answer on the wire) as a name outside the schema: a
/// type a receiver never receives is unknown to it. A type it does not send
/// cannot be encoded ([`EncodeError::NotSent`]).
///
/// Implemented by uninhabited marker types, one per role (the guests' roles
/// are in `portcullis_apps::inbox`). A build links the body decoders and
/// encoders of the roles it uses, and no others.
pub trait Role {
    /// The types this role decodes.
    const RECEIVES: KindSet;
    /// The types this role encodes.
    const SENDS: KindSet;
}

/// Decodes and encodes every message type: the role of [`Message::decode`]
/// and [`Message::encode`], and of tools that handle any message.
#[derive(Debug)]
pub enum AnyRole {}

impl Role for AnyRole {
    const RECEIVES: KindSet = KindSet::ALL;
    const SENDS: KindSet = KindSet::ALL;
}

impl Message {
    /// Encodes the message in its envelope. Refuses a message that breaks the
    /// schema or whose encoding exceeds [`MAX_MESSAGE_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_for::<AnyRole>()
    }

    /// Encodes the message as [`Message::encode`] does, for a sender whose
    /// role sends the types in `R::SENDS`; any other type is refused with
    /// [`EncodeError::NotSent`]. Only the body encoders of `R::SENDS` are
    /// compiled into the caller.
    pub fn encode_for<R: Role>(&self) -> Result<Vec<u8>, EncodeError> {
        if !R::SENDS.contains(self.kind()) {
            return Err(EncodeError::NotSent(self.kind()));
        }
        let mut w = Writer::default();
        w.map(3);
        w.text("v");
        w.uint(PROTOCOL_VERSION);
        w.text("type");
        w.text(self.kind().as_str());
        w.text("body");
        self.encode_body::<R>(&mut w)?;
        w.finish()
    }

    /// Decodes one envelope from `bytes`, which must hold exactly one message.
    ///
    /// The three keys may come in any order. The version is judged before
    /// unknown envelope keys, the type and the body, so a peer speaking a newer
    /// version gets `UnsupportedVersion` rather than a complaint about the
    /// rest (the envelope must still be well-formed CBOR of the accepted
    /// subset, within [`MAX_DEPTH`]).
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        Message::decode_for::<AnyRole>(bytes)
    }

    /// Decodes one envelope as [`Message::decode`] does, for a receiver
    /// that decodes only the types in `A::RECEIVES`: any other type, known to
    /// the schema or not, is refused with [`DecodeError::UnknownType`] at
    /// the point where an unknown name is (after the version and the
    /// envelope's keys, before the body is looked at). Only the body
    /// decoders of `A::RECEIVES` are compiled into the caller.
    ///
    /// ```
    /// use portcullis_proto::envelope::{DecodeError, KindSet, Message, MsgType, Role};
    /// use portcullis_proto::msg::{KeysetReq, RequestId};
    ///
    /// /// Receives only `audit_ack`, sends nothing.
    /// enum AckReader {}
    /// impl Role for AckReader {
    ///     const RECEIVES: KindSet = KindSet::of(&[MsgType::AuditAck]);
    ///     const SENDS: KindSet = KindSet::EMPTY;
    /// }
    ///
    /// let bytes = Message::from(KeysetReq { request_id: RequestId([7; 16]) }).encode().unwrap();
    /// assert!(Message::decode(&bytes).is_ok());
    /// assert_eq!(Message::decode_for::<AckReader>(&bytes), Err(DecodeError::UnknownType));
    /// ```
    pub fn decode_for<A: Role>(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge);
        }
        // Structural pass: well-formed, depth-bounded, nothing trailing.
        let mut r = Reader::new(bytes);
        r.skip(1)?;
        if !r.at_end() {
            return Err(DecodeError::TrailingBytes);
        }

        let mut r = Reader::new(bytes);
        let (mut version, mut kind, mut body) = (None, None, None);
        let mut unknown_key = false;
        let len = r.map("envelope")?;
        for _ in 0..len {
            match r.key()? {
                "v" => set_once(&mut version, "v", r.uint("v")?)?,
                "type" => set_once(&mut kind, "type", r.text("type")?)?,
                // Remember where the body is; it is read once `type` is known.
                "body" => set_once(&mut body, "body", r.skip(2)?)?,
                // Refused after the version check: another version may
                // define more envelope keys.
                _ => {
                    r.skip(2)?;
                    unknown_key = true;
                }
            }
        }
        match version {
            Some(PROTOCOL_VERSION) => {}
            Some(v) => return Err(DecodeError::UnsupportedVersion(v)),
            None => return Err(DecodeError::MissingField("v")),
        }
        if unknown_key {
            return Err(DecodeError::UnknownField);
        }
        let kind = kind.ok_or(DecodeError::MissingField("type"))?;
        let kind = MsgType::parse(kind)
            .filter(|&k| A::RECEIVES.contains(k))
            .ok_or(DecodeError::UnknownType)?;
        let body = body.ok_or(DecodeError::MissingField("body"))?;
        let mut r = Reader::new(body);
        let msg = Message::decode_body::<A>(kind, &mut r)?;
        if !r.at_end() {
            return Err(DecodeError::Malformed("body longer than its value"));
        }
        Ok(msg)
    }

    /// The request id the message carries, if it has one.
    pub fn request_id(&self) -> Option<&RequestId> {
        match self {
            Message::TotpValidateReq(m) => Some(&m.request_id),
            Message::TotpValidateResp(m) => Some(&m.request_id),
            Message::TokenIssueReq(m) => Some(&m.request_id),
            Message::TokenIssueResp(m) => Some(&m.request_id),
            Message::TokenRevokeReq(m) => Some(&m.request_id),
            Message::TokenRevokeResp(m) => Some(&m.request_id),
            Message::KeysetReq(m) => Some(&m.request_id),
            Message::AttestationReq(m) => Some(&m.request_id),
            Message::RevocationListReq(m) => Some(&m.request_id),
            Message::UnlockRequest(m) => Some(&m.request_id),
            Message::UnlockResult(m) => Some(&m.request_id),
            Message::Error(m) => m.request_id.as_ref(),
            Message::AdminReq(m) => Some(&m.request_id),
            Message::AdminResp(m) => Some(&m.request_id),
            Message::OutcomeReport(m) => Some(&m.request_id),
            Message::OutcomeResp(m) => Some(&m.request_id),
            Message::EntropyPub(_)
            | Message::Attestation(_)
            | Message::AuditLog(_)
            | Message::AuditAck(_)
            | Message::Keyset(_)
            | Message::RevocationList(_) => None,
        }
    }
}
