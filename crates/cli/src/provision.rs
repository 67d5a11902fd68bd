//! `portcullis provision`: create cryptod's sealed state and everything an
//! operator needs to enrol: TOTP secrets (otpauth URI and terminal QR code),
//! the root public key, and the LUKS passphrase of each volume.
//!
//! Output directory layout (see docs/provisioning.md):
//!
//! ```text
//! DIR/cryptod/kek.sealed     the key-encryption key, protected (0600; see crate::kek)
//! DIR/cryptod/kek.cred       with --kek credential: the KEK as a systemd credential (0600)
//! DIR/cryptod/sealed-state   the sealed state (0600)
//! DIR/root.pub               root public key, COSE_Key
//! DIR/admin.key              admin private key, COSE_Key (0600): signs admin
//!                            commands; MOVE IT OFFLINE after provisioning
//! DIR/admin.pub              admin public key, COSE_Key (also sealed in the state)
//! DIR/acl                    the ACL that was sealed (for review; not secret)
//! DIR/operators/<id>.otpauth otpauth URI, only with --save-otpauth (0600)
//! ```

use crate::kek::{self, Cost, PassphraseSource, Pcrs, Protector, Sealed};
use crate::{keyfile, Failure};
use clap::Args;
use ed25519_dalek::SigningKey;
use portcullis_authority::acl::Acl;
use portcullis_authority::sealed::{self, SealedState};
use portcullis_authority::totp::{Algorithm, OperatorSecret};
use portcullis_authority::unlock::luks_passphrase;
use portcullis_proto::key::kid_for;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

/// The ACL sealed when none is given: the four guests of the standard
/// layout, the unlocker granted the provisioned `volumes`; no rule bound
/// to an image (see [`default_acl_bound`]).
pub fn default_acl(volumes: &[String]) -> String {
    default_acl_bound(volumes, None)
}

/// [`default_acl`] with each client rule bound to its guest's image
/// (`image=sha256:…`) when `images` is given.
pub fn default_acl_bound(volumes: &[String], images: Option<&ImageSums>) -> String {
    let image = |guest: &str| match images.and_then(|i| i.get(guest)) {
        Some(digest) => format!(" image=sha256:{}", hex::encode(digest)),
        None => String::new(),
    };
    format!(
        "# Portcullis default ACL: vm names are Xen domain names, resolved by the platform.\n\
         allow vm=unlocker  scopes=luks:unlock aud=unlock_agent volumes={}{}\n\
         allow vm=policy_pd scopes=net:modify,net:read,token:revoke aud=policy_pd,netd,cryptod{}\n\
         deny  vm=*\n",
        volumes.join(","),
        image("unlocker"),
        image("policy_pd"),
    )
}

/// Where the package installs its guest images' `SHA256SUMS`.
pub const IMAGES_PATH: &str = "/usr/share/portcullis/SHA256SUMS";
/// Longest `SHA256SUMS` file read.
pub const MAX_SUMS_LEN: u64 = 64 * 1024;
/// The guests whose default ACL rule is bound to their image.
pub const BOUND_GUESTS: [&str; 2] = ["unlocker", "policy_pd"];

/// The expected image digests, by file name, from a `SHA256SUMS` file.
pub type ImageSums = std::collections::BTreeMap<String, [u8; 32]>;

/// Parses `sha256sum` output (`<64 lowercase hex><space><space or *><name>`
/// per line): every line must be well formed, a name may appear once, and
/// names are taken as they are (the last path component: the package's
/// lists bare names). Errors name `file` and the line.
pub fn parse_sums(file: &Path, text: &str) -> Result<ImageSums, Failure> {
    let mut sums = ImageSums::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| Failure::Error(format!("{}:{}: {why}", file.display(), n + 1));
        let (hex, rest) = line.split_at_checked(64).ok_or_else(|| bad("not `<sha256>  <name>`"))?;
        let digest = portcullis_authority::acl::parse_image(&format!("sha256:{hex}"))
            .ok_or_else(|| bad("the hash is not 64 lowercase hex digits"))?;
        let name = rest
            .strip_prefix("  ")
            .or_else(|| rest.strip_prefix(" *"))
            .ok_or_else(|| bad("not `<sha256>  <name>`"))?;
        let name = name.rsplit('/').next().unwrap_or(name);
        if name.is_empty() || name.chars().any(char::is_control) {
            return Err(bad("empty or bad file name"));
        }
        if sums.insert(name.to_string(), digest).is_some() {
            return Err(bad(&format!("{name} listed twice")));
        }
    }
    Ok(sums)
}

