//! Bulk throughput between two processes: a vchan over the hosted backend
//! at ring orders 10, 11, 12, 16 and 20, against a Linux pipe.
//!
//! ```text
//! cargo run --release -p portcullis-hosted --example vchan_throughput [MiB per run | pingpong]
//! ```
//!
//! The parent is the launcher and the sender (the vchan server, writing the
//! server-to-client ring); a copy of this program is the receiver. Each
//! figure is the median of three runs, timed from the moment the receiver is
//! ready until it acknowledges the last byte. Next to each vchan figure: the
//! events the sender sent and the times it slept, per MiB moved (the
//! receiver's side mirrors them).
//!
//! Then the latency of one hand-off each way: a 64-byte message sent and
//! echoed back, [`PINGS`] times, over a vchan (both ends sleeping on their
//! event channel as soon as the ring is empty, as the guests' loops do) and
//! over a pair of pipes: the floor under any request and answer between two
//! processes on this machine, with no work done on either side.
//!
//! The last lines, `figure: ...`, are for `cargo xtask bench`.
//!
//! Whether the two processes share a CPU decides most of the figure, and
//! the scheduler picks differently from run to run on a small busy host.
//! To measure one case at a time, pin them: `taskset -c 0` on this program
//! pins the sender (and, inherited, the receivers); with
//! `THROUGHPUT_RECEIVER_CPUS=1` the receivers (vchan and pipe) are started
//! under `taskset -c 1` instead. With the argument `pingpong` only the
//! ping-pongs run, and their `figure:` lines carry `placement=` with the
//! value of `THROUGHPUT_PLACEMENT` (`any` without it): `cargo xtask bench`
//! runs them pinned both ways, so that vchan and pipes are compared on the
//! same placement.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_hosted::{HostedPlatform, World};
use portcullis_platform::Platform;
use portcullis_vchan::layout::Dir;
use portcullis_vchan::{ClientConfig, ServerConfig, Vchan};

const ROLE: &str = "THROUGHPUT_ROLE";
const TOTAL: &str = "THROUGHPUT_BYTES";
const CHUNK: usize = 64 * 1024;
const PORT: u32 = 1;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(30));
const RUNS: usize = 3;
/// Round trips measured by the ping-pong (after [`PING_WARM_UP`] unmeasured).
const PINGS: usize = 2000;
const PING_WARM_UP: usize = 100;
const PING_LEN: usize = 64;
/// CPU list for `taskset -c` to start the receivers on (optional).
const RECEIVER_CPUS: &str = "THROUGHPUT_RECEIVER_CPUS";
/// The placement the ping-pong figures are labelled with (optional).
const PLACEMENT: &str = "THROUGHPUT_PLACEMENT";

/// Any failure, as text (the no_std error types implement `Display` only).
#[derive(Debug)]
struct Error(#[allow(dead_code)] String);

impl<E: std::fmt::Display> From<E> for Error {
    fn from(e: E) -> Self {
        Error(e.to_string())
    }
}

fn main() -> Result<(), Error> {
    match std::env::var(ROLE).ok().as_deref() {
        Some("vchan") => vchan_receiver(),
        Some("pipe") => pipe_receiver(),
        Some("vchan-echo") => vchan_echo(),
        Some("pipe-echo") => pipe_echo(),
        _ => launcher(),
    }
}

/// `VCHAN_SPIN` overrides the blocking helpers' spin count (both ends).
fn spin(v: &mut Vchan<impl portcullis_vchan::Backend>) -> Result<(), Error> {
    if let Ok(n) = std::env::var("VCHAN_SPIN") {
        v.set_spin(n.parse()?);
    }
    Ok(())
}

/// How to start a receiver: this program, or `taskset -c CPUS` running
/// it when [`RECEIVER_CPUS`] is set.
fn receiver_program() -> Result<(OsString, Vec<OsString>), Error> {
    let exe = std::env::current_exe()?.into_os_string();
    Ok(match std::env::var(RECEIVER_CPUS) {
        Ok(cpus) => ("taskset".into(), vec!["-c".into(), cpus.into(), exe]),
        Err(_) => (exe, Vec::new()),
    })
}

fn total_bytes() -> Result<usize, Error> {
    Ok(std::env::var(TOTAL)?.parse()?)
}

/// Receives over the vchan the server published, then acknowledges.
fn vchan_receiver() -> Result<(), Error> {
    let mut p = HostedPlatform::from_env()?;
    let server = p.resolve("sender")?;
    let cfg = ClientConfig { server, port: PORT };
    let mut v = Vchan::client_wait(p.backend(), cfg, TIMEOUT)?;
    spin(&mut v)?;
    let mut left = total_bytes()?;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = buf.len().min(left);
        left -= v.read_blocking(&mut buf[..want], TIMEOUT)?;
    }
    v.write_all(b"!", TIMEOUT)?;
    // Stay until the sender has read the acknowledgement.
    let _ = v.read_blocking(&mut buf[..1], TIMEOUT);
    Ok(())
}

