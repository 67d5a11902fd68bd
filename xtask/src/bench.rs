//! `cargo xtask bench`: every performance goal of issue 14 measured next to
//! its reference, taken in the same run, with a PASS or MISS verdict.
//!
//! The figures come from two release programs that print `figure:` lines:
//! `portcullis demo --scenario bench` (token round trips with the audit
//! wait on and off, raw Ed25519 sign + `verify_strict`, one durable write,
//! cryptod's CPU per token under four concurrent clients) and the hosted
//! crate's `vchan_throughput` example (vchan bulk rate per ring order, and
//! a pipe). A miss does not fail the command: a benchmark is not a timed
//! test, and the machine's load (printed) moves the figures. One figure
//! does not move with the load: cryptod's instructions per audited token on
//! its sans-IO driver path (the apps crate's `cryptod_cost` example under
//! callgrind), next to one Ed25519 signature's.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

/// One `figure: KIND key=value ...` line.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Figure {
    kind: String,
    fields: BTreeMap<String, String>,
}

impl Figure {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    fn num(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok().filter(|v: &f64| v.is_finite())
    }
}

/// The `figure:` lines of a program's output; other lines are ignored.
pub(crate) fn parse_figures(text: &str) -> Vec<Figure> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("figure:"))
        .filter_map(|rest| {
            let mut words = rest.split_whitespace();
            let kind = words.next()?.to_string();
            let fields = words
                .filter_map(|w| w.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Some(Figure { kind, fields })
        })
        .collect()
}

/// One goal's outcome.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verdict {
    pub(crate) goal: String,
    pub(crate) figure: String,
    pub(crate) reference: String,
    /// `None`: not measured (a figure was missing).
    pub(crate) pass: Option<bool>,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "NOT MEASURED",
        }
    }
}

fn find<'a>(figs: &'a [Figure], kind: &str, key: &str, value: &str) -> Option<&'a Figure> {
    figs.iter().find(|f| f.kind == kind && f.get(key) == Some(value))
}

/// The p50 of the ping-pong over `via` (`vchan` or `pipes`) run with
/// `placement` (`any`: unpinned; a figure without `placement=` is `any`).
fn ping_p50(figs: &[Figure], via: &str, placement: &str) -> Option<f64> {
    figs.iter()
        .find(|f| {
            f.kind == "pingpong"
                && f.get("via") == Some(via)
                && f.get("placement").unwrap_or("any") == placement
        })
        .and_then(|f| f.num("p50_us"))
}

/// The placements the ping-pongs run with: label, what the report calls
/// it, and the CPU `taskset` starts the receiver on (the sender on CPU 0).
const PLACEMENTS: [(&str, &str, &str); 2] =
    [("one-cpu", "both on one CPU", "0"), ("two-cpus", "on two CPUs", "1")];

/// The hand-off floor by placement: each ping-pong p50, vchan against
/// pipes on the same placement. Whether the two processes share a CPU
/// decides most of a hand-off's cost (the scheduler picks from run to run
/// when they are not pinned), so the unpinned pair alone can set a vchan
/// that crossed CPUs against pipes that did not.
pub(crate) fn pingpong_report(figs: &[Figure]) -> Option<String> {
    let pair = |placement: &str| {
        let v = ping_p50(figs, "vchan", placement)?;
        let p = ping_p50(figs, "pipes", placement)?;
        Some(format!("{v:.1} / {p:.1} us"))
    };
    let mut parts: Vec<String> = Vec::new();
    for (placement, said) in
        [("any", "unpinned")].into_iter().chain(PLACEMENTS.map(|(l, s, _)| (l, s)))
    {
        if let Some(p) = pair(placement) {
            parts.push(format!("{said} {p}"));
        }
    }
    if parts.len() < 2 {
        return None;
    }
    Some(format!(
        "hand-offs between two processes (64 B ping-pong p50, vchan / pipes): {}",
        parts.join("; ")
    ))
}

fn missing(goal: &str, what: &str) -> Verdict {
    Verdict {
        goal: goal.into(),
        figure: format!("{what}: missing"),
        reference: "-".into(),
        pass: None,
    }
}

