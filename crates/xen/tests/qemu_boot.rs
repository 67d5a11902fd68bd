//! Boots the `hello` guest under QEMU (microvm, TCG, direct PVH entry) and
//! checks its output on the debug console and its exit status.
//!
//! Needs `qemu-system-x86_64` (Debian: `qemu-system-x86`) and the
//! `x86_64-unknown-none` target. Without QEMU the boot tests print why and
//! pass vacuously; every other failure (build, missing note, wrong output,
//! wrong status) fails.

use portcullis_elfnote::{Elf, ET_EXEC};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Builds the guest once per test binary and returns the ELF's path.
fn guest_elf() -> &'static Path {
    static ELF: OnceLock<PathBuf> = OnceLock::new();
    ELF.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "-p", "hello", "--target", "x86_64-unknown-none", "--release"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the hello guest failed");
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("target"));
        target_dir.join("x86_64-unknown-none/release/hello")
    })
}

struct Run {
    /// QEMU's exit status (isa-debug-exit: `2 * code + 1`).
    status: i32,
    log: String,
}

/// Boots `elf` with `append` as its command line, with a generous wall
/// clock limit only as a hang guard (TCG boots take tens of milliseconds).
fn boot(elf: &Path, append: &str) -> Run {
    boot_with_memory(elf, append, 64)
}

/// [`boot`] with `mib` MiB of RAM.
fn boot_with_memory(elf: &Path, append: &str, mib: u32) -> Run {
    let dir = std::env::temp_dir().join(format!(
        "portcullis-xen-boot-{}-{}-{mib}",
        std::process::id(),
        append.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("debugcon.log");
    let _ = std::fs::remove_file(&log);
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,pit=off,pic=off,rtc=off,isa-serial=off",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            &mib.to_string(),
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4",
        ])
        .arg("-kernel")
        .arg(elf)
        .arg("-append")
        .arg(append)
        .arg("-debugcon")
        .arg(format!("file:{}", log.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("start qemu");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("guest did not exit within 60 s; log: {:?}", std::fs::read_to_string(&log));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    Run { status: status.code().expect("qemu exited by signal"), log }
}

fn qemu_or_skip() -> bool {
    if have("qemu-system-x86_64") {
        return true;
    }
    println!("SKIPPED: qemu-system-x86_64 not found (install the Debian package qemu-system-x86)");
    false
}

#[test]
fn image_has_the_pvh_note_and_a_fixed_load_address() {
    let bytes = std::fs::read(guest_elf()).expect("read the hello image");
    let elf = Elf::parse(&bytes).unwrap_or_else(|e| panic!("hello image: {e}"));
    assert_eq!(elf.e_type(), ET_EXEC, "not a fixed-address executable");
    // XEN_ELFNOTE_PHYS32_ENTRY (18) with the entry address: the start of
    // the code, right after the ELF headers that begin the image at 1 MiB.
    assert_eq!(elf.pvh_entry(), Ok(elf.entry()));
    assert!((0x10_0040..0x10_1000).contains(&elf.entry()), "{:#x}", elf.entry());
    assert_eq!(&bytes[..4], b"\x7fELF");
}

#[test]
fn hello_boots_prints_ready_and_powers_off() {
    if !qemu_or_skip() {
        return;
    }
    let run = boot(guest_elf(), "greeting=1");
    assert!(run.log.contains("hello: no xen\n"), "log:\n{}", run.log);
    assert!(run.log.contains("hello: cmdline \"greeting=1\"\n"), "log:\n{}", run.log);
    assert!(run.log.contains("hello: heap ok, sum 333833500\n"), "log:\n{}", run.log);
    // TCG's `-cpu max` has RDSEED and RDRAND; the health tests must pass.
    assert!(run.log.contains("hello: entropy ok\n"), "log:\n{}", run.log);
    assert!(run.log.ends_with("hello: ready\n"), "log:\n{}", run.log);
    assert_eq!(run.status, 1, "clean poweroff is exit code 0 (QEMU status 1); log:\n{}", run.log);
}

#[test]
fn a_panic_prints_its_message_and_crashes() {
    if !qemu_or_skip() {
        return;
    }
    let run = boot(guest_elf(), "panic");
    assert!(run.log.contains("panic: panicked at"), "log:\n{}", run.log);
    assert!(run.log.contains("requested by the command line"), "log:\n{}", run.log);
    assert!(!run.log.contains("hello: ready"), "log:\n{}", run.log);
    assert_eq!(run.status, 7, "panic exit code 3 (QEMU status 7); log:\n{}", run.log);
}

/// The `hello: heap N bytes at 0xADDR` line: (N, ADDR).
fn heap_of(log: &str) -> (u64, u64) {
    let line = log
        .lines()
        .filter(|l| l.contains(" bytes at 0x"))
        .find_map(|l| l.strip_prefix("hello: heap "))
        .expect("a heap line");
    let (size, addr) = line.split_once(" bytes at 0x").expect("N bytes at 0xADDR");
    (size.parse().unwrap(), u64::from_str_radix(addr, 16).unwrap())
}

#[test]
fn the_heap_is_the_memory_above_the_image_not_a_fixed_arena() {
    if !qemu_or_skip() {
        return;
    }
    let small = boot_with_memory(guest_elf(), "", 8);
    let large = boot_with_memory(guest_elf(), "", 64);
    for run in [&small, &large] {
        assert!(run.log.ends_with("hello: ready\n"), "log:\n{}", run.log);
    }
    let ((small_len, small_at), (large_len, large_at)) = (heap_of(&small.log), heap_of(&large.log));
    // Above the image, which is loaded at 1 MiB and is far smaller than 1 MiB.
    assert!((0x10_1000..0x20_0000).contains(&small_at), "{small_at:#x}");
    assert_eq!(small_at, large_at);
    // Every extra MiB of RAM is heap.
    assert_eq!(large_len - small_len, 56 << 20, "{small_len} / {large_len}");
    assert!(small_len > 6 << 20, "{small_len}");
}
