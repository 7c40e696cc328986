//! Every committed fuzz input, `fuzz/corpus/<target>/*` and `fuzz/regressions/<target>/*`,
//! through the cargo-fuzz target bodies, on stable Rust and without root. The bodies are
//! `fuzz/src/lib.rs`, compiled in here as they are into the fuzz targets.

#[path = "../../fuzz/src/lib.rs"]
mod bodies;

use std::{fs, path::Path};

use bodies::TARGETS;

#[test]
fn corpus_and_regressions_replay() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for kind in ["corpus", "regressions"] {
        let Ok(dirs) = fs::read_dir(fuzz.join(kind)) else {
            assert_eq!(kind, "regressions", "no fuzz/corpus directory");
            continue;
        };
        for dir in dirs {
            let dir = dir.unwrap().path();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let Some((_, body)) = TARGETS.iter().find(|(t, _)| *t == name) else {
                panic!("fuzz/{kind}/{name} belongs to no target in fuzz/src/lib.rs TARGETS");
            };
            for file in fs::read_dir(&dir).unwrap() {
                let file = file.unwrap().path();
                let data = fs::read(&file).unwrap();
                let run = std::panic::catch_unwind(|| body(&data));
                assert!(run.is_ok(), "{} failed", file.display());
                replayed += 1;
            }
        }
    }
    for (target, _) in TARGETS {
        let seeds = fs::read_dir(fuzz.join("corpus").join(target)).map(Iterator::count);
        assert!(seeds.unwrap_or(0) > 0, "fuzz/corpus/{target} has no seeds");
    }
    assert!(replayed > 0);
}
