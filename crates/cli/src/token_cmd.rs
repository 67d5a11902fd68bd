//! `portcullis token mint|verify|inspect`.

use crate::{keyfile, Failure};
use clap::Subcommand;
use portcullis_proto::scope::ScopeSet;
use portcullis_proto::token::{
    self, Claims, Expectations, KeyEntry, Keyset, MemoryReplayCache, RevokedSet,
};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Mint a token signed with a private key file. Prints it as hex unless --out is given.
    Mint {
        /// Private COSE_Key file (from `portcullis keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Issuer name.
        #[arg(long, default_value = "cryptod")]
        iss: String,
        /// Subject (the vm or operator the token is for).
        #[arg(long)]
        sub: String,
        /// Audience (the service that will accept the token).
        #[arg(long)]
        aud: String,
        /// Space-separated scopes, e.g. "luks:unlock net:modify".
        #[arg(long)]
        scope: String,
        /// Lifetime in seconds (1 to 300).
        #[arg(long, default_value_t = 60)]
        ttl: u64,
        /// Requester nonce as hex (default: 16 random bytes).
        #[arg(long)]
        nonce: Option<String>,
        /// Issue time, epoch seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// Write the raw token bytes to this file instead of printing hex.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify a token. Exit 0 only if it is valid; otherwise print a one-line reason and exit 1.
    Verify {
        /// Public (or private) COSE_Key files of the trusted signing keys.
        #[arg(long = "pub", required = true)]
        keys: Vec<PathBuf>,
        /// This consumer's audience name.
        #[arg(long)]
        aud: String,
        /// Space-separated scopes the action needs.
        #[arg(long)]
        scope: String,
        /// Allowed clock skew in seconds.
        #[arg(long, default_value_t = 30)]
        skew: u64,
        /// Verification time, epoch seconds (default: now).
        #[arg(long)]
        now: Option<u64>,
        /// A revoked token id (cti) as hex; may be repeated.
        #[arg(long)]
        revoked: Vec<String>,
        /// Token file (raw or hex), or - for standard input.
        token: PathBuf,
    },
    /// Print a token's header and claims WITHOUT verifying it.
    Inspect {
        /// Token file (raw or hex), or - for standard input.
        token: PathBuf,
    },
}

const MAX_TOKEN_FILE: u64 = 3 * token::MAX_TOKEN_LEN as u64;

pub(crate) fn now_or(given: Option<u64>) -> Result<u64, Failure> {
    match given {
        Some(t) => Ok(t),
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .map_err(|_| Failure::Error("system clock is before 1970".into())),
    }
}

/// Reads a token from a file or stdin; accepts raw COSE bytes or hex text.
pub(crate) fn read_token(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut bytes = Vec::new();
    let res = if path == Path::new("-") {
        std::io::stdin().take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_TOKEN_FILE + 1).read_to_end(&mut bytes))
    };
    res.map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_TOKEN_FILE {
        return Err(Failure::Invalid("token is malformed (input too large)".into()));
    }
    let text = std::str::from_utf8(&bytes).ok().map(str::trim);
    match text {
        Some(t) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()) => hex::decode(t)
            .map_err(|e| Failure::Invalid(format!("token is malformed (bad hex: {e})"))),
        _ => Ok(bytes),
    }
}

fn parse_scope(s: &str) -> Result<ScopeSet, Failure> {
    ScopeSet::parse_list(s).map_err(|e| Failure::Error(format!("--scope {s:?}: {e}")))
}

pub fn run(cmd: TokenCmd) -> Result<(), Failure> {
    match cmd {
        TokenCmd::Mint { key, iss, sub, aud, scope, ttl, nonce, now, out } => {
            let loaded = keyfile::load(&key)?;
            let sk =
                loaded.secret.ok_or_else(|| format!("{}: has no private key", key.display()))?;
            if ttl == 0 || ttl > token::MAX_LIFETIME_SECS {
                return Err(Failure::Error(format!(
                    "--ttl must be 1 to {} seconds",
                    token::MAX_LIFETIME_SECS
                )));
            }
            let nonce = match nonce {
                Some(h) => hex::decode(h).map_err(|e| format!("--nonce: not hex: {e}"))?,
                None => random(16)?,
            };
            let iat = now_or(now)?;
            let claims = Claims {
                iss,
                sub,
                aud,
                exp: iat + ttl,
                nbf: iat,
                iat,
                cti: random(token::CTI_LEN)?,
                scope: parse_scope(&scope)?,
                nonce,
            };
            let tok = token::mint(&sk, &loaded.kid, &claims).map_err(|e| format!("mint: {e}"))?;
            match out {
                Some(path) => keyfile::write_file(&path, &tok, false)?,
                None => println!("{}", hex::encode(&tok)),
            }
            Ok(())
        }
        TokenCmd::Verify { keys, aud, scope, skew, now, revoked, token: path } => {
            let mut keyset = Keyset::default();
            for path in &keys {
                let k = keyfile::load(path)?;
                keyset
                    .push(KeyEntry {
                        kid: k.kid,
                        key: k.public,
                        not_before: 0,
                        not_after: u64::MAX,
                    })
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let mut ids = Vec::new();
            for r in &revoked {
                ids.push(hex::decode(r).map_err(|e| format!("--revoked {r}: not hex: {e}"))?);
            }
            let revoked = RevokedSet::from_ids(ids);
            let bytes = read_token(&path)?;
            let expect = Expectations {
                audience: &aud,
                scope: parse_scope(&scope)?,
                now: now_or(now)?,
                skew,
            };
            let mut replay = MemoryReplayCache::new(1);
            match token::verify(&bytes, &keyset, &expect, &mut replay, &revoked) {
                Ok(c) => {
                    println!(
                        "valid: sub={} aud={} scope=\"{}\" exp={} cti={}",
                        c.sub,
                        c.aud,
                        c.scope,
                        c.exp,
                        hex::encode(&c.cti)
                    );
                    Ok(())
                }
                Err(e) => Err(Failure::Invalid(format!("{} ({})", e, e.code()))),
            }
        }
        TokenCmd::Inspect { token: path } => {
            let bytes = read_token(&path)?;
            let seen = portcullis_proto::danger::inspect(&bytes)
                .map_err(|e| Failure::Invalid(format!("{} ({})", e, e.code())))?
                .into_unverified();
            let (kid, alg, c) = (seen.kid, seen.alg, seen.claims);
            println!("UNVERIFIED token ({} bytes)", bytes.len());
            println!("  alg   {alg}");
            println!("  kid   {}", hex::encode(kid));
            println!("  iss   {}", c.iss);
            println!("  sub   {}", c.sub);
            println!("  aud   {}", c.aud);
            println!("  iat   {}", c.iat);
            println!("  nbf   {}", c.nbf);
            println!("  exp   {} (lifetime {} s)", c.exp, c.exp.saturating_sub(c.iat));
            println!("  cti   {}", hex::encode(&c.cti));
            println!("  scope {}", c.scope);
            println!("  nonce {}", hex::encode(&c.nonce));
            Ok(())
        }
    }
}

pub(crate) fn random(n: usize) -> Result<Vec<u8>, Failure> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).map_err(|e| format!("OS random source: {e}"))?;
    Ok(v)
}
