//! Vchans between real processes: the test binary starts copies of itself
//! as guest domains (running the `child` test with a role in the
//! environment), with the test process as the launcher and one peer.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::Duration;

use portcullis_hosted::{HostedPlatform, World};
use portcullis_platform::Platform;
use portcullis_vchan::{ClientConfig, DomId, ServerConfig, Vchan, VchanError};

const ROLE: &str = "PORTCULLIS_TEST_ROLE";
const LEN: &str = "PORTCULLIS_TEST_LEN";
const PORT: u32 = 7;
const LONG: Duration = Duration::from_secs(20);

/// Deterministic test data: an xorshift stream.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The guest side, when started by a test below; a no-op otherwise.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let mut p = HostedPlatform::from_env().unwrap();
    let peer = p.resolve("peer").unwrap();
    let len: usize = std::env::var(LEN).map_or(0, |v| v.parse().unwrap());
    match role.as_str() {
        // Sends the pattern, then expects it back.
        "bulk-client" => {
            let cfg = ClientConfig { server: peer, port: PORT };
            let mut v = Vchan::client_wait(p.backend(), cfg, Some(LONG)).unwrap();
            let data = pattern(len, u32::from(p.domid().0));
            v.write_all(&data, Some(LONG)).unwrap();
            let mut back = vec![0u8; len];
            v.read_exact(&mut back, Some(LONG)).unwrap();
            assert!(back == data, "echo differs");
            v.close();
        }
        // Connects, says hello, and waits to be killed.
        "hang-client" => {
            let cfg = ClientConfig { server: peer, port: PORT };
            let mut v = Vchan::client_wait(p.backend(), cfg, Some(LONG)).unwrap();
            v.write_all(b"hello", Some(LONG)).unwrap();
            loop {
                std::thread::park();
            }
        }
        // Serves, says hello, and waits to be killed.
        "hang-server" => {
            let cfg = ServerConfig { client: peer, port: PORT, read_min: 1024, write_min: 1024 };
            let mut v = Vchan::server(p.backend(), cfg).unwrap();
            v.wait_connected(Some(LONG)).unwrap();
            v.write_all(b"hello", Some(LONG)).unwrap();
            loop {
                std::thread::park();
            }
        }
        // Reads console lines into a small buffer and reports each outcome.
        "console" => {
            for _ in 0..3 {
                let mut buf = [0u8; 8];
                let line =
                    match p.console_read_line(&mut buf, false, Some(Duration::from_millis(300))) {
                        Ok(n) => format!("line:{}", String::from_utf8_lossy(&buf[..n])),
                        Err(e) => format!("error:{e:?}"),
                    };
                p.console_write(&format!("RESULT {line}\n"));
            }
        }
        other => panic!("unknown role {other}"),
    }
}

struct Run {
    _dir: tempfile::TempDir,
    world: World,
    /// The test process's own domain, named "peer".
    me: DomId,
    /// The child's domain.
    guest: DomId,
}

fn run() -> Run {
    let dir = tempfile::tempdir().unwrap();
    let world = World::create(dir.path()).unwrap();
    let me = world.add_domain("peer").unwrap();
    let guest = world.add_domain("guest").unwrap();
    Run { _dir: dir, world, me, guest }
}

impl Run {
    fn spawn(&self, role: &str, len: usize) -> Child {
        let exe = std::env::current_exe().unwrap();
        self.world
            .command_for(self.guest, exe)
            .args(["child", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .env(LEN, len.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn server(&self, read_min: usize, write_min: usize) -> Vchan<portcullis_hosted::HostedBackend> {
        let cfg = ServerConfig { client: self.guest, port: PORT, read_min, write_min };
        Vchan::server(self.world.backend(self.me).unwrap(), cfg).unwrap()
    }
}

/// Echoes `len` bytes for a child client and checks them on the way.
fn echo(server: &mut Vchan<portcullis_hosted::HostedBackend>, len: usize, seed: u16) {
    server.wait_connected(Some(LONG)).unwrap();
    let mut got = vec![0u8; len];
    server.read_exact(&mut got, Some(LONG)).unwrap();
    assert!(got == pattern(len, u32::from(seed)), "data differs");
    server.write_all(&got, Some(LONG)).unwrap();
}

#[test]
fn bulk_data_crosses_processes_and_wraps_the_rings() {
    // Orders 10/11 (rings in the control page) and 16 (granted pages).
    for (read_min, write_min, len) in [(1024, 2048, 300_000), (65536, 65536, 1_000_000)] {
        let r = run();
        let mut server = r.server(read_min, write_min);
        let mut child = r.spawn("bulk-client", len);
        echo(&mut server, len, r.guest.0);
        assert!(child.wait().unwrap().success());
    }
}

#[test]
fn console_lines_handle_backspace_overflow_and_timeout() {
    let r = run();
    let exe = std::env::current_exe().unwrap();
    let mut child = r
        .world
        .command_for(r.guest, exe)
        .args(["child", "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE, "console")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Backspace (DEL) edits the line; a nine-byte line overflows the
    // eight-byte buffer; then nothing more arrives before the timeout.
    stdin.write_all(b"abc\x7fd\nnine_byte\n").unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let results: Vec<&str> =
        text.lines().filter_map(|l| l.split_once("RESULT ").map(|(_, r)| r)).collect();
    assert_eq!(results, ["line:abd", "error:Console", "error:Timeout"]);
}

#[test]
fn killed_client_times_out_then_is_reaped_and_replaced() {
    let r = run();
    let mut server = r.server(1024, 1024);
    let mut child = r.spawn("hang-client", 0);
    server.wait_connected(Some(LONG)).unwrap();
    let mut hello = [0u8; 5];
    server.read_exact(&mut hello, Some(LONG)).unwrap();
    assert_eq!(&hello, b"hello");

    child.kill().unwrap();
    child.wait().unwrap();
    // Nobody has told us yet: a bounded wait times out instead of hanging.
    let mut buf = [0u8; 8];
    assert_eq!(
        server.read_blocking(&mut buf, Some(Duration::from_millis(100))),
        Err(VchanError::Timeout)
    );
    // The launcher reaps the dead domain: its unmap notification clears the
    // client's live byte and signals us.
    r.world.reap(r.guest).unwrap();
    assert_eq!(server.read_blocking(&mut buf, Some(LONG)), Err(VchanError::PeerClosed));
    assert!(!server.is_open());

    // The server starts afresh and a new process of the same domain connects.
    server.reinit().unwrap();
    let mut child = r.spawn("bulk-client", 50_000);
    echo(&mut server, 50_000, r.guest.0);
    assert!(child.wait().unwrap().success());
}

#[test]
fn killed_server_times_out_then_is_reaped() {
    let r = run();
    let mut child = r.spawn("hang-server", 0);
    // Here the child serves and the test process is the client.
    let cfg = ClientConfig { server: r.guest, port: PORT };
    let backend = r.world.backend(r.me).unwrap();
    let mut client = Vchan::client_wait(backend, cfg, Some(LONG)).unwrap();
    let mut hello = [0u8; 5];
    client.read_exact(&mut hello, Some(LONG)).unwrap();
    assert_eq!(&hello, b"hello");

    child.kill().unwrap();
    child.wait().unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(
        client.read_blocking(&mut buf, Some(Duration::from_millis(100))),
        Err(VchanError::Timeout)
    );
    r.world.reap(r.guest).unwrap();
    assert_eq!(client.read_blocking(&mut buf, Some(LONG)), Err(VchanError::PeerClosed));
}
