//! The protected key-encryption key: `DIR/cryptod/kek.sealed`.
//!
//! The KEK opens cryptod's sealed state, so it is never written in
//! plaintext. The file names its protector and holds only what is useless
//! without it (docs/provisioning.md has the format):
//!
//! - `tpm`: a TPM 2.0 sealed-data object bound to a PCR policy (its public
//!   and private blobs; the private part is encrypted by the TPM's storage
//!   key). Sealed and unsealed with tpm2-tools, which find the TPM through
//!   `TPM2TOOLS_TCTI` (default: the kernel's device).
//! - `passphrase`: the KEK encrypted with ChaCha20-Poly1305 under an
//!   Argon2id key derived from an operator passphrase; the Argon2id
//!   parameters and salt are in the file.
//! - `credential`: the KEK lives in a systemd credential
//!   (`$CREDENTIALS_DIRECTORY/portcullis-kek`); the file holds a check
//!   value that tells whether the credential is the right KEK.
//!
//! Everything read from the file is hostile: its length, every line, every
//! hex field and the Argon2id cost are bounded, and an error names the line.
//!
//! This module is self-contained (std and the crypto crates only) so the
//! integration tests compile it too and unseal with the same code.

use std::fmt;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Where the protected KEK lives, relative to the provisioned directory.
pub const FILE: &str = "cryptod/kek.sealed";
/// The first line of every protected KEK file.
pub const MAGIC: &str = "portcullis-kek-sealed 1";
/// Longest protected KEK file read.
pub const MAX_FILE_LEN: usize = 8 * 1024;
/// Longest TPM public or private blob accepted.
pub const MAX_TPM_BLOB: usize = 2048;
/// The systemd credential's name.
pub const CREDENTIAL_NAME: &str = "portcullis-kek";
/// Longest passphrase read (bytes).
pub const MAX_PASSPHRASE_LEN: usize = 1024;
/// Shortest passphrase `provision` accepts (bytes).
pub const MIN_PASSPHRASE_LEN: usize = 8;
/// The default PCR policy of the `tpm` protector.
pub const DEFAULT_PCRS: &str = "sha256:7";

/// The KEK in memory.
pub type Kek = Zeroizing<[u8; 32]>;

/// What protects the KEK.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protector {
    /// Sealed to a TPM 2.0 under a PCR policy.
    Tpm,
    /// Encrypted under an Argon2id-derived key.
    Passphrase,
    /// Kept in a systemd credential.
    Credential,
}

impl Protector {
    /// Its name in the file and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Protector::Tpm => "tpm",
            Protector::Passphrase => "passphrase",
            Protector::Credential => "credential",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Protector> {
        [Protector::Tpm, Protector::Passphrase, Protector::Credential]
            .into_iter()
            .find(|p| p.name() == s)
    }
}

/// Argon2id cost: memory in KiB, passes, lanes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl Cost {
    /// The default: 64 MiB, 3 passes, 1 lane (OWASP's Argon2id guidance
    /// asks for at least 19 MiB with 2 passes; this is above it).
    pub const DEFAULT: Cost = Cost { m_kib: 64 * 1024, t: 3, p: 1 };
    /// Most memory a file may ask for (1 GiB), so a forged file cannot make
    /// the service allocate without bound.
    pub const MAX_M_KIB: u32 = 1024 * 1024;
    /// Most passes a file may ask for.
    pub const MAX_T: u32 = 64;
    /// Most lanes a file may ask for.
    pub const MAX_P: u32 = 16;

    /// Checks the bounds (Argon2's own minimum is 8 KiB per lane).
    pub fn check(self) -> Result<Cost, String> {
        if self.p == 0 || self.p > Self::MAX_P {
            return Err(format!("p={} is outside 1..={}", self.p, Self::MAX_P));
        }
        if self.t == 0 || self.t > Self::MAX_T {
            return Err(format!("t={} is outside 1..={}", self.t, Self::MAX_T));
        }
        let min = self.p.saturating_mul(8);
        if self.m_kib < min || self.m_kib > Self::MAX_M_KIB {
            return Err(format!("m={} KiB is outside {min}..={}", self.m_kib, Self::MAX_M_KIB));
        }
        Ok(self)
    }

    /// Parses `m=KIB,t=N,p=N` (the command line's form).
    pub fn parse_arg(s: &str) -> Result<Cost, String> {
        let mut c = Cost { m_kib: 0, t: 0, p: 0 };
        let mut seen = [false; 3];
        for part in s.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| format!("{part:?}: not k=v"))?;
            let v: u32 = v.parse().map_err(|_| format!("{part:?}: not a number"))?;
            let i = match k {
                "m" => 0,
                "t" => 1,
                "p" => 2,
                _ => return Err(format!("{k:?}: use m, t and p")),
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(format!("{k} given twice"));
            }
            *[&mut c.m_kib, &mut c.t, &mut c.p][i] = v;
        }
        if seen != [true; 3] {
            return Err("give m=KIB,t=N,p=N".into());
        }
        c.check()
    }
}