/// Receives on stdin, then acknowledges on stdout.
fn pipe_receiver() -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(b"r")?;
    out.flush()?;
    let mut input = std::io::stdin().lock();
    let mut left = total_bytes()?;
    let mut buf = vec![0u8; CHUNK];
    while left > 0 {
        let want = buf.len().min(left);
        match input.read(&mut buf[..want])? {
            0 => return Err("pipe closed early".into()),
            n => left -= n,
        }
    }
    out.write_all(b"!")?;
    out.flush()?;
    Ok(())
}

/// Echoes every message back until the sender closes the vchan; never
/// spins (sleeps on its event channel as soon as the ring is empty).
fn vchan_echo() -> Result<(), Error> {
    let mut p = HostedPlatform::from_env()?;
    let server = p.resolve("sender")?;
    let cfg = ClientConfig { server, port: PORT };
    let mut v = Vchan::client_wait(p.backend(), cfg, TIMEOUT)?;
    v.set_spin(0);
    let mut buf = [0u8; PING_LEN];
    for _ in 0..PINGS + PING_WARM_UP {
        v.read_exact(&mut buf, TIMEOUT)?;
        v.write_all(&buf, TIMEOUT)?;
    }
    // Stay until the sender has read the last echo.
    let _ = v.read_blocking(&mut buf[..1], TIMEOUT);
    Ok(())
}

/// Echoes every message from stdin to stdout.
fn pipe_echo() -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    let mut input = std::io::stdin().lock();
    let mut buf = [0u8; PING_LEN];
    for _ in 0..PINGS + PING_WARM_UP {
        input.read_exact(&mut buf)?;
        out.write_all(&buf)?;
        out.flush()?;
    }
    Ok(())
}

/// Median and 99th percentile, in microseconds.
fn p50_p99(mut samples: Vec<Duration>) -> (f64, f64) {
    samples.sort();
    let at = |q: usize| samples.get(samples.len() * q / 100).map_or(0.0, |d| d.as_secs_f64() * 1e6);
    (at(50), at(99))
}

/// Round trips of a 64-byte message over a vchan (order 10 rings) to an
/// echoing process; neither end spins.
fn vchan_pingpong() -> Result<Vec<Duration>, Error> {
    let dir = std::env::temp_dir().join(format!("portcullis-ping-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let world = World::create(&dir)?;
    let sender = world.add_domain("sender")?;
    let receiver = world.add_domain("receiver")?;
    let cfg = ServerConfig { client: receiver, port: PORT, read_min: 1024, write_min: 1024 };
    let mut v = Vchan::server(world.backend(sender)?, cfg)?;
    v.set_spin(0);
    let (program, args) = receiver_program()?;
    let mut child =
        world.command_for(receiver, program).args(args).env(ROLE, "vchan-echo").spawn()?;
    v.wait_connected(TIMEOUT)?;
    let mut samples = Vec::with_capacity(PINGS);
    let mut buf = [0x5au8; PING_LEN];
    for i in 0..PINGS + PING_WARM_UP {
        let t = Instant::now();
        v.write_all(&buf, TIMEOUT)?;
        v.read_exact(&mut buf, TIMEOUT)?;
        if i >= PING_WARM_UP {
            samples.push(t.elapsed());
        }
    }
    v.close();
    let status = child.wait()?;
    world.remove()?;
    if !status.success() || buf != [0x5au8; PING_LEN] {
        return Err("echo failed".into());
    }
    Ok(samples)
}

/// The same over a pair of pipes.
fn pipe_pingpong() -> Result<Vec<Duration>, Error> {
    let (mut child, mut input, mut output) = pipe_child("pipe-echo", None)?;
    let mut samples = Vec::with_capacity(PINGS);
    let mut buf = [0x5au8; PING_LEN];
    for i in 0..PINGS + PING_WARM_UP {
        let t = Instant::now();
        input.write_all(&buf)?;
        output.read_exact(&mut buf)?;
        if i >= PING_WARM_UP {
            samples.push(t.elapsed());
        }
    }
    drop(input);
    if !child.wait()?.success() || buf != [0x5au8; PING_LEN] {
        return Err("echo failed".into());
    }
    Ok(samples)
}

fn median(mut runs: Vec<f64>) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs[runs.len() / 2]
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / elapsed.as_secs_f64() / 1e6
}

/// One vchan run whose server-to-client ring is at least `ring` bytes.
fn vchan_run(ring: usize, bytes: usize) -> Result<(u8, f64, u64, u64), Error> {
    let dir = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let world = World::create(&dir)?;
    let sender = world.add_domain("sender")?;
    let receiver = world.add_domain("receiver")?;
    // The other ring's minimum keeps it in the control page (order 10 or 11).
    let read_min = if ring <= 1024 { 2048 } else { 1024 };
    let cfg = ServerConfig { client: receiver, port: PORT, read_min, write_min: ring };
    let mut v = Vchan::server(world.backend(sender)?, cfg)?;
    spin(&mut v)?;
    let order = v.geometry().map_or(0, |g| g.order(Dir::Right));
    let (program, args) = receiver_program()?;
    let mut child = world
        .command_for(receiver, program)
        .args(args)
        .env(ROLE, "vchan")
        .env(TOTAL, bytes.to_string())
        .spawn()?;
    v.wait_connected(TIMEOUT)?;
    let data = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = CHUNK.min(left);
        v.write_all(&data[..n], TIMEOUT)?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    v.read_blocking(&mut ack, TIMEOUT)?;
    let elapsed = start.elapsed();
    let (signals, sleeps) = (v.signals(), v.sleeps());
    v.close();
    let status = child.wait()?;
    world.remove()?;
    if !status.success() || ack != *b"!" {
        return Err("receiver failed".into());
    }
    Ok((order, mb_per_s(bytes, elapsed), signals, sleeps))
}

/// The receiver in `role`, with its stdin and stdout as pipes (and the
/// byte count to expect, when it counts).
fn pipe_child(role: &str, total: Option<usize>) -> Result<(Child, ChildStdin, ChildStdout), Error> {
    let (program, args) = receiver_program()?;
    let mut command = Command::new(program);
    command.args(args).env(ROLE, role).stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(total) = total {
        command.env(TOTAL, total.to_string());
    }
    let mut child = command.spawn()?;
    match (child.stdin.take(), child.stdout.take()) {
        (Some(i), Some(o)) => Ok((child, i, o)),
        _ => Err("no pipes".into()),
    }
}

fn pipe_run(bytes: usize) -> Result<f64, Error> {
    let (mut child, mut input, mut output) = pipe_child("pipe", Some(bytes))?;
    let mut ready = [0u8; 1];
    output.read_exact(&mut ready)?;
    let data = vec![0x5au8; CHUNK];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = CHUNK.min(left);
        input.write_all(&data[..n])?;
        left -= n;
    }
    let mut ack = [0u8; 1];
    output.read_exact(&mut ack)?;
    let elapsed = start.elapsed();
    drop(input);
    if !child.wait()?.success() || ack != *b"!" {
        return Err("receiver failed".into());
    }
    Ok(mb_per_s(bytes, elapsed))
}

