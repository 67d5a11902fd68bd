//! Real Xen inside QEMU: `cargo xtask xen-image` and `cargo xtask boot`.
//!
//! `xen-image` assembles, from Debian packages only (fetched with
//! `apt-get download`, unpacked with `dpkg-deb -x`, nothing installed on
//! this machine), a Xen hypervisor (4.17 from Debian 12 or, with `--xen
//! 4.20`, 4.20 from Debian 13: [`XenRelease`]), that release's kernel and a
//! busybox dom0 initramfs holding the Xen toolstack and our own Debian
//! package (`cargo xtask dist`), installed into the dom0 root by `dpkg
//! --root` as an operator's `dpkg -i` would. Besides, the dom0 gets what an
//! operator brings: the provisioned state in /var/lib/portcullis, an edited
//! /etc/portcullis/host.toml, and the test scripts from `tests/xen/` under
//! /portcullis. `boot` runs it under QEMU (TCG, `-cpu max,xsave=off`); dom0's init
//! starts `portcullis host` as its unit says, the test script acts as an
//! operator and reports its verdict through QEMU's `isa-debug-exit` device,
//! which becomes this command's exit status. See docs/xen-boot.md.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{output, root, run};

/// A Xen release `xen-image` and `boot` can use: `--xen 4.17` (the default)
/// or `--xen 4.20`. Each comes from one Debian release, with that release's
/// kernel, libraries and busybox; see [`Release`] for what differs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XenRelease {
    /// Xen 4.17 from Debian 12 (bookworm), this machine's own release.
    #[default]
    Xen417,
    /// Xen 4.20 from Debian 13 (trixie), fetched through a private apt
    /// configuration.
    Xen420,
}

impl XenRelease {
    /// Every release, in the order CI boots them.
    pub const ALL: [XenRelease; 2] = [XenRelease::Xen417, XenRelease::Xen420];

    /// The value of `--xen`: `4.17` or `4.20`; anything else is refused.
    pub fn parse(value: &str) -> Result<XenRelease, String> {
        XenRelease::ALL.into_iter().find(|r| r.version() == value).ok_or_else(|| {
            let known: Vec<&str> = XenRelease::ALL.iter().map(|r| r.version()).collect();
            format!("--xen must be one of {}, not `{value}`", known.join(", "))
        })
    }

    /// `4.17` / `4.20`: the `--xen` value, also the cache directory's name.
    pub fn version(self) -> &'static str {
        self.describe().version
    }

    fn describe(self) -> &'static Release {
        match self {
            XenRelease::Xen417 => &XEN_4_17,
            XenRelease::Xen420 => &XEN_4_20,
        }
    }
}

/// Everything about a Xen release that the image depends on. The rest of
/// the image (our package, the provisioning, tests/xen, the Xen and dom0
/// command lines, the verdict) is the same for every release.
struct Release {
    /// `4.17`: names the cache directory `target/xen-image/<version>`.
    version: &'static str,
    /// The Debian release the packages come from (for messages and docs).
    debian: &'static str,
    /// Where apt finds that release.
    apt: Apt,
    /// Debian packages of the image, besides the dom0 kernel (resolved from
    /// `linux-image-amd64` in the same release).
    packages: &'static [&'static str],
    /// The hypervisor, gzipped, in the unpacked tree.
    hypervisor: &'static str,
    /// The toolstack's real binaries, in the tree and in dom0.
    tool_dir: &'static str,
    /// busybox in the tree (Debian 13 has merged /usr).
    busybox: &'static str,
    /// Other programs for dom0: (path in dom0, path in the tree).
    programs: &'static [(&'static str, &'static str)],
    /// The kernel's module tree (`<dir>/<kernel version>/kernel/...`).
    module_dir: &'static str,
    /// How the kernel package ships its modules.
    module_compression: Compression,
    /// Xen's vchan library (in `libxenmisc<version>`), which `portcullis
    /// host` loads with dlopen; its soname carries the Xen version.
    libxenvchan: &'static str,
    /// How the shared libraries of dom0's programs are found.
    libraries: Libraries,
}

/// Where apt finds a release's packages.
enum Apt {
    /// The host's own apt configuration (`apt-get update` done beforehand):
    /// this machine runs Debian 12.
    Host,
    /// A private configuration under `target/xen-image/<version>/apt`: its own
    /// sources, lists, cache, (empty) dpkg status and preferences, passed
    /// with `-o` to every apt-get and apt-cache call. The host's sources,
    /// lists and preferences are neither read nor changed.
    Private {
        /// deb822 `sources` entries: (URI, suites), component `main`,
        /// signed by the Debian archive keyring (Debian 12's
        /// debian-archive-keyring already holds the Debian 13 keys).
        sources: &'static [(&'static str, &'static str)],
    },
}

/// How a kernel package ships its modules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Compression {
    /// `<module>.ko`
    None,
    /// `<module>.ko.xz`, stored decompressed in dom0 (busybox's insmod
    /// then needs nothing more).
    Xz,
}

/// How the shared libraries of dom0's programs are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Libraries {
    /// The host's `ldd` with the tree's library directories first; what the
    /// tree lacks comes from the host (Debian 12, the release of the tree).
    HostLdd,
    /// The tree's own dynamic loader (`<loader> --library-path <tree dirs>
    /// --list`), because the tree's glibc is newer than the host's. Every
    /// library must then come from the tree: one found on the host is an
    /// error naming it, so a package missing from the list cannot slip by.
    TreeLoader {
        /// The loader in the tree; also dom0's `/lib64/ld-linux-x86-64.so.2`.
        loader: &'static str,
    },
}

/// Xen 4.17 from Debian 12.
static XEN_4_17: Release = Release {
    version: "4.17",
    debian: "Debian 12 (bookworm)",
    apt: Apt::Host,
    packages: &[
        "xen-hypervisor-4.17-amd64",
        "xen-utils-4.17",
        "xen-utils-common",
        "xenstore-utils",
        "libxenmisc4.17",
        "libxencall1",
        "libxenevtchn1",
        "libxenforeignmemory1",
        "libxengnttab1",
        "libxenstore4",
        "libxentoollog1",
        "libxentoolcore1",
        "libxendevicemodel1",
        "libxenhypfs1",
        "libyajl2",
        "busybox-static",
        // dom0's unlock: cryptsetup (dm-crypt) and the operator's code generator
        "cryptsetup-bin",
        "libcryptsetup12",
        "libdevmapper1.02.1",
        "libargon2-1",
        "libjson-c5",
        "libpopt0",
        "oathtool",
        "liboath0",
        // dom0's TPM: tpm2-tools (the `tpm` KEK protector), the TSS and the
        // device TCTI it loads with dlopen; the rest of libcurl's chain is
        // the host's (same release)
        "tpm2-tools",
        "libtss2-esys-3.0.2-0",
        "libtss2-mu0",
        "libtss2-rc0",
        "libtss2-sys1",
        "libtss2-tctildr0",
        "libtss2-tcti-device0",
        "libcurl3-gnutls",
    ],
    hypervisor: "boot/xen-4.17-amd64.gz",
    tool_dir: "usr/lib/xen-4.17/bin",
    busybox: "bin/busybox",
    programs: &[
        ("sbin/cryptsetup", "sbin/cryptsetup"),
        ("usr/bin/oathtool", "usr/bin/oathtool"),
        ("usr/bin/tpm2", "usr/bin/tpm2"),
    ],
    module_dir: "lib/modules",
    module_compression: Compression::None,
    libxenvchan: "libxenvchan.so.4.17",
    libraries: Libraries::HostLdd,
};