impl fmt::Display for Cost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} t={} p={}", self.m_kib, self.t, self.p)
    }
}

/// A PCR selection: one bank and the PCRs in it, e.g. `sha256:0,7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pcrs {
    bank: &'static str,
    pcrs: Vec<u8>,
}

impl Pcrs {
    /// Parses `BANK:N[,N...]` (bank sha1, sha256, sha384 or sha512, PCRs
    /// 0 to 23, each once).
    pub fn parse(s: &str) -> Result<Pcrs, String> {
        let (bank, list) =
            s.split_once(':').ok_or_else(|| format!("{s:?}: use BANK:PCR[,PCR], e.g. sha256:7"))?;
        let bank = ["sha1", "sha256", "sha384", "sha512"]
            .into_iter()
            .find(|b| *b == bank)
            .ok_or_else(|| format!("{s:?}: bank {bank:?} is not sha1, sha256, sha384 or sha512"))?;
        let mut pcrs = Vec::new();
        for n in list.split(',') {
            let v = n
                .parse::<u8>()
                .ok()
                .filter(|v| *v <= 23 && (n == "0" || !n.starts_with('0')))
                .ok_or_else(|| format!("{s:?}: PCR {n:?} is not 0 to 23"))?;
            if pcrs.contains(&v) {
                return Err(format!("{s:?}: PCR {v} given twice"));
            }
            pcrs.push(v);
        }
        pcrs.sort_unstable();
        Ok(Pcrs { bank, pcrs })
    }
}

impl fmt::Display for Pcrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.pcrs.iter().map(u8::to_string).collect();
        write!(f, "{}:{}", self.bank, list.join(","))
    }
}

/// A parsed protected KEK file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sealed {
    /// A TPM sealed-data object.
    Tpm {
        /// Its PCR policy.
        pcrs: Pcrs,
        /// TPM2B_PUBLIC as tpm2_create writes it.
        public: Vec<u8>,
        /// TPM2B_PRIVATE as tpm2_create writes it.
        private: Vec<u8>,
    },
    /// Argon2id + ChaCha20-Poly1305.
    Passphrase {
        /// Argon2id cost.
        cost: Cost,
        /// Argon2id salt.
        salt: [u8; 16],
        /// AEAD nonce.
        nonce: [u8; 12],
        /// The encrypted KEK and its tag.
        ciphertext: [u8; 48],
    },
    /// A systemd credential.
    Credential {
        /// SHA-256 of a label and the KEK.
        check: [u8; 32],
    },
}

impl Sealed {
    /// Its protector.
    pub fn protector(&self) -> Protector {
        match self {
            Sealed::Tpm { .. } => Protector::Tpm,
            Sealed::Passphrase { .. } => Protector::Passphrase,
            Sealed::Credential { .. } => Protector::Credential,
        }
    }

    /// The file's text.
    pub fn encode(&self) -> String {
        let mut s = header(self.protector());
        match self {
            Sealed::Tpm { pcrs, public, private } => {
                s.push_str(&format!(
                    "pcrs {pcrs}\npublic {}\nprivate {}\n",
                    hex::encode(public),
                    hex::encode(private)
                ));
            }
            Sealed::Passphrase { cost, salt, nonce, ciphertext } => {
                s.push_str(&passphrase_aad(cost, salt));
                s.push_str(&format!(
                    "nonce {}\nciphertext {}\n",
                    hex::encode(nonce),
                    hex::encode(ciphertext)
                ));
            }
            Sealed::Credential { check } => {
                s.push_str(&format!(
                    "credential {CREDENTIAL_NAME}\ncheck {}\n",
                    hex::encode(check)
                ));
            }
        }
        s
    }

    /// Parses the file's bytes strictly: the lines in order, nothing else.
    pub fn parse(bytes: &[u8]) -> Result<Sealed, KekError> {
        if bytes.len() > MAX_FILE_LEN {
            return Err(KekError::Format {
                line: 0,
                why: format!("longer than {MAX_FILE_LEN} bytes"),
            });
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| KekError::Format { line: 0, why: "not UTF-8 text".into() })?;
        let mut lines = Lines { it: text.split_inclusive('\n').enumerate(), last: 0 };
        let first = lines.next_raw()?;
        if first != MAGIC {
            return Err(KekError::Format {
                line: 1,
                why: format!("not a protected KEK file (expected {MAGIC:?})"),
            });
        }
        let name = lines.field("protector")?;
        let protector = Protector::parse(name).ok_or_else(|| KekError::Format {
            line: lines.last,
            why: format!("unknown protector {name:?} (tpm, passphrase or credential)"),
        })?;
        let sealed = match protector {
            Protector::Tpm => {
                let pcrs = Pcrs::parse(lines.field("pcrs")?)
                    .map_err(|why| KekError::Format { line: lines.last, why })?;
                let public = lines.hex("public", 1..=MAX_TPM_BLOB)?;
                let private = lines.hex("private", 1..=MAX_TPM_BLOB)?;
                Sealed::Tpm { pcrs, public, private }
            }
            Protector::Passphrase => {
                let cost = lines.cost()?;
                let salt = lines.array::<16>("salt")?;
                let nonce = lines.array::<12>("nonce")?;
                let ciphertext = lines.array::<48>("ciphertext")?;
                Sealed::Passphrase { cost, salt, nonce, ciphertext }
            }
            Protector::Credential => {
                let name = lines.field("credential")?;
                if name != CREDENTIAL_NAME {
                    return Err(KekError::Format {
                        line: lines.last,
                        why: format!("credential {name:?}: only {CREDENTIAL_NAME:?} is known"),
                    });
                }
                Sealed::Credential { check: lines.array::<32>("check")? }
            }
        };
        if lines.it.next().is_some() {
            return Err(KekError::Format {
                line: lines.last + 1,
                why: "unexpected line after the last field".into(),
            });
        }
        Ok(sealed)
    }
}

