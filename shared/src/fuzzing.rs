//! The bodies of the fuzz targets (`shared/fuzz/`), here so that the
//! committed corpora also run as a stable test on every build
//! (`shared/tests/fuzz_corpus.rs`). Each takes any bytes; none may panic,
//! and each asserts what must hold of what it accepts.

use crate::crypto::SecretKey;
use crate::id::AgentId;
use crate::json::{self, Mode};

/// The strict JSON reader in both modes: what it accepts, written
/// canonically, reads back to the same value and the same bytes.
pub fn json(data: &[u8]) {
    for mode in [Mode::Verify, Mode::Append] {
        if let Ok(v) = json::parse(data, mode) {
            let canonical = crate::canonical::to_vec(&v);
            let again = json::parse(&canonical, Mode::Verify)
                .unwrap_or_else(|e| panic!("canonical output does not read back: {e}"));
            assert_eq!(crate::canonical::to_vec(&again), canonical);
        }
    }
}

/// The agent socket's line parser (an append request): what it accepts
/// builds a content within the limits.
pub fn append_line(data: &[u8]) {
    if let Ok(req) = crate::entry::AppendRequest::parse(data) {
        let agent = AgentId::new("pi-fuzz").unwrap_or_else(|_| unreachable!());
        let stamp = crate::entry::Stamp {
            agent: &agent,
            seq: crate::entry::Seq(7),
            unix_ms: 1_700_000_000_000,
            clock: None,
        };
        if let Ok(content) =
            crate::entry::build_content(&stamp, &req.event, req.context.as_deref(), &req.data)
        {
            crate::entry::check_canonical_content(&content)
                .unwrap_or_else(|e| panic!("built content fails its own check: {e}"));
        }
    }
}

/// The baton document reader, trusted by a key and by none.
pub fn baton_load(data: &[u8]) {
    let key = SecretKey::from_seed(&[1; 32]).public();
    let _ = crate::export::load_baton(data, crate::export::BatonTrust::Key(&key));
    let _ = crate::export::load_baton(data, crate::export::BatonTrust::Unauthenticated);
    let _ = crate::verify::verify_text(data, Some(key));
}

/// Salvage of a damaged file: whatever the bytes, every location it
/// returns reads back as an entry of the agent at that seq.
pub fn salvage(data: &[u8]) {
    let agent = AgentId::new("pi-1").unwrap_or_else(|_| unreachable!());
    let key = SecretKey::from_seed(&[1; 32]).public();
    let mut f = crate::salvage::Finder::new(&agent, &key, 10_000);
    f.scan(0, data);
    let s = crate::salvage::assemble(f);
    for loc in s.chain.iter().chain(&s.stranded) {
        let at = usize::try_from(loc.offset).unwrap_or(usize::MAX);
        let e = crate::salvage::entry_at(&data[at..]).unwrap_or_else(|| panic!("no entry at {at}"));
        let h = e
            .header()
            .unwrap_or_else(|e| panic!("salvaged content: {e}"));
        assert_eq!((h.agent, h.seq), (agent.clone(), loc.seq));
    }
}
