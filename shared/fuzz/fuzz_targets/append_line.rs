//! See `baton_shared::fuzzing::append_line`: the body lives in the library so that
//! the committed corpus also runs as a stable test (`shared/tests/fuzz_corpus.rs`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| baton_shared::fuzzing::append_line(data));
