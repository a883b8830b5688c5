//! Fuzzes what a gateway does with bytes from the network: decode any
//! payload, and feed every batch that decodes to an intake whose store
//! already holds part of a genuine chain, so that duplicates, overlaps,
//! forks, gaps and proofs are all reachable. Also the readers of files and
//! documents. Nothing may panic; an accepted batch must extend the chain.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use baton_shared::crypto::SecretKey;
use baton_shared::entry::Seq;
use baton_shared::id::AgentId;
use baton_shared::intake::{Enrollment, Head, Intake, IntakeConfig, Verdict};
use baton_shared::json::{Object, Value};
use baton_shared::memory::{MemChain, MemLedger};
use baton_shared::uplink::Ledger;
use baton_shared::wire::{EntryBatch, Hello, Message, Nack, Receipt};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    ledger: MemLedger,
    gw: SecretKey,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let key = SecretKey::from_seed(&[1; 32]);
        let mut ledger = MemLedger::new(AgentId::new("pi-1").unwrap(), key);
        ledger.checkpoint_every = 4;
        ledger.append(0, "genesis", None, Value::Object(Object::new())).unwrap();
        for i in 0..30u64 {
            ledger.append(i as i64, "info", Some("fuzz"), Value::from(i)).unwrap();
        }
        ledger.sign_head();
        Fixture { ledger, gw: SecretKey::from_seed(&[2; 32]) }
    })
}

fn intake(f: &Fixture, store: &mut MemChain, held: u64) -> Intake {
    // the store holds 1..=held, a batch end
    let entries = f.ledger.range(Seq(1), Seq(held));
    store.insert(Seq(1), &entries);
    let head = match entries.last() {
        Some(e) => Head { seq: Seq(held), hash: e.hash, sig: e.sig },
        None => Head::EMPTY,
    };
    Intake::new(
        IntakeConfig {
            gateway: AgentId::new("gw").unwrap(),
            gateway_key: f.gw.public(),
            resend_timeout: Duration::from_secs(10),
        },
        Enrollment {
            agent: f.ledger.agent().clone(),
            key: f.ledger.key().public(),
            start_seq: None,
            revoked_from_seq: None,
        },
        head,
        None,
    )
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    let held = [0u64, 4, 8, 16, 28][usize::from(mode % 5)];
    let mut store = MemChain::default();
    let mut i = intake(f, &mut store, held);

    let batch = if mode & 0x80 == 0 {
        // raw payloads, as any client could publish them
        let _ = Hello::decode(rest);
        let _ = Receipt::decode(rest);
        let _ = Nack::decode(rest);
        let _ = baton_shared::verify::verify_text(rest, Some(f.ledger.key().public()));
        let _ = baton_shared::export::load_baton(rest, baton_shared::export::BatonTrust::Key(&f.ledger.key().public()));
        EntryBatch::decode(rest).ok()
    } else {
        // structure-aware: a genuine range with bytes of it overwritten
        let [a, b, rest @ ..] = rest else { return };
        let from = u64::from(*a % 31) + 1;
        let to = (from + u64::from(*b % 31)).min(f.ledger.head().0);
        let mut batch = f.ledger.batch(Seq(from), Seq(to), None);
        let mut bytes = batch.encode();
        for pair in rest.chunks(2) {
            if let [at, byte] = pair {
                let at = usize::from(*at) * bytes.len() / 256;
                bytes[at] = *byte;
            }
        }
        match EntryBatch::decode(&bytes) {
            Ok(b) => batch = b,
            Err(_) => return,
        }
        Some(batch)
    };
    if let Some(batch) = batch {
        let before = i.accepted_head();
        if let Verdict::Accepted { first, entries, .. } = i.handle_batch(Duration::ZERO, &batch, &store) {
            // whatever was accepted extends the held chain and is genuine
            assert_eq!(first, before.seq.next());
            for (k, e) in entries.iter().enumerate() {
                let seq = Seq(first.0 + k as u64);
                assert_eq!(Some(e.hash), f.ledger.hash_at(seq), "accepted a forged entry at {seq}");
            }
        }
    }
});