/// Reads the image sums for binding (bounded); each of [`BOUND_GUESTS`]
/// must be listed.
pub fn read_sums(file: &Path) -> Result<ImageSums, Failure> {
    use std::io::Read as _;
    let hint = "pass --images PATH, or --no-image-binding (weaker: any image under a \
                guest's name gets its tokens)";
    let f = fs::File::open(file)
        .map_err(|e| Failure::Error(format!("{}: {e}; {hint}", file.display())))?;
    let mut text = String::new();
    f.take(MAX_SUMS_LEN + 1)
        .read_to_string(&mut text)
        .map_err(|e| Failure::Error(format!("{}: {e}", file.display())))?;
    if text.len() as u64 > MAX_SUMS_LEN {
        return Err(Failure::Error(format!("{}: more than {MAX_SUMS_LEN} bytes", file.display())));
    }
    let sums = parse_sums(file, &text)?;
    for g in BOUND_GUESTS {
        if !sums.contains_key(g) {
            return Err(Failure::Error(format!("{}: no line for {g}", file.display())));
        }
    }
    Ok(sums)
}

#[derive(Args)]
pub struct ProvisionArgs {
    /// Directory to create the outputs in (must not exist yet, or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Operator id; may be repeated. Each gets its own TOTP secret.
    #[arg(long = "operator", default_value = "operator")]
    operators: Vec<String>,
    /// TOTP HMAC algorithm: sha1 (what most authenticator apps support), sha256, sha512.
    #[arg(long, default_value = "sha1")]
    totp_algorithm: String,
    /// TOTP code length: 6 or 8.
    #[arg(long, default_value_t = 6)]
    digits: u8,
    /// Volume id whose LUKS passphrase to print; may be repeated.
    #[arg(long = "volume", default_value = "data")]
    volumes: Vec<String>,
    /// ACL file to seal (default: the built-in ACL for the four guests).
    #[arg(long)]
    acl: Option<PathBuf>,
    /// The guest images' SHA256SUMS: the built-in ACL binds the unlocker's
    /// and policy_pd's rules to these images (`image=sha256:…`).
    #[arg(long, default_value = IMAGES_PATH)]
    images: PathBuf,
    /// Do not bind the built-in ACL's rules to images (weaker: any image
    /// started under a guest's name gets its tokens; for development).
    #[arg(long)]
    no_image_binding: bool,
    /// Issuer name shown by authenticator apps.
    #[arg(long, default_value = "Portcullis")]
    issuer: String,
    /// Do not draw QR codes (the otpauth URI is still printed).
    #[arg(long)]
    no_qr: bool,
    /// Also write each operator's otpauth URI to DIR/operators/ID.otpauth
    /// (for unattended tests; it contains the TOTP secret).
    #[arg(long)]
    save_otpauth: bool,
    /// Create a new LUKS2 volume in this file, keyed with the first volume's passphrase.
    #[arg(long)]
    luks_format: Option<PathBuf>,
    /// Size of the file volume created by --luks-format, MiB.
    #[arg(long, default_value_t = 32)]
    luks_size_mib: u64,
    /// Enrol the first volume's passphrase into this existing LUKS device
    /// (`cryptsetup luksAddKey`), authorised by --luks-key-file.
    #[arg(long, requires = "luks_key_file")]
    luks_device: Option<PathBuf>,
    /// A key file that opens --luks-device today.
    #[arg(long)]
    luks_key_file: Option<PathBuf>,
    /// How the key-encryption key is protected at rest.
    #[command(flatten)]
    kek: KekArgs,
}