fn header(p: Protector) -> String {
    format!("{MAGIC}\nprotector {}\n", p.name())
}

/// The authenticated header of a passphrase file: the argon2id and salt
/// lines (with the magic and protector lines before them).
fn passphrase_aad(cost: &Cost, salt: &[u8; 16]) -> String {
    format!("argon2id {cost}\nsalt {}\n", hex::encode(salt))
}

struct Lines<'a, I: Iterator<Item = (usize, &'a str)>> {
    it: I,
    last: usize,
}

impl<'a, I: Iterator<Item = (usize, &'a str)>> Lines<'a, I> {
    fn next_raw(&mut self) -> Result<&'a str, KekError> {
        let (i, l) = self
            .it
            .next()
            .ok_or(KekError::Format { line: self.last + 1, why: "the file ends early".into() })?;
        self.last = i + 1;
        l.strip_suffix('\n').ok_or(KekError::Format {
            line: self.last,
            why: "the line does not end with a newline".into(),
        })
    }

    fn field(&mut self, key: &str) -> Result<&'a str, KekError> {
        let l = self.next_raw()?;
        match l.split_once(' ') {
            Some((k, v)) if k == key && !v.is_empty() => Ok(v),
            _ => Err(KekError::Format { line: self.last, why: format!("expected `{key} ...`") }),
        }
    }

    fn hex(
        &mut self,
        key: &str,
        len: std::ops::RangeInclusive<usize>,
    ) -> Result<Vec<u8>, KekError> {
        let v = self.field(key)?;
        let bad = |why: String| KekError::Format { line: self.last, why: format!("{key}: {why}") };
        if v.len() > len.end().saturating_mul(2) {
            return Err(bad(format!("longer than {} bytes", len.end())));
        }
        if v.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("hex must be lowercase".into()));
        }
        let bytes = hex::decode(v).map_err(|e| bad(format!("not hex: {e}")))?;
        if !len.contains(&bytes.len()) {
            return Err(bad(format!(
                "{} bytes, expected {} to {}",
                bytes.len(),
                len.start(),
                len.end()
            )));
        }
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, key: &str) -> Result<[u8; N], KekError> {
        let v = self.hex(key, N..=N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&v);
        Ok(out)
    }

    fn cost(&mut self) -> Result<Cost, KekError> {
        let v = self.field("argon2id")?;
        let line = self.last;
        let bad = |why: String| KekError::Format { line, why: format!("argon2id: {why}") };
        let mut it = v.split(' ');
        let mut num = |k: &str| -> Result<u32, KekError> {
            it.next()
                .and_then(|f| f.strip_prefix(k))
                .and_then(|f| f.strip_prefix('='))
                .filter(|n| !n.is_empty() && n.len() <= 10 && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| bad(format!("expected `m=KIB t=N p=N`, at {k}")))
        };
        let cost = Cost { m_kib: num("m")?, t: num("t")?, p: num("p")? };
        if it.next().is_some() {
            return Err(bad("expected `m=KIB t=N p=N`".into()));
        }
        cost.check().map_err(bad)
    }
}

/// Why the KEK could not be sealed or unsealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KekError {
    /// The protected KEK file is malformed (line 0: the whole file).
    Format {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        why: String,
    },
    /// No TPM answered.
    NoTpm {
        /// The TCTI used.
        tcti: String,
        /// What the tools said.
        detail: String,
    },
    /// The TPM refused to unseal: the PCR values differ from those sealed to.
    PcrPolicy {
        /// The policy sealed to.
        pcrs: String,
        /// The TCTI used.
        tcti: String,
        /// What the tools said.
        detail: String,
    },
    /// A TPM tool failed otherwise.
    Tpm {
        /// The tool.
        step: String,
        /// The TCTI used.
        tcti: String,
        /// What the tool said.
        detail: String,
    },
    /// No passphrase could be had (no file given, no terminal, not under systemd).
    NoPassphrase(String),
    /// The passphrase (or its source) is unusable.
    Passphrase(String),
    /// The passphrase does not open the file (or the file was altered).
    WrongPassphrase,
    /// No systemd credential was found.
    NoCredential(String),
    /// The credential is not this directory's KEK.
    CredentialMismatch(PathBuf),
    /// A helper program failed (systemd-creds, systemd-ask-password).
    Tool {
        /// The program.
        program: String,
        /// What it said.
        detail: String,
    },
}

