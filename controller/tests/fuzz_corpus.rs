//! Replays the fuzz targets' committed corpora (`fuzz/corpus/<target>/`) and
//! regression inputs (`fuzz/regressions/<target>/`) through the same property
//! checks the targets run (`weft_controller::fuzzing`), on the stable toolchain: CI keeps
//! every input the fuzzers found interesting without nightly. README, Fuzzing.

use std::fs;
use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).expect("read a corpus file");
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{} fails its property", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn meshfile() {
    replay("meshfile", weft_controller::fuzzing::meshfile);
}

#[test]
fn registration() {
    replay("registration", weft_controller::fuzzing::registration);
}

#[test]
fn admission_review() {
    replay(
        "admission_review",
        weft_controller::fuzzing::admission_review,
    );
}