/// How a new key-encryption key is protected at rest: `provision` and
/// `backup restore` take the same options.
#[derive(Args)]
pub struct KekArgs {
    /// How the key-encryption key is protected at rest: tpm (sealed to
    /// dom0's TPM 2.0 under --tpm-pcrs), passphrase (Argon2id) or
    /// credential (a systemd credential). It is never stored in plaintext.
    #[arg(long, default_value = "tpm", value_parser = ["tpm", "passphrase", "credential"])]
    kek: String,
    /// The PCR policy of the tpm protector: BANK:PCR[,PCR...].
    #[arg(long, default_value = kek::DEFAULT_PCRS)]
    tpm_pcrs: String,
    /// The passphrase protector's passphrase, read from this file (else it
    /// is asked twice on the terminal with systemd-ask-password).
    #[arg(long)]
    kek_passphrase_file: Option<PathBuf>,
    /// Argon2id cost m=KIB,t=N,p=N (default m=65536,t=3,p=1); recorded in
    /// the file. For tests.
    #[arg(long, hide = true)]
    kek_argon2: Option<String>,
    /// systemd-creds' --with-key for the credential protector: auto, host,
    /// tpm2 or host+tpm2.
    #[arg(long, default_value = "auto", value_parser = ["auto", "host", "tpm2", "host+tpm2"])]
    kek_credential_key: String,
    /// A passphrase given in memory (the demo's public test passphrase).
    #[arg(skip)]
    kek_fixed_passphrase: Option<Zeroizing<Vec<u8>>>,
}

impl ProvisionArgs {
    /// The demo's provisioning: one operator, volume `data` in a new LUKS2
    /// file, otpauth URI saved for unattended code generation.
    pub fn for_demo(out: &Path, volume_file: &Path, no_qr: bool) -> ProvisionArgs {
        ProvisionArgs {
            out: out.to_path_buf(),
            operators: vec!["operator".into()],
            totp_algorithm: "sha1".into(),
            digits: 6,
            volumes: vec!["data".into()],
            acl: None,
            images: PathBuf::from(IMAGES_PATH),
            no_image_binding: true,
            issuer: "Portcullis".into(),
            no_qr,
            save_otpauth: true,
            luks_format: Some(volume_file.to_path_buf()),
            luks_size_mib: 32,
            luks_device: None,
            luks_key_file: None,
            kek: KekArgs {
                kek: "passphrase".into(),
                tpm_pcrs: kek::DEFAULT_PCRS.into(),
                kek_passphrase_file: None,
                kek_argon2: None,
                kek_credential_key: "auto".into(),
                kek_fixed_passphrase: Some(Zeroizing::new(DEMO_PASSPHRASE.as_bytes().to_vec())),
            },
        }
    }
}

/// The demo's KEK passphrase: public (it is in the source and the docs), so
/// a directory the demo provisions protects nothing; the demo says so.
pub const DEMO_PASSPHRASE: &str = "portcullis demo passphrase (public, demo only)";

/// The KEK protector chosen on the command line, checked before any secret
/// is made.
pub(crate) enum KekPlan {
    Tpm(Pcrs),
    Passphrase(Zeroizing<Vec<u8>>, Cost),
    Credential(String),
}

pub(crate) fn kek_plan(args: &KekArgs) -> Result<KekPlan, Failure> {
    let protector = Protector::parse(&args.kek).ok_or_else(|| {
        Failure::Error(format!("--kek {}: use tpm, passphrase or credential", args.kek))
    })?;
    if args.kek_argon2.is_some() && protector != Protector::Passphrase {
        return Err(Failure::Error("--kek-argon2 is for --kek passphrase".into()));
    }
    if args.kek_passphrase_file.is_some() && protector != Protector::Passphrase {
        return Err(Failure::Error("--kek-passphrase-file is for --kek passphrase".into()));
    }
    Ok(match protector {
        Protector::Tpm => {
            let pcrs = Pcrs::parse(&args.tpm_pcrs).map_err(|e| format!("--tpm-pcrs {e}"))?;
            kek::tpm::probe(None).map_err(|e| e.to_string())?;
            KekPlan::Tpm(pcrs)
        }
        Protector::Passphrase => {
            let cost = match &args.kek_argon2 {
                Some(s) => Cost::parse_arg(s).map_err(|e| format!("--kek-argon2: {e}"))?,
                None => Cost::DEFAULT,
            };
            let source = match (&args.kek_fixed_passphrase, &args.kek_passphrase_file) {
                (Some(p), _) => PassphraseSource::Fixed(p.clone()),
                (None, Some(f)) => PassphraseSource::File(f.clone()),
                (None, None) => PassphraseSource::Ask,
            };
            let pass = source.get(true).map_err(|e| e.to_string())?;
            if pass.len() < kek::MIN_PASSPHRASE_LEN {
                return Err(Failure::Error(format!(
                    "the KEK passphrase must be at least {} bytes",
                    kek::MIN_PASSPHRASE_LEN
                )));
            }
            KekPlan::Passphrase(pass, cost)
        }
        Protector::Credential => {
            match Command::new("systemd-creds").arg("--version").output() {
                Ok(o) if o.status.success() => {}
                _ => {
                    return Err(Failure::Error(
                        "--kek credential needs systemd-creds (systemd 250 or later)".into(),
                    ))
                }
            }
            KekPlan::Credential(args.kek_credential_key.clone())
        }
    })
}