/// Xen 4.20 from Debian 13.
static XEN_4_20: Release = Release {
    version: "4.20",
    debian: "Debian 13 (trixie)",
    apt: Apt::Private {
        sources: &[
            ("http://deb.debian.org/debian", "trixie trixie-updates"),
            ("http://deb.debian.org/debian-security", "trixie-security"),
        ],
    },
    packages: &[
        "xen-hypervisor-4.20-amd64",
        "xen-utils-4.20",
        "xen-utils-common",
        "xenstore-utils",
        "libxenmisc4.20",
        "libxencall1",
        "libxenevtchn1",
        "libxenforeignmemory1",
        "libxengnttab1",
        "libxenstore4",
        "libxentoollog1",
        "libxentoolcore1",
        "libxendevicemodel1",
        "libxenhypfs1",
        "libyajl2",
        "busybox-static",
        "cryptsetup-bin",
        "libcryptsetup12",
        "libdevmapper1.02.1",
        "libjson-c5",
        "libpopt0",
        "oathtool",
        "liboath0t64",
        // Debian 13's C library and the libraries Debian 12 would have lent
        // from the host: xen-utils-4.20 needs glibc >= 2.38 (Debian 12: 2.36).
        "libc6",
        "libgcc-s1",
        "liblzma5",
        "libuuid1",
        "libzstd1",
        "zlib1g",
        "libblkid1",
        "libssl3t64",
        // libdevmapper's own (cryptsetup)
        "libselinux1",
        "libpcre2-8-0",
        "libudev1",
        "libcap2",
        // dom0's TPM: tpm2-tools, the TSS, the device TCTI (dlopen), and
        // every library of tpm2's libcurl chain (all from Debian 13: the
        // tree's loader may take none from the host)
        "tpm2-tools",
        "libtss2-esys-3.0.2-0t64",
        "libtss2-mu-4.0.1-0t64",
        "libtss2-rc0t64",
        "libtss2-sys1t64",
        "libtss2-tctildr0t64",
        "libtss2-tcti-device0t64",
        "libcurl3t64-gnutls",
        "libbrotli1",
        "libcom-err2",
        "libffi8",
        "libgmp10",
        "libgnutls30t64",
        "libgssapi-krb5-2",
        "libhogweed6t64",
        "libidn2-0",
        "libk5crypto3",
        "libkeyutils1",
        "libkrb5-3",
        "libkrb5support0",
        "libldap2",
        "libnettle8t64",
        "libnghttp2-14",
        "libnghttp3-9",
        "libngtcp2-16",
        "libngtcp2-crypto-gnutls8",
        "libp11-kit0",
        "libpsl5t64",
        "librtmp1",
        "libsasl2-2",
        "libssh2-1t64",
        "libtasn1-6",
        "libunistring5",
    ],
    hypervisor: "boot/xen-4.20-amd64.gz",
    tool_dir: "usr/lib/xen-4.20/bin",
    busybox: "usr/bin/busybox",
    programs: &[
        ("sbin/cryptsetup", "usr/sbin/cryptsetup"),
        ("usr/bin/oathtool", "usr/bin/oathtool"),
        ("usr/bin/tpm2", "usr/bin/tpm2"),
    ],
    module_dir: "usr/lib/modules",
    module_compression: Compression::Xz,
    libxenvchan: "libxenvchan.so.4.20",
    libraries: Libraries::TreeLoader { loader: "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" },
};

/// Toolstack programs copied into dom0 (from the release's `tool_dir`).
const XEN_TOOLS: &[&str] = &["xl", "xenstored", "xenconsoled", "xen-init-dom0", "xenconsole"];
/// Where the libraries of the unpacked trees live (split and merged /usr).
const TREE_LIB_DIRS: &[&str] = &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu"];
/// Libraries loaded with dlopen, which neither ldd nor the loader lists:
/// `xl` aborts (pthread_cancel) without libgcc_s; tpm2-tools' TCTI loader
/// opens the kernel device's TCTI (`/dev/tpmrm0`, else `/dev/tpm0`).
const DLOPENED: &[&str] = &["libgcc_s.so.1", "libtss2-tcti-device.so.0"];
/// `tpm2_*` commands: all one multi-call binary, `/usr/bin/tpm2` (as
/// Debian's tpm2-tools links them). The `tpm` KEK protector's (crate
/// portcullis-cli, kek.rs) and the test's (`tpm2_pcrread`, `tpm2_pcrextend`,
/// `tpm2_shutdown`).
const TPM2_CMDS: &[&str] = &[
    "getrandom",
    "flushcontext",
    "createprimary",
    "createpolicy",
    "create",
    "load",
    "unseal",
    "pcrread",
    "pcrextend",
    "shutdown",
    "getcap",
];
/// The host's library directories (Debian 12), for [`Libraries::HostLdd`].
const HOST_LIB_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];
/// `xenstore-*` commands: all one multi-call binary, `/usr/bin/xenstore`.
/// (The test script only reads: `xenstore-write`/`chmod` are not there.)
const XENSTORE_CMDS: &[&str] = &["read", "ls", "list", "exists"];
/// Kernel modules, under the kernel's `kernel/` directory: the toolstack's,
/// then loop devices and dm-crypt for `cryptsetup open` (with AES-XTS and
/// the kernel crypto API that cryptsetup uses for key slots).
const MODULES: &[&str] = &[
    "drivers/xen/xen-evtchn",
    "drivers/xen/xen-gntdev",
    "drivers/xen/xen-gntalloc",
    "drivers/xen/xen-privcmd",
    "drivers/xen/xenfs/xenfs",
    "drivers/block/loop",
    "drivers/md/dm-mod",
    "drivers/md/dm-crypt",
    "crypto/ecb",
    "crypto/xts",
    "crypto/af_alg",
    "crypto/algif_skcipher",
];
/// The LUKS volume made at provisioning (unlocked in dom0 under `boot`).
const VOLUME: &str = "data.luks";
/// Its size, MiB (LUKS2's header alone takes 16).
const VOLUME_MIB: &str = "20";
/// Where the dom0 gets the test guest `hello` (not part of the package).
const HELLO: &str = "portcullis/hello";

/// Xen's command line (measured in shared/notes/xen-in-qemu.md).
const XEN_ARGS: &str = "console=com1 com1=115200,8n1 dom0_mem=512M,max:512M dom0_max_vcpus=1 \
                        bootscrub=0 loglvl=all guest_loglvl=all conring_size=1M";

/// QEMU's CPU model for the boot: [`QEMU_CPU`], or `PORTCULLIS_QEMU_CPU`
/// when set. TCG emulates no VMX, so Xen runs its PVH guests on the
/// emulated SVM of `max`.
fn qemu_cpu() -> String {
    std::env::var("PORTCULLIS_QEMU_CPU")
        .ok()
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| QEMU_CPU.into())
}

/// `max` without XSAVE (and so without AVX): with them exposed, dom0's
/// programs died with segmentation faults and computed wrong hashes under
/// TCG, and the run took twice as long (docs/xen-boot.md).
const QEMU_CPU: &str = "max,xsave=off";

/// Wall-clock limit of one `boot` run.
const BOOT_TIMEOUT: Duration = Duration::from_secs(720);

