//! `cargo xtask dist`: the Debian package `target/dist/portcullis_<version>_amd64.deb`
//! and `target/dist/SHA256SUMS` (docs/packaging.md).
//!
//! The package tree is staged by hand and built with `dpkg-deb
//! --root-owner-group`: every entry root:root with an explicit mode, every
//! mtime at SOURCE_DATE_EPOCH, xz with fixed settings on one thread, so two
//! runs over the same inputs give the same bytes. The result is checked
//! against [`expected_paths`] with `dpkg-deb -c` and `-I`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::{build_xen, cargo, output, root, run, GUESTS};

/// What the package is called and what it runs on.
const PACKAGE: &str = "portcullis";
const ARCH: &str = "amd64";
const MAINTAINER: &str = "The Portcullis developers <portcullis@example.invalid>";
const DEPENDS: &str = "libc6, cryptsetup-bin";
/// tpm2-tools: `portcullis provision`'s default KEK protector seals to the
/// TPM with it, and `portcullis host` unseals with it (docs/provisioning.md).
const RECOMMENDS: &str = "xen-utils-4.17 | xen-utils-4.20, xen-hypervisor-common, tpm2-tools";
const DESCRIPTION: &str = "\
Xen unikernels that gate a host's secrets, and their dom0 service
 Portcullis is four small Xen PVH guests in no_std Rust: entropyd (the
 entropy root), cryptod (the authority: operator TOTP codes with replay
 protection and lockout, Ed25519 COSE_Sign1 capability tokens, unlock
 secrets, key rotation, revocation and a signed, hash-chained audit log),
 unlocker (the operator console) and policy_pd (an enforcer that acts only
 on a verified token). They talk over Xen vchan in CBOR messages.
 .
 This package holds the guest images (/usr/lib/portcullis), their xl
 configurations (/etc/xen/portcullis), and the portcullis program with its
 dom0 service, portcullis-host.service: it configures each guest as xl
 creates it, keeps cryptod's sealed state durable on dom0's disk, collects
 the audit log and runs the LUKS unlock agent.";

/// The guests' xl configurations and the service's configuration: the
/// operator's to edit, kept across upgrades.
const CONFFILES: &[&str] = &[
    "/etc/portcullis/host.toml",
    "/etc/xen/portcullis/cryptod.cfg",
    "/etc/xen/portcullis/entropyd.cfg",
    "/etc/xen/portcullis/policy_pd.cfg",
    "/etc/xen/portcullis/unlocker.cfg",
];

/// One file of the package: where it is installed, where it comes from
/// (relative to the workspace root), its mode, and whether it is gzipped.
struct Item {
    to: String,
    from: PathBuf,
    mode: u32,
    gzip: bool,
}

/// The guest images' `sha256sum` lines, written by [`dist`] before staging
/// and installed as `/usr/share/portcullis/SHA256SUMS`: what `portcullis
/// provision` binds the ACL to by default.
pub(crate) const IMAGE_SUMS: &str = "target/tmp/image-SHA256SUMS";

/// The directories of the package that are not merely the parents of a file.
const EMPTY_DIRS: &[(&str, u32)] = &[("var/lib/portcullis", 0o700)];

fn items() -> Vec<Item> {
    let mut items = vec![Item {
        to: "usr/bin/portcullis".into(),
        from: crate::target_dir().join("release/portcullis"),
        mode: 0o755,
        gzip: false,
    }];
    for g in sorted_guests() {
        items.push(Item {
            to: format!("usr/lib/portcullis/{g}"),
            from: crate::guest_images().join(g),
            mode: 0o644,
            gzip: false,
        });
        items.push(Item {
            to: format!("etc/xen/portcullis/{g}.cfg"),
            from: PathBuf::from(format!("xen/{g}.cfg")),
            mode: 0o644,
            gzip: false,
        });
    }
    for (to, from, gzip) in [
        ("usr/share/portcullis/SHA256SUMS", IMAGE_SUMS, false),
        ("etc/portcullis/host.toml", "packaging/host.toml", false),
        ("lib/systemd/system/portcullis-host.service", "packaging/portcullis-host.service", false),
        ("usr/share/man/man1/portcullis.1.gz", "packaging/portcullis.1", true),
        ("usr/share/doc/portcullis/copyright", "packaging/copyright", false),
        ("usr/share/doc/portcullis/settings.md", "docs/settings.md", false),
    ] {
        items.push(Item { to: to.into(), from: PathBuf::from(from), mode: 0o644, gzip });
    }
    items
}