impl fmt::Display for KekError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KekError::Format { line: 0, why } => write!(f, "{FILE}: {why}"),
            KekError::Format { line, why } => write!(f, "{FILE}:{line}: {why}"),
            KekError::Io { path, why } => write!(f, "{}: {why}", path.display()),
            KekError::NoTpm { tcti, detail } => write!(
                f,
                "no TPM 2.0 reachable (TCTI {tcti}): {detail}; without a TPM use \
                 `--kek passphrase` (or `--kek credential`)"
            ),
            KekError::PcrPolicy { pcrs, tcti, detail } => write!(
                f,
                "the TPM (TCTI {tcti}) refused to unseal the KEK: PCR policy {pcrs} does not \
                 match the current PCR values (firmware, boot loader or Secure Boot state \
                 changed?): {detail}"
            ),
            KekError::Tpm { step, tcti, detail } => {
                write!(f, "{step} failed (TCTI {tcti}): {detail}")
            }
            KekError::NoPassphrase(why) => write!(f, "no KEK passphrase: {why}"),
            KekError::Passphrase(why) => write!(f, "KEK passphrase: {why}"),
            KekError::WrongPassphrase => f.write_str(
                "the passphrase does not open the KEK (wrong passphrase, or the file was altered)",
            ),
            KekError::NoCredential(why) => write!(f, "no KEK credential: {why}"),
            KekError::CredentialMismatch(p) => write!(
                f,
                "{}: the credential is not the KEK of this directory (its check value differs)",
                p.display()
            ),
            KekError::Tool { program, detail } => write!(f, "{program}: {detail}"),
        }
    }
}

impl core::error::Error for KekError {}

fn check_value(kek: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"portcullis kek check v1\0");
    h.update(kek);
    h.finalize().into()
}

fn random<const N: usize>() -> Result<[u8; N], KekError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| KekError::Tool {
        program: "OS random source".into(),
        detail: e.to_string(),
    })?;
    Ok(b)
}

fn derive(pass: &[u8], cost: &Cost, salt: &[u8; 16]) -> Result<Zeroizing<[u8; 32]>, KekError> {
    let params = Params::new(cost.m_kib, cost.t, cost.p, Some(32))
        .map_err(|e| KekError::Passphrase(format!("argon2id {cost}: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass, salt, key.as_mut())
        .map_err(|e| KekError::Passphrase(format!("argon2id: {e}")))?;
    Ok(key)
}

/// Seals `kek` under `pass` with `cost`.
pub fn seal_passphrase(kek: &[u8; 32], pass: &[u8], cost: Cost) -> Result<Sealed, KekError> {
    let cost = cost.check().map_err(KekError::Passphrase)?;
    let (salt, nonce) = (random::<16>()?, random::<12>()?);
    let key = derive(pass, &cost, &salt)?;
    let aad = format!("{}{}", header(Protector::Passphrase), passphrase_aad(&cost, &salt));
    let cipher = ChaCha20Poly1305::new_from_slice(key.as_ref())
        .map_err(|_| KekError::Passphrase("key length".into()))?;
    let ct = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: kek, aad: aad.as_bytes() })
        .map_err(|_| KekError::Passphrase("encryption failed".into()))?;
    let ciphertext: [u8; 48] =
        ct.try_into().map_err(|_| KekError::Passphrase("ciphertext length".into()))?;
    Ok(Sealed::Passphrase { cost, salt, nonce, ciphertext })
}

fn open_passphrase(
    cost: &Cost,
    salt: &[u8; 16],
    nonce: &[u8; 12],
    ciphertext: &[u8; 48],
    pass: &[u8],
) -> Result<Kek, KekError> {
    let key = derive(pass, cost, salt)?;
    let aad = format!("{}{}", header(Protector::Passphrase), passphrase_aad(cost, salt));
    let cipher = ChaCha20Poly1305::new_from_slice(key.as_ref())
        .map_err(|_| KekError::Passphrase("key length".into()))?;
    let plain = Zeroizing::new(
        cipher
            .decrypt(&Nonce::from(*nonce), Payload { msg: ciphertext, aad: aad.as_bytes() })
            .map_err(|_| KekError::WrongPassphrase)?,
    );
    let mut kek = Zeroizing::new([0u8; 32]);
    if plain.len() != 32 {
        return Err(KekError::WrongPassphrase);
    }
    kek.copy_from_slice(&plain);
    Ok(kek)
}

/// Where a passphrase comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PassphraseSource {
    /// A file (its content, less one trailing newline).
    File(PathBuf),
    /// Asked with `systemd-ask-password`: on the terminal when standard
    /// input is one, else through systemd's password agents when the
    /// process runs under systemd; otherwise there is none.
    Ask,
    /// Given in memory (the demo's public test passphrase).
    Fixed(Zeroizing<Vec<u8>>),
}