/// The boot files made by `xen-image`.
pub struct Image {
    xen: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// target/xen-image: what every release shares (the provisioning).
fn image_root() -> PathBuf {
    root().join("target/xen-image")
}

/// `target/xen-image/<version>`: one release's packages, unpacked tree, boot
/// files and boot log, kept apart from the other release's.
fn work_dir(release: XenRelease) -> PathBuf {
    image_root().join(release.version())
}

fn step(name: &str) {
    println!("==> xen-image: {name}");
}

/// FNV-1a, 64 bit: a stable content hash for the cache keys.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn add(mut self, bytes: &[u8]) -> Fnv {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        // Separate fields so ("ab","c") and ("a","bc") differ.
        self.0 = (self.0 ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        self
    }
    fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// `cargo xtask xen-image [--xen 4.17|4.20]`: builds (or reuses) the boot
/// files of one release.
pub fn xen_image(release: XenRelease) -> Result<Image, String> {
    let start = Instant::now();
    let r = release.describe();
    let work = work_dir(release);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    println!("==> xen-image: Xen {} from {} in {}", r.version, r.debian, work.display());

    step("the Debian package (cargo xtask dist)");
    let deb = crate::dist::dist()?;

    step("provisioning (portcullis provision, on the host)");
    let provisioned = provision(&image_root())?;

    step("the package installed into the dom0 root (dpkg --root)");
    let installed = install(&work, &deb)?;

    step(&format!("Debian packages ({})", r.debian));
    let debs = download(r, &work)?;
    let unpacked = unpack(&work, &debs)?;

    step("hypervisor and dom0 kernel");
    let xen = work.join("xen");
    let kernel = work.join("vmlinuz");
    let stamp = work.join("boot.key");
    let key = Fnv::new().add(debs.join(",").as_bytes()).hex();
    if fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str())
        || !xen.exists()
        || !kernel.exists()
    {
        let gz = unpacked.join(r.hypervisor);
        if !gz.is_file() {
            return Err(format!("{}: not in the unpacked packages", gz.display()));
        }
        // Xen is a gzipped multiboot ELF; QEMU's -kernel wants it plain.
        let status = Command::new("sh")
            .arg("-c")
            .arg("zcat \"$1\" > \"$2\"")
            .arg("sh")
            .arg(&gz)
            .arg(&xen)
            .status()
            .map_err(|e| format!("zcat: {e}"))?;
        if !status.success() {
            return Err(format!("zcat {}: {status}", gz.display()));
        }
        let vmlinuz = single_prefix(&unpacked.join("boot"), "vmlinuz-")?;
        fs::copy(&vmlinuz, &kernel).map_err(|e| format!("{}: {e}", vmlinuz.display()))?;
        fs::write(&stamp, &key).map_err(|e| e.to_string())?;
        println!("    xen {} bytes, kernel {} bytes", len(&xen), len(&kernel));
    } else {
        println!("    cached");
    }

    step("dom0 initramfs");
    let initrd = work.join("dom0.cpio");
    let tree = dom0_tree(r, &unpacked, &installed, &provisioned)?;
    let key = tree.key();
    let stamp = work.join("dom0.key");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(key.as_str()) || !initrd.exists() {
        let bytes = tree.to_cpio();
        fs::write(&initrd, &bytes).map_err(|e| format!("{}: {e}", initrd.display()))?;
        fs::write(&stamp, &key).map_err(|e| e.to_string())?;
        println!(
            "    {} entries, {} bytes (uncompressed newc cpio)",
            tree.entries.len(),
            bytes.len()
        );
    } else {
        println!("    cached ({} entries, inputs unchanged)", tree.entries.len());
    }
    println!("<== xen-image ready in {:.1} s: {}", start.elapsed().as_secs_f64(), work.display());
    Ok(Image { xen, kernel, initrd })
}

fn len(p: &Path) -> u64 {
    fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn single_prefix(dir: &Path, prefix: &str) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(format!("expected one {prefix}* in {}, found {}", dir.display(), found.len())),
    }
}

/// Bumped when what `portcullis provision` seals changes (2: the ACL's
/// `volumes=`; 3: the KEK in cryptod/kek.sealed, passphrase protector; 4:
/// rules bound to the images; 5: the test ACL `tests/xen/acl`, with dom0's
/// attested rule, bound to the images), so a cached provisioning from an
/// older build is redone.
const PROVISION_FORMAT: &str = "5";
/// The test's KEK passphrase (a test secret: the image carries it as
/// /portcullis/kek-pass, which tests/xen/host.toml names).
const KEK_PASSPHRASE: &str = "portcullis xen test passphrase";
/// A small Argon2id cost: dom0 runs under TCG in the test (the file records it).
const KEK_ARGON2: &str = "m=8192,t=1,p=1";

/// The guests whose rules the test ACL binds to their packaged images, as
/// `portcullis provision --images` binds its built-in ACL.
const BOUND_GUESTS: &[&str] = &["unlocker", "policy_pd"];

/// `acl` (the test ACL) with each `allow vm=<guest>` rule of
/// [`BOUND_GUESTS`] given `image=sha256:<hex>` from `sums` (sha256sum
/// lines). Pure, so a test can run it.
fn bind_acl(acl: &str, sums: &str) -> Result<String, String> {
    let digest = |guest: &str| {
        sums.lines()
            .filter_map(|l| l.split_once("  "))
            .find(|(_, name)| name.trim() == guest)
            .map(|(hex, _)| hex.trim().to_string())
            .ok_or(format!("no {guest} in the image sums"))
    };
    let mut out = String::new();
    for line in acl.lines() {
        out.push_str(line);
        let mut words = line.split_whitespace();
        if let (Some("allow"), Some(vm)) = (words.next(), words.next()) {
            if let Some(guest) = BOUND_GUESTS.iter().find(|g| vm == format!("vm={g}")) {
                out.push_str(&format!(" image=sha256:{}", digest(guest)?));
            }
        }
        out.push('\n');
    }
    Ok(out)
}

/// Provisions cryptod once (kept under target/xen-image/provisioned).
fn provision(work: &Path) -> Result<PathBuf, String> {
    let out = work.join("provisioned");
    let format = out.join("format");
    // The ACL is bound to the package's images: a cached provisioning
    // counts only for the images it was bound to.
    let sums = root().join(crate::dist::IMAGE_SUMS);
    let images = fs::read(&sums).map_err(|e| format!("{}: {e}", sums.display()))?;
    let current = fs::read_to_string(&format).is_ok_and(|f| f == PROVISION_FORMAT)
        && fs::read(out.join("images")).is_ok_and(|i| i == images);
    if current
        && out.join("cryptod/kek.sealed").exists()
        && out.join("kek-pass").exists()
        && out.join("cryptod/sealed-state").exists()
        && out.join(VOLUME).exists()
    {
        println!("    cached: {}", out.display());
        return Ok(out);
    }
    crate::ensure_tools(&[crate::CRYPTSETUP])?;
    run(
        "build portcullis CLI",
        crate::cargo().args(["build", "-p", "portcullis-cli", "--bin", "portcullis"]),
    )?;
    let _ = fs::remove_dir_all(&out);
    let _ = fs::remove_file(work.join(VOLUME));
    let pass = work.join("kek-pass");
    fs::write(&pass, format!("{KEK_PASSPHRASE}\n")).map_err(|e| format!("kek-pass: {e}"))?;
    let template = root().join("tests/xen/acl");
    let text = fs::read_to_string(&template).map_err(|e| format!("{}: {e}", template.display()))?;
    let acl = work.join("acl");
    fs::write(&acl, bind_acl(&text, &String::from_utf8_lossy(&images))?)
        .map_err(|e| format!("{}: {e}", acl.display()))?;
    run(
        "portcullis provision",
        Command::new(crate::target_dir().join("debug/portcullis"))
            .args([
                "provision",
                "--no-qr",
                "--save-otpauth",
                "--luks-size-mib",
                VOLUME_MIB,
                "--kek",
                "passphrase",
                "--kek-argon2",
                KEK_ARGON2,
                "--kek-passphrase-file",
            ])
            .arg(&pass)
            .arg("--luks-format")
            .arg(work.join(VOLUME))
            .arg("--acl")
            .arg(&acl)
            .arg("--out")
            .arg(&out)
            .stdout(Stdio::null()),
    )?;
    let kept = out.join("images");
    fs::write(&kept, &images).map_err(|e| format!("{}: {e}", kept.display()))?;
    fs::rename(work.join(VOLUME), out.join(VOLUME)).map_err(|e| format!("{VOLUME}: {e}"))?;
    // Kept beside (not in) the provisioned files the image copies.
    fs::rename(&pass, out.join("kek-pass")).map_err(|e| format!("kek-pass: {e}"))?;
    fs::write(&format, PROVISION_FORMAT).map_err(|e| format!("{}: {e}", format.display()))?;
    Ok(out)
}

/// Debian's `:` in versions becomes `%3a` in .deb file names.
fn deb_name(pkg: &str, version: &str, arch: &str) -> String {
    format!("{pkg}_{}_{arch}.deb", version.replace(':', "%3a"))
}