/// Judges every goal from the figures of one run.
pub(crate) fn verdicts(figs: &[Figure]) -> Vec<Verdict> {
    let mut out = Vec::new();
    let wal = |w: &str| {
        let rt = find(figs, "roundtrip", "wal", w)?;
        let raw = find(figs, "raw", "wal", w)?;
        let dw = find(figs, "durable", "wal", w).and_then(|d| d.num("p50_us"));
        Some((rt.num("p50_us")?, rt.num("p99_us")?, raw.num("p50_us")?, dw))
    };

    // The floor under any call between two processes in this run: what
    // the round trips spend beyond the work they reference, in hand-offs
    // (unpinned, as the round trips run).
    let ping = ping_p50(figs, "vchan", "any");
    let beyond = |excess: f64| match ping {
        Some(pp) if pp > 0.0 => format!(
            "; beyond that {excess:.0} us = {:.1} x a two-process vchan ping-pong (p50 {pp:.0} us)",
            excess / pp
        ),
        _ => String::new(),
    };

    let goal = "round trip, audit wait off: p50 <= 1.5 x raw sign+verify_strict";
    out.push(match wal("off") {
        Some((p50, p99, raw, _)) => Verdict {
            goal: goal.into(),
            figure: format!("p50 {p50:.0} us (p99 {p99:.0} us)"),
            reference: format!(
                "raw p50 {raw:.0} us; limit {:.0} us; ratio {:.2}{}",
                1.5 * raw,
                p50 / raw,
                beyond(p50 - raw)
            ),
            pass: Some(p50 <= 1.5 * raw),
        },
        None => missing(goal, "roundtrip/raw wal=off"),
    });

    let goal = "round trip, audit wait on: p50 <= raw + one durable write";
    out.push(match wal("on") {
        Some((p50, p99, raw, Some(dw))) => Verdict {
            goal: goal.into(),
            figure: format!("p50 {p50:.0} us (p99 {p99:.0} us)"),
            reference: format!(
                "raw p50 {raw:.0} us + write+fdatasync p50 {dw:.0} us = {:.0} us{}",
                raw + dw,
                beyond(p50 - raw - dw)
            ),
            pass: Some(p50 <= raw + dw),
        },
        _ => missing(goal, "roundtrip/raw/durable wal=on"),
    });

    let goal = "cryptod CPU per audited token, 4 clients: <= 50 us";
    out.push(match find(figs, "concurrent", "wal", "on") {
        Some(c) => match (c.num("cpu_us_per_token"), c.num("tokens_per_s")) {
            (Some(cpu), Some(rate)) => Verdict {
                goal: goal.into(),
                figure: format!(
                    "{cpu:.0} us{} ({:.0} tokens/s per vCPU); end to end {rate:.0} tokens/s{}",
                    match (c.num("cpu_us_min"), c.num("cpu_us_max"), c.get("rounds")) {
                        (Some(lo), Some(hi), Some(n)) => {
                            format!(", the median of {n} rounds ({lo:.0} to {hi:.0})")
                        }
                        _ => String::new(),
                    },
                    1e6 / cpu.max(f64::MIN_POSITIVE),
                    c.num("sleeps_per_token")
                        .map(|s| format!("; cryptod slept {s:.2} times per token"))
                        .unwrap_or_default()
                ),
                reference: "50 us (20,000 tokens/s per vCPU)".into(),
                pass: Some(cpu <= 50.0),
            },
            _ => missing(goal, "concurrent wal=on fields"),
        },
        None => missing(goal, "concurrent wal=on"),
    });

    let pipe = figs.iter().find(|f| f.kind == "pipe").and_then(|f| f.num("mbps"));
    let mut orders: Vec<(u32, f64)> = figs
        .iter()
        .filter(|f| f.kind == "vchan")
        .filter_map(|f| Some((f.get("order")?.parse().ok()?, f.num("mbps")?)))
        .collect();
    orders.sort_by_key(|(o, _)| *o);
    if orders.is_empty() {
        out.push(missing("vchan bulk rate against a pipe", "vchan"));
    }
    for (order, rate) in orders {
        let small = order <= 12;
        let (goal, factor) = if small {
            (format!("vchan order {order} bulk: >= 1/2 pipe"), 0.5)
        } else {
            (format!("vchan order {order} bulk: >= pipe"), 1.0)
        };
        out.push(match pipe {
            Some(pipe) => Verdict {
                goal,
                figure: format!("{rate:.0} MB/s"),
                reference: format!("pipe {pipe:.0} MB/s; ratio {:.2}", rate / pipe),
                pass: Some(rate >= factor * pipe),
            },
            None => missing(&goal, "pipe"),
        });
    }
    out
}

