//! The MSRV gate: the workspace's declared `rust-version` must be at least
//! every resolved dependency's `rust-version`, and at most the running rustc.
//!
//! This machine has one toolchain, so the gate does not compile with the
//! declared version; it proves that no dependency in `Cargo.lock` asks for a
//! newer compiler than we declare (what made the old 1.85 wrong) and that the
//! toolchain running the tests satisfies it. It does not prove that our own
//! code avoids language or library features newer than the declared version
//! (docs/design.md, "Gates").

use std::cmp::Ordering;
use std::fmt;
use std::process::Command;

/// A `major.minor[.patch]` Rust version as cargo writes `rust-version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RustVersion(u32, u32, u32);

impl RustVersion {
    /// Parses `1.88`, `1.88.0` or rustc's `1.95.0-nightly`-style text.
    pub fn parse(s: &str) -> Result<RustVersion, String> {
        let core = s.trim().split(['-', '+', ' ']).next().unwrap_or("");
        let mut parts = core.split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) => p.parse().map_err(|_| format!("bad Rust version `{s}`")),
                None if required => Err(format!("bad Rust version `{s}`")),
                None => Ok(0),
            }
        };
        let v = RustVersion(next(true)?, next(true)?, next(false)?);
        if parts.next().is_some() {
            return Err(format!("bad Rust version `{s}`"));
        }
        Ok(v)
    }
}

impl fmt::Display for RustVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// One package of the resolved graph: name, version, its `rust-version`.
pub struct Package {
    pub name: String,
    pub version: String,
    pub rust_version: Option<RustVersion>,
    pub member: bool,
}

/// Everything wrong with the declared MSRV, one line each (empty: it holds).
pub fn problems(declared: RustVersion, rustc: RustVersion, packages: &[Package]) -> Vec<String> {
    let mut out = Vec::new();
    if declared.cmp(&rustc) == Ordering::Greater {
        out.push(format!(
            "declared rust-version {declared} is newer than the running rustc {rustc}"
        ));
    }
    for p in packages {
        match (p.member, p.rust_version) {
            (true, None) => out.push(format!(
                "workspace member {} declares no rust-version (use rust-version.workspace = true)",
                p.name
            )),
            (true, Some(v)) if v != declared => out.push(format!(
                "workspace member {} declares rust-version {v}, the workspace {declared}",
                p.name
            )),
            (false, Some(v)) if v > declared => out.push(format!(
                "{} {} needs Rust {v}, newer than the declared rust-version {declared}",
                p.name, p.version
            )),
            _ => {}
        }
    }
    out
}

/// Reads the declared version, the rustc version and the resolved graph
/// (`cargo metadata`, every platform), and checks them.
pub fn gate() -> Result<(), String> {
    println!("==> MSRV: declared rust-version vs the resolved graph and rustc");
    let meta = crate::output(
        "cargo metadata",
        crate::cargo().args(["metadata", "--format-version", "1", "--locked"]),
    )?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta).map_err(|e| format!("cargo metadata: {e}"))?;
    let members: Vec<&str> = meta["workspace_members"]
        .as_array()
        .ok_or("cargo metadata: no workspace_members")?
        .iter()
        .filter_map(|m| m.as_str())
        .collect();
    let mut packages = Vec::new();
    for p in meta["packages"].as_array().ok_or("cargo metadata: no packages")? {
        let rust_version = match p["rust_version"].as_str() {
            Some(v) => Some(RustVersion::parse(v)?),
            None => None,
        };
        packages.push(Package {
            name: p["name"].as_str().unwrap_or("?").to_string(),
            version: p["version"].as_str().unwrap_or("?").to_string(),
            rust_version,
            member: p["id"].as_str().is_some_and(|id| members.contains(&id)),
        });
    }
    let manifest = std::fs::read_to_string(crate::root().join("Cargo.toml"))
        .map_err(|e| format!("Cargo.toml: {e}"))?;
    let declared = declared_rust_version(&manifest)?;
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_text = crate::output("rustc --version", Command::new(&rustc).arg("--version"))?;
    let rustc_version = RustVersion::parse(
        rustc_text.split_whitespace().nth(1).ok_or("rustc --version: no version")?,
    )?;
    let found = problems(declared, rustc_version, &packages);
    let newest = packages.iter().filter(|p| !p.member).filter_map(|p| p.rust_version).max();
    if !found.is_empty() {
        return Err(format!("MSRV gate:\n  {}", found.join("\n  ")));
    }
    println!(
        "<== MSRV: declared {declared}; newest dependency needs {}; rustc {rustc_version}: ok",
        newest.map_or("nothing".into(), |v| v.to_string())
    );
    Ok(())
}