fn sorted_guests() -> Vec<&'static str> {
    let mut g = GUESTS.to_vec();
    g.sort_unstable();
    g
}

/// Every path `dpkg-deb -c` must list, as it lists them (`./` first,
/// directories with a trailing `/`), sorted.
pub(crate) fn expected_paths() -> Vec<String> {
    let mut paths = std::collections::BTreeSet::new();
    paths.insert("./".to_string());
    let add_parents = |p: &str, paths: &mut std::collections::BTreeSet<String>| {
        let mut at = 0;
        while let Some(i) = p[at..].find('/') {
            paths.insert(format!("./{}/", &p[..at + i]));
            at += i + 1;
        }
    };
    for item in items() {
        add_parents(&item.to, &mut paths);
        paths.insert(format!("./{}", item.to));
    }
    for (dir, _) in EMPTY_DIRS {
        add_parents(dir, &mut paths);
        paths.insert(format!("./{dir}/"));
    }
    paths.into_iter().collect()
}

/// One line of `dpkg-deb -c`: `drwxr-xr-x root/root 0 2026-01-01 00:00 ./usr/`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub mode: String,
    pub owner: String,
    pub size: u64,
    pub path: String,
}

pub(crate) fn parse_listing(listing: &str) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    for line in listing.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [mode, owner, size, _date, _time, path] = f[..] else {
            return Err(format!("dpkg-deb -c: unexpected line `{line}`"));
        };
        let size = size.parse().map_err(|_| format!("dpkg-deb -c: bad size in `{line}`"))?;
        entries.push(Entry { mode: mode.into(), owner: owner.into(), size, path: path.into() });
    }
    Ok(entries)
}

/// What is wrong with a package listing: missing or unexpected paths, an
/// owner other than root, a state directory that is not 0700.
pub(crate) fn listing_errors(entries: &[Entry], expected: &[String]) -> Vec<String> {
    let mut errors = Vec::new();
    let have: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for want in expected {
        if !have.contains(&want.as_str()) {
            errors.push(format!("missing {want}"));
        }
    }
    for e in entries {
        if !expected.contains(&e.path) {
            errors.push(format!("unexpected {}", e.path));
        }
        if e.owner != "root/root" {
            errors.push(format!("{} is owned by {}, not root/root", e.path, e.owner));
        }
        if e.path == "./var/lib/portcullis/" && e.mode != "drwx------" {
            errors.push(format!("{} has mode {}, not drwx------", e.path, e.mode));
        }
        if e.path.starts_with("./usr/lib/portcullis/") && !e.path.ends_with('/') && e.size == 0 {
            errors.push(format!("{} is empty", e.path));
        }
    }
    if !have.windows(2).all(|w| w[0] < w[1]) {
        errors.push("the archive's entries are not sorted by name".into());
    }
    errors
}

/// The subcommands a clap `--help` lists under `Commands:`.
pub(crate) fn help_commands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim_end() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// The subcommands of `help` that have no `.SS` section in the man page.
pub(crate) fn commands_missing_from_man(help: &str, man: &str) -> Vec<String> {
    let sections: Vec<String> = man
        .lines()
        .filter_map(|l| l.strip_prefix(".SS "))
        .filter_map(|l| l.trim_start_matches('"').split_whitespace().next())
        .map(|w| w.replace("\\-", "-"))
        .collect();
    help_commands(help).into_iter().filter(|c| !sections.contains(c)).collect()
}

/// `version = "..."` in a manifest's `[package]` table.
pub(crate) fn package_version(manifest: &str) -> Result<String, String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("version").map(str::trim_start) {
                if let Some(v) = v.strip_prefix('=') {
                    let v = v.trim().trim_matches('"');
                    let ok = !v.is_empty()
                        && v.chars().all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c))
                        && v.starts_with(|c: char| c.is_ascii_digit());
                    return if ok {
                        Ok(v.to_string())
                    } else {
                        Err(format!("`{v}` is not a Debian version"))
                    };
                }
            }
        }
    }
    Err("no version in [package]".into())
}