/// Token counts of the two `cryptod_cost` runs whose difference gives the
/// driver's instructions per token (the boot and the seeding cancel out).
const DRIVER_TOKENS: [u64; 2] = [200, 1200];
/// Signatures of the reference run.
const SIGNATURES: u64 = 500;

/// The instruction count callgrind prints at exit (`==PID== Collected : N`).
pub(crate) fn collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let (_, rest) = l.split_once("Collected :")?;
        rest.trim().parse().ok()
    })
}

/// Instructions counted by callgrind in the functions matching `toggle`
/// (only while inside them) for one run of `program ARGS`.
fn instructions(program: &std::path::Path, toggle: &str, args: &[String]) -> Result<u64, String> {
    let out = Command::new("valgrind")
        .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
        .arg(format!("--toggle-collect={toggle}"))
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| format!("valgrind: cannot start: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("valgrind {}: {}\n{stderr}", program.display(), out.status));
    }
    collected(&stderr).ok_or_else(|| format!("valgrind printed no instruction count:\n{stderr}"))
}

/// cryptod's instructions per audited token on its driver path
/// (`crates/apps/examples/cryptod_cost.rs`: the sans-IO driver over the
/// vchan simulator, four clients, audit wait on), counted by callgrind in
/// `CryptodDriver::poll` alone, next to one Ed25519 signature of the same
/// build: figures that do not move with the machine's load.
fn driver_figures(example: &std::path::Path) -> Result<String, String> {
    println!("==> cryptod's driver path under callgrind (instructions, not time)");
    let [n0, n1] = DRIVER_TOKENS;
    let c0 = instructions(example, "*CryptodDriver*poll*", &[n0.to_string()])?;
    let c1 = instructions(example, "*CryptodDriver*poll*", &[n1.to_string()])?;
    let per_token = c1.saturating_sub(c0) / (n1 - n0);
    let sign =
        instructions(example, "*sign_reference*", &["--sign".into(), SIGNATURES.to_string()])?
            / SIGNATURES;
    let line = format!(
        "figure: driver instructions_per_token={per_token} sign_instructions={sign} tokens={n0},{n1}"
    );
    println!("{line}");
    Ok(line + "\n")
}

/// The driver figure's report lines (no goal: the 50 us goal is judged on
/// the demo's CPU time; this says where it goes).
pub(crate) fn driver_report(figs: &[Figure]) -> Option<String> {
    let f = figs.iter().find(|f| f.kind == "driver")?;
    let (per, sign) = (f.num("instructions_per_token")?, f.num("sign_instructions")?);
    Some(format!(
        "cryptod driver path (sans-IO, callgrind): {per:.0} instructions per audited token \
         = {:.2} x one Ed25519 signature ({sign:.0} instructions)",
        per / sign.max(1.0)
    ))
}

/// The guests' crypto configuration for a host build: the cfgs of
/// `.cargo/config.toml`'s `x86_64-unknown-none` rustflags (the serial curve
/// backend, the compact soft SHA-2), without the PVH link arguments.
const GUEST_CRYPTO_CFGS: &str = "--cfg curve25519_dalek_backend=\"serial\" \
    --cfg sha2_backend=\"soft\" --cfg sha2_backend_soft=\"compact\"";

/// The builds `ed25519_speed` is timed as: label, portcullis-proto's
/// features (`fast`: ed25519-dalek's static tables; `runtime-table`: the
/// table `ed25519::sign` computes at its first signature), the guest
/// configuration at this opt-level (None: the hosted release build), and
/// what the report calls it. The first is the reference.
const ED25519_BUILDS: [(&str, &str, Option<&str>, &str); 4] = [
    ("hosted", "fast", None, "hosted build (release, `fast`, default backend)"),
    (
        "guest",
        "runtime-table",
        Some("z"),
        "guest build as cryptod ships it (serial, compact SHA-2, opt \"z\", run-time table)",
    ),
    ("guest-fast", "fast", Some("z"), "guest build with `fast`'s static tables"),
    ("guest-plain", "", Some("z"), "guest build without tables (the other guests)"),
];