/// `rust-version` of `[workspace.package]` in the root manifest.
fn declared_rust_version(manifest: &str) -> Result<RustVersion, String> {
    let mut in_section = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_section = line == "[workspace.package]";
        } else if in_section {
            if let Some(v) = line.strip_prefix("rust-version") {
                let v = v.trim_start().strip_prefix('=').unwrap_or("").trim().trim_matches('"');
                return RustVersion::parse(v);
            }
        }
    }
    Err("Cargo.toml: no rust-version in [workspace.package]".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> RustVersion {
        RustVersion::parse(s).unwrap()
    }

    fn dep(name: &str, rv: Option<&str>) -> Package {
        Package {
            name: name.into(),
            version: "1.0.0".into(),
            rust_version: rv.map(v),
            member: false,
        }
    }

    fn member(name: &str, rv: Option<&str>) -> Package {
        Package { member: true, ..dep(name, rv) }
    }

    #[test]
    fn versions_parse_and_order_numerically() {
        assert_eq!(v("1.88"), RustVersion(1, 88, 0));
        assert_eq!(v("1.88.0"), v("1.88"));
        assert_eq!(v("1.95.0-nightly"), RustVersion(1, 95, 0));
        assert!(v("1.100") > v("1.99.9"));
        assert!(v("1.85") < v("1.88"));
        for bad in ["", "1", "1.x", "1.2.3.4", "one.two"] {
            assert!(RustVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dependency_newer_than_the_declared_version_fails() {
        // The state this gate was written for: 1.85 declared, sha2 needs 1.88.
        let pkgs = [member("portcullis-proto", Some("1.85")), dep("sha2", Some("1.88"))];
        let p = problems(v("1.85"), v("1.95"), &pkgs);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("sha2") && p[0].contains("1.88"), "{p:?}");
        let pkgs = [member("portcullis-proto", Some("1.88")), dep("sha2", Some("1.88"))];
        assert!(problems(v("1.88"), v("1.95"), &pkgs).is_empty());
    }

    #[test]
    fn the_declared_version_must_not_exceed_rustc() {
        let p = problems(v("1.96"), v("1.95.0"), &[member("m", Some("1.96"))]);
        assert!(p.len() == 1 && p[0].contains("running rustc"), "{p:?}");
        assert!(problems(v("1.95"), v("1.95.0"), &[member("m", Some("1.95"))]).is_empty());
    }

    #[test]
    fn members_must_declare_the_workspace_version() {
        let pkgs = [member("xtask", None), member("a", Some("1.80")), dep("old", None)];
        let p = problems(v("1.88"), v("1.95"), &pkgs);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("xtask") && p[1].contains("a declares"), "{p:?}");
    }

    #[test]
    fn the_declared_version_is_read_from_workspace_package() {
        let toml = "[workspace]\nmembers = []\n[other]\nrust-version = \"1.10\"\n\
                    [workspace.package]\nedition = \"2021\"\nrust-version = \"1.88\"\n";
        assert_eq!(declared_rust_version(toml), Ok(v("1.88")));
        assert!(declared_rust_version("[workspace.package]\nedition = \"2021\"\n").is_err());
    }

    /// The real gate over this workspace (runs `cargo metadata`; `cargo
    /// xtask test` runs it anyway, so it is not part of the unit tests).
    #[test]
    #[ignore]
    fn this_workspace_passes() {
        gate().unwrap();
    }
}
