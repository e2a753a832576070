//! Every seed of the fuzz corpus (`fuzz/seeds/<target>/`) and every input a fuzzer once
//! crashed on (`fuzz/regressions/<target>/`) through the same checks the fuzz targets
//! run (`holdfast_tests::fuzz`), on stable, in every `cargo test`.

use std::path::Path;

fn each(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            let data = std::fs::read(&p).unwrap();
            let r = std::panic::catch_unwind(|| check(&data));
            assert!(r.is_ok(), "{} fails its check", p.display());
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}: run `cargo run -p holdfast-tests --example fuzz_seeds`");
}

#[test]
fn frame() {
    each("frame", holdfast_tests::fuzz::frame);
}

#[test]
fn engine() {
    each("engine", holdfast_tests::fuzz::engine);
}

#[test]
fn config() {
    each("config", holdfast_tests::fuzz::config);
}

#[test]
fn capture() {
    each("capture", holdfast_tests::fuzz::capture);
}

#[test]
fn snapshot() {
    each("snapshot", holdfast_tests::fuzz::snapshot);
}

#[test]
fn endpoint() {
    each("endpoint", holdfast_tests::fuzz::endpoint);
}

#[test]
fn sync() {
    each("sync", holdfast_tests::fuzz::sync);
}

#[test]
fn replay() {
    each("replay", holdfast_tests::fuzz::replay);
}