/// Rounds of `ed25519_speed` per build, the builds taking turns: this VM's
/// speed drifts by tens of percent within a minute, so each build keeps
/// its best round, and every build has had a round in each phase.
const ED25519_ROUNDS: usize = 5;

/// Ed25519 sign and verify as the guests build them (as cryptod ships it,
/// with `fast`'s static tables, without tables) next to the hosted
/// programs' build, each timed by `ed25519_speed`.
fn ed25519_figures() -> Result<String, String> {
    let copies = crate::target_dir().join("ed25519-speed");
    std::fs::create_dir_all(&copies).map_err(|e| format!("{}: {e}", copies.display()))?;
    let mut programs = Vec::new();
    for (label, features, opt, _) in ED25519_BUILDS {
        let mut c = crate::cargo();
        c.args(["build", "--release", "-p", "portcullis-proto", "--example", "ed25519_speed"]);
        c.args(["--features", features]);
        let dir = match opt {
            None => crate::target_dir(),
            Some(opt) => {
                let dir = crate::target_dir().join("guest-crypto");
                c.env("CARGO_TARGET_DIR", &dir)
                    .env("RUSTFLAGS", GUEST_CRYPTO_CFGS)
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .args(["--config", &format!("profile.release.opt-level=\"{opt}\"")])
                    .args(["--config", "profile.release.lto=\"fat\""]);
                dir
            }
        };
        crate::run(&format!("build ed25519_speed as the {label} build"), &mut c)?;
        // The builds share output paths: each is kept under its label.
        let (built, copy) = (dir.join("release/examples/ed25519_speed"), copies.join(label));
        std::fs::copy(&built, &copy).map_err(|e| format!("{}: {e}", built.display()))?;
        programs.push((label, copy));
    }
    let mut best: Vec<(f64, f64)> = vec![(f64::INFINITY, f64::INFINITY); programs.len()];
    for round in 1..=ED25519_ROUNDS {
        for ((label, program), best) in programs.iter().zip(best.iter_mut()) {
            let text = capture(
                &format!("Ed25519 sign and verify_strict, {label} build, round {round}"),
                Command::new(program).args([*label, "1000"]),
            )?;
            let f = parse_figures(&text).into_iter().find(|f| f.kind == "ed25519");
            let (s, v) = f
                .and_then(|f| Some((f.num("sign_us")?, f.num("verify_us")?)))
                .ok_or_else(|| format!("ed25519_speed {label}: no figure line"))?;
            *best = (best.0.min(s), best.1.min(v));
        }
    }
    Ok(programs
        .iter()
        .zip(best)
        .map(|((label, _), (s, v))| {
            format!(
                "figure: ed25519 build={label} sign_us={s:.1} verify_us={v:.1} \
                 rounds={ED25519_ROUNDS}\n"
            )
        })
        .collect())
}

/// The Ed25519 figures' report lines (no goal: what the guests' builds
/// cost against the hosted one).
pub(crate) fn ed25519_report(figs: &[Figure]) -> Option<String> {
    let of = |label: &str| {
        let f = figs.iter().find(|f| f.kind == "ed25519" && f.get("build") == Some(label))?;
        Some((f.num("sign_us")?, f.num("verify_us")?))
    };
    let [(reference, _, _, reference_is), builds @ ..] = ED25519_BUILDS;
    let (hs, hv) = of(reference)?;
    let mut lines = format!(
        "Ed25519, 200 B, the best of {ED25519_ROUNDS} rounds' medians: {reference_is} \
         sign {hs:.1} us, verify_strict {hv:.1} us"
    );
    for (label, _, _, what) in builds {
        if let Some((gs, gv)) = of(label) {
            lines += &format!(
                "\n  {what}: sign {gs:.1} us ({:.2} x hosted), verify_strict {gv:.1} us ({:.2} x)",
                gs / hs.max(f64::MIN_POSITIVE),
                gv / hv.max(f64::MIN_POSITIVE)
            );
        }
    }
    Some(lines)
}