/// Protects `kek` as planned and checks it unseals to the same KEK.
pub(crate) fn protect(plan: &KekPlan, dir: &Path, kek_bytes: &[u8; 32]) -> Result<Sealed, Failure> {
    let sealed = match plan {
        KekPlan::Tpm(pcrs) => {
            let sealed = kek::tpm::seal(kek_bytes, pcrs, None).map_err(|e| e.to_string())?;
            if let Sealed::Tpm { pcrs, public, private } = &sealed {
                let back = kek::tpm::unseal(pcrs, public, private, None)
                    .map_err(|e| format!("the TPM-sealed KEK does not unseal: {e}"))?;
                if *back != *kek_bytes {
                    return Err(Failure::Error("the TPM unsealed a different KEK".into()));
                }
            }
            sealed
        }
        KekPlan::Passphrase(pass, cost) => {
            let sealed = kek::seal_passphrase(kek_bytes, pass, *cost).map_err(|e| e.to_string())?;
            let how = kek::Unlock {
                passphrase: PassphraseSource::Fixed(pass.clone()),
                credentials: None,
            };
            let back = kek::unseal(&sealed, &how)
                .map_err(|e| format!("the passphrase-sealed KEK does not reopen: {e}"))?;
            if *back != *kek_bytes {
                return Err(Failure::Error("the passphrase opened a different KEK".into()));
            }
            sealed
        }
        KekPlan::Credential(with_key) => {
            kek::seal_credential(kek_bytes, &dir.join(CREDENTIAL_FILE), with_key)
                .map_err(|e| e.to_string())?
        }
    };
    Ok(sealed)
}

/// Where `--kek credential` writes the encrypted credential.
pub const CREDENTIAL_FILE: &str = "cryptod/kek.cred";

impl ProvisionArgs {
    /// Binds the built-in ACL to the images listed in `sums` (a
    /// `SHA256SUMS` file).
    pub fn with_images(mut self, sums: &Path) -> ProvisionArgs {
        self.images = sums.to_path_buf();
        self.no_image_binding = false;
        self
    }

    /// Seals the ACL in `path` instead of the built-in one.
    pub fn with_acl(mut self, path: &Path) -> ProvisionArgs {
        self.acl = Some(path.to_path_buf());
        self
    }
}

pub(crate) fn totp_algorithm(name: &str) -> Result<Algorithm, Failure> {
    match name {
        "sha1" => Ok(Algorithm::Sha1),
        "sha256" => Ok(Algorithm::Sha256),
        "sha512" => Ok(Algorithm::Sha512),
        other => {
            Err(Failure::Error(format!("--totp-algorithm {other}: use sha1, sha256 or sha512")))
        }
    }
}

pub(crate) fn secret_len(alg: Algorithm) -> usize {
    // RFC 4226 §4 asks for at least 128 bits; use the hash's output size.
    match alg {
        Algorithm::Sha1 => 20,
        Algorithm::Sha256 => 32,
        Algorithm::Sha512 => 64,
    }
}

pub(crate) fn os_random<const N: usize>() -> Result<Zeroizing<[u8; N]>, Failure> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|e| format!("OS random source: {e}"))?;
    Ok(b)
}

