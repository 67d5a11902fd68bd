//! unlocker: the operator console.
//!
//! Prompts for the operator's TOTP code (not echoed), sends it to cryptod
//! with a fresh ephemeral X25519 public key, checks the `luks:unlock` token it
//! gets back against cryptod's root-signed keyset, opens the unlock secret
//! (sealed to the ephemeral key, bound to the request transcript), hands it
//! with the token to the dom0 unlock agent, and zeroes every secret on the
//! way out (all of them live in `Zeroizing` buffers).

use alloc::string::String;
use alloc::vec;
use core::time::Duration;

use portcullis_authority::unlock::{open_unlock_secret, Transcript};
use portcullis_platform::{ConfigItem, DomId, Platform, PlatformError};
use portcullis_proto::envelope::Message;
use portcullis_proto::msg::{
    is_valid_totp_code, TotpResult, TotpValidateReq, UnlockOutcome, UnlockRequest,
};
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::common::{port, random, request_id, resolve_dom, AppError, Settings, CALL_TIMEOUT};
use crate::link::Link;
use crate::net::connect;
use crate::say;
use crate::trust::{root_from_cose_key, Trust};

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
pub fn refresh_keyset<P: Platform>(
    p: &mut P,
    link: &mut Link<P::Backend>,
    trust: &mut Trust,
) -> Result<(), AppError> {
    trust.fetch_keyset(link, request_id(p)?, CALL_TIMEOUT)
}

/// Runs the unlocker: up to `attempts` prompts (setting, default 3).
pub fn run<P: Platform>(p: &mut P) -> Result<Outcome, AppError> {
    let s = Settings::load(p)?;
    let operator = String::from(s.get("operator", "operator"));
    let device = String::from(s.get("device", p.name()));
    let volume = String::from(s.get("volume", "data"));
    let audience = String::from(s.get("agent_audience", "unlock_agent"));
    let attempts = s.num("attempts", 3)?.max(1);
    let agent = resolve_dom(p, s.get("agent", "dom0"))?;
    let cryptod_dom = resolve_dom(p, s.get("cryptod", "cryptod"))?;
    let mut trust = load_trust(p)?;

    let mut cryptod = connect(p, cryptod_dom, port::CRYPTOD, Duration::from_secs(60))?;
    refresh_keyset(p, &mut cryptod, &mut trust)?;
    say!(p, "unlocker: ready");

    for _ in 0..attempts {
        let mut code = Zeroizing::new(vec![0u8; 16]);
        p.console_write(&alloc::format!("unlocker: TOTP code for {operator}: "));
        let n = match p.console_read_line(&mut code, false, None) {
            Ok(n) => n,
            Err(PlatformError::Timeout) => continue,
            Err(e) => return Err(e.into()),
        };
        p.console_write("\n");
        let typed = core::str::from_utf8(code.get(..n).unwrap_or_default()).unwrap_or("").trim();
        if !is_valid_totp_code(typed) {
            say!(p, "unlocker: a code is 6 or 8 digits");
            continue;
        }
        let code_text = Zeroizing::new(String::from(typed));
        match attempt(
            p,
            &mut cryptod,
            &mut trust,
            agent,
            &operator,
            &device,
            &volume,
            &audience,
            code_text,
        )? {
            true => return Ok(Outcome::Unlocked),
            false => continue,
        }
    }
    Ok(Outcome::GaveUp)
}

#[allow(clippy::too_many_arguments)]
fn attempt<P: Platform>(
    p: &mut P,
    cryptod: &mut Link<P::Backend>,
    trust: &mut Trust,
    agent: DomId,
    operator: &str,
    device: &str,
    volume: &str,
    audience: &str,
    code: Zeroizing<String>,
) -> Result<bool, AppError> {
    let esk = StaticSecret::from(*Zeroizing::new(random::<P, 32>(p)?));
    let epk = PublicKey::from(&esk).to_bytes();
    let rid = request_id(p)?;
    let nonce: [u8; 16] = random(p)?;
    let req = Message::TotpValidateReq(TotpValidateReq {
        request_id: rid,
        operator_id: operator.into(),
        device_id: device.into(),
        totp_code: code,
        client_nonce: nonce.to_vec(),
        timestamp: p.now_unix(),
        volume_id: Some(volume.into()),
        ephemeral_pubkey: Some(epk),
        attestation_chain: None,
        metadata: None,
    });
    let resp = match cryptod.call(&req, CALL_TIMEOUT)? {
        Message::TotpValidateResp(r) if r.request_id == rid => r,
        other => {
            return Err(AppError::Protocol(alloc::format!("unexpected {}", other.kind().as_str())))
        }
    };
    if resp.result != TotpResult::Ok {
        let reason = resp.reason.as_deref().unwrap_or("");
        match resp.retry_after {
            Some(s) => {
                say!(p, "unlocker: refused: {} ({reason}); retry after {s} s", resp.result.as_str())
            }
            None => say!(p, "unlocker: refused: {} ({reason})", resp.result.as_str()),
        }
        return Ok(false);
    }
    let (Some(tok), Some(sealed)) = (resp.capability_token, resp.unlock_secret) else {
        return Err(AppError::Protocol("ok without token and secret".into()));
    };
    // Check the token as the agent will, before handing anything on. Our own
    // replay cache is separate from the agent's.
    let mut replay = MemoryReplayCache::new(4);
    let expect = Expectations {
        audience,
        scope: ScopeSet::single(Scope::LuksUnlock),
        now: p.now_unix(),
        skew: 30,
    };
    if let Err(e) = token::verify(&tok, trust.keyset(), &expect, &mut replay, trust.revoked()) {
        // Perhaps the key rotated since we fetched the keyset: fetch once more.
        refresh_keyset(p, cryptod, trust)?;
        let mut replay = MemoryReplayCache::new(4);
        if token::verify(&tok, trust.keyset(), &expect, &mut replay, trust.revoked()).is_err() {
            say!(p, "unlocker: token refused: {e}");
            return Ok(false);
        }
    }
    let transcript = Transcript { request_id: &rid, operator, volume_id: volume, token: &tok };
    let secret = open_unlock_secret(&esk, &sealed, &transcript)
        .map_err(|e| AppError::Protocol(alloc::format!("unlock secret: {e}")))?;
    drop(esk);

    let mut agent_link = connect(p, agent, port::UNLOCK_AGENT, Duration::from_secs(30))?;
    let unlock_id = request_id(p)?;
    let req = Message::UnlockRequest(UnlockRequest {
        request_id: unlock_id,
        volume_id: volume.into(),
        passphrase: secret,
        token: tok,
    });
    let answer = agent_link.call(&req, Duration::from_secs(60));
    drop(req); // zeroizes the passphrase
    let rekicks = agent_link.chan().rekicks();
    if rekicks > 0 {
        say!(p, "unlocker: signalled the agent {rekicks} more time(s) before it read the request");
    }
    match answer? {
        Message::UnlockResult(r) if r.request_id == unlock_id => {
            let reason = r.reason.as_deref().unwrap_or("");
            if r.result == UnlockOutcome::Ok {
                say!(p, "unlocker: volume {volume} unlocked {reason}");
                Ok(true)
            } else {
                say!(p, "unlocker: agent refused: {} ({reason})", r.result.as_str());
                Ok(false)
            }
        }
        other => Err(AppError::Protocol(alloc::format!("unexpected {}", other.kind().as_str()))),
    }
}
