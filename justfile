# Every recipe delegates to `cargo xtask`, the one entry point; `just` takes
# the same arguments as the command it names (see README.md, Commands).

default:
    @just --list

# Unit, property, schema and interop tests, no_std builds, gates (fmt, clippy, docs, MSRV).
test *ARGS:
    cargo xtask test {{ARGS}}

# The whole system end to end on the hosted platform (ARGS go to `portcullis demo`).
demo *ARGS:
    cargo xtask demo {{ARGS}}

# Build host tools and the no_std crates; `--target xen` for the PVH guest images.
build *ARGS:
    cargo xtask build {{ARGS}}

# Xen 4.17 + Debian dom0 + our guests as QEMU boot files (target/xen-image).
xen-image:
    cargo xtask xen-image

# Boot them under real Xen in QEMU; ARGS (after `--`) go to dom0's command line.
boot *ARGS:
    cargo xtask boot {{ARGS}}

# Benchmarks (criterion), printing figures.
bench:
    cargo xtask bench

# Run every fuzz target for SECONDS each.
fuzz SECONDS="60":
    cargo xtask fuzz --seconds {{SECONDS}}

# Only the pycose token interop check.
interop:
    cargo xtask interop

# The Debian package target/dist/portcullis_<version>_amd64.deb and SHA256SUMS.
dist:
    cargo xtask dist

# Guest images built in two clean clones at different paths must be bit-identical.
repro:
    cargo xtask repro

# Tests, then the fuzzers (`.ci/run` runs more: see README.md).
ci:
    cargo xtask ci