/// How long a private apt configuration's package lists are used before
/// `apt-get update` runs again.
const APT_LISTS_MAX_AGE: Duration = Duration::from_secs(12 * 3600);

/// The `-o` options of every apt-get / apt-cache call for `r`, whose private
/// configuration (if any) lives in `apt_dir`. Pure: see [`apt_setup`].
fn apt_options(r: &Release, apt_dir: &Path) -> Vec<String> {
    // apt drops to the _apt user for downloads unless told otherwise;
    // target/ need not be writable by it.
    let mut o = vec!["APT::Sandbox::User=root".to_string()];
    if let Apt::Private { .. } = r.apt {
        let at = |p: &str| apt_dir.join(p).display().to_string();
        for (key, value) in [
            ("Dir::Etc::SourceList", at("sources.list")),
            ("Dir::Etc::SourceParts", at("sources.list.d")),
            ("Dir::Etc::Preferences", at("preferences")),
            ("Dir::Etc::PreferencesParts", at("preferences.d")),
            ("Dir::State::Lists", at("lists")),
            ("Dir::State::Status", at("status")),
            ("Dir::Cache", at("cache")),
            ("APT::Architecture", "amd64".to_string()),
            // only the Packages indexes: no AppStream metadata or Contents
            ("Acquire::IndexTargets::deb::DEP-11::DefaultEnabled", "false".to_string()),
            ("Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled", "false".to_string()),
            ("Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled", "false".to_string()),
            ("Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled", "false".to_string()),
        ] {
            o.push(format!("{key}={value}"));
        }
    }
    o.into_iter().flat_map(|kv| ["-o".to_string(), kv]).collect()
}

/// The deb822 sources file of a private configuration.
fn sources_file(sources: &[(&str, &str)]) -> String {
    sources
        .iter()
        .map(|(uri, suites)| {
            format!(
                "Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `r`'s private apt configuration (if it has one) under
/// `<work>/apt` and refreshes its lists when missing or older than
/// [`APT_LISTS_MAX_AGE`]; returns the options for apt-get and apt-cache.
fn apt_setup(r: &Release, work: &Path) -> Result<Vec<String>, String> {
    let dir = work.join("apt");
    let opts = apt_options(r, &dir);
    let Apt::Private { sources } = r.apt else { return Ok(opts) };
    for d in ["sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d)).map_err(|e| format!("{}: {e}", dir.join(d).display()))?;
    }
    let text = sources_file(sources);
    for (file, content) in [
        ("sources.list", ""),
        ("preferences", ""),
        ("status", ""),
        ("sources.list.d/debian.sources", text.as_str()),
    ] {
        let p = dir.join(file);
        if fs::read_to_string(&p).ok().as_deref() != Some(content) {
            fs::write(&p, content).map_err(|e| format!("{}: {e}", p.display()))?;
        }
    }
    // The stamp is written after a successful update with these sources.
    let stamp = dir.join("updated");
    let fresh = fs::read_to_string(&stamp).ok().as_deref() == Some(text.as_str())
        && fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age < APT_LISTS_MAX_AGE);
    if fresh {
        println!("    private apt lists: fresh ({})", dir.display());
    } else {
        run(
            &format!("apt-get update ({}, private configuration in {})", r.debian, dir.display()),
            Command::new("apt-get").args(&opts).args(["-q", "update"]).stdout(Stdio::null()),
        )?;
        fs::write(&stamp, &text).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    Ok(opts)
}

/// Fetches the packages of `r` missing from `<work>/debs`; returns the .deb
/// file names (package, version, architecture: the cache key).
fn download(r: &Release, work: &Path) -> Result<Vec<String>, String> {
    let apt = apt_setup(r, work)?;
    let deps = output(
        "apt-cache depends",
        Command::new("apt-cache").args(&apt).args(["depends", "linux-image-amd64"]),
    )?;
    let kernel = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .ok_or("apt-cache depends linux-image-amd64: no kernel package (apt-get update?)")?
        .to_string();
    let mut pkgs: Vec<String> = r.packages.iter().map(|s| s.to_string()).collect();
    pkgs.push(kernel);
    let show = output(
        "apt-cache show",
        Command::new("apt-cache").args(&apt).args(["show", "--no-all-versions"]).args(&pkgs),
    )?;
    let mut names = Vec::new();
    for para in show.split("\n\n").filter(|p| !p.trim().is_empty()) {
        let field = |f: &str| para.lines().find_map(|l| l.strip_prefix(f)).map(str::trim);
        if let (Some(p), Some(v), Some(a)) =
            (field("Package:"), field("Version:"), field("Architecture:"))
        {
            names.push(deb_name(p, v, a));
        }
    }
    if names.len() != pkgs.len() {
        return Err(format!("apt-cache show: expected {} packages, got {names:?}", pkgs.len()));
    }
    let dir = work.join("debs");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let missing: Vec<&String> =
        pkgs.iter().zip(&names).filter(|(_, n)| !dir.join(n).exists()).map(|(p, _)| p).collect();
    if missing.is_empty() {
        println!("    cached: {} packages", names.len());
    } else {
        let mut c = Command::new("apt-get");
        c.current_dir(&dir).args(&apt).args(["download", "-q"]).args(&missing);
        run(&format!("apt-get download ({} packages)", missing.len()), &mut c)?;
    }
    for n in &names {
        if !dir.join(n).exists() {
            return Err(format!("{n} was not downloaded"));
        }
    }
    Ok(names)
}

/// Unpacks every .deb into one tree, once per set of package versions.
fn unpack(work: &Path, debs: &[String]) -> Result<PathBuf, String> {
    let dest = work.join("root");
    let stamp = work.join("root.key");
    let key = debs.iter().fold(Fnv::new(), |h, n| h.add(n.as_bytes())).hex();
    if fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str()) && dest.exists() {
        println!("    cached unpacked tree {}", dest.display());
        return Ok(dest);
    }
    let t = Instant::now();
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&dest).map_err(|e| e.to_string())?;
    for n in debs {
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(work.join("debs").join(n))
            .arg(&dest)
            .status()
            .map_err(|e| format!("dpkg-deb: {e}"))?;
        if !status.success() {
            return Err(format!("dpkg-deb -x {n}: {status}"));
        }
    }
    fs::write(&stamp, &key).map_err(|e| e.to_string())?;
    println!("    unpacked {} packages in {:.1} s", debs.len(), t.elapsed().as_secs_f64());
    Ok(dest)
}

/// One file system object of the initramfs.
enum Node {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Link(String),
}

/// The dom0 root file system, path (without leading `/`) to node.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Node>,
}

impl Tree {
    fn dir(&mut self, path: &str) {
        let mut acc = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            self.entries.entry(acc.clone()).or_insert(Node::Dir);
        }
    }
    fn parent(&mut self, path: &str) {
        if let Some((dir, _)) = path.rsplit_once('/') {
            self.dir(dir);
        }
    }
    fn file(&mut self, path: &str, data: Vec<u8>, exec: bool) {
        self.parent(path);
        self.entries.insert(path.to_string(), Node::File { data, exec });
    }
    fn copy(&mut self, path: &str, from: &Path, exec: bool) -> Result<(), String> {
        let data = fs::read(from).map_err(|e| format!("{}: {e}", from.display()))?;
        self.file(path, data, exec);
        Ok(())
    }
    fn link(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entries.insert(path.to_string(), Node::Link(target.to_string()));
    }

    /// Hash of every path, kind and content.
    fn key(&self) -> String {
        let mut h = Fnv::new();
        for (path, node) in &self.entries {
            h = h.add(path.as_bytes());
            h = match node {
                Node::Dir => h.add(b"d"),
                Node::File { data, exec } => h.add(if *exec { b"x" } else { b"f" }).add(data),
                Node::Link(t) => h.add(b"l").add(t.as_bytes()),
            };
        }
        h.hex()
    }

    /// The tree as a `newc` cpio archive (what the kernel unpacks as initramfs).
    fn to_cpio(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, node)) in (1u32..).zip(&self.entries) {
            let (mode, data): (u32, &[u8]) = match node {
                Node::Dir => (0o040_755, &[]),
                Node::File { data, exec: true } => (0o100_755, data),
                Node::File { data, exec: false } => (0o100_644, data),
                Node::Link(t) => (0o120_777, t.as_bytes()),
            };
            cpio_entry(&mut out, ino, mode, path, data);
        }
        cpio_entry(&mut out, 0, 0, "TRAILER!!!", &[]);
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn cpio_entry(out: &mut Vec<u8>, ino: u32, mode: u32, name: &str, data: &[u8]) {
    let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
    let fields =
        [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, 0, 0, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// The library paths in `ldd` or `ld.so --list` output, in order, the
/// dynamic loader included; a library not found is an error naming it.
fn parse_ldd(text: &str, what: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for l in text.lines() {
        if l.contains("not found") {
            return Err(format!("{what}: {}", l.trim()));
        }
        let path = match l.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => l.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    Ok(libs)
}

/// Whether `path` names the dynamic loader (which [`Libraries`] places).
fn is_loader(path: &Path) -> bool {
    path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("ld-linux"))
}

/// Under [`Libraries::TreeLoader`]: the first library that did not come
/// from the tree (the loader, placed separately, aside).
fn foreign_library<'a>(tree: &Path, libs: &'a [PathBuf]) -> Option<&'a PathBuf> {
    libs.iter().find(|l| !is_loader(l) && !l.starts_with(tree))
}