/// RFC 4648 base32 without padding, as otpauth URIs carry secrets.
pub fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(data.len().div_ceil(5) * 8);
    let (mut buf, mut bits) = (0u32, 0u32);
    for &b in data {
        buf = (buf << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buf >> bits) & 31) as usize] as char);
        }
        buf &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(ALPHABET[((buf << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// Percent-encodes a URI path segment or query value (RFC 3986 unreserved kept).
fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The Key Uri Format URI authenticator apps scan.
pub fn otpauth_uri(issuer: &str, op: &OperatorSecret) -> String {
    let alg = match op.algorithm {
        Algorithm::Sha1 => "SHA1",
        Algorithm::Sha256 => "SHA256",
        Algorithm::Sha512 => "SHA512",
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm={alg}&digits={}&period=30",
        pct(issuer),
        pct(&op.id),
        base32(&op.secret),
        pct(issuer),
        op.digits
    )
}

pub(crate) fn qr(text: &str) -> Result<String, Failure> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| format!("QR code: {e}"))?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .build())
}

pub(crate) fn prepare_dir(dir: &Path) -> Result<(), Failure> {
    if dir.exists() {
        let mut entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(Failure::Error(format!(
                "{} is not empty; refusing to overwrite provisioned secrets",
                dir.display()
            )));
        }
    }
    for sub in ["", "cryptod", "operators"] {
        let p = dir.join(sub);
        fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir.join("cryptod"), fs::Permissions::from_mode(0o700));
        let _ = fs::set_permissions(dir.join("operators"), fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

fn have_cryptsetup() -> Result<(), Failure> {
    match Command::new("cryptsetup").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err(Failure::Error(
            "cryptsetup is not installed (Debian: apt-get install cryptsetup-bin)".into(),
        )),
    }
}

/// Runs cryptsetup with `key` on standard input.
fn cryptsetup(args: &[&std::ffi::OsStr], key: &[u8]) -> Result<(), Failure> {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run cryptsetup (apt-get install cryptsetup-bin): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(key).map_err(|e| format!("cryptsetup stdin: {e}"))?;
    }
    let status = child.wait().map_err(|e| format!("cryptsetup: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure::Error(format!("cryptsetup {:?} failed: {status}", args.first())))
    }
}

/// The LUKS key material of a volume: the lowercase hex of its 32-byte
/// HKDF output (64 ASCII characters), so it can be typed or printed.
pub fn luks_key_text(master: &[u8; 32], volume: &str) -> Result<Zeroizing<String>, Failure> {
    let raw = luks_passphrase(master, volume).map_err(|e| format!("volume {volume:?}: {e}"))?;
    Ok(Zeroizing::new(hex::encode(raw.as_ref())))
}

pub fn run(args: ProvisionArgs) -> Result<(), Failure> {
    let alg = totp_algorithm(&args.totp_algorithm)?;
    if args.digits != 6 && args.digits != 8 {
        return Err(Failure::Error("--digits must be 6 or 8".into()));
    }
    let acl_text = match &args.acl {
        Some(p) => fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        None if args.no_image_binding => default_acl(&args.volumes),
        None => default_acl_bound(&args.volumes, Some(&read_sums(&args.images)?)),
    };
    let acl = Acl::parse(&acl_text).map_err(|e| format!("ACL: {e}"))?;
    for vol in &args.volumes {
        if !acl.rules().iter().any(|r| r.volumes.contains(vol)) {
            return Err(Failure::Error(format!(
                "ACL: no rule lists volume {vol:?} in volumes=, so its secret could never be released"
            )));
        }
    }
    // Check every precondition before any secret is made, so a bad argument
    // leaves nothing half-provisioned.
    if let Some(file) = &args.luks_format {
        if file.exists() {
            return Err(Failure::Error(format!(
                "{} exists; refusing to overwrite",
                file.display()
            )));
        }
    }
    if args.luks_format.is_some() || args.luks_device.is_some() {
        have_cryptsetup()?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for id in &args.operators {
        if !seen.insert(id) {
            return Err(Failure::Error(format!("operator {id:?} given twice")));
        }
    }
    let plan = kek_plan(&args.kek)?;
    prepare_dir(&args.out)?;

    let mut operators = Vec::new();
    for id in &args.operators {
        let mut secret = Zeroizing::new(vec![0u8; secret_len(alg)]);
        getrandom::fill(&mut secret).map_err(|e| format!("OS random source: {e}"))?;
        let op = OperatorSecret::new(id, &secret, alg, args.digits)
            .map_err(|e| format!("operator {id:?}: {e}"))?;
        operators.push(op);
    }
    let root_seed = os_random::<32>()?;
    let master = os_random::<32>()?;
    let kek = os_random::<32>()?;
    let nonce = os_random::<12>()?;
    let admin_seed = os_random::<32>()?;
    let admin = SigningKey::from_bytes(&admin_seed);
    let admin_pub = admin.verifying_key();
    let mut state = SealedState::new(*root_seed, *master, operators.clone(), acl_text.clone());
    state.admin_key = Some(admin_pub.to_bytes());
    let sealed = sealed::seal(&state, &kek, &nonce).map_err(|e| format!("sealing: {e}"))?;
    // Check the result opens before anything is shown to the operator.
    sealed::unseal(&sealed, &kek).map_err(|e| format!("sealed state does not reopen: {e}"))?;

    let root = SigningKey::from_bytes(&root_seed);
    let root_pub = root.verifying_key();
    let kid = kid_for(&root_pub);
    let protected = protect(&plan, &args.out, &kek)?;
    keyfile::write_file(&args.out.join(kek::FILE), protected.encode().as_bytes(), true)?;
    keyfile::write_file(&args.out.join("cryptod/sealed-state"), &sealed, true)?;
    keyfile::write_file(
        &args.out.join("root.pub"),
        &keyfile::encode_public(&root_pub, &kid)?,
        false,
    )?;
    keyfile::write_file(&args.out.join("acl"), acl_text.as_bytes(), false)?;
    let admin_kid = kid_for(&admin_pub);
    keyfile::write_file(
        &args.out.join("admin.key"),
        &keyfile::encode_private(&admin, &admin_kid)?,
        true,
    )?;
    keyfile::write_file(
        &args.out.join("admin.pub"),
        &keyfile::encode_public(&admin_pub, &admin_kid)?,
        false,
    )?;

    println!("provisioned {}", args.out.display());
    println!("root key id {}", hex::encode(kid));
    match &plan {
        KekPlan::Tpm(pcrs) => println!(
            "KEK sealed to the TPM (TCTI {}) under PCR policy {pcrs}: {}",
            kek::tpm::tcti(),
            kek::FILE
        ),
        KekPlan::Passphrase(_, cost) if args.kek.kek_fixed_passphrase.is_some() => println!(
            "KEK protected by the demo's PUBLIC test passphrase {DEMO_PASSPHRASE:?} \
             (Argon2id {cost}): {}; demo only, never for real secrets",
            kek::FILE
        ),
        KekPlan::Passphrase(_, cost) => {
            println!("KEK protected by your passphrase (Argon2id {cost}): {}", kek::FILE)
        }
        KekPlan::Credential(with_key) => println!(
            "KEK in systemd credential {CREDENTIAL_FILE} (systemd-creds --with-key={with_key}); \
             {} holds its check value",
            kek::FILE
        ),
    }
    println!();
    println!(
        "!! {} signs admin commands (operators, recovery codes).",
        args.out.join("admin.key").display()
    );
    println!("!! MOVE IT OFFLINE NOW (removable medium in a safe) and delete it here:");
    println!(
        "!! anyone who holds it can enrol an operator. admin key id {}",
        hex::encode(admin_kid)
    );
    for op in &operators {
        let uri = Zeroizing::new(otpauth_uri(&args.issuer, op));
        println!();
        println!("operator {}: add this to an authenticator app", op.id);
        println!("  {}", uri.as_str());
        if !args.no_qr {
            println!("{}", qr(&uri)?);
        }
        if args.save_otpauth {
            let path = args.out.join("operators").join(format!("{}.otpauth", op.id));
            keyfile::write_file(&path, uri.as_bytes(), true)?;
        }
    }
    println!();
    for vol in &args.volumes {
        let key = luks_key_text(&master, vol)?;
        println!(
            "LUKS passphrase of volume {vol:?} (shown once; add it with `cryptsetup luksAddKey`):"
        );
        println!("  {}", key.as_str());
    }
    let first = args.volumes.first().ok_or_else(|| Failure::Error("no --volume".into()))?;
    let key = luks_key_text(&master, first)?;
    if let Some(file) = &args.luks_format {
        create_file_volume(file, args.luks_size_mib, key.as_bytes())?;
        println!("created LUKS2 volume {} for {first:?}", file.display());
    }
    if let (Some(dev), Some(existing)) = (&args.luks_device, &args.luks_key_file) {
        let mut a: Vec<&std::ffi::OsStr> = vec!["luksAddKey".as_ref(), "--batch-mode".as_ref()];
        a.extend([
            "--key-file".as_ref(),
            existing.as_os_str(),
            dev.as_os_str(),
            "/dev/stdin".as_ref(),
        ]);
        cryptsetup(&a, key.as_bytes())?;
        println!("enrolled volume {first:?} into {}", dev.display());
    }
    Ok(())
}

/// Creates a LUKS2 file volume whose only key slot holds `key`. The key is
/// 256 bits of HKDF output, so a cheap PBKDF2 costs no security and keeps
/// the demo fast.
pub fn create_file_volume(file: &Path, size_mib: u64, key: &[u8]) -> Result<(), Failure> {
    if file.exists() {
        return Err(Failure::Error(format!("{} exists; refusing to overwrite", file.display())));
    }
    let f = fs::File::create(file).map_err(|e| format!("{}: {e}", file.display()))?;
    f.set_len(size_mib.max(16) * 1024 * 1024).map_err(|e| format!("{}: {e}", file.display()))?;
    drop(f);
    let args: Vec<&std::ffi::OsStr> = vec![
        "luksFormat".as_ref(),
        "--batch-mode".as_ref(),
        "--type".as_ref(),
        "luks2".as_ref(),
        "--pbkdf".as_ref(),
        "pbkdf2".as_ref(),
        "--pbkdf-force-iterations".as_ref(),
        "1000".as_ref(),
        "--key-file".as_ref(),
        "-".as_ref(),
        file.as_os_str(),
    ];
    cryptsetup(&args, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_matches_rfc4648_vectors() {
        // RFC 4648 §10, without padding.
        for (plain, enc) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(plain.as_bytes()), enc);
        }
    }

    #[test]
    fn otpauth_uri_has_every_parameter() {
        let op = OperatorSecret::new("alice smith", b"12345678901234567890", Algorithm::Sha256, 8)
            .unwrap();
        let uri = otpauth_uri("Portcullis", &op);
        assert_eq!(
            uri,
            "otpauth://totp/Portcullis:alice%20smith?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Portcullis&algorithm=SHA256&digits=8&period=30"
        );
    }

    #[test]
    fn default_acl_passes_the_lint() {
        let acl = Acl::parse(&default_acl(&["data".into(), "home".into()])).unwrap();
        assert_eq!(acl.rules()[0].volumes, ["data", "home"]);
        assert!(acl.rules().iter().all(|r| r.image.is_none()));
    }

    #[test]
    fn the_bound_default_acl_requires_each_clients_image() {
        let f = Path::new("SHA256SUMS");
        let (u, p) = ("11".repeat(32), "22".repeat(32));
        let text = format!(
            "{u}  unlocker\n{p} *policy_pd\n{}  portcullis_0.1.0_amd64.deb\n",
            "33".repeat(32)
        );
        let sums = parse_sums(f, &text).unwrap();
        let acl = Acl::parse(&default_acl_bound(&["data".into()], Some(&sums))).unwrap();
        assert_eq!(acl.rules()[0].vm.as_deref(), Some("unlocker"));
        assert_eq!(acl.rules()[0].image, Some([0x11; 32]));
        assert_eq!(acl.rules()[1].image, Some([0x22; 32]));
        assert_eq!(acl.rules()[2].image, None, "deny takes no image");
    }

    #[test]
    fn sums_are_parsed_strictly_naming_the_line() {
        let f = Path::new("/usr/share/portcullis/SHA256SUMS");
        let h = "ab".repeat(32);
        assert_eq!(parse_sums(f, &format!("{h}  dir/unlocker\n")).unwrap()["unlocker"], [0xab; 32]);
        for (text, line) in [
            (format!("{h}  unlocker\n{h}  unlocker\n"), 2),
            (format!("{}  unlocker\n", h.to_uppercase()), 1),
            (format!("{h} unlocker\n"), 1),
            (format!("{h}\n"), 1),
            (format!("{h}  \n"), 1),
            ("short  unlocker\n".to_string(), 1),
            (format!("{h}  ok\n\n"), 2),
            (format!("{h}  ok\n{}  x\n", &h[..63]), 2),
        ] {
            let e = parse_sums(f, &text).unwrap_err().to_string();
            assert!(e.contains(&format!("SHA256SUMS:{line}: ")), "{text:?}: {e}");
        }
    }
}
