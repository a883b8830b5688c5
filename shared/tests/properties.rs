//! Property tests: tamper evidence, canonical round trips, and that no
//! input can crash a reader.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use baton_shared::canonical;
use baton_shared::crypto::SecretKey;
use baton_shared::entry::{Entry, Seq};
use baton_shared::id::AgentId;
use baton_shared::intake::{Enrollment, Head, Intake, IntakeConfig, Verdict as Intaken};
use baton_shared::json::{self, Mode, Object, Value};
use baton_shared::memory::{MemChain, MemLedger};
use baton_shared::verify::{Verdict, parse_line, verify_text};
use baton_shared::wire::{
    EntryBatch, Heartbeat, Hello, Message, Nack, Receipt, StateMsg, TimeReply, TimeRequest,
};
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::Number),
        (-1_000_000i64..1_000_000).prop_map(|n| Value::Number(n as f64)),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((any::<String>(), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Object>())),
        ]
    })
}

fn agent_key() -> SecretKey {
    SecretKey::from_seed(&[3; 32])
}

/// A chain whose entries carry the given data, signed every `every`.
fn chain(data: &[Value], every: usize) -> MemLedger {
    let mut l = MemLedger::genesis(
        AgentId::new("pi-9").unwrap(),
        agent_key(),
        1_700_000_000_000,
        every,
    )
    .unwrap();
    for (i, d) in data.iter().enumerate() {
        l.append(1_700_000_000_000 + i as i64, "fact", Some("p"), d.clone())
            .unwrap();
    }
    l.sign_head();
    l
}

fn lines_of(l: &MemLedger) -> Vec<String> {
    l.held().map(Entry::to_jsonl).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn canonical_form_is_a_fixed_point(v in json_value()) {
        let once = canonical::to_vec(&v);
        let again = canonical::canonicalize(&once, Mode::Verify).unwrap();
        prop_assert_eq!(&again, &once);
        // and parsing it back gives the same value, up to -0 and key order
        let back = json::parse_with(&once, Mode::Verify, 1000).unwrap();
        prop_assert_eq!(canonical::to_vec(&back), once);
    }

    #[test]
    fn any_single_byte_change_to_a_chain_is_detected(
        data in prop::collection::vec(json_value(), 1..6),
        every in 1usize..4,
        line_pick in any::<prop::sample::Index>(),
        byte_pick in any::<prop::sample::Index>(),
        new_byte in any::<u8>(),
    ) {
        let l = chain(&data, every);
        let key = agent_key().public();
        let lines = lines_of(&l);
        let original: Vec<Entry> = l.held().cloned().collect();
        let li = line_pick.index(lines.len());
        let mut bytes = lines[li].clone().into_bytes();
        let bi = byte_pick.index(bytes.len());
        prop_assume!(bytes[bi] != new_byte && new_byte != b'\n');
        bytes[bi] = new_byte;
        let mut text = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            text.extend_from_slice(if i == li { &bytes } else { line.as_bytes() });
            text.push(b'\n');
        }
        match verify_text(&text, Some(key)) {
            Verdict::Invalid(bad) => prop_assert!(bad.line <= li, "{}", bad),
            verdict => {
                // Undetected only if the line still says exactly the same
                // thing (e.g. `1e+21` -> `1e021` is the same number).
                let reparsed = parse_line(&bytes).unwrap().entry;
                prop_assert_eq!(&reparsed, &original[li], "undetected: {}", verdict);
            }
        }
    }

    #[test]
    fn any_single_byte_change_to_a_batch_is_refused_or_harmless(
        data in prop::collection::vec(json_value(), 1..5),
        byte_pick in any::<prop::sample::Index>(),
        new_byte in any::<u8>(),
    ) {
        let l = chain(&data, 100);
        let batch = l.batch(Seq(1), l.head_seq(), None);
        let mut bytes = batch.encode();
        let bi = byte_pick.index(bytes.len());
        prop_assume!(bytes[bi] != new_byte);
        bytes[bi] = new_byte;
        let Ok(decoded) = EntryBatch::decode(&bytes) else {
            return Ok(());
        };
        let mut intake = fresh_intake();
        let verdict = intake.handle_batch(Duration::ZERO, &decoded, &MemChain::default());
        if let Intaken::Accepted { entries, .. } = verdict {
            prop_assert_eq!(entries, batch.entries, "a changed batch was accepted");
        }
    }

    #[test]
    fn arbitrary_bytes_never_crash_a_reader(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = json::parse(&bytes, Mode::Verify);
        let _ = json::parse(&bytes, Mode::Append);
        let _ = verify_text(&bytes, Some(agent_key().public()));
        let _ = baton_shared::export::load_baton(&bytes, baton_shared::export::BatonTrust::Unauthenticated);
        let _ = baton_shared::entry::AppendRequest::parse(&bytes);
        let _ = baton_shared::command::Command::from_canonical(&bytes);
        let mut framed = vec![1u8];
        framed.extend_from_slice(&bytes);
        for payload in [&bytes[..], &framed[..]] {
            let _ = Hello::decode(payload);
            let _ = Receipt::decode(payload);
            let _ = Nack::decode(payload);
            let _ = Heartbeat::decode(payload);
            let _ = TimeRequest::decode(payload);
            let _ = TimeReply::decode(payload);
            let _ = StateMsg::decode(payload);
            let _ = baton_shared::wire::CommandReply::decode(payload);
            if let Ok(d) = baton_shared::wire::CommandDelivery::decode(payload) {
                let key = agent_key().public();
                let _ = baton_shared::command::accept(&d.presented(), &d.recipient, &key, &[key]);
            }
            if let Ok(batch) = EntryBatch::decode(payload) {
                let _ = fresh_intake().handle_batch(Duration::ZERO, &batch, &MemChain::default());
            }
        }
    }
}

fn fresh_intake() -> Intake {
    let gw = SecretKey::from_seed(&[4; 32]);
    Intake::new(
        IntakeConfig {
            gateway: AgentId::new("gw").unwrap(),
            gateway_key: gw.public(),
            resend_timeout: Duration::from_secs(10),
        },
        Enrollment {
            agent: AgentId::new("pi-9").unwrap(),
            key: agent_key().public(),
            start_seq: None,
            revoked_from_seq: None,
        },
        Head::EMPTY,
        None,
    )
}

#[test]
fn deep_nesting_in_any_reader_is_refused_not_a_stack_overflow() {
    let deep = "[".repeat(200_000);
    assert!(json::parse(deep.as_bytes(), Mode::Verify).is_err());
    assert!(matches!(
        verify_text(deep.as_bytes(), None),
        Verdict::Invalid(_)
    ));
    let doc = format!("{{\"baton\":1,\"events\":{deep}");
    assert!(
        baton_shared::export::load_baton(
            doc.as_bytes(),
            baton_shared::export::BatonTrust::Unauthenticated
        )
        .is_err()
    );
}
