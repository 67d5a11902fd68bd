//! unlocker: the operator console.
//!
//! Prompts for the operator's TOTP code or one of their recovery codes
//! (not echoed), asks cryptod for an
//! attestation of itself for `luks:unlock` binding a fresh ephemeral X25519
//! public key, sends the code to cryptod with that key and the attestation
//! (so the sealed secret goes to the attested requester), checks the `luks:unlock` token it
//! gets back against cryptod's root-signed keyset, opens the unlock secret
//! (sealed to the ephemeral key, bound to the request transcript), hands it
//! with the token to the dom0 unlock agent, and zeroes every secret on the
//! way out (all of them live in `Zeroizing` buffers).

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use portcullis_authority::unlock::{open_unlock_secret, Transcript};
use portcullis_platform::{ConfigItem, Platform, PlatformError};
use portcullis_proto::cose::ContentType;
use portcullis_proto::danger::open_unverified;
use portcullis_proto::envelope::{Message, Role};
use portcullis_proto::msg::{
    is_valid_recovery_code, is_valid_totp_code, AttestationClaims, AttestationReq, RequestId,
    SealedSecret, TotpResult, TotpValidateReq, UnlockOutcome, UnlockRequest,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, VerifyError};
use portcullis_vchan::{VchanError, PEER_CHECK};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::common::{port, random, request_id, AppError, CALL_TIMEOUT};
use crate::net::{await_dom, connect_as, sleep};
use crate::say;
use crate::settings::{Settings, UNLOCKER_SPECS};
use crate::startup::Startup;
use crate::trust::{root_from_cose_key, Trust};

/// unlocker's links: they decode its message types only ([`crate::inbox::Unlocker`]).
type Link<B> = crate::link::Link<B, crate::inbox::Unlocker>;

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The volume was opened.
    Unlocked,
    /// Every attempt was refused.
    GaveUp,
}

/// Loads the root public key every verifier is given at boot.
pub fn load_trust<P: Platform>(p: &mut P) -> Result<Trust, AppError> {
    let mut buf = [0u8; 256];
    let n = p.config(ConfigItem::RootPublicKey, &mut buf)?;
    let (root, kid) = root_from_cose_key(buf.get(..n).unwrap_or_default()).ok_or_else(|| {
        AppError::Config("root public key is not an Ed25519 COSE_Key with a kid".into())
    })?;
    Ok(Trust::new(root, &kid))
}

/// Fetches and checks cryptod's current keyset.
pub fn refresh_keyset<P: Platform, A: Role>(
    p: &mut P,
    link: &mut crate::link::Link<P::Backend, A>,
    trust: &mut Trust,
) -> Result<(), AppError> {
    trust.fetch_keyset(link, request_id(p)?, CALL_TIMEOUT)
}

/// What this unlocker unlocks, and as whom (from its settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnlockTarget {
    /// The operator whose TOTP code is asked for.
    pub operator: String,
    /// This device's id (reported to cryptod's limiter).
    pub device: String,
    /// The volume to unlock.
    pub volume: String,
    /// The unlock agent's audience name (the token must name it).
    pub audience: String,
}

/// The fresh values one attempt needs: an ephemeral X25519 secret, the
/// request ids and the client nonce.
pub struct Fresh {
    /// The ephemeral X25519 secret the unlock secret is sealed to.
    pub esk: Zeroizing<[u8; 32]>,
    /// The `totp_validate_req` id.
    pub request_id: RequestId,
    /// The `unlock_request` id (to the agent).
    pub unlock_id: RequestId,
    /// The client nonce (also the attestation's nonce).
    pub nonce: [u8; 16],
}

impl Fresh {
    /// Draws the values from the platform's hardware entropy.
    pub fn draw<P: Platform>(p: &mut P) -> Result<Fresh, AppError> {
        Ok(Fresh {
            esk: Zeroizing::new(random(p)?),
            request_id: request_id(p)?,
            unlock_id: request_id(p)?,
            nonce: random(p)?,
        })
    }
}

/// What an attempt needs next.
pub enum Step {
    /// Send this `totp_validate_req` (it carries the code and the
    /// attestation) to cryptod and give its answer to
    /// [`Attempt::on_cryptod_answer`].
    ToCryptod(alloc::boxed::Box<Message>),
    /// cryptod refused (a console line says why): prompt again.
    Refused(String),
    /// The token does not verify against the keyset held (perhaps the key
    /// rotated): refresh the keyset and call [`Attempt::retry_token`].
    TokenUnverified(VerifyError),
    /// Send this `unlock_request` (it carries the secret) to the agent and
    /// give its answer to [`Attempt::on_agent_answer`].
    ToAgent(alloc::boxed::Box<Message>),
}

