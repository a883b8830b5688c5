//! The fuzz targets' committed corpora (`shared/fuzz/corpus/<target>/`),
//! replayed through the same bodies on every build: the short run CI does
//! without nightly. The long runs (10⁶ executions a target) are
//! `scripts/fuzz.sh`; figures in BENCHMARKS.md.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        body(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "the {target} corpus is empty");
}

#[test]
fn json_corpus() {
    replay("json", baton_shared::fuzzing::json);
}

#[test]
fn append_line_corpus() {
    replay("append_line", baton_shared::fuzzing::append_line);
}

#[test]
fn baton_load_corpus() {
    replay("baton_load", baton_shared::fuzzing::baton_load);
}

#[test]
fn salvage_corpus() {
    replay("salvage", baton_shared::fuzzing::salvage);
}

/// The salvage corpus holds real chains (its seed was a chain of eight
/// records of `pi-1` among other bytes): salvage finds one whole.
#[test]
fn the_salvage_corpus_holds_a_chain_found_whole() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/salvage");
    let agent = baton_shared::AgentId::new("pi-1").unwrap();
    let key = baton_shared::SecretKey::from_seed(&[1; 32]).public();
    let longest = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            let mut finder = baton_shared::salvage::Finder::new(&agent, &key, 100);
            finder.scan(0, &bytes);
            baton_shared::salvage::assemble(finder).chain.len()
        })
        .max()
        .unwrap();
    assert!(longest >= 8, "{longest}");
}