/// The shared libraries of `bins`, found as `r` says (the unpacked tree
/// first), without the dynamic loader.
fn libraries(r: &Release, unpacked: &Path, bins: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let tree_dirs: Vec<String> =
        TREE_LIB_DIRS.iter().map(|d| unpacked.join(d).display().to_string()).collect();
    let mut libs: Vec<PathBuf> = Vec::new();
    for b in bins {
        let (mut cmd, what) = match r.libraries {
            Libraries::HostLdd => {
                let mut c = Command::new("ldd");
                c.arg(b).env("LD_LIBRARY_PATH", tree_dirs.join(":"));
                (c, format!("ldd {}", b.display()))
            }
            Libraries::TreeLoader { loader } => {
                let mut c = Command::new(unpacked.join(loader));
                c.arg("--inhibit-cache")
                    .arg("--library-path")
                    .arg(tree_dirs.join(":"))
                    .arg("--list")
                    .arg(b);
                (c, format!("{loader} --list {}", b.display()))
            }
        };
        let found = parse_ldd(&output(&what, &mut cmd)?, &what)?;
        if let Libraries::TreeLoader { .. } = r.libraries {
            if let Some(l) = foreign_library(unpacked, &found) {
                return Err(format!(
                    "{what}: {} comes from this machine, not from {}: add its package",
                    l.display(),
                    r.debian
                ));
            }
        }
        for l in found {
            if !is_loader(&l) && !libs.contains(&l) {
                libs.push(l);
            }
        }
    }
    Ok(libs)
}

/// A library loaded with dlopen (see [`DLOPENED`]), found as `r` says.
fn dlopened(r: &Release, unpacked: &Path, name: &str) -> Result<PathBuf, String> {
    let mut dirs: Vec<PathBuf> = TREE_LIB_DIRS.iter().map(|d| unpacked.join(d)).collect();
    if r.libraries == Libraries::HostLdd {
        dirs.extend(HOST_LIB_DIRS.iter().map(PathBuf::from));
    }
    dirs.iter().map(|d| d.join(name)).find(|p| p.exists()).ok_or_else(|| {
        format!("{name} (loaded with dlopen) is in none of {dirs:?}: add its package")
    })
}

/// The dynamic loader dom0's programs get as /lib64/ld-linux-x86-64.so.2.
fn loader(r: &Release, unpacked: &Path) -> PathBuf {
    match r.libraries {
        Libraries::HostLdd => PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
        Libraries::TreeLoader { loader } => unpacked.join(loader),
    }
}

/// Whether `modules.builtin` text lists module `m` (e.g. `crypto/ecb`) as
/// built into the kernel.
fn builtin(modules_builtin: &str, m: &str) -> bool {
    let want = format!("kernel/{m}.ko");
    modules_builtin.lines().any(|l| l.trim() == want)
}

/// Kernel module `m` (e.g. `drivers/md/dm-crypt`) under `modroot`, as dom0
/// gets it (decompressed); `None` if the kernel has it built in (Debian
/// 13's 6.12 has `crypto/ecb` built in; dom0's init skips what is absent).
fn module(r: &Release, modroot: &Path, m: &str) -> Result<Option<Vec<u8>>, String> {
    let base = modroot.join("kernel").join(m);
    let ext = match r.module_compression {
        Compression::None => "ko",
        Compression::Xz => "ko.xz",
    };
    let p = PathBuf::from(format!("{}.{ext}", base.display()));
    if !p.exists() {
        let list = modroot.join("modules.builtin");
        let text = fs::read_to_string(&list).map_err(|e| format!("{}: {e}", list.display()))?;
        return if builtin(&text, m) {
            Ok(None)
        } else {
            Err(format!("{}: no such module, and not built in", p.display()))
        };
    }
    match r.module_compression {
        Compression::None => fs::read(&p).map(Some).map_err(|e| format!("{}: {e}", p.display())),
        Compression::Xz => {
            let out = Command::new("xz")
                .args(["-d", "-c"])
                .arg(&p)
                .output()
                .map_err(|e| format!("xz: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "xz -d {}: {}: {}",
                    p.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            Ok(Some(out.stdout))
        }
    }
}

/// Everything dom0 needs, as a file tree.
fn dom0_tree(
    r: &Release,
    unpacked: &Path,
    installed: &Path,
    provisioned: &Path,
) -> Result<Tree, String> {
    let mut t = Tree::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "var/run",
        "var/log/xen/console",
        "var/lib/xen",
        "var/lib/xenstored",
        "var/log",
        "etc/xen",
        "usr/sbin",
    ] {
        t.dir(d);
    }
    // busybox and its applets
    let busybox = unpacked.join(r.busybox);
    t.copy("bin/busybox", &busybox, true)?;
    let applets = output("busybox --list", Command::new(&busybox).arg("--list"))?;
    for a in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox") {
        t.link(&format!("bin/{a}"), "busybox");
    }
    // toolstack (call the binaries directly: /usr/sbin/xl in Debian is a
    // wrapper script that needs more than dom0 has)
    let bin = unpacked.join(r.tool_dir);
    let up = r.tool_dir.strip_prefix("usr/").ok_or("the tool directory is not under usr/")?;
    let mut bins = Vec::new();
    for tool in XEN_TOOLS {
        let p = bin.join(tool);
        t.copy(&format!("{}/{tool}", r.tool_dir), &p, true)?;
        t.link(&format!("usr/sbin/{tool}"), &format!("../{up}/{tool}"));
        bins.push(p);
    }
    let xs = unpacked.join("usr/bin/xenstore");
    t.copy("usr/bin/xenstore", &xs, true)?;
    for c in XENSTORE_CMDS {
        t.link(&format!("usr/bin/xenstore-{c}"), "xenstore");
    }
    bins.push(xs);
    for (at, from) in r.programs {
        let p = unpacked.join(from);
        t.copy(at, &p, true)?;
        bins.push(p);
    }
    for c in TPM2_CMDS {
        t.link(&format!("usr/bin/tpm2_{c}"), "tpm2");
    }
    // our package, as dpkg installed it (binary, images, cfgs, unit, config)
    add_tree(&mut t, installed, "")?;
    bins.push(installed.join("usr/bin/portcullis"));
    // Xen's vchan library, where `portcullis host`'s dlopen looks for it.
    let vchan = format!("usr/lib/x86_64-linux-gnu/{}", r.libxenvchan);
    bins.push(unpacked.join(&vchan));
    t.copy(&vchan, &unpacked.join(&vchan), false)?;
    let mut libs = libraries(r, unpacked, &bins)?;
    for name in DLOPENED {
        let lib = dlopened(r, unpacked, name)?;
        libs.extend(libraries(r, unpacked, std::slice::from_ref(&lib))?);
        libs.push(lib);
    }
    for lib in libs {
        let name = lib.file_name().and_then(|n| n.to_str()).ok_or("library without a name")?;
        t.copy(&format!("lib/x86_64-linux-gnu/{name}"), &lib, false)?;
    }
    t.copy("lib64/ld-linux-x86-64.so.2", &loader(r, unpacked), true)?;
    t.file("etc/xen/xl.conf", Vec::new(), false);
    // kernel modules
    let modroot = single_prefix(&unpacked.join(r.module_dir), "")?;
    for m in MODULES {
        let name = m.rsplit('/').next().unwrap_or(m);
        match module(r, &modroot, m)? {
            Some(data) => t.file(&format!("modules/{name}.ko"), data, false),
            None => println!("    {m}: built into this kernel"),
        }
    }
    // What the operator brings, and the test's own pieces under /portcullis.
    let tests = root().join("tests/xen");
    t.copy("init", &tests.join("init.sh"), true)?;
    t.copy("portcullis/test.sh", &tests.join("dom0-test.sh"), true)?;
    t.copy("portcullis/service", &tests.join("service.sh"), true)?;
    t.copy("portcullis/bad-host.toml", &tests.join("bad-host.toml"), false)?;
    // the operator's edits of the package's conffile
    t.copy("etc/portcullis/host.toml", &tests.join("host.toml"), false)?;
    let guests = crate::guest_images();
    t.copy(HELLO, &guests.join("hello"), false)?;
    t.copy("portcullis/hello.cfg", &tests.join("hello.cfg"), false)?;
    // the first provisioning (`portcullis provision --out /var/lib/portcullis`,
    // made on the build host where cryptsetup is fast)
    for f in ["cryptod/kek.sealed", "cryptod/sealed-state", "root.pub", "acl"] {
        t.copy(&format!("var/lib/portcullis/{f}"), &provisioned.join(f), false)?;
    }
    // the offline admin key the operator brings for `portcullis admin`
    t.copy("portcullis/admin.key", &provisioned.join("admin.key"), false)?;
    // the KEK passphrase the service reads (host.toml's kek_passphrase_file)
    t.copy("portcullis/kek-pass", &provisioned.join("kek-pass"), false)?;
    // the operator's authenticator app (oathtool makes the codes typed into
    // the unlocker's console) and the LUKS volume, gzipped (it is mostly
    // zeros; the test unpacks it into dom0's tmpfs when the stage needs it).
    t.copy("portcullis/operator.otpauth", &provisioned.join("operators/operator.otpauth"), false)?;
    t.file("portcullis/data.luks.gz", gzip(&provisioned.join(VOLUME))?, false);
    Ok(t)
}