/// How an attempt ended at the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Done {
    /// The volume was opened (the agent's reason, if any).
    Unlocked(String),
    /// The agent refused (a console line says why).
    AgentRefused(String),
}

/// One unlock attempt, sans-IO: a code in, a request for cryptod out; its
/// answer in, an `unlock_request` for the agent (or a refusal) out; the
/// agent's answer in, the outcome out. Every secret lives in a zeroizing
/// buffer or the X25519 secret (zeroized on drop).
pub struct Attempt {
    target: UnlockTarget,
    esk: StaticSecret,
    request_id: RequestId,
    unlock_id: RequestId,
    /// The `totp_validate_req` waiting for its attestation.
    pending: Option<TotpValidateReq>,
    /// The token and sealed secret of an `ok` answer, until handed on.
    granted: Option<(Vec<u8>, SealedSecret)>,
    first_error: Option<VerifyError>,
}

impl Attempt {
    /// Starts an attempt with the operator's `code`; returns it and the
    /// `attestation_req` for cryptod (its answer goes to
    /// [`Attempt::on_cryptod_answer`], which then asks for the code check).
    pub fn new(
        target: &UnlockTarget,
        code: Zeroizing<String>,
        fresh: Fresh,
        now: u64,
    ) -> (Attempt, Message) {
        let esk = StaticSecret::from(*fresh.esk);
        let epk = PublicKey::from(&esk).to_bytes();
        let pending = TotpValidateReq {
            request_id: fresh.request_id,
            operator_id: target.operator.clone(),
            device_id: target.device.clone(),
            totp_code: code,
            client_nonce: fresh.nonce.to_vec(),
            timestamp: now,
            volume_id: Some(target.volume.clone()),
            ephemeral_pubkey: Some(epk),
            attestation: None,
            metadata: None,
        };
        let req = Message::AttestationReq(AttestationReq {
            request_id: fresh.request_id,
            action: Scope::LuksUnlock.as_str().into(),
            subject_pubkey: epk,
            nonce: fresh.nonce.to_vec(),
            timestamp: now,
        });
        let attempt = Attempt {
            target: target.clone(),
            esk,
            request_id: fresh.request_id,
            unlock_id: fresh.unlock_id,
            pending: Some(pending),
            granted: None,
            first_error: None,
        };
        (attempt, req)
    }

    /// cryptod's attestation: it must bind this attempt's key and nonce
    /// (cryptod checks its signature when the request carries it back).
    fn on_attestation(&mut self, signed: Vec<u8>) -> Result<Step, AppError> {
        let Some(mut req) = self.pending.take() else {
            return Err(AppError::Protocol("unexpected attestation".into()));
        };
        let ours = open_unverified(&signed)
            .ok()
            .map(|o| o.into_unverified())
            .filter(|o| o.content_type == ContentType::Attestation)
            .and_then(|o| AttestationClaims::from_cbor(&o.payload).ok())
            .is_some_and(|c| {
                Some(c.subject_pubkey) == req.ephemeral_pubkey && c.nonce == req.client_nonce
            });
        if !ours {
            return Err(AppError::Protocol("attestation is not for this attempt".into()));
        }
        req.attestation = Some(signed);
        Ok(Step::ToCryptod(alloc::boxed::Box::new(Message::TotpValidateReq(req))))
    }