/// Installed-Size (KiB) as dpkg-gencontrol estimates it: each file rounded
/// up to a KiB, each directory one.
pub(crate) fn installed_size_kib(file_sizes: &[u64], dirs: usize) -> u64 {
    file_sizes.iter().map(|s| s.div_ceil(1024)).sum::<u64>() + dirs as u64
}

fn control(version: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\nVersion: {version}\nArchitecture: {ARCH}\nMaintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\nDepends: {DEPENDS}\nRecommends: {RECOMMENDS}\n\
         Section: admin\nPriority: optional\nDescription: {DESCRIPTION}\n"
    )
}

/// SOURCE_DATE_EPOCH, else the time of the last commit.
fn source_date_epoch() -> Result<u64, String> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v.trim().parse().map_err(|_| format!("SOURCE_DATE_EPOCH=`{v}` is not a number"));
    }
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args(["log", "-1", "--format=%ct"])
        .output()
        .map_err(|e| format!("git log: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("git log -1: {} (set SOURCE_DATE_EPOCH)", out.status));
    }
    text.trim().parse().map_err(|_| format!("git log -1 --format=%ct: `{}`", text.trim()))
}

fn io<T>(what: &Path, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    io(path, fs::set_permissions(path, fs::Permissions::from_mode(mode)))
}

/// Sets the mtime of `dir` and everything under it (children first).
fn set_mtimes(dir: &Path, when: SystemTime) -> Result<(), String> {
    for entry in io(dir, fs::read_dir(dir))? {
        let path = io(dir, entry)?.path();
        if io(&path, fs::symlink_metadata(&path))?.is_dir() {
            set_mtimes(&path, when)?;
        } else {
            set_mtime(&path, when)?;
        }
    }
    set_mtime(dir, when)
}

fn set_mtime(path: &Path, when: SystemTime) -> Result<(), String> {
    let file = io(path, fs::File::open(path))?;
    io(path, file.set_modified(when))
}

