//! `portcullis demo`: the whole system on the hosted platform, as a launcher
//! (the stand-in for the Xen toolstack) would run it: provision, start the
//! four guests plus the audit collector and the unlock agent as processes of
//! one hosted world, unlock a LUKS2 file volume with the operator's TOTP
//! code, apply one policy change, verify the collected audit log, and print a
//! summary with timings.
//!
//! `--scenario full` also drives the failure paths (wrong code, replayed
//! code, lockout, the enforcer's refusals, and the audit collector killed
//! with SIGKILL and restarted); the end-to-end test runs that.
//! `--scenario hostile` runs only entropyd, cryptod and the collector and
//! lets hostile clients at cryptod (`crate::hostile`).

use crate::kek;
use crate::provision::{self, ProvisionArgs};
use crate::Failure;
use clap::{Args, ValueEnum};
use portcullis_hosted::World;
use portcullis_platform::{ConfigItem, DomId};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// The operator unlocks the volume; policy_pd applies one change.
    Happy,
    /// Happy, plus every failure path the system must handle.
    Full,
    /// Measure token round trips (policy_pd -> cryptod -> verified token).
    Bench,
    /// Hostile clients speak cryptod's vchan directly, posing as guest
    /// domains: guessing, lockout, restart, reconnect, flooding, audit volume.
    Hostile,
    /// The admin channel: `portcullis admin` resets the operator's secret
    /// and regenerates recovery codes; the unlocker uses them.
    Admin,
    /// Years of operation without re-provisioning: operators, recovery
    /// codes, keys, volumes, the ACL, revocation, backup and restore, all
    /// through `portcullis admin` against a running cryptod.
    Lifecycle,
}

/// A switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

#[derive(Args)]
pub struct DemoArgs {
    /// Work directory (default: a new temporary directory, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Directory holding the guest binaries (default: next to this program).
    #[arg(long)]
    guests: Option<PathBuf>,
    /// Compute the operator's codes from the provisioned secret instead of
    /// asking at the terminal (for unattended runs).
    #[arg(long)]
    totp_from_secret: bool,
    /// Compute the operator's codes with the standard `oathtool` from the
    /// provisioned secret (implies unattended).
    #[arg(long)]
    oathtool: bool,
    /// Open the volume for real with device-mapper (needs root and dm-crypt);
    /// the default checks the passphrase with `cryptsetup open --test-passphrase`.
    #[arg(long)]
    real_open: bool,
    /// What to run.
    #[arg(long, value_enum, default_value = "happy")]
    scenario: Scenario,
    /// Give up on any single step after this many seconds.
    #[arg(long, default_value_t = 90)]
    step_timeout: u64,
    /// Do not draw the QR code.
    #[arg(long)]
    no_qr: bool,
    /// Round trips to measure with `--scenario bench`.
    #[arg(long, default_value_t = 2000)]
    bench_n: usize,
    /// cryptod answers only after the collector has acknowledged the
    /// decision's audit records (write-ahead audit); `off` measures what
    /// that costs.
    #[arg(long, value_enum, default_value = "on")]
    answer_after_audit: OnOff,
}

/// One line a process printed, with when.
pub(crate) struct Line {
    at: Instant,
    pub(crate) text: String,
}

/// A running process of the world, with its output collected.
pub(crate) struct Proc {
    name: String,
    dom: DomId,
    child: Child,
    stdin: Option<ChildStdin>,
    pub(crate) lines: Arc<Mutex<Vec<Line>>>,
    started: Instant,
}

/// Set by `--scenario bench`: the processes' lines (the collector's per
/// batch, cryptod's per acknowledgement) are kept, not echoed, so that
/// echoing them does not load the machine being measured.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn pump(name: String, src: impl Read + Send + 'static, lines: Arc<Mutex<Vec<Line>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(src).lines() {
            let Ok(text) = line else { break };
            if !QUIET.load(std::sync::atomic::Ordering::Relaxed) {
                println!("  [{name:>9}] {text}");
            }
            if let Ok(mut l) = lines.lock() {
                l.push(Line { at: Instant::now(), text });
            }
        }
    });
}

impl Proc {
    pub(crate) fn spawn(name: &str, dom: DomId, mut cmd: Command) -> Result<Proc, Failure> {
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("start {name}: {e}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            pump(name.to_string(), out, lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            pump(name.to_string(), err, lines.clone());
        }
        let stdin = child.stdin.take();
        Ok(Proc { name: name.into(), dom, child, stdin, lines, started })
    }

    pub(crate) fn count(&self) -> usize {
        self.lines.lock().map(|l| l.len()).unwrap_or(0)
    }

    /// Waits for a line containing `pat` (from index `from` on) and returns
    /// its index and time; fails if the process exits or time runs out.
    pub(crate) fn wait_for(
        &mut self,
        pat: &str,
        from: usize,
        timeout: Duration,
    ) -> Result<(usize, Instant), Failure> {
        self.wait_any(&[pat], from, timeout).map(|(i, at, _)| (i, at))
    }