    /// cryptod's answer. An answer to another request, or of another kind,
    /// is a protocol error.
    pub fn on_cryptod_answer(
        &mut self,
        answer: Message,
        trust: &Trust,
        now: u64,
    ) -> Result<Step, AppError> {
        let resp = match answer {
            Message::Attestation(a) => return self.on_attestation(a.signed),
            Message::Error(e)
                if self.pending.is_some() && e.request_id == Some(self.request_id) =>
            {
                self.pending = None;
                let line =
                    alloc::format!("attestation refused: {} ({})", e.code.as_str(), e.reason);
                return Ok(Step::Refused(line));
            }
            Message::TotpValidateResp(r)
                if r.request_id == self.request_id && self.pending.is_none() =>
            {
                r
            }
            other => {
                return Err(AppError::Protocol(alloc::format!(
                    "unexpected {}",
                    other.kind().as_str()
                )))
            }
        };
        if resp.result != TotpResult::Ok {
            let reason = resp.reason.as_deref().unwrap_or("");
            let line = match resp.retry_after {
                Some(s) => {
                    alloc::format!(
                        "refused: {} ({reason}); retry after {s} s",
                        resp.result.as_str()
                    )
                }
                None => alloc::format!("refused: {} ({reason})", resp.result.as_str()),
            };
            return Ok(Step::Refused(line));
        }
        let (Some(tok), Some(sealed)) = (resp.capability_token, resp.unlock_secret) else {
            return Err(AppError::Protocol("ok without token and secret".into()));
        };
        self.granted = Some((tok, sealed));
        match self.check_token(trust, now) {
            Ok(()) => self.agent_request(),
            Err(e) => {
                self.first_error = Some(e);
                Ok(Step::TokenUnverified(e))
            }
        }
    }

    /// After a keyset refresh: checks the token once more; a token that
    /// still does not verify is refused.
    pub fn retry_token(&mut self, trust: &Trust, now: u64) -> Result<Step, AppError> {
        if self.granted.is_none() {
            return Err(AppError::Protocol("no token to check".into()));
        }
        match self.check_token(trust, now) {
            Ok(()) => self.agent_request(),
            Err(e) => {
                let first = self.first_error.unwrap_or(e);
                self.granted = None;
                Ok(Step::Refused(alloc::format!("token refused: {first}")))
            }
        }
    }

    /// Checks the token as the agent will, before handing anything on. Our
    /// own replay cache is separate from the agent's.
    fn check_token(&self, trust: &Trust, now: u64) -> Result<(), VerifyError> {
        let Some((tok, _)) = self.granted.as_ref() else { return Err(VerifyError::Malformed) };
        let mut replay = MemoryReplayCache::new(4);
        let expect = Expectations {
            audience: &self.target.audience,
            scope: ScopeSet::single(Scope::LuksUnlock),
            now,
            skew: 30,
        };
        token::verify(tok, trust.keyset(), &expect, &mut replay, trust.revoked()).map(|_| ())
    }

    /// Opens the unlock secret (bound to this request's transcript) and
    /// builds the agent's request.
    fn agent_request(&mut self) -> Result<Step, AppError> {
        let Some((tok, sealed)) = self.granted.take() else {
            return Err(AppError::Protocol("no token to hand on".into()));
        };
        let transcript = Transcript {
            request_id: &self.request_id,
            operator: &self.target.operator,
            volume_id: &self.target.volume,
            token: &tok,
        };
        let secret = open_unlock_secret(&self.esk, &sealed, &transcript)
            .map_err(|e| AppError::Protocol(alloc::format!("unlock secret: {e}")))?;
        Ok(Step::ToAgent(alloc::boxed::Box::new(Message::UnlockRequest(UnlockRequest {
            request_id: self.unlock_id,
            volume_id: self.target.volume.clone(),
            passphrase: secret,
            token: tok,
        }))))
    }

    /// The agent's answer to the `unlock_request`.
    pub fn on_agent_answer(&self, answer: Message) -> Result<Done, AppError> {
        match answer {
            Message::UnlockResult(r) if r.request_id == self.unlock_id => {
                let reason = String::from(r.reason.as_deref().unwrap_or(""));
                if r.result == UnlockOutcome::Ok {
                    Ok(Done::Unlocked(reason))
                } else {
                    Ok(Done::AgentRefused(alloc::format!(
                        "agent refused: {} ({reason})",
                        r.result.as_str()
                    )))
                }
            }
            other => {
                Err(AppError::Protocol(alloc::format!("unexpected {}", other.kind().as_str())))
            }
        }
    }
}