/// Whether this process runs as a systemd service.
fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

impl PassphraseSource {
    /// Gets the passphrase. `confirm` asks twice (provisioning).
    pub fn get(&self, confirm: bool) -> Result<Zeroizing<Vec<u8>>, KekError> {
        let pass = match self {
            PassphraseSource::File(path) => read_passphrase_file(path)?,
            PassphraseSource::Fixed(p) => p.clone(),
            PassphraseSource::Ask => {
                if !std::io::stdin().is_terminal() && !under_systemd() {
                    return Err(KekError::NoPassphrase(
                        "standard input is not a terminal and this is not a systemd service; \
                         give a passphrase file (kek_passphrase_file in host.toml, or \
                         --kek-passphrase-file)"
                            .into(),
                    ));
                }
                let first = ask("Portcullis KEK passphrase:")?;
                if confirm && *ask("Portcullis KEK passphrase (again):")? != *first {
                    return Err(KekError::Passphrase("the two passphrases differ".into()));
                }
                first
            }
        };
        if pass.is_empty() {
            return Err(KekError::Passphrase("empty".into()));
        }
        Ok(pass)
    }
}

fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KekError> {
    let io = |e: std::io::Error| KekError::Io { path: path.to_path_buf(), why: e.to_string() };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Zeroizing::new(Vec::new());
    f.take(MAX_PASSPHRASE_LEN as u64 + 2).read_to_end(&mut buf).map_err(io)?;
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    if buf.len() > MAX_PASSPHRASE_LEN {
        return Err(KekError::Passphrase(format!(
            "{}: longer than {MAX_PASSPHRASE_LEN} bytes",
            path.display()
        )));
    }
    Ok(buf)
}

fn ask(prompt: &str) -> Result<Zeroizing<Vec<u8>>, KekError> {
    let out = Command::new("systemd-ask-password")
        .args(["--id=portcullis:kek", "--timeout=0", prompt])
        .stdin(Stdio::inherit())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| KekError::Tool {
            program: "systemd-ask-password".into(),
            detail: format!("cannot run it ({e}); install systemd or give a passphrase file"),
        })?;
    let mut stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        return Err(KekError::Tool {
            program: "systemd-ask-password".into(),
            detail: format!("no passphrase ({})", out.status),
        });
    }
    if stdout.ends_with(b"\n") {
        stdout.pop();
    }
    if stdout.len() > MAX_PASSPHRASE_LEN {
        return Err(KekError::Passphrase(format!("longer than {MAX_PASSPHRASE_LEN} bytes")));
    }
    Ok(stdout)
}

/// How to unseal: what the protectors need from the outside.
#[derive(Clone, Debug)]
pub struct Unlock {
    /// The passphrase protector's source.
    pub passphrase: PassphraseSource,
    /// The credentials directory (`$CREDENTIALS_DIRECTORY`), if any.
    pub credentials: Option<PathBuf>,
}

impl Unlock {
    /// From the environment, with a passphrase file if one is configured.
    pub fn from_env(passphrase_file: Option<&Path>) -> Unlock {
        Unlock {
            passphrase: match passphrase_file {
                Some(p) => PassphraseSource::File(p.to_path_buf()),
                None => PassphraseSource::Ask,
            },
            credentials: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        }
    }
}

/// Reads and parses `dir/cryptod/kek.sealed`.
pub fn read(dir: &Path) -> Result<Sealed, KekError> {
    let path = dir.join(FILE);
    let io = |e: std::io::Error| KekError::Io { path: path.clone(), why: e.to_string() };
    let f = std::fs::File::open(&path).map_err(io)?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_LEN as u64 + 1).read_to_end(&mut bytes).map_err(io)?;
    Sealed::parse(&bytes)
}

/// Unseals the KEK of `sealed`.
pub fn unseal(sealed: &Sealed, how: &Unlock) -> Result<Kek, KekError> {
    match sealed {
        Sealed::Passphrase { cost, salt, nonce, ciphertext } => {
            let pass = how.passphrase.get(false)?;
            open_passphrase(cost, salt, nonce, ciphertext, &pass)
        }
        Sealed::Tpm { pcrs, public, private } => tpm::unseal(pcrs, public, private, None),
        Sealed::Credential { check } => {
            let dir = how.credentials.as_ref().ok_or_else(|| {
                KekError::NoCredential(
                    "$CREDENTIALS_DIRECTORY is not set (run the service with \
                     LoadCredentialEncrypted=portcullis-kek:...)"
                        .into(),
                )
            })?;
            let path = dir.join(CREDENTIAL_NAME);
            let io = |e: std::io::Error| KekError::Io { path: path.clone(), why: e.to_string() };
            let f = std::fs::File::open(&path).map_err(io)?;
            let mut buf = Zeroizing::new(Vec::new());
            f.take(33).read_to_end(&mut buf).map_err(io)?;
            let kek = to_kek(&buf).ok_or_else(|| {
                KekError::NoCredential(format!("{}: not 32 bytes", path.display()))
            })?;
            if check_value(&kek) != *check {
                return Err(KekError::CredentialMismatch(path));
            }
            Ok(kek)
        }
    }
}