/// Installs `deb` with `dpkg --root` into a fresh directory holding an
/// empty dpkg database, as `dpkg -i` would on the host (no maintainer
/// scripts run: the package has none). Dependencies are forced: this root
/// has the Xen and cryptsetup files unpacked, not dpkg-installed.
fn install(work: &Path, deb: &Path) -> Result<PathBuf, String> {
    let root = work.join("installed");
    let _ = fs::remove_dir_all(&root);
    for d in ["info", "updates", "triggers"] {
        let p = root.join("var/lib/dpkg").join(d);
        fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    for f in ["status", "available"] {
        let p = root.join("var/lib/dpkg").join(f);
        fs::write(&p, b"").map_err(|e| format!("{}: {e}", p.display()))?;
    }
    run(
        "dpkg --root ... -i",
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--force-depends", "--force-not-root", "-i"])
            .arg(deb)
            .stdout(Stdio::null()),
    )?;
    Ok(root)
}

/// Adds every file, directory and link under `dir` to `t` at `prefix`.
fn add_tree(t: &mut Tree, dir: &Path, prefix: &str) -> Result<(), String> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(e.path()).map_err(|err| format!("{path}: {err}"))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(e.path()).map_err(|err| format!("{path}: {err}"))?;
            t.link(&path, &target.to_string_lossy());
        } else if meta.is_dir() {
            t.dir(&path);
            add_tree(t, &e.path(), &path)?;
        } else {
            use std::os::unix::fs::PermissionsExt;
            t.copy(&path, &e.path(), meta.permissions().mode() & 0o111 != 0)?;
        }
    }
    Ok(())
}

/// `gzip -9 -n` of a file (no name or time stored: the same input gives the
/// same bytes, so the initramfs cache key stays stable).
fn gzip(path: &Path) -> Result<Vec<u8>, String> {
    let out = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .arg(path)
        .output()
        .map_err(|e| format!("gzip: {e}"))?;
    if !out.status.success() {
        return Err(format!("gzip {}: {}", path.display(), out.status));
    }
    Ok(out.stdout)
}

/// QEMU 7.x's TCG mishandles SMAP for Xen; Xen then needs `smap=0`.
fn qemu_needs_smap_off() -> Result<bool, String> {
    let v = output(
        "qemu-system-x86_64 --version",
        Command::new("qemu-system-x86_64").arg("--version"),
    )?;
    let major = v
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .and_then(|ver| ver.split('.').next())
        .and_then(|m| m.parse::<u32>().ok())
        .ok_or_else(|| format!("cannot parse QEMU version from {v:?}"))?;
    Ok(major < 8)
}

/// dom0's TPM 2.0 for one boot: `swtpm socket --tpm2` with a fresh state
/// directory under the boot's work dir, which QEMU reaches through a UNIX
/// control socket (`-tpmdev emulator`) and shows dom0 as a TIS TPM.
/// SeaBIOS starts it and extends the boot PCRs (0 to 7). Stopped on drop,
/// whatever ended the boot (`--terminate` also ends it when QEMU's
/// connection closes).
struct Swtpm {
    child: std::process::Child,
    socket: PathBuf,
}