/// Runs the unlocker: up to `attempts` prompts (setting, default 3).
pub fn run<P: Platform>(p: &mut P) -> Result<Outcome, AppError> {
    let mut startup = Startup::new(p.boot_marks());
    let s = Settings::load(p, &UNLOCKER_SPECS)?;
    let target = UnlockTarget {
        operator: String::from(s.text("operator", "")?),
        device: String::from(s.text("device", p.name())?),
        volume: String::from(s.text("volume", "")?),
        audience: String::from(s.text("agent_audience", "")?),
    };
    let attempts = s.num("attempts")?;
    let agent = await_dom(p, "unlocker", s.text("agent", "")?)?;
    let cryptod_dom = await_dom(p, "unlocker", s.text("cryptod", "")?)?;
    let mut trust = load_trust(p)?;
    startup.mark("peers", p.monotonic_ns());

    let mut cryptod: Link<_> = connect_as(p, cryptod_dom, port::CRYPTOD, Duration::from_secs(60))?;
    startup.mark("cryptod", p.monotonic_ns());
    // A cryptod created before entropyd has no signing key, and answers
    // `busy`, until entropyd has seeded it.
    loop {
        match refresh_keyset(p, &mut cryptod, &mut trust) {
            Err(AppError::Busy(_)) => sleep(p, Duration::from_millis(500))?,
            r => break r?,
        }
    }
    startup.mark("keyset", p.monotonic_ns());
    say!(p, "unlocker: ready");
    say!(p, "{}", startup.report("unlocker"));

    for _ in 0..attempts {
        let mut code = Zeroizing::new(vec![0u8; 16]);
        p.console_write(&alloc::format!(
            "unlocker: TOTP code (or a recovery code) for {}: ",
            target.operator
        ));
        // The prompt may wait for days. Look at cryptod's link every
        // PEER_CHECK meanwhile: a cryptod destroyed while we hold its ring
        // mapped stays a zombie domain until we let go (docs/vchan.md, "A
        // destroyed peer"), so stop (xl restarts this domain) rather than
        // wait for the next code to find out.
        while !p.console_wait_input(PEER_CHECK)? {
            if !cryptod.is_open() || cryptod.chan().peer_vanished()? {
                say!(p, "\nunlocker: cryptod (dom{}) is gone", cryptod_dom.0);
                return Err(VchanError::PeerClosed.into());
            }
        }
        let n = match p.console_read_line(&mut code, false, None) {
            Ok(n) => n,
            Err(PlatformError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        p.console_write("\n");
        let typed = core::str::from_utf8(code.get(..n).unwrap_or_default()).unwrap_or("").trim();
        if !is_valid_totp_code(typed) && !is_valid_recovery_code(typed) {
            say!(p, "unlocker: a code is 6 or 8 digits, or a recovery code like ABCDE-FGH23");
            continue;
        }
        let code_text = Zeroizing::new(String::from(typed));
        let fresh = Fresh::draw(p)?;
        let (mut attempt, req) = Attempt::new(&target, code_text, fresh, p.now_unix());
        let mut step =
            attempt.on_cryptod_answer(cryptod.call(&req, CALL_TIMEOUT)?, &trust, p.now_unix())?;
        if let Step::ToCryptod(req) = step {
            let answer = cryptod.call(&req, CALL_TIMEOUT)?;
            drop(req);
            step = attempt.on_cryptod_answer(answer, &trust, p.now_unix())?;
        }
        if let Step::TokenUnverified(_) = step {
            // Perhaps the key rotated since we fetched the keyset: once more.
            refresh_keyset(p, &mut cryptod, &mut trust)?;
            step = attempt.retry_token(&trust, p.now_unix())?;
        }
        let req = match step {
            Step::Refused(line) => {
                say!(p, "unlocker: {line}");
                continue;
            }
            Step::TokenUnverified(e) => {
                say!(p, "unlocker: token refused: {e}");
                continue;
            }
            Step::ToCryptod(_) => {
                say!(p, "unlocker: cryptod answered out of turn");
                continue;
            }
            Step::ToAgent(req) => req,
        };
        let mut agent_link: Link<_> =
            connect_as(p, agent, port::UNLOCK_AGENT, Duration::from_secs(30))?;
        let answer = agent_link.call(&req, Duration::from_secs(60));
        drop(req); // zeroizes the passphrase
        let rekicks = agent_link.chan().rekicks();
        if rekicks > 0 {
            say!(
                p,
                "unlocker: signalled the agent {rekicks} more time(s) before it read the request"
            );
        }
        match attempt.on_agent_answer(answer?)? {
            Done::Unlocked(reason) => {
                say!(p, "unlocker: volume {} unlocked {reason}", target.volume);
                return Ok(Outcome::Unlocked);
            }
            Done::AgentRefused(line) => say!(p, "unlocker: {line}"),
        }
    }
    Ok(Outcome::GaveUp)
}
