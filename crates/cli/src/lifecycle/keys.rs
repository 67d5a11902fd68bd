//! The lifecycle scenario's keys steps, against the running cryptod: a
//! signing-key rotation on demand (the new kid signs, a token of the old
//! key still verifies through the overlap), the old kid revoked (a verifier
//! that fetches the keyset refuses that token at once, the new key's token
//! still verifies), one token revoked by its cti from dom0 (the same
//! verifier refuses it after fetching the revocation list), and a root
//! rotation (the verifier, the unlocker and the unlock agent, all pinned
//! to the provisioned root.pub, follow the chain; the unlocker still
//! unlocks; the scenario's final audit check verifies the log with the
//! provisioned root.pub).
//!
//! Tokens come from the world's `policy_pd` domain (the ACL grants it
//! `net:read` for `netd`), asked from this process; the verifier is the
//! one every Portcullis verifier uses ([`Trust`], pinned to `root.pub`).

use super::Ctx;
use crate::{keyfile, Failure};
use portcullis_apps::common::{port, CALL_TIMEOUT};
use portcullis_apps::link::Link;
use portcullis_apps::policy_pd::{issue_request, issued_token};
use portcullis_apps::trust::Trust;
use portcullis_hosted::{HostedBackend, HostedPlatform, World};
use portcullis_proto::danger;
use portcullis_proto::msg::RequestId;
use portcullis_proto::scope::{Scope, ScopeSet};
use portcullis_proto::token::{self, Expectations, MemoryReplayCache, VerifyError};

const AUDIENCE: &str = "netd";

/// A token, its kid and its cti (read, not verified).
struct Issued {
    token: Vec<u8>,
    kid: Vec<u8>,
    cti: Vec<u8>,
}

/// A client link to cryptod as the world's `policy_pd`, and a verifier.
struct Client {
    _p: HostedPlatform,
    link: Link<HostedBackend>,
    trust: Trust,
    next_id: u8,
}

impl Client {
    fn connect(cx: &Ctx) -> Result<Client, Failure> {
        let world = World::open(cx.demo.world.dir()).map_err(|e| format!("world: {e}"))?;
        let find = |name: &str| -> Result<_, Failure> {
            let dom = world.resolve(name).map_err(|e| format!("world: {e}"))?;
            dom.ok_or_else(|| Failure::Error(format!("world: no domain {name}")))
        };
        let (cryptod, me) = (find("cryptod")?, find("policy_pd")?);
        let mut p = HostedPlatform::open(world, me).map_err(|e| format!("world: {e}"))?;
        let link = portcullis_apps::net::connect(&mut p, cryptod, port::CRYPTOD, cx.demo.step)
            .map_err(|e| format!("cryptod: {e}"))?;
        let root = keyfile::load(&cx.prov.join("root.pub"))?;
        Ok(Client { _p: p, link, trust: Trust::new(root.public, &root.kid), next_id: 0 })
    }

    fn rid(&mut self) -> RequestId {
        self.next_id = self.next_id.wrapping_add(1);
        RequestId([self.next_id; 16])
    }

    /// A fresh `net:read` token for [`AUDIENCE`], and its kid and cti.
    fn token(&mut self) -> Result<Issued, Failure> {
        let rid = self.rid();
        let req = issue_request(
            "policy_pd",
            rid,
            rid.0,
            Scope::NetRead,
            AUDIENCE,
            120,
            crate::demo::unix_now(),
        );
        let answer = self.link.call(&req, CALL_TIMEOUT).map_err(|e| format!("cryptod: {e}"))?;
        let tok = issued_token(rid, answer).map_err(|e| format!("token: {e}"))?;
        let seen = danger::inspect(&tok).map_err(|e| format!("token: {e}"))?.into_unverified();
        Ok(Issued { token: tok, kid: seen.kid, cti: seen.claims.cti })
    }