/// The load average, as `/proc/loadavg` has it.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs a command, echoing its output, and returns what it printed.
fn capture(step: &str, cmd: &mut Command) -> Result<String, String> {
    println!("==> {step}");
    let start = Instant::now();
    let mut child =
        cmd.stdout(Stdio::piped()).spawn().map_err(|e| format!("{step}: cannot start: {e}"))?;
    let mut text = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line.map_err(|e| format!("{step}: {e}"))?;
            println!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    let status = child.wait().map_err(|e| format!("{step}: {e}"))?;
    let took = start.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("{step}: failed ({status}) after {took:.1} s"));
    }
    println!("<== {step}: ok ({took:.1} s)");
    Ok(text)
}

/// `cargo xtask bench [--goals-only]`.
pub(crate) fn bench(criterion: bool) -> Result<(), String> {
    crate::ensure_tools(&[crate::CRYPTSETUP, crate::VALGRIND])?;
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load_before = loadavg();
    let mut c = crate::cargo();
    c.args(["build", "--release", "-p", "portcullis-cli"]);
    for g in crate::GUESTS {
        c.args(["-p", g]);
    }
    crate::run("build the guests and the portcullis tool (release)", &mut c)?;
    crate::run(
        "build the vchan throughput and cryptod cost examples (release)",
        crate::cargo().args([
            "build",
            "--release",
            "-p",
            "portcullis-hosted",
            "--example",
            "vchan_throughput",
            "-p",
            "portcullis-apps",
            "--example",
            "cryptod_cost",
        ]),
    )?;
    let release = crate::target_dir().join("release");
    let mut out = String::new();
    out += &capture(
        "vchan between two processes vs a pipe",
        &mut Command::new(release.join("examples/vchan_throughput")),
    )?;
    if cpus >= 2 {
        for (placement, _, receiver) in PLACEMENTS {
            out += &capture(
                &format!(
                    "ping-pongs pinned, {placement} (sender on CPU 0, receiver on {receiver})"
                ),
                Command::new("taskset")
                    .args(["-c", "0"])
                    .arg(release.join("examples/vchan_throughput"))
                    .arg("pingpong")
                    .env("THROUGHPUT_RECEIVER_CPUS", receiver)
                    .env("THROUGHPUT_PLACEMENT", placement),
            )?;
        }
    }
    out += &driver_figures(&release.join("examples/cryptod_cost"))?;
    out += &ed25519_figures()?;
    for wal in ["on", "off"] {
        out += &capture(
            &format!("token round trips and concurrent clients, audit wait {wal}"),
            Command::new(release.join("portcullis")).args([
                "demo",
                "--scenario",
                "bench",
                "--no-qr",
                "--totp-from-secret",
                "--answer-after-audit",
                wal,
            ]),
        )?;
    }
    let load_after = loadavg();
    let figs = parse_figures(&out);
    let results = verdicts(&figs);
    println!();
    println!("== issue 14 goals (release build, hosted platform; each reference from this run)");
    println!("   {cpus} CPUs; load average before {load_before}, after {load_after}");
    for v in &results {
        println!("{:<13} {}", v.word(), v.goal);
        println!("              measured: {}", v.figure);
        println!("              against:  {}", v.reference);
    }
    if let Some(line) = pingpong_report(&figs) {
        println!("{line}");
    }
    if let Some(line) = driver_report(&figs) {
        println!("{line}");
    }
    if let Some(lines) = ed25519_report(&figs) {
        println!("{lines}");
    }
    let met = results.iter().filter(|v| v.pass == Some(true)).count();
    println!("{met} of {} goals met (a miss is reported, not a failure)", results.len());
    if criterion {
        crate::run(
            "cargo bench --workspace (criterion)",
            crate::cargo().args(["bench", "--workspace"]),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "\
noise line
figure: vchan order=10 mbps=1100
figure: vchan order=12 mbps=700
figure: vchan order=16 mbps=2100
figure: pipe mbps=2000
figure: roundtrip wal=on p50_us=300 p99_us=900
figure: raw wal=on p50_us=60 p99_us=90
figure: durable wal=on p50_us=200 p99_us=400
figure: concurrent wal=on clients=4 tokens=2000 cpu_us_per_token=49.5 tokens_per_s=5000
figure: roundtrip wal=off p50_us=91 p99_us=150
figure: raw wal=off p50_us=60 p99_us=90
";

    fn by_goal<'a>(v: &'a [Verdict], start: &str) -> &'a Verdict {
        v.iter().find(|v| v.goal.starts_with(start)).unwrap_or_else(|| panic!("{start}"))
    }

    #[test]
    fn figures_parse_and_goals_are_judged() {
        let figs = parse_figures(RUN);
        assert_eq!(figs.len(), 10);
        assert_eq!(figs[0].num("mbps"), Some(1100.0));
        let v = verdicts(&figs);
        // 300 > 60 + 200: a miss.
        assert_eq!(by_goal(&v, "round trip, audit wait on").pass, Some(false));
        // 91 > 1.5 * 60 = 90: a miss by one microsecond.
        assert_eq!(by_goal(&v, "round trip, audit wait off").pass, Some(false));
        assert_eq!(by_goal(&v, "cryptod CPU").pass, Some(true));
        assert_eq!(by_goal(&v, "vchan order 10").pass, Some(true));
        // 700 < 1000 (half the pipe).
        assert_eq!(by_goal(&v, "vchan order 12").pass, Some(false));
        assert_eq!(by_goal(&v, "vchan order 16").pass, Some(true));
        assert_eq!(v.len(), 6);
        assert!(!by_goal(&v, "cryptod CPU").figure.contains("rounds"));
    }

    #[test]
    fn the_cpu_figure_names_its_rounds_and_their_range() {
        let text = RUN.replace(
            "tokens=2000 cpu_us_per_token=49.5",
            "tokens=2000 rounds=3 cpu_us_per_token=49.5 cpu_us_min=47.0 cpu_us_max=61.2",
        );
        let v = verdicts(&parse_figures(&text));
        let cpu = by_goal(&v, "cryptod CPU");
        assert_eq!(cpu.pass, Some(true), "judged on the median");
        assert!(
            cpu.figure.starts_with("50 us, the median of 3 rounds (47 to 61)"),
            "{}",
            cpu.figure
        );
    }

    #[test]
    fn the_ping_pong_floor_is_shown_next_to_the_round_trips() {
        let v = verdicts(&parse_figures(RUN));
        assert!(!by_goal(&v, "round trip, audit wait on").reference.contains("ping-pong"));
        let text = format!("{RUN}figure: pingpong via=vchan p50_us=8 p99_us=20\n");
        let v = verdicts(&parse_figures(&text));
        // 300 - 60 - 200 = 40 us beyond the reference: five ping-pongs.
        let on = &by_goal(&v, "round trip, audit wait on").reference;
        assert!(
            on.ends_with("beyond that 40 us = 5.0 x a two-process vchan ping-pong (p50 8 us)"),
            "{on}"
        );
        let off = &by_goal(&v, "round trip, audit wait off").reference;
        assert!(
            off.ends_with("beyond that 31 us = 3.9 x a two-process vchan ping-pong (p50 8 us)"),
            "{off}"
        );
        // A pipe figure is not the vchan's.
        let text = format!("{RUN}figure: pingpong via=pipes p50_us=8 p99_us=20\n");
        let v = verdicts(&parse_figures(&text));
        assert!(!by_goal(&v, "round trip, audit wait off").reference.contains("ping-pong"));
    }

    #[test]
    fn the_hand_offs_are_compared_on_the_same_placement() {
        let pinned = "figure: pingpong via=vchan placement=any p50_us=45.1 p99_us=100\n\
             figure: pingpong via=pipes placement=any p50_us=5.3 p99_us=67\n\
             figure: pingpong via=vchan placement=one-cpu p50_us=6.8 p99_us=10\n\
             figure: pingpong via=pipes placement=one-cpu p50_us=6.6 p99_us=9\n\
             figure: pingpong via=vchan placement=two-cpus p50_us=45.5 p99_us=137\n\
             figure: pingpong via=pipes placement=two-cpus p50_us=66.4 p99_us=382\n";
        let line = pingpong_report(&parse_figures(pinned)).unwrap();
        assert!(
            line.ends_with(
                "unpinned 45.1 / 5.3 us; both on one CPU 6.8 / 6.6 us; on two CPUs 45.5 / 66.4 us"
            ),
            "{line}"
        );
        // The round trips' hand-off unit stays the unpinned vchan's.
        let v = verdicts(&parse_figures(&format!("{RUN}{pinned}")));
        let off = &by_goal(&v, "round trip, audit wait off").reference;
        assert!(off.ends_with("(p50 45 us)"), "{off}");
        // The unpinned pair alone is no comparison by placement.
        let unpinned = "figure: pingpong via=vchan p50_us=45.1 p99_us=100\n\
             figure: pingpong via=pipes p50_us=5.3 p99_us=67\n";
        assert_eq!(pingpong_report(&parse_figures(unpinned)), None);
        // A placement with one of the two figures missing is left out.
        let half = format!("{unpinned}figure: pingpong via=vchan placement=one-cpu p50_us=6.8\n");
        assert_eq!(pingpong_report(&parse_figures(&half)), None);
    }

    #[test]
    fn goals_met_exactly_pass() {
        let text = RUN
            .replace("roundtrip wal=on p50_us=300", "roundtrip wal=on p50_us=260")
            .replace("roundtrip wal=off p50_us=91", "roundtrip wal=off p50_us=90")
            .replace("cpu_us_per_token=49.5", "cpu_us_per_token=50.1");
        let v = verdicts(&parse_figures(&text));
        assert_eq!(by_goal(&v, "round trip, audit wait on").pass, Some(true));
        assert_eq!(by_goal(&v, "round trip, audit wait off").pass, Some(true));
        assert_eq!(by_goal(&v, "cryptod CPU").pass, Some(false));
    }

    #[test]
    fn callgrind_counts_and_the_driver_figure_parse() {
        let stderr = "==12== Events    : Ir\n==12== Collected : 370092314\n==12==\n";
        assert_eq!(collected(stderr), Some(370_092_314));
        assert_eq!(collected("==12== Collected : \n"), None);
        let figs = parse_figures(
            "figure: driver instructions_per_token=300000 sign_instructions=200000 tokens=200,1200\n",
        );
        let line = driver_report(&figs).unwrap();
        assert!(line.contains("300000 instructions per audited token = 1.50 x"), "{line}");
        assert_eq!(driver_report(&parse_figures(RUN)), None);
    }

    /// The guest configuration the Ed25519 builds are timed with is the
    /// one `.cargo/config.toml` gives the guest target.
    #[test]
    fn the_guest_crypto_cfgs_are_the_guest_targets() {
        let config = include_str!("../../.cargo/config.toml");
        let cfgs: Vec<&str> =
            GUEST_CRYPTO_CFGS.split_whitespace().filter(|w| *w != "--cfg").collect();
        assert_eq!(cfgs.len(), 3, "{GUEST_CRYPTO_CFGS}");
        for cfg in cfgs {
            assert!(config.contains(&format!("'{cfg}'")), "{cfg} not in .cargo/config.toml");
        }
    }

    #[test]
    fn the_ed25519_builds_are_reported_against_the_hosted_one() {
        let figs = parse_figures(
            "figure: ed25519 build=hosted sign_us=16.0 verify_us=40.0\n\
             figure: ed25519 build=guest sign_us=48.0 verify_us=50.0\n\
             figure: ed25519 build=guest-fast sign_us=20.0 verify_us=44.0\n",
        );
        let lines = ed25519_report(&figs).unwrap();
        assert!(lines.contains("sign 16.0 us, verify_strict 40.0 us"), "{lines}");
        assert!(lines.contains("as cryptod ships it (serial, compact SHA-2, opt \"z\", run-time table): sign 48.0 us (3.00 x hosted), verify_strict 50.0 us (1.25 x)"), "{lines}");
        assert!(
            lines.contains("with `fast`'s static tables: sign 20.0 us (1.25 x hosted)"),
            "{lines}"
        );
        assert!(!lines.contains("without tables"), "no guest-plain figure: no line");
        assert_eq!(ed25519_report(&parse_figures(RUN)), None, "no hosted figure: no report");
    }

    #[test]
    fn missing_figures_are_not_measured_not_passed() {
        let v = verdicts(&parse_figures("figure: raw wal=on p50_us=abc\nfigure: pipe mbps=1\n"));
        assert!(v.iter().all(|v| v.pass.is_none()), "{v:?}");
        assert!(v.iter().any(|v| v.goal.starts_with("vchan")));
        let v = verdicts(&parse_figures("figure: roundtrip wal=on p50_us=NaN p99_us=1\n"));
        assert!(v.iter().all(|v| v.pass.is_none()), "{v:?}");
    }
}