fn launcher() -> Result<(), Error> {
    let mib: usize = match std::env::args().nth(1).as_deref() {
        Some("pingpong") => return pingpongs(),
        Some(arg) => arg.parse()?,
        None => 256,
    };
    let bytes = mib << 20;
    println!("{mib} MiB per run, {} KiB writes, median of {RUNS} runs", CHUNK / 1024);
    let mut figures = Vec::new();
    for ring in [1usize << 10, 1 << 11, 1 << 12, 1 << 16, 1 << 20] {
        let mut order = 0;
        let mut runs = Vec::new();
        let (mut signals, mut sleeps) = (0, 0);
        for _ in 0..RUNS {
            let (o, rate, sig, slp) = vchan_run(ring, bytes)?;
            order = o;
            runs.push(rate);
            signals += sig;
            sleeps += slp;
        }
        let rate = median(runs);
        let per_mib = |n: u64| n as f64 / (RUNS * mib) as f64;
        println!(
            "vchan order {order:2} ({:4} KiB ring): {rate:8.0} MB/s  (sender: {:.1} events, {:.1} sleeps per MiB)",
            ring / 1024,
            per_mib(signals),
            per_mib(sleeps),
        );
        figures.push(format!("figure: vchan order={order} mbps={rate:.0}"));
    }
    let runs = (0..RUNS).map(|_| pipe_run(bytes)).collect::<Result<Vec<_>, _>>()?;
    let pipe = median(runs);
    println!("pipe (64 KiB pipe buffer):      {pipe:8.0} MB/s");
    for f in figures {
        println!("{f}");
    }
    println!("figure: pipe mbps={pipe:.0}");
    pingpongs()
}

/// The two ping-pongs, vchan then pipes, and their figures.
fn pingpongs() -> Result<(), Error> {
    let placement = std::env::var(PLACEMENT).unwrap_or_else(|_| "any".into());
    let (v50, v99) = p50_p99(vchan_pingpong()?);
    let (p50, p99) = p50_p99(pipe_pingpong()?);
    println!(
        "ping-pong ({placement}), {PING_LEN} B each way, {PINGS} round trips: vchan p50 {v50:.1} us \
         (p99 {v99:.1}), pipes p50 {p50:.1} us (p99 {p99:.1})"
    );
    println!("figure: pingpong via=vchan placement={placement} p50_us={v50:.1} p99_us={v99:.1}");
    println!("figure: pingpong via=pipes placement={placement} p50_us={p50:.1} p99_us={p99:.1}");
    Ok(())
}