    /// What a verifier decides now: it fetches cryptod's keyset and
    /// revocation list (root-signed, checked), then verifies the token.
    fn verify(&mut self, tok: &[u8]) -> Result<Result<(), VerifyError>, Failure> {
        let (k, r) = (self.rid(), self.rid());
        self.trust.fetch_keyset(&mut self.link, k, CALL_TIMEOUT).map_err(|e| e.to_string())?;
        self.trust.fetch_revocations(&mut self.link, r, CALL_TIMEOUT).map_err(|e| e.to_string())?;
        let expect = Expectations {
            audience: AUDIENCE,
            scope: ScopeSet::single(Scope::NetRead),
            now: crate::demo::unix_now(),
            skew: 5,
        };
        // A fresh replay cache: the same token is checked more than once here.
        let mut replay = MemoryReplayCache::new(4);
        Ok(token::verify(tok, self.trust.keyset(), &expect, &mut replay, self.trust.revoked())
            .map(|_| ()))
    }
}

/// Runs `portcullis admin <rest>`; whether it exited 0 and said ok.
fn admin(cx: &mut Ctx, rest: &[&str]) -> Result<bool, Failure> {
    let mut p = super::admin(cx.demo, &cx.prov, rest)?;
    let status = p.wait_exit(cx.demo.step)?;
    Ok(status == 0 && p.wait_for("admin: ok", 0, cx.demo.step).is_ok())
}

pub(crate) fn steps(cx: &mut Ctx) -> Result<(), Failure> {
    let mut c = Client::connect(cx)?;
    let Issued { token: old, kid: old_kid, .. } = c.token()?;

    // 1. Rotate on demand: a new kid signs; the old key's token still
    // verifies (the overlap).
    let ok = admin(cx, &["key-rotate"])?;
    cx.check("key-rotate applied", ok);
    let Issued { token: new, kid: new_kid, cti: new_cti } = c.token()?;
    cx.check("after key-rotate a new kid signs", new_kid != old_kid);
    let v = c.verify(&old)?;
    cx.check("the old key's token still verifies within the overlap", v.is_ok());

    // 2. Revoke the old kid: refused at the verifier's next verification.
    let ok = admin(cx, &["key-revoke", "--kid", &hex::encode(&old_kid)])?;
    cx.check("key-revoke of the old kid applied", ok);
    let v = c.verify(&old)?;
    cx.check(
        "a token signed by the revoked kid is refused by a verifier",
        v == Err(VerifyError::UnknownKid),
    );
    let v = c.verify(&new)?;
    cx.check("the new key's token still verifies", v.is_ok());
    let again = admin(cx, &["key-revoke", "--kid", &hex::encode(&old_kid)])?;
    cx.check("revoking a kid no longer published is refused", !again);

    // 3. Revoke one token from dom0 by its cti.
    let ok = admin(cx, &["token-revoke", "--cti", &hex::encode(&new_cti)])?;
    cx.check("token-revoke applied", ok);
    let v = c.verify(&new)?;
    cx.check("the revoked token is refused by a verifier", v == Err(VerifyError::Revoked));

    // 4. Rotate the root: the unlocker and the agent, pinned to the
    // provisioned root.pub, follow the chain the keyset carries (the unlock
    // works), and the audit log verifies with that root.pub at the end of
    // the scenario (its root_rotate record leads to the new root).
    let ok = admin(cx, &["root-rotate"])?;
    cx.check("root-rotate applied", ok);
    let fresh = c.token()?.token;
    let v = c.verify(&fresh)?;
    cx.check(
        "a verifier pinned to the old root follows the chain to the new one",
        v.is_ok() && c.trust.root().1 == 1,
    );
    let ok = admin(cx, &["key-rotate"])?;
    cx.check("admin commands naming the old root.pub still apply", ok);
    // A TOTP step the operator steps have not used: wait for the next step
    // to begin, then use the one after it.
    let wait = 30 - crate::demo::unix_now() % 30;
    std::thread::sleep(std::time::Duration::from_secs(wait + 1));
    let code = crate::demo::code_from_uri(&cx.uri, crate::demo::unix_now() + 30)?;
    let mut unlocker = cx.demo.guest("unlocker")?;
    unlocker.wait_for("unlocker: ready", 0, cx.demo.step)?;
    let n = unlocker.count();
    unlocker.type_line(&code)?;
    let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, cx.demo.step)?;
    cx.check("after root-rotate the unlocker still unlocks", l.contains("unlocked"));
    let _ = unlocker.wait_exit(cx.demo.step);
    cx.demo.reap(&mut unlocker);

    cx.audited.extend(["key_rotate", "key_revoke", "token_revoke", "root_rotate"]);
    Ok(())
}
