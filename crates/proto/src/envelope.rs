//! The versioned envelope `{ "v": 1, "type": "<name>", "body": { ... } }`:
//! [`Message`](crate::envelope::Message), its encoding and its decoding. The CBOR codec underneath is
//! `crate::cbor`; its errors are re-exported here.
//!
//! `protocol/messages.cddl` is the normative schema.

use alloc::vec::Vec;

use crate::cbor::{set_once, text_enum, Field, Reader, Writer};
pub use crate::cbor::{DecodeError, EncodeError, FieldError};
use crate::msg::{
    Attestation, AuditAck, AuditLog, EntropyPub, ErrorMsg, Keyset, KeysetReq, RequestId,
    RevocationList, RevocationListReq, TokenIssueReq, TokenIssueResp, TokenRevokeReq,
    TokenRevokeResp, TotpValidateReq, TotpValidateResp, UnlockRequest, UnlockResult,
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

            fn encode_body(&self, w: &mut Writer) -> Result<(), FieldError> {
                match self {
                    $( Message::$variant(body) => body.encode(w), )+
                }
            }

            fn decode_body(kind: MsgType, r: &mut Reader<'_>) -> Result<Message, DecodeError> {
                match kind {
                    $( MsgType::$variant => <$body>::decode(r, "body").map(Message::$variant), )+
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
}

impl Message {
    /// Encodes the message in its envelope. Refuses a message that breaks the
    /// schema or whose encoding exceeds [`MAX_MESSAGE_LEN`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut w = Writer::default();
        w.map(3);
        w.text("v");
        w.uint(PROTOCOL_VERSION);
        w.text("type");
        w.text(self.kind().as_str());
        w.text("body");
        self.encode_body(&mut w)?;
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
        let kind = MsgType::parse(kind).ok_or(DecodeError::UnknownType)?;
        let body = body.ok_or(DecodeError::MissingField("body"))?;
        let mut r = Reader::new(body);
        let msg = Message::decode_body(kind, &mut r)?;
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
            Message::RevocationListReq(m) => Some(&m.request_id),
            Message::UnlockRequest(m) => Some(&m.request_id),
            Message::UnlockResult(m) => Some(&m.request_id),
            Message::Error(m) => m.request_id.as_ref(),
            Message::EntropyPub(_)
            | Message::Attestation(_)
            | Message::AuditLog(_)
            | Message::AuditAck(_)
            | Message::Keyset(_)
            | Message::RevocationList(_) => None,
        }
    }
}
