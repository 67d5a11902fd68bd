//! Replays the `vchan_ring` fuzz target's saved inputs (its regressions and
//! its committed, minimized corpus under `fuzz/`) through the target's own
//! body, `portcullis_vchan::fuzzing::ring_ops`, on every `cargo test`.

use std::path::PathBuf;

#[test]
fn vchan_ring_inputs() {
    let fuzz = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz");
    let mut n = 0;
    for dir in [fuzz.join("regressions/vchan_ring"), fuzz.join("corpus/vchan_ring")] {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_file() {
                portcullis_vchan::fuzzing::ring_ops(&std::fs::read(&path).unwrap());
                n += 1;
            }
        }
    }
    assert!(n > 0, "no saved vchan_ring inputs under {}", fuzz.display());
}