fn to_kek(b: &[u8]) -> Option<Kek> {
    let arr: [u8; 32] = b.try_into().ok()?;
    Some(Zeroizing::new(arr))
}

/// Protects `kek` with a systemd credential: runs `systemd-creds encrypt`
/// with the KEK on its standard input (never on disk), writing the
/// encrypted credential to `cred`, and decrypts it again to check. `with_key`
/// is systemd-creds' `--with-key` (`auto`, `host`, `tpm2`, `host+tpm2`).
pub fn seal_credential(kek: &[u8; 32], cred: &Path, with_key: &str) -> Result<Sealed, KekError> {
    let tool = |detail: String| KekError::Tool { program: "systemd-creds".into(), detail };
    let name = format!("--name={CREDENTIAL_NAME}");
    let key = format!("--with-key={with_key}");
    let out =
        pipe(Command::new("systemd-creds").args(["encrypt", &name, &key, "-"]).arg(cred), kek)
            .map_err(|e| tool(format!("cannot run it ({e}); apt-get install systemd")))?;
    if !out.status.success() {
        return Err(tool(format!("encrypt failed: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let out = Command::new("systemd-creds")
        .args(["decrypt", &name])
        .arg(cred)
        .arg("-")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool(e.to_string()))?;
    let back = Zeroizing::new(out.stdout);
    if !out.status.success() || back.as_slice() != kek {
        return Err(tool(format!(
            "{} does not decrypt to the KEK: {}",
            cred.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(Sealed::Credential { check: check_value(kek) })
}

/// Runs `cmd` with `input` on its standard input, capturing its output.
fn pipe(cmd: &mut Command, input: &[u8]) -> std::io::Result<std::process::Output> {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input)?;
    }
    child.wait_with_output()
}

/// The `tpm` protector, through tpm2-tools.
pub mod tpm {
    use super::*;

    /// The TCTI the tools will use.
    pub fn tcti() -> String {
        std::env::var("TPM2TOOLS_TCTI")
            .unwrap_or_else(|_| "default (device:/dev/tpmrm0, else /dev/tpm0)".into())
    }

    struct Session {
        dir: tempfile::TempDir,
        tcti: String,
        /// A TCTI set for the tools (else they read the environment).
        given: Option<String>,
    }

    impl Session {
        /// A private temporary directory and a TPM that answers.
        fn open(given: Option<&str>) -> Result<Session, KekError> {
            let tcti = given.map_or_else(tcti, str::to_string);
            let given = given.map(str::to_string);
            let dir =
                tempfile::Builder::new().prefix("portcullis-tpm.").tempdir().map_err(|e| {
                    KekError::Io { path: std::env::temp_dir(), why: format!("temporary dir: {e}") }
                })?;
            let s = Session { dir, tcti, given };
            let out = s
                .run_raw("tpm2_getrandom", &["8", "--hex"], None)
                .map_err(|detail| KekError::NoTpm { tcti: s.tcti.clone(), detail })?;
            if !out.status.success() {
                return Err(KekError::NoTpm { tcti: s.tcti.clone(), detail: stderr_tail(&out) });
            }
            Ok(s)
        }

        fn run_raw(
            &self,
            tool: &str,
            args: &[&str],
            input: Option<&[u8]>,
        ) -> Result<std::process::Output, String> {
            let mut cmd = Command::new(tool);
            cmd.args(args).current_dir(self.dir.path());
            if let Some(t) = &self.given {
                cmd.env("TPM2TOOLS_TCTI", t);
            }
            let r = match input {
                Some(i) => pipe(&mut cmd, i),
                None => cmd.stdin(Stdio::null()).output(),
            };
            r.map_err(|e| {
                format!("cannot run {tool} ({e}); install tpm2-tools (apt-get install tpm2-tools)")
            })
        }

        /// Runs a tool, then flushes transient objects and sessions (there
        /// may be no resource manager between us and the TPM).
        fn run(
            &self,
            tool: &str,
            args: &[&str],
            input: Option<&[u8]>,
        ) -> Result<std::process::Output, KekError> {
            let out = self.run_raw(tool, args, input).map_err(|detail| KekError::Tpm {
                step: tool.into(),
                tcti: self.tcti.clone(),
                detail,
            });
            self.flush();
            let out = out?;
            if out.status.success() {
                Ok(out)
            } else {
                Err(KekError::Tpm {
                    step: tool.into(),
                    tcti: self.tcti.clone(),
                    detail: stderr_tail(&out),
                })
            }
        }

        fn flush(&self) {
            for f in ["-t", "-s"] {
                let _ = self.run_raw("tpm2_flushcontext", &[f], None);
            }
        }

        fn path(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }

        fn primary(&self) -> Result<(), KekError> {
            self.run(
                "tpm2_createprimary",
                &["-Q", "-C", "o", "-c", &self.path("primary.ctx")],
                None,
            )
            .map(drop)
        }
    }

    fn stderr_tail(out: &std::process::Output) -> String {
        let s = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = lines[lines.len().saturating_sub(2)..].join("; ");
        if tail.is_empty() {
            format!("{}", out.status)
        } else {
            tail.chars().take(400).collect()
        }
    }

    /// Checks that a TPM answers (`tcti`: else the environment's).
    pub fn probe(tcti: Option<&str>) -> Result<(), KekError> {
        Session::open(tcti).map(drop)
    }

    /// Seals `kek` to the TPM under a policy on the current values of `pcrs`.
    pub fn seal(kek: &[u8; 32], pcrs: &Pcrs, tcti: Option<&str>) -> Result<Sealed, KekError> {
        let s = Session::open(tcti)?;
        s.primary()?;
        let sel = pcrs.to_string();
        let policy = s.path("pcr.policy");
        s.run("tpm2_createpolicy", &["-Q", "--policy-pcr", "-l", &sel, "-L", &policy], None)?;
        let (pub_path, priv_path) = (s.path("kek.pub"), s.path("kek.priv"));
        // The secret goes in on standard input; `noda`: the object has no
        // password to guess, only the PCR policy.
        s.run(
            "tpm2_create",
            &[
                "-Q",
                "-C",
                &s.path("primary.ctx"),
                "-L",
                &policy,
                "-a",
                "fixedtpm|fixedparent|noda",
                "-i",
                "-",
                "-u",
                &pub_path,
                "-r",
                &priv_path,
            ],
            Some(kek),
        )?;
        let read = |p: &str| {
            std::fs::read(p).map_err(|e| KekError::Io { path: p.into(), why: e.to_string() })
        };
        let (public, private) = (read(&pub_path)?, read(&priv_path)?);
        if public.len() > MAX_TPM_BLOB || private.len() > MAX_TPM_BLOB {
            return Err(KekError::Tpm {
                step: "tpm2_create".into(),
                tcti: s.tcti.clone(),
                detail: format!("blobs larger than {MAX_TPM_BLOB} bytes"),
            });
        }
        Ok(Sealed::Tpm { pcrs: pcrs.clone(), public, private })
    }

    /// Unseals a TPM-sealed KEK; a PCR policy failure is [`KekError::PcrPolicy`].
    pub fn unseal(
        pcrs: &Pcrs,
        public: &[u8],
        private: &[u8],
        tcti: Option<&str>,
    ) -> Result<Kek, KekError> {
        let s = Session::open(tcti)?;
        let (pub_path, priv_path) = (s.path("kek.pub"), s.path("kek.priv"));
        for (p, b) in [(&pub_path, public), (&priv_path, private)] {
            std::fs::write(p, b)
                .map_err(|e| KekError::Io { path: p.into(), why: e.to_string() })?;
        }
        s.primary()?;
        let ctx = s.path("kek.ctx");
        s.run(
            "tpm2_load",
            &["-Q", "-C", &s.path("primary.ctx"), "-u", &pub_path, "-r", &priv_path, "-c", &ctx],
            None,
        )?;
        let auth = format!("pcr:{pcrs}");
        // Without -o the secret comes back on standard output (a pipe).
        let out = s.run_raw("tpm2_unseal", &["-c", &ctx, "-p", &auth], None).map_err(|detail| {
            KekError::Tpm { step: "tpm2_unseal".into(), tcti: s.tcti.clone(), detail }
        });
        s.flush();
        let out = out?;
        let stdout = Zeroizing::new(out.stdout.clone());
        if !out.status.success() {
            let detail = stderr_tail(&out);
            let err = String::from_utf8_lossy(&out.stderr);
            if err.contains("0x99D") || err.contains("0x99d") || err.contains("policy check") {
                return Err(KekError::PcrPolicy { pcrs: pcrs.to_string(), tcti: s.tcti, detail });
            }
            return Err(KekError::Tpm { step: "tpm2_unseal".into(), tcti: s.tcti, detail });
        }
        to_kek(&stdout).ok_or_else(|| KekError::Tpm {
            step: "tpm2_unseal".into(),
            tcti: s.tcti.clone(),
            detail: format!("returned {} bytes, not 32", stdout.len()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Cost = Cost { m_kib: 64, t: 1, p: 1 };

    fn fixed(p: &str) -> Unlock {
        Unlock {
            passphrase: PassphraseSource::Fixed(Zeroizing::new(p.as_bytes().to_vec())),
            credentials: None,
        }
    }

    #[test]
    fn passphrase_round_trip_and_wrong_passphrase() {
        let kek = [7u8; 32];
        let sealed = seal_passphrase(&kek, b"correct horse", SMALL).unwrap();
        let text = sealed.encode();
        assert!(text.starts_with(
            "portcullis-kek-sealed 1\nprotector passphrase\nargon2id m=64 t=1 p=1\nsalt "
        ));
        let back = Sealed::parse(text.as_bytes()).unwrap();
        assert_eq!(back, sealed);
        assert_eq!(*unseal(&back, &fixed("correct horse")).unwrap(), kek);
        assert_eq!(unseal(&back, &fixed("correct horsf")), Err(KekError::WrongPassphrase));
        // The cost is authenticated: a lowered cost does not open it.
        let lowered = text.replace("m=64 t=1", "m=64 t=2");
        let l = Sealed::parse(lowered.as_bytes()).unwrap();
        assert_eq!(unseal(&l, &fixed("correct horse")), Err(KekError::WrongPassphrase));
        assert!(!text.contains(&hex::encode(kek)));
    }

    #[test]
    fn default_cost_is_recorded() {
        assert_eq!(Cost::DEFAULT.to_string(), "m=65536 t=3 p=1");
        assert_eq!(Cost::parse_arg("m=64,t=1,p=1"), Ok(SMALL));
        for bad in ["m=64,t=1", "m=4,t=1,p=1", "m=64,t=0,p=1", "m=64,t=1,p=1,p=1", "x=1"] {
            assert!(Cost::parse_arg(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_files_are_refused_with_their_line() {
        let good = seal_passphrase(&[1; 32], b"pass word", SMALL).unwrap().encode();
        let err = |s: &str| Sealed::parse(s.as_bytes()).unwrap_err().to_string();
        assert_eq!(err(""), "cryptod/kek.sealed:1: the file ends early");
        assert!(err("portcullis-kek-sealed 2\n").contains(":1: not a protected KEK file"));
        assert!(err("portcullis-kek-sealed 1\nprotector rot13\n").contains(":2: unknown protector"));
        let huge = good.replace("m=64 t=1", "m=4194304 t=1");
        assert!(err(&huge).contains(":3: argon2id: m=4194304 KiB is outside"), "{}", err(&huge));
        let many = good.replace("t=1 p=1", "t=1000000 p=1");
        assert!(err(&many).contains(":3: argon2id: t=1000000"));
        let upper = good.replace("salt ", "salt A");
        assert!(err(&upper).contains(":4: salt:"));
        assert!(err(&format!("{good}extra\n")).contains(":7: unexpected line"));
        assert!(err(good.trim_end()).contains(":6: the line does not end with a newline"));
        assert!(err(&"x".repeat(MAX_FILE_LEN + 1)).contains("longer than 8192 bytes"));
        let tpm = "portcullis-kek-sealed 1\nprotector tpm\npcrs sha256:7\npublic 00\nprivate ";
        assert!(err(&format!("{tpm}{}\n", "00".repeat(MAX_TPM_BLOB + 1)))
            .contains(":5: private: longer"));
        assert!(err("portcullis-kek-sealed 1\nprotector tpm\npcrs md5:7\n").contains(":3: "));
    }

    #[test]
    fn pcr_selections() {
        assert_eq!(Pcrs::parse("sha256:7").unwrap().to_string(), "sha256:7");
        assert_eq!(Pcrs::parse("sha1:7,0").unwrap().to_string(), "sha1:0,7");
        for bad in ["7", "sha256:", "sha256:24", "sha256:7,7", "sha256:07", "md5:1", "sha256:-1"] {
            assert!(Pcrs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn credential_must_match_the_check_value() {
        let kek = [9u8; 32];
        let sealed = Sealed::Credential { check: check_value(&kek) };
        let text = sealed.encode();
        assert_eq!(Sealed::parse(text.as_bytes()).unwrap(), sealed);
        let dir = tempfile::tempdir().unwrap();
        let mut how = fixed("x");
        assert!(matches!(unseal(&sealed, &how), Err(KekError::NoCredential(_))));
        how.credentials = Some(dir.path().to_path_buf());
        assert!(matches!(unseal(&sealed, &how), Err(KekError::Io { .. })));
        std::fs::write(dir.path().join(CREDENTIAL_NAME), [8u8; 32]).unwrap();
        assert!(matches!(unseal(&sealed, &how), Err(KekError::CredentialMismatch(_))));
        std::fs::write(dir.path().join(CREDENTIAL_NAME), [9u8; 33]).unwrap();
        assert!(matches!(unseal(&sealed, &how), Err(KekError::NoCredential(_))));
        std::fs::write(dir.path().join(CREDENTIAL_NAME), kek).unwrap();
        assert_eq!(*unseal(&sealed, &how).unwrap(), kek);
    }

    #[test]
    fn passphrase_files_lose_one_newline_and_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pass");
        std::fs::write(&p, b"secret words\n").unwrap();
        assert_eq!(*PassphraseSource::File(p.clone()).get(false).unwrap(), b"secret words");
        std::fs::write(&p, b"\n").unwrap();
        assert_eq!(
            PassphraseSource::File(p.clone()).get(false),
            Err(KekError::Passphrase("empty".into()))
        );
        std::fs::write(&p, vec![b'a'; MAX_PASSPHRASE_LEN + 1]).unwrap();
        assert!(PassphraseSource::File(p).get(false).is_err());
    }
}
