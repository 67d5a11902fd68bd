# Every recipe delegates to `cargo xtask`, the one entry point.

default:
    @just --list

# Unit, property, schema and interop tests, no_std builds, clippy.
test:
    cargo xtask test

# Build host tools and the no_std crates for the guest target.
build *ARGS:
    cargo xtask build {{ARGS}}

# Benchmarks (criterion), printing figures.
bench:
    cargo xtask bench

# Run every fuzz target for SECONDS each.
fuzz SECONDS="60":
    cargo xtask fuzz --seconds {{SECONDS}}

# What CI runs.
ci:
    cargo xtask ci