/// `cargo xtask dist`: builds the images and the binary, the package and
/// SHA256SUMS; returns the package's path.
pub fn dist() -> Result<PathBuf, String> {
    let root = root();
    let version = package_version(&io(
        &root.join("crates/cli/Cargo.toml"),
        fs::read_to_string(root.join("crates/cli/Cargo.toml")),
    )?)?;
    let epoch = source_date_epoch()?;
    build_xen()?;
    run(
        "build the portcullis program (release)",
        cargo().args(["build", "--release", "-p", "portcullis-cli", "--bin", "portcullis"]),
    )?;

    let binary = crate::target_dir().join("release/portcullis");
    let help = output("portcullis --help", Command::new(&binary).arg("--help"))?;
    let man = io(
        &root.join("packaging/portcullis.1"),
        fs::read_to_string(root.join("packaging/portcullis.1")),
    )?;
    let missing = commands_missing_from_man(&help, &man);
    if !missing.is_empty() {
        return Err(format!("packaging/portcullis.1 has no section for: {}", missing.join(", ")));
    }

    // The images' sums, shipped in the package (bare names, as provision reads them).
    let guest_dir = crate::guest_images();
    let image_sums = output(
        "sha256sum (images)",
        Command::new("sha256sum").current_dir(&guest_dir).args(sorted_guests()),
    )?;
    let sums_file = root.join(IMAGE_SUMS);
    io(&sums_file, fs::create_dir_all(sums_file.parent().unwrap_or(&root)))?;
    io(&sums_file, fs::write(&sums_file, &image_sums))?;

    let stage = root.join("target/tmp/dist-root");
    if stage.exists() {
        io(&stage, fs::remove_dir_all(&stage))?;
    }
    let mut file_sizes = Vec::new();
    for item in items() {
        let to = stage.join(&item.to);
        io(&to, fs::create_dir_all(to.parent().unwrap_or(&stage)))?;
        let from = root.join(&item.from);
        if item.gzip {
            // -n: no name and no timestamp in the header.
            let file = io(&to, fs::File::create(&to))?;
            let status = io(
                &from,
                Command::new("gzip").args(["-9n", "-c"]).arg(&from).stdout(file).status(),
            )?;
            if !status.success() {
                return Err(format!("gzip -9n {}: {status}", from.display()));
            }
        } else {
            io(&from, fs::copy(&from, &to))?;
        }
        set_mode(&to, item.mode)?;
        file_sizes.push(io(&to, fs::metadata(&to))?.len());
    }
    for (dir, mode) in EMPTY_DIRS {
        let d = stage.join(dir);
        io(&d, fs::create_dir_all(&d))?;
        set_mode(&d, *mode)?;
    }
    let dirs = expected_paths().iter().filter(|p| p.ends_with('/') && *p != "./").count();

    // Every other directory 0755 (the process umask must not decide).
    for p in expected_paths().iter().filter(|p| p.ends_with('/') && *p != "./") {
        let rel = p.trim_start_matches("./").trim_end_matches('/');
        if !EMPTY_DIRS.iter().any(|(d, _)| *d == rel) {
            set_mode(&stage.join(rel), 0o755)?;
        }
    }
    set_mode(&stage, 0o755)?;

    let debian = stage.join("DEBIAN");
    io(&debian, fs::create_dir_all(&debian))?;
    set_mode(&debian, 0o755)?;
    let files: Vec<String> = {
        let mut f: Vec<String> = items().into_iter().map(|i| i.to).collect();
        f.sort();
        f
    };
    let md5sums =
        output("md5sum", Command::new("md5sum").current_dir(&stage).arg("--").args(&files))?;
    for (name, text) in [
        ("control", control(&version, installed_size_kib(&file_sizes, dirs))),
        ("conffiles", CONFFILES.iter().map(|c| format!("{c}\n")).collect()),
        ("md5sums", md5sums),
    ] {
        let p = debian.join(name);
        io(&p, fs::write(&p, text))?;
        set_mode(&p, 0o644)?;
    }
    set_mtimes(&stage, SystemTime::UNIX_EPOCH + Duration::from_secs(epoch))?;

    let out_dir = root.join("target/dist");
    if out_dir.exists() {
        io(&out_dir, fs::remove_dir_all(&out_dir))?;
    }
    io(&out_dir, fs::create_dir_all(&out_dir))?;
    let deb_name = format!("{PACKAGE}_{version}_{ARCH}.deb");
    let deb = out_dir.join(&deb_name);
    run(
        &format!("dpkg-deb --build {deb_name} (SOURCE_DATE_EPOCH={epoch})"),
        Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", epoch.to_string())
            .args(["--root-owner-group", "-Zxz", "-z6", "--threads-max=1", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;

    check(&deb, &version)?;

    // SHA256SUMS over copies next to the package, so `sha256sum -c` runs there.
    let mut sums = Vec::new();
    for g in sorted_guests() {
        let from = crate::guest_images().join(g);
        io(&from, fs::copy(&from, out_dir.join(g)))?;
        sums.push(g.to_string());
    }
    io(&binary, fs::copy(&binary, out_dir.join("portcullis")))?;
    sums.push("portcullis".into());
    sums.push(deb_name.clone());
    let text = output("sha256sum", Command::new("sha256sum").current_dir(&out_dir).args(&sums))?;
    let sums_path = out_dir.join("SHA256SUMS");
    io(&sums_path, fs::write(&sums_path, &text))?;
    println!("{}:\n{text}", sums_path.display());
    println!("package: {}", deb.display());
    Ok(deb)
}

/// Checks the built package with `dpkg-deb -I` and `-c`; prints its contents.
fn check(deb: &Path, version: &str) -> Result<(), String> {
    let info = output("dpkg-deb -I", Command::new("dpkg-deb").arg("-I").arg(deb))?;
    for want in [
        format!("Package: {PACKAGE}"),
        format!("Version: {version}"),
        format!("Architecture: {ARCH}"),
        format!("Depends: {DEPENDS}"),
    ] {
        if !info.lines().any(|l| l.trim() == want) {
            return Err(format!("dpkg-deb -I {}: no `{want}`:\n{info}", deb.display()));
        }
    }
    for member in ["control", "conffiles", "md5sums"] {
        if !info.lines().any(|l| l.split_whitespace().any(|w| w == member)) {
            return Err(format!("dpkg-deb -I {}: no {member} member", deb.display()));
        }
    }
    let conffiles = output(
        "dpkg-deb -I conffiles",
        Command::new("dpkg-deb").args(["-I"]).arg(deb).arg("conffiles"),
    )?;
    let listed: Vec<&str> = conffiles.lines().collect();
    if listed != CONFFILES {
        return Err(format!("conffiles are {listed:?}, not {CONFFILES:?}"));
    }
    let listing = output("dpkg-deb -c", Command::new("dpkg-deb").arg("-c").arg(deb))?;
    let entries = parse_listing(&listing)?;
    let errors = listing_errors(&entries, &expected_paths());
    if !errors.is_empty() {
        return Err(format!("{}: {}", deb.display(), errors.join("; ")));
    }
    println!("{:<11} {:>9}  path", "mode", "bytes");
    for e in &entries {
        println!("{:<11} {:>9}  {}", e.mode, e.size, e.path);
    }
    let bytes = io(deb, fs::metadata(deb))?.len();
    println!("{}: {bytes} bytes, {} entries, checked", deb.display(), entries.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_package_holds_exactly_the_contract_files() {
        let paths = expected_paths();
        for want in [
            "./usr/bin/portcullis",
            "./usr/lib/portcullis/cryptod",
            "./usr/lib/portcullis/entropyd",
            "./usr/lib/portcullis/policy_pd",
            "./usr/lib/portcullis/unlocker",
            "./etc/xen/portcullis/cryptod.cfg",
            "./etc/xen/portcullis/entropyd.cfg",
            "./etc/xen/portcullis/policy_pd.cfg",
            "./etc/xen/portcullis/unlocker.cfg",
            "./etc/portcullis/host.toml",
            "./lib/systemd/system/portcullis-host.service",
            "./usr/share/man/man1/portcullis.1.gz",
            "./usr/share/doc/portcullis/copyright",
            "./usr/share/doc/portcullis/settings.md",
            "./usr/share/portcullis/SHA256SUMS",
            "./var/lib/portcullis/",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} not in {paths:?}");
        }
        assert_eq!(paths.iter().filter(|p| !p.ends_with('/')).count(), 15, "{paths:?}");
        assert!(paths.contains(&"./usr/share/man/man1/".to_string()));
        assert!(paths.windows(2).all(|w| w[0] < w[1]));
        // Every conffile is a file of the package.
        for c in CONFFILES {
            assert!(paths.contains(&format!(".{c}")), "{c}");
        }
    }

    fn listing_of(paths: &[String]) -> String {
        paths
            .iter()
            .map(|p| {
                let mode = if p == "./var/lib/portcullis/" {
                    "drwx------"
                } else if p.ends_with('/') {
                    "drwxr-xr-x"
                } else {
                    "-rw-r--r--"
                };
                let size = if p.ends_with('/') { 0 } else { 100 };
                format!("{mode} root/root {size:>9} 2026-12-01 00:00 {p}\n")
            })
            .collect()
    }

    #[test]
    fn a_listing_is_checked_against_the_expected_files() {
        let expected = expected_paths();
        let good = listing_of(&expected);
        let entries = parse_listing(&good).unwrap();
        assert_eq!(entries.len(), expected.len());
        assert_eq!(listing_errors(&entries, &expected), Vec::<String>::new());

        let mut fewer = expected.clone();
        fewer.retain(|p| p != "./usr/lib/portcullis/cryptod");
        fewer.push("./usr/lib/portcullis/cryptod.old".into());
        fewer.sort();
        let errors = listing_errors(&parse_listing(&listing_of(&fewer)).unwrap(), &expected);
        assert!(errors.contains(&"missing ./usr/lib/portcullis/cryptod".to_string()), "{errors:?}");
        assert!(errors
            .iter()
            .any(|e| e.starts_with("unexpected ./usr/lib/portcullis/cryptod.old")));

        let bad = good
            .replace("drwx------ root/root", "drwxr-xr-x root/root")
            .replace("100 2026-12-01 00:00 ./usr/bin/portcullis", "100 2026 00:00 ./usr/bin/x y");
        assert!(parse_listing(&bad).is_err());
        let bad = good.replace("drwx------ root/root", "drwxr-xr-x root/root");
        let errors = listing_errors(&parse_listing(&bad).unwrap(), &expected);
        assert!(errors.iter().any(|e| e.contains("not drwx------")), "{errors:?}");
        let bad = good.replacen("root/root", "ci/ci", 1);
        let errors = listing_errors(&parse_listing(&bad).unwrap(), &expected);
        assert!(errors.iter().any(|e| e.contains("not root/root")), "{errors:?}");
    }

    #[test]
    fn the_version_comes_from_the_package_table() {
        let m = "[package]\nname = \"x\"\nversion = \"0.1.0\"\n[dependencies]\nversion = \"9\"\n";
        assert_eq!(package_version(m), Ok("0.1.0".into()));
        assert!(package_version("[dependencies]\nversion = \"1\"\n").is_err());
        assert!(package_version("[package]\nversion = \"1 0\"\n").is_err());
        assert!(package_version("[package]\nversion.workspace = true\n").is_err());
        let cli = fs::read_to_string(root().join("crates/cli/Cargo.toml")).unwrap();
        assert!(package_version(&cli).is_ok());
    }

    #[test]
    fn installed_size_rounds_each_file_up_and_counts_directories() {
        assert_eq!(installed_size_kib(&[1, 1024, 1025], 2), 1 + 1 + 2 + 2);
        assert_eq!(installed_size_kib(&[], 0), 0);
    }

    #[test]
    fn the_control_file_has_every_field() {
        let c = control("0.1.0", 900);
        for field in [
            "Package: portcullis\n",
            "Version: 0.1.0\n",
            "Architecture: amd64\n",
            "Maintainer: ",
            "Section: admin\n",
            "Priority: optional\n",
            "Depends: libc6, cryptsetup-bin\n",
            "Recommends: xen-utils-4.17 | xen-utils-4.20, xen-hypervisor-common, tpm2-tools\n",
            "Installed-Size: 900\n",
            "Description: ",
        ] {
            assert!(c.contains(field), "{field}");
        }
        // Continuation lines start with a space; none is empty.
        let desc = c.split("Description: ").nth(1).unwrap();
        assert!(desc.lines().skip(1).all(|l| l.starts_with(' ') && l.len() > 1), "{desc}");
    }

    const HELP: &str = "Tool\n\nUsage: portcullis <COMMAND>\n\nCommands:\n  keygen  Generate\n  \
                        audit-collect  Collect\n  help  Print\n\nOptions:\n  -h, --help  Print\n";

    #[test]
    fn the_man_page_check_finds_an_undocumented_subcommand() {
        assert_eq!(help_commands(HELP), vec!["keygen", "audit-collect", "help"]);
        let man = ".SS \"keygen \\-\\-out\"\n.SS \"audit\\-collect [OPTIONS]\"\n.SS help\n";
        assert_eq!(commands_missing_from_man(HELP, man), Vec::<String>::new());
        let man = ".SS \"keygen \\-\\-out\"\n.B audit\\-collect\n.SS help\n";
        assert_eq!(commands_missing_from_man(HELP, man), vec!["audit-collect"]);
    }

    /// Every subcommand the real `portcullis --help` lists has its section
    /// in packaging/portcullis.1.
    #[test]
    fn the_man_page_documents_every_subcommand_of_portcullis_help() {
        let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(root())
            .args(["run", "--quiet", "-p", "portcullis-cli", "--bin", "portcullis", "--", "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let help = String::from_utf8(out.stdout).unwrap();
        assert!(help_commands(&help).len() >= 8, "{help}");
        let man = fs::read_to_string(root().join("packaging/portcullis.1")).unwrap();
        assert_eq!(commands_missing_from_man(&help, &man), Vec::<String>::new());
    }
}