    pub(crate) fn wait_any(
        &mut self,
        pats: &[&str],
        from: usize,
        timeout: Duration,
    ) -> Result<(usize, Instant, String), Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(lines) = self.lines.lock() {
                for (i, l) in lines.iter().enumerate().skip(from) {
                    if pats.iter().any(|p| l.text.contains(p)) {
                        return Ok((i, l.at, l.text.clone()));
                    }
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Give the output threads a moment to deliver the last lines.
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(lines) = self.lines.lock() {
                    for (i, l) in lines.iter().enumerate().skip(from) {
                        if pats.iter().any(|p| l.text.contains(p)) {
                            return Ok((i, l.at, l.text.clone()));
                        }
                    }
                }
                return Err(Failure::Invalid(format!(
                    "{} exited ({status}) before printing {pats:?}",
                    self.name
                )));
            }
            if Instant::now() > deadline {
                return Err(Failure::Invalid(format!(
                    "{}: no {pats:?} within {} s",
                    self.name,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The text of line `i`.
    pub(crate) fn line(&self, i: usize) -> String {
        self.lines.lock().ok().and_then(|l| l.get(i).map(|l| l.text.clone())).unwrap_or_default()
    }

    pub(crate) fn type_line(&mut self, text: &str) -> Result<(), Failure> {
        let stdin = self.stdin.as_mut().ok_or_else(|| format!("{}: no stdin", self.name))?;
        stdin
            .write_all(format!("{text}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| Failure::Error(format!("{}: stdin: {e}", self.name)))
    }

    pub(crate) fn wait_exit(&mut self, timeout: Duration) -> Result<i32, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) =
                self.child.try_wait().map_err(|e| format!("{}: {e}", self.name))?
            {
                return Ok(status.code().unwrap_or(-1));
            }
            if Instant::now() > deadline {
                return Err(Failure::Invalid(format!(
                    "{} did not exit within {} s",
                    self.name,
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The operator's TOTP code at `t`, from an otpauth URI.
pub(crate) fn code_from_uri(uri: &str, t: u64) -> Result<String, Failure> {
    use portcullis_authority::totp::{totp, Algorithm};
    let query = uri.split_once('?').map(|q| q.1).unwrap_or("");
    let get = |k: &str| {
        query.split('&').find_map(|kv| kv.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
    };
    let secret = base32_decode(get("secret").unwrap_or("")).ok_or("otpauth URI: bad secret")?;
    let alg = match get("algorithm").unwrap_or("SHA1") {
        "SHA256" => Algorithm::Sha256,
        "SHA512" => Algorithm::Sha512,
        _ => Algorithm::Sha1,
    };
    let digits: u8 = get("digits").unwrap_or("6").parse().map_err(|_| "otpauth URI: bad digits")?;
    Ok(format!("{:0width$}", totp(&secret, alg, digits, t), width = digits as usize))
}

/// The operator's current code as the standard `oathtool` computes it.
fn code_from_oathtool(uri: &str) -> Result<String, Failure> {
    let query = uri.split_once('?').map(|q| q.1).unwrap_or("");
    let secret = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("secret="))
        .ok_or("otpauth URI: no secret")?;
    let out = Command::new("oathtool")
        .args(["--totp", "--base32", secret])
        .output()
        .map_err(|e| format!("cannot run oathtool (apt-get install oathtool): {e}"))?;
    if !out.status.success() {
        return Err(Failure::Error(format!(
            "oathtool failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn base32_decode(s: &str) -> Option<Vec<u8>> {
    let (mut out, mut buf, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buf = (buf << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub(crate) struct Demo {
    pub(crate) dir: PathBuf,
    /// cryptod's KEK, unsealed; on disk only while cryptod starts.
    pub(crate) kek: kek::Kek,
    pub(crate) world: World,
    exe: PathBuf,
    guests: PathBuf,
    pub(crate) step: Duration,
    timings: Vec<(String, Duration)>,
}

impl Demo {
    pub(crate) fn guest(&self, name: &str) -> Result<Proc, Failure> {
        self.guest_from(name, &self.guests.join(name))
    }

    /// Starts the executable `bin` as domain `name`, measured first (the
    /// launcher plays dom0: the SHA-256 of the executable it starts is the
    /// domain's measurement, as the kernel xl loads is on Xen).
    pub(crate) fn guest_from(&self, name: &str, bin: &Path) -> Result<Proc, Failure> {
        let dom = self.world.resolve(name).map_err(|e| format!("{e}"))?.ok_or("no such domain")?;
        if name == "cryptod" {
            // The KEK is in the world's config only while cryptod starts:
            // call forget_kek once it is ready.
            self.world
                .set_config(dom, ConfigItem::KeyEncryptionKey, self.kek.as_ref())
                .map_err(|e| format!("cryptod config: {e}"))?;
        }
        if !bin.exists() {
            return Err(Failure::Error(format!(
                "guest binary {} missing (build with `cargo build -p {name}` or use `cargo xtask demo`)",
                bin.display()
            )));
        }
        let digest = measure_executable(bin)?;
        self.world
            .set_measurement(dom, &digest)
            .map_err(|e| Failure::Error(format!("{name}: measurement: {e}")))?;
        Proc::spawn(name, dom, self.world.command_for(dom, bin))
    }

    /// Removes the KEK from the world's config (cryptod has read it), so
    /// no file of the demo's directory holds it in plaintext.
    pub(crate) fn forget_kek(&self) -> Result<(), Failure> {
        let dom =
            self.world.resolve("cryptod").map_err(|e| format!("{e}"))?.ok_or("no such domain")?;
        self.world
            .clear_config(dom, ConfigItem::KeyEncryptionKey)
            .map_err(|e| Failure::Error(format!("cryptod config: {e}")))
    }

    /// This program.
    pub(crate) fn exe(&self) -> &Path {
        &self.exe
    }

    pub(crate) fn tool(&self, name: &str, args: &[&str]) -> Result<Proc, Failure> {
        let dom = self.world.resolve(name).map_err(|e| format!("{e}"))?.ok_or("no such domain")?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(args);
        Proc::spawn(name, dom, cmd)
    }

    pub(crate) fn collector(&self) -> Result<Proc, Failure> {
        let world = self.world.dir().to_string_lossy().to_string();
        let out = self.dir.join("audit.log").to_string_lossy().to_string();
        self.tool("collector", &["audit-collect", "--world", &world, "--out", &out])
    }

    /// Clean up after a killed process, as Xen does when a domain dies.
    pub(crate) fn reap(&self, p: &mut Proc) {
        p.kill();
        let _ = self.world.reap(p.dom);
    }

    fn time(&mut self, what: &str, d: Duration) {
        self.timings.push((what.to_string(), d));
    }
}

/// The SHA-256 of the executable at `path` (a guest's hosted image).
pub(crate) fn measure_executable(path: &Path) -> Result<[u8; 32], Failure> {
    use sha2::Digest as _;
    let mut file = std::fs::File::open(path)
        .map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n =
            file.read(&mut buf).map_err(|e| Failure::Error(format!("{}: {e}", path.display())))?;
        if n == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buf[..n]);
    }
}

/// Writes `sha256sum`-format lines for the guest executables in `guests`
/// to `out` (what the package's SHA256SUMS is to the Xen images).
fn write_image_sums(guests: &Path, out: &Path) -> Result<(), Failure> {
    let mut text = String::new();
    for name in ["cryptod", "entropyd", "policy_pd", "unlocker"] {
        let bin = guests.join(name);
        if bin.exists() {
            text.push_str(&format!("{}  {name}\n", hex::encode(measure_executable(&bin)?)));
        }
    }
    std::fs::write(out, text).map_err(|e| Failure::Error(format!("{}: {e}", out.display())))
}

fn settings(world: &World, dom: DomId, bytes: &[u8]) -> Result<(), Failure> {
    world.set_config(dom, ConfigItem::Settings, bytes).map_err(|e| Failure::Error(format!("{e}")))
}

pub fn run(args: DemoArgs) -> Result<(), Failure> {
    let t0 = Instant::now();
    let temp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("portcullis-demo.")
                .tempdir()
                .map_err(|e| format!("temp dir: {e}"))?;
            temp.path().to_path_buf()
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let guests = args
        .guests
        .clone()
        .unwrap_or_else(|| exe.parent().map(Path::to_path_buf).unwrap_or_default());
    println!("== Portcullis demo in {} (hosted platform)", dir.display());

    // 1. Provision: sealed state, operator enrolment, LUKS volume.
    let prov = dir.join("provisioned");
    let vol = dir.join("data.luks");
    let t = Instant::now();
    let mut prov_args = ProvisionArgs::for_demo(&prov, &vol, args.no_qr);
    // The client rules are bound to the guests' executables, as they are to
    // the package's images on Xen. The hostile scenario drives the client
    // domains from this process instead of from their images, and the bench
    // has clients of its own: both seal rules without images.
    if matches!(args.scenario, Scenario::Happy | Scenario::Full) {
        let sums = dir.join("images.SHA256SUMS");
        write_image_sums(&guests, &sums)?;
        prov_args = prov_args.with_images(&sums);
    }
    if args.scenario == Scenario::Bench {
        // The concurrent clients are policy domains of their own.
        let acl = dir.join("bench.acl");
        let mut text = provision::default_acl(&["data".into()]);
        for name in BENCH_CLIENTS.iter().skip(1) {
            text.insert_str(0, &format!("allow vm={name} scopes=net:modify aud={name}\n"));
        }
        std::fs::write(&acl, text).map_err(|e| format!("{}: {e}", acl.display()))?;
        prov_args = prov_args.with_acl(&acl);
    }
    provision::run(prov_args)?;
    let provision_time = t.elapsed();
    let uri = std::fs::read_to_string(prov.join("operators/operator.otpauth"))
        .map_err(|e| format!("otpauth: {e}"))?;

    // 2. The world: the launcher plays the toolstack and names the domains.
    let world = World::create(&dir.join("world")).map_err(|e| format!("world: {e}"))?;
    let mut doms = std::collections::HashMap::new();
    let mut names =
        vec!["entropyd", "cryptod", "unlocker", "policy_pd", "collector", "unlock_agent"];
    if args.scenario == Scenario::Hostile {
        // A client domain the ACL grants nothing.
        names.push(crate::hostile::MALLORY);
    }
    if args.scenario == Scenario::Bench {
        names.extend(BENCH_CLIENTS.iter().skip(1));
    }
    for name in names {
        doms.insert(name, world.add_domain(name).map_err(|e| format!("domain {name}: {e}"))?);
    }
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| Failure::Error(format!("{}: {e}", p.display())));
    let root = read(&prov.join("root.pub"))?;
    let set = |name: &str, item: ConfigItem, bytes: &[u8]| {
        world
            .set_config(doms[name], item, bytes)
            .map_err(|e| Failure::Error(format!("{name} config: {e}")))
    };
    // The KEK is protected by the demo's public test passphrase
    // (provision::DEMO_PASSPHRASE): unseal it as `portcullis host` does.
    let kek = {
        let sealed = kek::read(&prov).map_err(|e| e.to_string())?;
        let how = kek::Unlock {
            passphrase: kek::PassphraseSource::Fixed(zeroize::Zeroizing::new(
                provision::DEMO_PASSPHRASE.as_bytes().to_vec(),
            )),
            credentials: None,
        };
        kek::unseal(&sealed, &how).map_err(|e| e.to_string())?
    };
    set("cryptod", ConfigItem::SealedState, &read(&prov.join("cryptod/sealed-state"))?)?;
    let wal = matches!(args.answer_after_audit, OnOff::On);
    let mut clients = vec!["unlocker", "policy_pd", "unlock_agent"];
    let cryptod_extra = match args.scenario {
        Scenario::Hostile => {
            clients.push(crate::hostile::MALLORY);
            // A small bucket that does not refill during the run, so the
            // token flood is refused after a few tokens.
            format!("issue_burst = {}\nissue_per_minute = 1\n", crate::hostile::ISSUE_BURST)
        }
        Scenario::Bench => {
            clients.extend(BENCH_CLIENTS.iter().skip(1));
            // The benchmark asks for tokens as fast as it can: no issue rate limit.
            "issue_per_minute = 0\n".to_string()
        }
        Scenario::Admin | Scenario::Lifecycle => {
            // `portcullis admin` speaks as domain 0.
            clients.push("dom0");
            String::new()
        }
        _ => String::new(),
    };
    // The unlock agent's outcome key, made as at provisioning; its public
    // half is pinned in cryptod's settings (docs/authority.md, "Outcomes").
    let agent_key = dir.join("agent-outcome.key");
    let agent_pub = {
        let sk = crate::keyfile::generate()?;
        let pk = sk.verifying_key();
        let kid = portcullis_proto::key::kid_for(&pk);
        crate::keyfile::write_file(&agent_key, &crate::keyfile::encode_private(&sk, &kid)?, true)?;
        pk
    };
    let cryptod_extra = format!(
        "{cryptod_extra}outcome_key = \"unlock_agent={}\"\n",
        hex::encode(agent_pub.to_bytes())
    );
    let attempts = if args.scenario == Scenario::Full { 8 } else { 3 };
    let clients: Vec<String> = clients.iter().map(|c| format!("\"{c}\"")).collect();
    let clients = clients.join(", ");
    let selftest = if args.scenario == Scenario::Full { "selftest = true\nskew = 2\n" } else { "" };
    // The guests' settings as an operator writes them in host.toml, checked
    // and rendered by the host service's own parser (docs/settings.md).
    let host_toml = format!(
        "[guests.cryptod]\nrole = \"cryptod\"\n[guests.cryptod.settings]\n\
         clients = [{clients}]\ncollector = \"collector\"\nentropy = \"entropyd\"\n\
         answer_after_audit = {wal}\n{cryptod_extra}\n\
         [guests.entropyd]\nrole = \"entropyd\"\n[guests.entropyd.settings]\n\
         allow = \"cryptod\"\ninterval_ms = 500\n\n\
         [guests.unlocker]\nrole = \"unlocker\"\n[guests.unlocker.settings]\n\
         operator = \"operator\"\nvolume = \"data\"\nagent = \"unlock_agent\"\nattempts = {attempts}\n\n\
         [guests.policy_pd]\nrole = \"policy_pd\"\n[guests.policy_pd.settings]\n\
         rule = \"allow tcp 10.0.0.0/8 -> 443\"\n{selftest}"
    );
    let host_path = dir.join("host.toml");
    std::fs::write(&host_path, &host_toml).map_err(|e| format!("{}: {e}", host_path.display()))?;
    let host = crate::host::config::parse(&host_path, &host_toml)
        .map_err(|e| Failure::Error(e.to_string()))?;
    for (name, guest) in &host.guests {
        let dom = doms[name.as_str()];
        settings(&world, dom, guest.settings.as_deref().unwrap_or_default())?;
    }
    set("unlocker", ConfigItem::RootPublicKey, &root)?;
    set("policy_pd", ConfigItem::RootPublicKey, &root)?;

    let mut demo = Demo {
        dir: dir.clone(),
        world,
        exe: exe.clone(),
        guests: guests.clone(),
        step: Duration::from_secs(args.step_timeout),
        timings: Vec::new(),
        kek,
    };
    demo.time("provision (keys, sealed state, LUKS2 volume)", provision_time);

    // 3. Start dom0-side services and the guests.
    let world_dir = demo.world.dir().to_string_lossy().to_string();
    let root_path = prov.join("root.pub").to_string_lossy().to_string();
    let vol_arg = format!("data={}", vol.display());
    let agent_key_arg = agent_key.to_string_lossy().to_string();
    let mut agent_args = vec![
        "unlock-agent",
        "--world",
        &world_dir,
        "--root",
        &root_path,
        "--volume",
        &vol_arg,
        "--outcome-key",
        &agent_key_arg,
    ];
    if !args.real_open {
        agent_args.push("--dry-run");
    }
    let mut collector = demo.collector()?;
    let mut entropyd = demo.guest("entropyd")?;
    let mut cryptod = demo.guest("cryptod")?;
    let (_, at) = entropyd.wait_for("entropyd: ready", 0, demo.step)?;
    demo.time("entropyd start to ready", at - entropyd.started);
    let (_, at) = cryptod.wait_for("cryptod: ready", 0, demo.step)?;
    demo.forget_kek()?;
    demo.time("cryptod start to ready (seeded by entropyd)", at - cryptod.started);
    if args.scenario == Scenario::Bench {
        QUIET.store(true, std::sync::atomic::Ordering::Relaxed);
        let wal = args.answer_after_audit == OnOff::On;
        return bench(&demo, &cryptod, &prov.join("root.pub"), args.bench_n, wal);
    }
    if args.scenario == Scenario::Hostile {
        let parts = crate::hostile::Parts {
            cryptod,
            collector,
            entropyd,
            root: prov.join("root.pub"),
            uri,
        };
        return crate::hostile::run(&mut demo, parts);
    }
    let mut agent = demo.tool("unlock_agent", &agent_args)?;
    agent.wait_for("unlock-agent: ready", 0, demo.step)?;
    if matches!(args.scenario, Scenario::Admin | Scenario::Lifecycle) {
        let parts = crate::lifecycle::Parts {
            cryptod,
            collector,
            entropyd,
            agent,
            prov: prov.clone(),
            uri,
        };
        return crate::lifecycle::run(&mut demo, parts, args.scenario);
    }
    let mut policy = demo.guest("policy_pd")?;
    let mut unlocker = demo.guest("unlocker")?;
    let (_, at) = unlocker.wait_for("unlocker: ready", 0, demo.step)?;
    demo.time("unlocker start to ready", at - unlocker.started);

    // 4. The operator's code.
    let oathtool = args.oathtool;
    let code_now =
        |uri: &str| if oathtool { code_from_oathtool(uri) } else { code_from_uri(uri, unix_now()) };
    let code = if args.oathtool {
        let c = code_now(&uri)?;
        println!("== operator code (from oathtool with the provisioned secret): {c}");
        c
    } else if args.totp_from_secret {
        let c = code_now(&uri)?;
        println!("== operator code (computed from the provisioned secret): {c}");
        c
    } else {
        print!("== enter the TOTP code from your authenticator app: ");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).map_err(|e| format!("stdin: {e}"))?;
        line.trim().to_string()
    };

    let mut checks: Vec<(String, bool)> = Vec::new();
    if args.scenario == Scenario::Full {
        // A wrong code first: refused, then the right one.
        let wrong = wrong_code(&code);
        let n = unlocker.count();
        unlocker.type_line(&wrong)?;
        let (_, _, l) = unlocker.wait_any(&["refused:", "unlocked"], n, demo.step)?;
        checks.push(("wrong code refused as fail".into(), l.contains("refused: fail")));
    }
    let n = unlocker.count();
    let typed = Instant::now();
    unlocker.type_line(&code)?;
    let (_, at, l) = unlocker.wait_any(&["unlocked", "refused", "giving up"], n, demo.step)?;
    let unlocked = l.contains("unlocked");
    checks.push(("volume unlocked with the operator's code".into(), unlocked));
    demo.time("code typed to volume unlocked", at - typed);
    let status = unlocker.wait_exit(demo.step)?;
    checks.push(("unlocker exited cleanly".into(), status == 0));
    demo.reap(&mut unlocker);

    if args.scenario == Scenario::Full {
        // The collector dies hard; records made meanwhile must not be lost.
        println!("== killing the audit collector with SIGKILL");
        demo.reap(&mut collector);
        let mut again = demo.guest("unlocker")?;
        again.wait_for("unlocker: ready", 0, demo.step)?;
        let n = again.count();
        again.type_line(&code)?;
        // cryptod decides at once, but answers only after the collector has
        // stored the decision's audit record (write-ahead audit).
        let early = again.wait_any(&["refused:", "unlocked"], n, Duration::from_secs(1));
        checks.push(("no answer while the audit collector is down".into(), early.is_err()));
        println!("== restarting the audit collector");
        collector = demo.collector()?;
        let (_, _, l) = again.wait_any(&["refused:", "unlocked"], n, demo.step)?;
        checks.push((
            "replayed code refused as replay once its record is stored".into(),
            l.contains("refused: replay"),
        ));
        let mut locked = false;
        for _ in 0..6 {
            let n = again.count();
            again.type_line(&wrong_code(&code_now(&uri)?))?;
            let (_, _, l) = again.wait_any(&["refused:", "unlocked"], n, demo.step)?;
            if l.contains("rate_limited") {
                locked = true;
                break;
            }
        }
        checks.push(("wrong codes lead to rate_limited lockout".into(), locked));
        again.kill();
        demo.reap(&mut again);
    }

    // 5. policy_pd: one verified change (and the self-test refusals).
    let (_, at) = policy.wait_for("policy_pd: applied rule", 0, demo.step)?;
    demo.time("policy_pd start to rule applied", at - policy.started);
    let status = policy.wait_exit(demo.step + Duration::from_secs(10))?;
    checks.push(("policy_pd applied its change and exited cleanly".into(), status == 0));
    if args.scenario == Scenario::Full {
        for what in ["replay", "wrong audience", "expired", "revoked"] {
            let ok = policy
                .wait_for(&format!("selftest {what}: refused"), 0, Duration::from_millis(10))
                .is_ok();
            checks.push((format!("policy_pd refuses the {what} token"), ok));
        }
    }

    let mut wrong_image = None;
    if args.scenario == Scenario::Full {
        // Measured launch: a policy_pd domain started from another image
        // (the real executable with one byte appended; it still runs) gets
        // no token, and the refusal is audited with both digests.
        println!("== policy_pd started from a modified executable");
        demo.reap(&mut policy);
        let modified = dir.join("policy_pd.modified");
        let real = guests.join("policy_pd");
        let mut bytes = std::fs::read(&real).map_err(|e| format!("{}: {e}", real.display()))?;
        bytes.push(0);
        std::fs::write(&modified, &bytes).map_err(|e| format!("{}: {e}", modified.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&modified, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", modified.display()))?;
        let mut other = demo.guest_from("policy_pd", &modified)?;
        let (_, _, l) =
            other.wait_any(&["policy_pd: stopped", "policy_pd: applied"], 0, demo.step)?;
        checks.push((
            "policy_pd from a modified image is denied its token".into(),
            l.contains("token refused: denied"),
        ));
        let _ = other.wait_exit(demo.step);
        demo.reap(&mut other);
        wrong_image = Some((measure_executable(&real)?, measure_executable(&modified)?));
    }

    if args.scenario == Scenario::Full {
        // cryptod dies hard and restarts from the state it resealed: the code
        // it accepted must stay refused.
        // Every answer it gave waited for its record, but records that
        // answer nobody (reseeds, key rotations) may still sit in its
        // in-memory outbox: let it ship everything first.
        settle(&cryptod, &collector, demo.step)?;
        println!("== killing cryptod with SIGKILL and starting it again");
        demo.reap(&mut cryptod);
        cryptod = demo.guest("cryptod")?;
        cryptod.wait_for("cryptod: ready", 0, demo.step)?;
        demo.forget_kek()?;
        let mut third = demo.guest("unlocker")?;
        third.wait_for("unlocker: ready", 0, demo.step)?;
        let n = third.count();
        third.type_line(&code)?;
        let (_, _, l) = third.wait_any(&["refused:", "unlocked"], n, demo.step)?;
        // The lockout from the wrong codes above is sealed too: within its
        // 30 s the code is refused unchecked (rate_limited), after it as a
        // replay. Either way the restart forgot nothing.
        checks.push((
            "after a cryptod restart the used code is still refused (replay or the sealed lockout)"
                .into(),
            l.contains("refused: replay") || l.contains("refused: rate_limited"),
        ));
        demo.reap(&mut third);
    }

    // 6. Audit: once cryptod's outbox is empty and the collector has stored
    // the last acknowledged record, stop everything and verify the log.
    let acked = settle(&cryptod, &collector, demo.step)?;
    for p in [&mut policy, &mut cryptod, &mut entropyd, &mut agent, &mut collector] {
        p.kill();
    }
    let t = Instant::now();
    let verified =
        crate::audit_cmd::verify_file(&prov.join("root.pub"), acked, &dir.join("audit.log"));
    demo.time("audit log verification", t.elapsed());
    match &verified {
        Ok(s) => println!("== audit: {s}"),
        Err(e) => println!("== audit: FAILED: {e}"),
    }
    checks.push((
        "audit log complete: chain, signatures, no gaps, nothing lost".into(),
        verified.is_ok(),
    ));
    if let Some((expected, actual)) = wrong_image {
        let records = crate::hostile::read_records(&dir.join("audit.log"))?;
        let meta = |r: &portcullis_proto::msg::AuditRecord, k: &str| {
            r.metadata.as_ref().and_then(|m| m.get(k).cloned()).unwrap_or_default()
        };
        let found = records.iter().any(|r| {
            r.actor == "policy_pd"
                && r.result == portcullis_proto::msg::AuditResult::Denied
                && meta(r, "image_expected") == hex::encode(expected)
                && meta(r, "image_actual") == hex::encode(actual)
        });
        checks.push(("the wrong image's refusal is audited with both digests".into(), found));
    }
    checks.push((
        "the unlock carried a fresh attestation (audit: attest before unlock_secret)".into(),
        unlock_was_attested(&dir.join("audit.log")),
    ));
    checks.push((
        "the collected audit log shows the unlock's outcome, signed by the agent".into(),
        unlock_outcome_signed(&dir.join("audit.log"), &agent_pub),
    ));
    checks.push((
        "the collected audit log shows policy_pd's rule outcome, signed by its attested key".into(),
        rule_outcome_signed(&dir.join("audit.log")),
    ));

    println!();
    println!("== summary");
    for (what, d) in &demo.timings {
        println!("  {:>9.1} ms  {what}", d.as_secs_f64() * 1e3);
    }
    println!("  {:>9.1} ms  whole demo", t0.elapsed().as_secs_f64() * 1e3);
    verdict(&checks)
}

/// Prints each check and the demo's verdict line (`demo: N passed, 0
/// failed`, what the tests look for); an error if any check failed.
pub(crate) fn verdict(checks: &[(String, bool)]) -> Result<(), Failure> {
    let mut failed = 0;
    for (what, ok) in checks {
        println!("  [{}] {what}", if *ok { "ok" } else { "FAILED" });
        failed += usize::from(!ok);
    }
    if failed > 0 {
        return Err(Failure::Invalid(format!("{failed} check(s) failed")));
    }
    println!("demo: {} passed, 0 failed", checks.len());
    Ok(())
}

/// Waits until cryptod reports its audit outbox empty and the collector has
/// stored that same last acknowledged seq; returns it.
pub(crate) fn settle(
    cryptod: &Proc,
    collector: &Proc,
    timeout: Duration,
) -> Result<Option<u64>, Failure> {
    let deadline = Instant::now() + timeout;
    let mut previous = None;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let acked = last_number(cryptod, "audit outbox empty");
        let stored = last_number(collector, "stored seq");
        let now = (acked, stored);
        if acked.is_some() && acked == stored && previous == Some(now) {
            return Ok(acked);
        }
        if Instant::now() > deadline {
            return Err(Failure::Invalid(format!(
                "audit did not settle: cryptod acknowledged {acked:?}, collector stored {stored:?}"
            )));
        }
        previous = Some(now);
    }
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(0.0, |d| d.as_secs_f64() * 1e6)
}

fn report(what: &str, mut samples: Vec<Duration>, total: Duration) {
    samples.sort();
    let n = samples.len();
    println!(
        "{what}: n={n}  p50 {:.0} us  p99 {:.0} us  max {:.0} us  {:.0}/s",
        percentile(&samples, 0.50),
        percentile(&samples, 0.99),
        percentile(&samples, 1.0),
        n as f64 / total.as_secs_f64()
    );
}

/// The policy domains of `--scenario bench`: the first measures round trips
/// one at a time; all of them together load cryptod.
const BENCH_CLIENTS: [&str; 4] = ["policy_pd", "policy_pd2", "policy_pd3", "policy_pd4"];

/// Size of the block whose write + fdatasync the benchmark times: about
/// one audit record.
const RECORD_BLOCK: usize = 512;

/// One policy domain asking cryptod for tokens over its own vchan and
/// verifying each answer fully (signature, kid, scope, audience, times,
/// revocation, replay).
struct TokenClient {
    name: &'static str,
    index: u8,
    _p: portcullis_hosted::HostedPlatform,
    link: portcullis_apps::link::Link<portcullis_hosted::HostedBackend>,
    trust: portcullis_apps::trust::Trust,
    replay: portcullis_proto::token::MemoryReplayCache,
    /// Times cryptod answered `unavailable` (audit outbox full) and the
    /// client backed off.
    backoffs: u64,
}

impl TokenClient {
    fn connect(demo: &Demo, index: u8, root: &Path, n: usize) -> Result<Self, Failure> {
        use portcullis_apps::common::{port, CALL_TIMEOUT};
        use portcullis_apps::net::connect;
        use portcullis_apps::trust::Trust;
        use portcullis_hosted::HostedPlatform;
        use portcullis_proto::msg::RequestId;

        let name = BENCH_CLIENTS[usize::from(index)];
        let world = World::open(demo.world.dir()).map_err(|e| format!("{e}"))?;
        let cryptod = world.resolve("cryptod").map_err(|e| format!("{e}"))?.ok_or("no cryptod")?;
        let dom = world.resolve(name).map_err(|e| format!("{e}"))?.ok_or("no client domain")?;
        let mut p = HostedPlatform::open(world, dom).map_err(|e| format!("{e}"))?;
        let key = crate::keyfile::load(root)?;
        let mut trust = Trust::new(key.public, &key.kid);
        let mut link = connect(&mut p, cryptod, port::CRYPTOD, Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        trust
            .fetch_keyset(&mut link, RequestId([1; 16]), CALL_TIMEOUT)
            .map_err(|e| Failure::Invalid(format!("{name}: keyset: {e}")))?;
        Ok(TokenClient {
            name,
            index,
            _p: p,
            link,
            trust,
            replay: portcullis_proto::token::MemoryReplayCache::new(n + 16),
            backoffs: 0,
        })
    }

    /// Token `i`: request, answer, full verification.
    fn token(&mut self, i: usize) -> Result<(), Failure> {
        use portcullis_apps::common::CALL_TIMEOUT;
        use portcullis_proto::envelope::Message;
        use portcullis_proto::msg::{IssueResult, RequestId, TokenIssueReq};
        use portcullis_proto::scope::{Scope, ScopeSet};
        use portcullis_proto::token::{self, Expectations, RevokedSet};

        let mut rid = [0u8; 16];
        rid[..8].copy_from_slice(&(i as u64).to_be_bytes());
        rid[8] = self.index;
        let req = Message::TokenIssueReq(TokenIssueReq {
            request_id: RequestId(rid),
            vm_id: self.name.into(),
            requested_scope: ScopeSet::single(Scope::NetModify),
            audience: self.name.into(),
            justification: "benchmark".into(),
            nonce: rid.to_vec(),
            timestamp: unix_now(),
            ttl: Some(60),
            attestation: None,
            metadata: None,
        });
        let tok = loop {
            match self.link.call(&req, CALL_TIMEOUT) {
                Ok(Message::TokenIssueResp(r)) => match r.token {
                    Some(tok) => break tok,
                    // Fail closed while the audit outbox is full: back off
                    // until the collector has caught up.
                    None if r.result == IssueResult::Unavailable => {
                        self.backoffs += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    None => {
                        return Err(Failure::Invalid(format!(
                            "{}: refused: {:?} {:?}",
                            self.name, r.result, r.reason
                        )))
                    }
                },
                other => {
                    return Err(Failure::Invalid(format!(
                        "{}: unexpected answer: {other:?}",
                        self.name
                    )))
                }
            }
        };
        let expect = Expectations {
            audience: self.name,
            scope: ScopeSet::single(Scope::NetModify),
            now: unix_now(),
            skew: 30,
        };
        token::verify(&tok, self.trust.keyset(), &expect, &mut self.replay, &RevokedSet::default())
            .map_err(|e| format!("{}: token {i} refused: {e}", self.name))?;
        Ok(())
    }
}

/// How a process's CPU time was read: the scheduler's nanosecond count
/// of every thread, or (without schedstats) utime + stime in clock ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CpuSource {
    Schedstat,
    Ticks(Duration),
}

impl CpuSource {
    /// Schedstat when the process's threads have it, else clock ticks.
    fn of(pid: u32) -> Self {
        if schedstat_ns(pid).is_some() {
            CpuSource::Schedstat
        } else {
            CpuSource::Ticks(clock_tick())
        }
    }

    fn describe(self, pid: u32) -> String {
        match self {
            CpuSource::Schedstat => format!("/proc/{pid}/task/*/schedstat, ns"),
            CpuSource::Ticks(t) => {
                format!("/proc/{pid}/stat utime+stime, tick {} ms", t.as_millis())
            }
        }
    }
}

/// CPU time `pid` has used so far, read the way `source` says.
fn process_cpu(pid: u32, source: CpuSource) -> Result<Duration, Failure> {
    if let CpuSource::Ticks(tick) = source {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        let ticks =
            stat_cpu_ticks(&text).ok_or_else(|| format!("{path}: utime/stime unreadable"))?;
        let ticks = u32::try_from(ticks).map_err(|_| format!("{path}: {ticks} ticks"))?;
        return Ok(tick * ticks);
    }
    let ns = schedstat_ns(pid).ok_or_else(|| format!("/proc/{pid}/task/*/schedstat unreadable"))?;
    Ok(Duration::from_nanos(ns))
}

/// Time on CPU of every thread of `pid`, in nanoseconds: the first field of
/// each `/proc/<pid>/task/<tid>/schedstat` (the scheduler's own count,
/// user and kernel time together, not sampled at clock ticks).
fn schedstat_ns(pid: u32) -> Option<u64> {
    sum_over_threads(pid, "schedstat", schedstat_first)
}

/// The first number of a schedstat line (`<ns on CPU> <ns waiting> <slices>`).
fn schedstat_first(text: &str) -> Option<u64> {
    let mut fields = text.split_whitespace();
    let ns = fields.next()?.parse().ok()?;
    // The line has three fields; anything else is not a schedstat line.
    (fields.count() == 2).then_some(ns)
}

/// How many times the threads of `pid` blocked so far: the sum of the
/// `voluntary_ctxt_switches` lines of `/proc/<pid>/task/*/status`.
fn voluntary_switches(pid: u32) -> Option<u64> {
    sum_over_threads(pid, "status", status_voluntary)
}

/// `read` of `/proc/<pid>/task/<tid>/<file>`, summed over the threads of
/// `pid`; None if a file cannot be read or a count is unreadable.
fn sum_over_threads(pid: u32, file: &str, read: fn(&str) -> Option<u64>) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total: u64 = 0;
    for task in tasks {
        let text = std::fs::read_to_string(task.ok()?.path().join(file)).ok()?;
        total = total.checked_add(read(&text)?)?;
    }
    Some(total)
}

/// The `voluntary_ctxt_switches` count of a `/proc/<pid>/status` text.
fn status_voluntary(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))?.trim().parse().ok()
}

/// utime + stime (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat`
/// line. The command name (field 2) may hold spaces and parentheses, so
/// fields are counted from after its last ')', where field 3 begins.
fn stat_cpu_ticks(text: &str) -> Option<u64> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// The length of a clock tick as `/proc` counts CPU time (`getconf
/// CLK_TCK`; Linux's USER_HZ, 100 on every common configuration).
fn clock_tick() -> Duration {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Duration::from_secs(1) / hz
}

/// Write + fdatasync of one record-sized block, appended to a file in the
/// collector's directory, `n` times: the cost of one durable write on this
/// disk, measured in the same run as the round trips.
fn durable_writes(dir: &Path, n: usize) -> Result<Vec<Duration>, Failure> {
    let path = dir.join("bench-durable-write");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let block = [0x5au8; RECORD_BLOCK];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block).map_err(|e| format!("{}: {e}", path.display()))?;
        f.sync_data().map_err(|e| format!("{}: {e}", path.display()))?;
        samples.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(samples)
}

/// p50 and p99 in microseconds.
fn p50_p99(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    (percentile(samples, 0.50), percentile(samples, 0.99))
}

/// `--scenario bench`: token round trips from one policy domain at a time
/// (request over vchan, cryptod decides: ACL, mint, audit record, and with
/// the write-ahead audit on, waits for the collector's durable ack; answer
/// over vchan, full verification), next to raw Ed25519 sign +
/// `verify_strict` and one durable write measured in the same process;
/// then [`BENCH_CLIENTS`] concurrently, with cryptod's CPU time per token
/// from the OS's accounting of its process. The `figure:` lines are for
/// `cargo xtask bench`.
fn bench(demo: &Demo, cryptod: &Proc, root: &Path, n: usize, wal: bool) -> Result<(), Failure> {
    use ed25519_dalek::{Signer, SigningKey};

    let wal_name = if wal { "on" } else { "off" };
    const WARM_UP: usize = 50;
    let mut one = TokenClient::connect(demo, 0, root, n + WARM_UP)?;
    // A few unmeasured round trips first (page faults, caches).
    for i in 0..WARM_UP {
        one.token(usize::MAX / 2 + i)?;
    }
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        one.token(i)?;
        samples.push(t.elapsed());
    }
    let total = start.elapsed();
    println!();
    println!("== token round trip over vchan, one client (hosted platform, this build)");
    println!("   answer_after_audit={wal_name}");
    report("policy_pd -> cryptod -> verified token", samples.clone(), total);
    println!(
        "(cryptod answered `unavailable` {} time(s) while its audit outbox was full)",
        one.backoffs
    );
    let (rt50, rt99) = p50_p99(&mut samples);
    drop(one);

    let sk = SigningKey::from_bytes(&[7u8; 32]);
    let vk = sk.verifying_key();
    let msg = [0x5au8; 200];
    let mut raw = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let sig = sk.sign(&msg);
        vk.verify_strict(&msg, &sig).map_err(|_| "raw verify failed")?;
        raw.push(t.elapsed());
    }
    report("raw Ed25519 sign + verify_strict (200 B)", raw.clone(), start.elapsed());
    let (raw50, raw99) = p50_p99(&mut raw);

    let mut durable = durable_writes(&demo.dir, n.clamp(1, 500))?;
    let t: Duration = durable.iter().sum();
    report(&format!("write + fdatasync of {RECORD_BLOCK} B (durable write)"), durable.clone(), t);
    let (dw50, dw99) = p50_p99(&mut durable);

    // Several policy domains at once: cryptod's CPU per audited token, in
    // rounds (the same clients), judged on the median round: one round on
    // a shared VM can be a third slower than the next.
    let per = n.max(BENCH_CLIENTS.len()) / BENCH_CLIENTS.len();
    let mut clients = (0..BENCH_CLIENTS.len() as u8)
        .map(|i| TokenClient::connect(demo, i, root, per * CONCURRENT_ROUNDS + 64))
        .collect::<Result<Vec<_>, _>>()?;
    let pid = cryptod.child.id();
    let source = CpuSource::of(pid);
    let tokens = per * BENCH_CLIENTS.len();
    println!();
    println!(
        "== {} policy domains at once, answer_after_audit={wal_name}, {CONCURRENT_ROUNDS} rounds",
        BENCH_CLIENTS.len()
    );
    let mut rounds = Vec::with_capacity(CONCURRENT_ROUNDS);
    for round in 0..CONCURRENT_ROUNDS {
        let r = concurrent_round(&mut clients, per, round, pid, source)?;
        let sleeps = r.sleeps.map(|n| format!("; cryptod slept {n} times")).unwrap_or_default();
        println!(
            "round {}: {tokens} tokens in {:.2} s: {:.0} tokens/s end to end (clients verifying); \
             cryptod CPU {:.3} s = {:.1} us per token{sleeps}",
            round + 1,
            r.wall.as_secs_f64(),
            tokens as f64 / r.wall.as_secs_f64(),
            r.cpu.as_secs_f64(),
            r.cpu.as_secs_f64() * 1e6 / tokens as f64,
        );
        rounds.push(r);
    }
    let backoffs: u64 = clients.iter().map(|c| c.backoffs).sum();
    rounds.sort_by_key(|r| r.cpu);
    let (low, high) = (rounds[0].cpu, rounds[rounds.len() - 1].cpu);
    let median = &rounds[rounds.len() / 2];
    let per_token = |d: Duration| d.as_secs_f64() * 1e6 / tokens as f64;
    let cpu_us = per_token(median.cpu);
    let rate = tokens as f64 / median.wall.as_secs_f64();
    println!(
        "median round: {rate:.0} tokens/s end to end; cryptod CPU {cpu_us:.1} us per token \
         ({:.1} to {:.1} over the rounds; {}); {backoffs} back-off(s)",
        per_token(low),
        per_token(high),
        source.describe(pid)
    );
    // How often cryptod went to sleep (each sleep is a wake-up and two
    // context switches): a count the machine's load does not scale.
    let sleeps_per_token = median.sleeps.map(|n| n as f64 / tokens as f64);
    if let (Some(n), Some(per)) = (median.sleeps, sleeps_per_token) {
        println!(
            "cryptod slept {n} times in that round (/proc/{pid}/task/*/status \
             voluntary_ctxt_switches) = {per:.2} per token"
        );
    }
    println!("figure: roundtrip wal={wal_name} p50_us={rt50:.1} p99_us={rt99:.1}");
    println!("figure: raw wal={wal_name} p50_us={raw50:.1} p99_us={raw99:.1}");
    println!("figure: durable wal={wal_name} p50_us={dw50:.1} p99_us={dw99:.1}");
    println!(
        "figure: concurrent wal={wal_name} clients={} tokens={tokens} rounds={CONCURRENT_ROUNDS} \
         cpu_us_per_token={cpu_us:.1} cpu_us_min={:.1} cpu_us_max={:.1} tokens_per_s={rate:.0}{}",
        BENCH_CLIENTS.len(),
        per_token(low),
        per_token(high),
        sleeps_per_token.map(|p| format!(" sleeps_per_token={p:.2}")).unwrap_or_default()
    );
    Ok(())
}

/// Rounds of the concurrent phase of the bench (median judged).
const CONCURRENT_ROUNDS: usize = 3;

/// One round of the concurrent phase: what cryptod spent and how long it took.
struct Round {
    cpu: Duration,
    wall: Duration,
    /// cryptod's sleeps (voluntary context switches), where readable.
    sleeps: Option<u64>,
}

/// Every client asks for `per` tokens at once (released together by a
/// barrier); cryptod's CPU time and sleeps are read around it.
fn concurrent_round(
    clients: &mut [TokenClient],
    per: usize,
    round: usize,
    pid: u32,
    source: CpuSource,
) -> Result<Round, Failure> {
    let barrier = std::sync::Barrier::new(clients.len() + 1);
    std::thread::scope(|s| -> Result<Round, Failure> {
        let handles: Vec<_> = clients
            .iter_mut()
            .map(|c| {
                let barrier = &barrier;
                s.spawn(move || -> Result<(), Failure> {
                    barrier.wait();
                    for i in 0..per {
                        c.token(1_000_000 + round * per + i)?;
                    }
                    Ok(())
                })
            })
            .collect();
        let cpu0 = process_cpu(pid, source)?;
        let sleeps0 = voluntary_switches(pid);
        let t0 = Instant::now();
        barrier.wait();
        for h in handles {
            h.join().map_err(|_| "client thread panicked")??;
        }
        let wall = t0.elapsed();
        let sleeps = voluntary_switches(pid).zip(sleeps0).map(|(b, a)| b.saturating_sub(a));
        Ok(Round { cpu: process_cpu(pid, source)?.saturating_sub(cpu0), wall, sleeps })
    })
}

/// The number ending the last line of `p` that contains `pat`.
pub(crate) fn last_number(p: &Proc, pat: &str) -> Option<u64> {
    let lines = p.lines.lock().ok()?;
    let line = lines.iter().rev().find(|l| l.text.contains(pat))?;
    line.text.rsplit(' ').next()?.parse().ok()
}

/// A code that differs from `code` in every digit.
pub(crate) fn wrong_code(code: &str) -> String {
    code.bytes().map(|b| char::from(b'0' + (b - b'0' + 5) % 10)).collect()
}

/// Whether the collected log shows the unlocker's first unlock secret
/// released after cryptod attested the unlocker for `luks:unlock`.
fn unlock_was_attested(log: &Path) -> bool {
    use portcullis_proto::msg::{AuditAction, AuditRecord, AuditResult};
    let Ok(bytes) = std::fs::read(log) else { return false };
    let Ok((items, _)) = crate::audit_cmd::read_log(&bytes) else { return false };
    let records = items.iter().filter_map(|i| AuditRecord::from_cbor(i).ok());
    let mut attested = false;
    for r in records.filter(|r| r.actor == "unlocker" && r.result == AuditResult::Ok) {
        match r.action {
            AuditAction::Attest => attested |= r.target.as_deref() == Some("luks:unlock"),
            AuditAction::UnlockSecret => return attested,
            _ => {}
        }
    }
    false
}

/// Whether the log has an `outcome` record of the agent saying it opened
/// the volume of an `unlock_secret` decision (same token id), whose
/// evidence verifies under the agent's pinned key (`audit_cmd::verify_outcomes`).
fn unlock_outcome_signed(log: &Path, agent: &ed25519_dalek::VerifyingKey) -> bool {
    use portcullis_proto::msg::{AuditAction, AuditRecord, AuditResult};
    let Ok(bytes) = std::fs::read(log) else { return false };
    let Ok((items, _)) = crate::audit_cmd::read_log(&bytes) else { return false };
    let records: Vec<AuditRecord> =
        items.iter().filter_map(|i| AuditRecord::from_cbor(i).ok()).collect();
    let pinned = [("unlock_agent".to_string(), *agent)];
    let Ok(outcomes) = crate::audit_cmd::verify_outcomes(&records, &pinned) else { return false };
    let cti_of = |r: &AuditRecord| r.metadata.as_ref().and_then(|m| m.get("cti")).cloned();
    records
        .iter()
        .filter(|r| r.action == AuditAction::UnlockSecret && r.result == AuditResult::Ok)
        .filter_map(cti_of)
        .any(|cti| {
            outcomes
                .iter()
                .any(|o| o.decision == cti && o.outcome == "opened" && o.signer == "unlock_agent")
        })
}

/// Whether the log has an `outcome` record of policy_pd saying it applied
/// the rule of a `token_issue` decision it asked for (same token id),
/// signed by a key a cryptod attestation bound to policy_pd, whose evidence
/// verifies (`audit_cmd::verify_outcomes`).
fn rule_outcome_signed(log: &Path) -> bool {
    use portcullis_proto::msg::{AuditAction, AuditRecord, AuditResult};
    let Ok(bytes) = std::fs::read(log) else { return false };
    let Ok((items, _)) = crate::audit_cmd::read_log(&bytes) else { return false };
    let records: Vec<AuditRecord> =
        items.iter().filter_map(|i| AuditRecord::from_cbor(i).ok()).collect();
    let Ok(outcomes) = crate::audit_cmd::verify_outcomes(&records, &[]) else { return false };
    let meta = |r: &AuditRecord, k: &str| r.metadata.as_ref().and_then(|m| m.get(k)).cloned();
    records
        .iter()
        .filter(|r| r.actor == "policy_pd" && r.action == AuditAction::TokenIssue)
        .filter(|r| r.result == AuditResult::Ok)
        .filter_map(|r| meta(r, "cti"))
        .any(|cti| {
            outcomes.iter().any(|o| {
                let rec = records.iter().find(|r| r.seq == o.seq);
                o.decision == cti
                    && o.outcome == "applied"
                    && rec.is_some_and(|r| {
                        r.actor == "policy_pd" && meta(r, "key").as_deref() == Some("attested")
                    })
            })
        })
}

#[cfg(test)]
mod bench_tests {
    use super::{schedstat_first, stat_cpu_ticks, status_voluntary};

    #[test]
    fn schedstat_first_reads_the_time_on_cpu() {
        assert_eq!(schedstat_first("26198495 13781705 14\n"), Some(26_198_495));
        assert_eq!(schedstat_first("0 0 0"), Some(0));
        for bad in ["", "26198495", "1 2", "1 2 3 4", "x 2 3", "-1 2 3"] {
            assert_eq!(schedstat_first(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn status_voluntary_reads_its_line_only() {
        let text = "Name:\tcryptod\nvoluntary_ctxt_switches:\t1234\n\
                    nonvoluntary_ctxt_switches:\t56\n";
        assert_eq!(status_voluntary(text), Some(1234));
        assert_eq!(status_voluntary("nonvoluntary_ctxt_switches:\t56\n"), None);
        assert_eq!(status_voluntary("voluntary_ctxt_switches:\tx\n"), None);
    }

    #[test]
    fn stat_cpu_ticks_reads_fields_14_and_15() {
        let line = "4242 (cry ptod) S 1 4242 4242 0 -1 4194560 1450 0 0 0 \
                    731 269 0 0 20 0 1 0 12345 1000 100 18446744073709551615\n";
        assert_eq!(stat_cpu_ticks(line), Some(1000));
        // A name with ") 9 9" in it does not shift the fields.
        let tricky = line.replace("(cry ptod)", "(x) 9 9 (y)");
        assert_eq!(stat_cpu_ticks(&tricky), Some(1000));
        assert_eq!(stat_cpu_ticks("4242 (cryptod) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("no parenthesis"), None);
    }
}