impl Swtpm {
    fn start(work: &Path) -> Result<Swtpm, String> {
        let dir = work.join("tpm");
        let _ = fs::remove_dir_all(&dir);
        let state = dir.join("state");
        fs::create_dir_all(&state).map_err(|e| format!("{}: {e}", state.display()))?;
        let socket = dir.join("swtpm.sock");
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--terminate", "--tpmstate"])
            .arg(format!("dir={}", state.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=1", dir.join("swtpm.log").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("swtpm: {e} (apt-get install swtpm)"))?;
        let mut tpm = Swtpm { child, socket };
        let t = Instant::now();
        while !tpm.socket.exists() {
            if let Ok(Some(status)) = tpm.child.try_wait() {
                return Err(format!(
                    "swtpm exited at start ({status}); see {}",
                    dir.join("swtpm.log").display()
                ));
            }
            if t.elapsed() > Duration::from_secs(10) {
                return Err(format!("swtpm made no socket {} in 10 s", tpm.socket.display()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    /// QEMU's arguments for it.
    fn qemu_args(&self) -> Vec<String> {
        vec![
            "-chardev".into(),
            format!("socket,id=chrtpm,path={}", self.socket.display()),
            "-tpmdev".into(),
            "emulator,id=tpm0,chardev=chrtpm".into(),
            "-device".into(),
            "tpm-tis,tpmdev=tpm0".into(),
        ]
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `cargo xtask boot [--xen 4.17|4.20] [-- DOM0-ARGS]`: boots the image of
/// `release`, returns Ok only when dom0 reported success. `dom0_extra` is
/// added to dom0's command line.
pub fn boot(
    release: XenRelease,
    tpm: bool,
    retry: bool,
    dom0_extra: &[String],
) -> Result<(), String> {
    let first = boot_once(release, tpm, dom0_extra)?;
    let Err(failure) = first.verdict else { return Ok(()) };
    if !retry || first.triple_faults.is_empty() || first.timed_out {
        return Err(failure);
    }
    // Guests under Xen under QEMU's TCG sometimes triple-fault at start with
    // no exception reaching their IDT (docs/xen-boot.md, "Under load").
    // Such a boot is run once more, and said: the second run
    // decides, and fails on its own failures whatever their cause.
    println!(
        "\n== RETRY: Xen {} failed ({failure}), and Xen reported guest triple faults:",
        release.version()
    );
    for line in &first.triple_faults {
        println!("   {line}");
    }
    println!("   failed checks:");
    for line in first.results.iter().filter(|r| r.contains("RESULT ") && r.contains(": FAIL")) {
        println!("   {line}");
    }
    println!("== booting once more (the first run's log: {}.1)", first.log.display());
    let kept = first.log.with_extension("log.1");
    fs::rename(&first.log, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
    boot_once(release, tpm, dom0_extra)?.verdict
}

/// What one boot gave: dom0's verdict, the guest triple faults Xen
/// reported, the RESULT/TIME lines and the log's path.
struct BootRun {
    verdict: Result<(), String>,
    triple_faults: Vec<String>,
    results: Vec<String>,
    timed_out: bool,
    log: PathBuf,
}

fn boot_once(release: XenRelease, tpm: bool, dom0_extra: &[String]) -> Result<BootRun, String> {
    let t0 = Instant::now();
    // QEMU, for the 4.17 image the host's libraries of tpm2-tools
    // (Libraries::HostLdd), and with --tpm dom0's TPM (swtpm).
    crate::ensure_tools(&[crate::QEMU, crate::TPM2_TOOLS])?;
    if tpm {
        crate::ensure_tools(&[crate::SWTPM])?;
    }
    let image = xen_image(release)?;
    let image_secs = t0.elapsed().as_secs_f64();
    let mut xen_args = XEN_ARGS.to_string();
    if qemu_needs_smap_off()? {
        xen_args.push_str(" smap=0");
    }
    let tpm_arg = if tpm { " portcullis.tpm" } else { "" };
    let dom0_args = format!("console=hvc0 rdinit=/init quiet{tpm_arg} {}", dom0_extra.join(" "));
    let log_path = work_dir(release).join("boot.log");
    let mut log =
        fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    // With --tpm, one swtpm per boot, stopped when this function returns
    // (drop).
    let tpm = if tpm { Some(Swtpm::start(&work_dir(release))?) } else { None };
    let mut qemu = Command::new("qemu-system-x86_64");
    let cpu = qemu_cpu();
    qemu.args(["-accel", "tcg", "-cpu", &cpu, "-m", "2048", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-no-user-config", "-serial", "stdio"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x01"])
        .arg("-kernel")
        .arg(&image.xen)
        .arg("-append")
        .arg(&xen_args)
        .arg("-initrd")
        .arg(format!("{} {dom0_args},{}", image.kernel.display(), image.initrd.display()))
        .args(tpm.as_ref().map(Swtpm::qemu_args).unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    println!(
        "==> boot: Xen {} ({}): qemu-system-x86_64 -accel tcg -cpu {cpu} ...{}; Xen: {xen_args}",
        release.version(),
        release.describe().debian,
        if tpm.is_some() { " -device tpm-tis (swtpm)" } else { " (no TPM: --tpm adds one)" }
    );
    let boot_start = Instant::now();
    let mut child = qemu.spawn().map_err(|e| format!("qemu-system-x86_64: {e}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().ok_or("no QEMU stdout")?;
    let stderr = child.stderr.take().ok_or("no QEMU stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || lines_to(stdout, tx));
    std::thread::spawn(move || lines_to(stderr, tx2));

    let mut marks: Vec<(String, f64)> = Vec::new();
    let mut results: Vec<String> = Vec::new();
    let mut triple_faults: Vec<String> = Vec::new();
    let deadline = boot_start + BOOT_TIMEOUT;
    let mut timed_out = false;
    loop {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        match rx.recv_timeout(deadline - now) {
            Ok(line) => {
                let t = boot_start.elapsed().as_secs_f64();
                let stamped = format!("[{t:7.2}] {line}");
                let _ = writeln!(log, "{stamped}");
                println!("{stamped}");
                for (needle, label) in [
                    ("Xen version", "Xen started"),
                    ("*** Building a PV Dom0", "Xen builds dom0"),
                    ("kB init memory", "Xen hands over to dom0 (Linux boots)"),
                    ("dom0-init: start", "dom0 init running"),
                    ("dom0-init: toolstack up", "toolstack up"),
                    ("dom0-init: done", "dom0 tests done"),
                ] {
                    if line.contains(needle) && !marks.iter().any(|(l, _)| l == label) {
                        marks.push((label.to_string(), t));
                    }
                }
                if line.contains("RESULT ")
                    || line.contains("TIME ")
                    || line.trim_start().starts_with("NOTE ")
                {
                    results.push(line.trim().to_string());
                }
                // Xen: "(XEN) d7v0 Triple fault - invoking HVM shutdown action 1"
                if line.contains("Triple fault") {
                    triple_faults.push(stamped.trim().to_string());
                }
                // dom0's own stage markers: "STAGE <label>"
                if let Some(label) = line.split_once("STAGE ").map(|(_, l)| l.trim().to_string()) {
                    if !marks.iter().any(|(l, _)| *l == label) {
                        marks.push((label, t));
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let status = child.wait().map_err(|e| format!("qemu: {e}"))?;
    let run_secs = boot_start.elapsed().as_secs_f64();
    drop(tpm);
    println!(
        "\n== stage times, Xen {} (s since QEMU start; image step took {image_secs:.1} s)",
        release.version()
    );
    for (label, t) in &marks {
        println!("   {t:7.2}  {label}");
    }
    println!("   {run_secs:7.2}  QEMU exited ({status})");
    println!("== results (from dom0)");
    for r in &results {
        println!("   {r}");
    }
    if !triple_faults.is_empty() {
        // Each fault appears twice when dom0's end-of-run copy of `xl dmesg`
        // has it too.
        println!(
            "== Xen's guest triple-fault lines (serial and dom0's xl dmesg): {}",
            triple_faults.len()
        );
        for line in &triple_faults {
            println!("   {line}");
        }
    }
    println!("== full log: {}", log_path.display());
    // isa-debug-exit: QEMU exits with 2*value+1; dom0 writes its test
    // script's exit code, so 1 means every test passed. Anything else
    // (including 0: a Xen panic with -no-reboot) is a failure.
    let verdict = match status.code() {
        _ if timed_out => {
            Err(format!("boot: no verdict within {} s; QEMU killed", BOOT_TIMEOUT.as_secs()))
        }
        Some(1) => Ok(()),
        Some(c) if c % 2 == 1 => Err(format!("dom0 tests failed (exit code {})", c / 2)),
        other => Err(format!("QEMU exited without a verdict from dom0 ({other:?})")),
    };
    Ok(BootRun { verdict, triple_faults, results, timed_out, log: log_path })
}

fn lines_to(r: impl std::io::Read, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let line =
                    String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).replace('\r', "");
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_acl_binds_the_unlocker_and_policy_pd_to_their_images() {
        let sums = "aa  cryptod\nbb  unlocker\ncc  policy_pd\n";
        let acl =
            "# c\nallow vm=unlocker scopes=luks:unlock\nallow vm=policy_pd  scopes=net:read\n\
                   allow vm=dom0 domid=0 scopes=net:read\ndeny vm=*\n";
        assert_eq!(
            bind_acl(acl, sums).unwrap(),
            "# c\nallow vm=unlocker scopes=luks:unlock image=sha256:bb\n\
             allow vm=policy_pd  scopes=net:read image=sha256:cc\n\
             allow vm=dom0 domid=0 scopes=net:read\ndeny vm=*\n"
        );
        assert!(bind_acl(acl, "aa  cryptod\n").unwrap_err().contains("unlocker"));
    }

    #[test]
    fn each_release_is_one_debian_release_with_the_same_tools() {
        for rel in XenRelease::ALL {
            let r = rel.describe();
            assert_eq!(XenRelease::parse(r.version), Ok(rel));
            for p in
                ["cryptsetup-bin", "oathtool", "busybox-static", "xenstore-utils", "tpm2-tools"]
            {
                assert!(r.packages.contains(&p), "{}: {p} missing", r.version);
            }
            // the versioned Xen packages, files and soname are this release's
            for p in
                [format!("xen-hypervisor-{}-amd64", r.version), format!("xen-utils-{}", r.version)]
            {
                assert!(r.packages.iter().any(|q| *q == p), "{}: {p}", r.version);
            }
            assert_eq!(r.hypervisor, format!("boot/xen-{}-amd64.gz", r.version));
            assert_eq!(r.tool_dir, format!("usr/lib/xen-{}/bin", r.version));
            assert_eq!(r.libxenvchan, format!("libxenvchan.so.{}", r.version));
            let other: Vec<&str> =
                XenRelease::ALL.iter().map(|o| o.version()).filter(|v| *v != r.version).collect();
            for p in r.packages {
                assert!(
                    !other.iter().any(|v| p.contains(v)),
                    "{}: {p} is another release's",
                    r.version
                );
            }
            // dom0 finds the programs at the same place whatever the release
            let at: Vec<&str> = r.programs.iter().map(|(at, _)| *at).collect();
            assert_eq!(at, ["sbin/cryptsetup", "usr/bin/oathtool", "usr/bin/tpm2"]);
            // and the TCTI tpm2-tools load with dlopen for /dev/tpmrm0
            assert!(r.packages.iter().any(|p| p.starts_with("libtss2-tcti-device0")));
        }
        // Debian 13's tools need its glibc: the tree brings it and its loader.
        let r = XenRelease::Xen420.describe();
        assert!(r.packages.contains(&"libc6") && r.packages.contains(&"libgcc-s1"));
        assert!(matches!(r.libraries, Libraries::TreeLoader { .. }));
        assert_eq!(r.module_compression, Compression::Xz);
        assert_ne!(work_dir(XenRelease::Xen417), work_dir(XenRelease::Xen420));
        assert!(work_dir(XenRelease::Xen420).ends_with("target/xen-image/4.20"));
    }

    #[test]
    fn dom0_has_every_tpm2_tool_the_kek_protector_runs() {
        let src = fs::read_to_string(root().join("crates/cli/src/kek.rs")).unwrap();
        let mut used: Vec<&str> = src
            .split('"')
            .filter_map(|w| w.strip_prefix("tpm2_"))
            .filter(|w| !w.is_empty() && w.bytes().all(|b| b.is_ascii_lowercase()))
            .collect();
        used.sort_unstable();
        used.dedup();
        assert!(used.len() >= 7, "{used:?}");
        for t in used {
            assert!(TPM2_CMDS.contains(&t), "tpm2_{t} (crates/cli/src/kek.rs) is not in dom0");
        }
    }

    #[test]
    fn unknown_releases_are_refused() {
        for bad in ["", "4.18", "4.2", "4.20.1", "latest", " 4.20"] {
            let e = XenRelease::parse(bad).unwrap_err();
            assert!(e.contains("4.17, 4.20") && e.contains(&format!("`{bad}`")), "{e}");
        }
        assert_eq!(XenRelease::default(), XenRelease::Xen417);
    }

    #[test]
    fn the_private_apt_configuration_leaves_the_hosts_alone() {
        let dir = Path::new("/nonexistent/w/apt");
        let host = apt_options(XenRelease::Xen417.describe(), dir);
        assert_eq!(host, ["-o", "APT::Sandbox::User=root"]);
        let private = apt_options(XenRelease::Xen420.describe(), dir);
        assert_eq!(private.len() % 2, 0);
        let mut dirs = 0;
        for pair in private.chunks(2) {
            assert_eq!(pair[0], "-o");
            let (key, value) = pair[1].split_once('=').unwrap();
            if key.starts_with("Dir::") {
                assert!(value.starts_with("/nonexistent/w/apt/"), "{key} -> {value}");
                dirs += 1;
            }
        }
        // sources (file and parts), preferences (both), lists, status, cache
        assert_eq!(dirs, 7, "{private:?}");
        let Apt::Private { sources } = XenRelease::Xen420.describe().apt else {
            panic!("4.20 must use a private configuration")
        };
        let text = sources_file(sources);
        assert!(text.contains("Suites: trixie trixie-updates\n"), "{text}");
        assert!(
            text.contains("URIs: http://deb.debian.org/debian-security\nSuites: trixie-security\n")
        );
        assert_eq!(
            text.matches("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg").count(),
            2
        );
    }

    #[test]
    fn library_lists_parse_from_ldd_and_from_the_trees_loader() {
        // Debian 12's ldd
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                   \tlibxenctrl.so.4.17 => /t/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(ldd, "ldd").unwrap(),
            [
                PathBuf::from("/t/usr/lib/x86_64-linux-gnu/libxenctrl.so.4.17"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        // Debian 13's loader run with --list: the host's libselinux slipped in
        let tree = Path::new("/t");
        let list = "\tlinux-vdso.so.1 (0x1)\n\
                    \tlibselinux.so.1 => /lib/x86_64-linux-gnu/libselinux.so.1 (0x2)\n\
                    \tlibc.so.6 => /t/usr/lib/x86_64-linux-gnu/libc.so.6 (0x3)\n\
                    \t/lib64/ld-linux-x86-64.so.2 => /t/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 (0x4)\n";
        let libs = parse_ldd(list, "ld.so").unwrap();
        assert_eq!(libs.len(), 3);
        assert_eq!(
            foreign_library(tree, &libs),
            Some(&PathBuf::from("/lib/x86_64-linux-gnu/libselinux.so.1"))
        );
        let only_tree: Vec<PathBuf> = libs.into_iter().filter(|l| l.starts_with(tree)).collect();
        assert_eq!(foreign_library(tree, &only_tree), None);
        // the host's loader line (a library's own --list) is not "foreign"
        assert_eq!(foreign_library(tree, &[PathBuf::from("/lib64/ld-linux-x86-64.so.2")]), None);
        let e = parse_ldd("\tlibfoo.so.1 => not found\n", "ld.so --list x").unwrap_err();
        assert!(e.contains("libfoo.so.1") && e.contains("ld.so --list x"), "{e}");
    }

    #[test]
    fn built_in_modules_are_told_apart_from_missing_ones() {
        let list = "kernel/crypto/ecb.ko\nkernel/drivers/md/dm-mod.ko\n";
        assert!(builtin(list, "crypto/ecb"));
        assert!(builtin(list, "drivers/md/dm-mod"));
        assert!(!builtin(list, "crypto/xts"));
        assert!(!builtin(list, "ecb"));
        assert!(!builtin(list, "crypto/ec"));
    }

    #[test]
    fn xz_modules_are_stored_decompressed_and_missing_ones_refused() {
        let dir = std::env::temp_dir().join(format!("xtask-modules-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("kernel/crypto")).unwrap();
        fs::write(dir.join("modules.builtin"), "kernel/crypto/ecb.ko\n").unwrap();
        fs::write(dir.join("kernel/crypto/xts.ko"), b"\x7fELF xts").unwrap();
        let status = Command::new("xz").arg("-k").arg(dir.join("kernel/crypto/xts.ko")).status();
        assert!(status.unwrap().success());
        let (r17, r20) = (XenRelease::Xen417.describe(), XenRelease::Xen420.describe());
        assert_eq!(module(r17, &dir, "crypto/xts").unwrap().unwrap(), b"\x7fELF xts");
        assert_eq!(module(r20, &dir, "crypto/xts").unwrap().unwrap(), b"\x7fELF xts");
        assert_eq!(module(r20, &dir, "crypto/ecb").unwrap(), None);
        let e = module(r20, &dir, "crypto/cbc").unwrap_err();
        assert!(e.contains("cbc.ko.xz") && e.contains("not built in"), "{e}");
        let _ = fs::remove_dir_all(&dir);
    }
}
