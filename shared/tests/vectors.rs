//! The spec's test vectors, matched byte for byte. The files under
//! `tests/data/` are copied unchanged from `spec/vectors/`; never regenerate
//! them to make a test pass.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use baton_shared::canonical;
use baton_shared::crypto::{self, Hash, Nonce, PublicKey, SecretKey, Sig};
use baton_shared::entry::Seq;
use baton_shared::export::{self, BatonError, BatonTrust};
use baton_shared::id::AgentId;
use baton_shared::json::{self, Mode, Value};
use baton_shared::verify::{Reason, Verdict, Verifier, verify_text};
use baton_shared::wire::{Nack, NackEcho, NackKind, Receipt, RejectReason};

fn data_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(data_path(name)).unwrap_or_else(|e| panic!("reading {name}: {e}"))
}

/// Vector files are read with our own strict reader (deep enough for the
/// depth-131 case, which is refused only when it is verified as a line).
fn load(name: &str) -> Value {
    json::parse_with(&read(name), Mode::Verify, 1000).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_object()
        .and_then(|o| o.get(key))
        .unwrap_or_else(|| panic!("missing key {key}"))
}

fn opt<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|o| o.get(key))
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    get(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("{key} not a string"))
}

fn n(v: &Value, key: &str) -> u64 {
    get(v, key)
        .as_exact_u64()
        .unwrap_or_else(|| panic!("{key} not an integer"))
}

fn arr<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    match get(v, key) {
        Value::Array(a) => a,
        _ => panic!("{key} not an array"),
    }
}

/// The entries of a vector as JSONL lines (any serialization will do:
/// verifiers recompute the canonical form).
fn lines(entries: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        out.extend(canonical::to_vec(e));
        out.push(b'\n');
    }
    out
}

fn agent_key() -> PublicKey {
    let chain = load("chain.json");
    PublicKey::trusted_hex(s(&chain, "public_key_hex")).unwrap()
}

fn agent_secret() -> SecretKey {
    SecretKey::from_seed_hex(s(&load("chain.json"), "signing_key_seed_hex")).unwrap()
}

fn expect_invalid_at(verdict: &Verdict, line: u64, case: &str) {
    match verdict {
        Verdict::Invalid(i) => assert_eq!(i.line as u64, line, "{case}: {i}"),
        other => panic!("{case}: expected rejection at line {line}, got {other}"),
    }
}

fn content_of(entry: &Value) -> Vec<u8> {
    let mut o = entry.as_object().unwrap().clone();
    for k in ["prev", "hash", "sig"] {
        o.remove(k);
    }
    canonical::to_vec(&Value::Object(o))
}

#[test]
fn jcs_canonical_text_and_hashes() {
    for file in ["jcs.json", "jcs_extra.json"] {
        let Value::Array(cases) = load(file) else {
            panic!("{file} is not an array")
        };
        for case in &cases {
            let input = s(case, "input");
            match opt(case, "canonical") {
                Some(expected) => {
                    let got = canonical::canonicalize(input.as_bytes(), Mode::Verify)
                        .unwrap_or_else(|e| panic!("{file} {input}: {e}"));
                    assert_eq!(
                        std::str::from_utf8(&got).unwrap(),
                        expected.as_str().unwrap(),
                        "{file}: {input}"
                    );
                    assert_eq!(crypto::sha256(&got).to_hex(), s(case, "sha256"));
                    // canonical(parse(canonical(x))) == canonical(x)
                    let again = canonical::canonicalize(&got, Mode::Verify).unwrap();
                    assert_eq!(again, got);
                }
                None => {
                    assert!(opt(case, "refuse").is_some());
                    for mode in [Mode::Verify, Mode::Append] {
                        assert!(
                            json::parse(input.as_bytes(), mode).is_err(),
                            "{file}: {input} must be refused"
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn append_refuses_the_2_pow_53_plus_1_token_that_verifiers_round() {
    let input = br#"{"n":[9007199254740991,9007199254740992,9007199254740993,-9007199254740993]}"#;
    assert!(canonical::canonicalize(input, Mode::Verify).is_ok());
    let err = json::parse(input, Mode::Append).unwrap_err();
    assert_eq!(err.kind, json::ParseErrorKind::InexactInteger);
    // The first refused token is 2^53 itself, at byte 23.
    assert_eq!(err.offset, 23);
}

#[test]
fn chain_contents_hashes_checkpoints_and_signatures() {
    let chain = load("chain.json");
    let secret = agent_secret();
    assert_eq!(secret.public().to_hex(), s(&chain, "public_key_hex"));
    let agent = AgentId::new(s(&chain, "agent")).unwrap();
    let entries = arr(&chain, "entries");
    let contents = arr(&chain, "canonical_content");
    assert_eq!(entries.len(), 7);
    let mut prev = Hash::ZERO;
    for (i, e) in entries.iter().enumerate() {
        let content = content_of(e);
        assert_eq!(
            std::str::from_utf8(&content).unwrap(),
            contents[i].as_str().unwrap()
        );
        assert_eq!(s(e, "prev"), prev.to_hex());
        let hash = crypto::chain_hash(&content, &prev);
        assert_eq!(hash.to_hex(), s(e, "hash"), "entry {i}");
        let seq = Seq(n(e, "seq"));
        if let Some(sig) = opt(e, "sig") {
            let message = crypto::checkpoint_message(&agent, seq, &hash);
            let expected_msg = s(get(&chain, "checkpoint_messages_hex"), &seq.to_string());
            assert_eq!(hex(&message), expected_msg);
            let ours = secret.sign_checkpoint(&agent, seq, &hash);
            assert_eq!(
                ours.to_hex(),
                sig.as_str().unwrap(),
                "Ed25519 is deterministic"
            );
            assert!(secret.public().verify_checkpoint(&agent, seq, &hash, &ours));
        }
        prev = hash;
    }

    let r = get(&chain, "receipt");
    let gw_secret = SecretKey::from_seed_hex(s(r, "gateway_key_seed_hex")).unwrap();
    assert_eq!(gw_secret.public().to_hex(), s(r, "gateway_public_key_hex"));
    let gateway = AgentId::new(s(r, "gateway")).unwrap();
    let hash = Hash::from_hex(s(r, "hash")).unwrap();
    let seq = Seq(n(r, "seq"));
    assert_eq!(
        hex(&crypto::receipt_message(&gateway, &agent, seq, &hash)),
        s(r, "message_hex")
    );
    let receipt = Receipt::sign(&gw_secret, &gateway, &agent, seq, hash);
    assert_eq!(receipt.sig.to_hex(), s(r, "sig"));
    assert!(receipt.verify(&gw_secret.public()));
    assert!(!receipt.verify(&secret.public()));
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn chain_jsonl_verifies() {
    let verdict = verify_text(&read("chain.jsonl"), Some(agent_key()));
    let Verdict::Valid(summary) = &verdict else {
        panic!("{verdict}")
    };
    assert_eq!(summary.authenticated_through, Seq(7));
    assert_eq!(summary.unsigned_tail, 0);
    assert_eq!(summary.lines, 7);
    assert_eq!(
        verdict.to_string(),
        "valid: authenticated through seq 7, unsigned tail 0"
    );
    // Without a key: checks 1-6 only, never "valid".
    let unkeyed = verify_text(&read("chain.jsonl"), None);
    assert!(matches!(unkeyed, Verdict::Unauthenticated(_)));
    assert_eq!(unkeyed.to_string(), "unauthenticated");
}

#[test]
fn tampered_chains_are_rejected_at_their_line() {
    let Value::Array(cases) = load("chain_tampered.json") else {
        panic!()
    };
    assert_eq!(cases.len(), 6);
    for case in &cases {
        let name = s(case, "name");
        let text = lines(arr(case, "entries"));
        let verdict = verify_text(&text, Some(agent_key()));
        expect_invalid_at(&verdict, n(case, "reject_at_line"), name);
        // The informative reasons of the vectors match ours.
        let Verdict::Invalid(i) = &verdict else {
            unreachable!()
        };
        assert_eq!(i.reason.to_string(), s(case, "why"), "{name}");
    }
}

#[test]
fn verify_edge_cases() {
    let Value::Array(cases) = load("verify_edge.json") else {
        panic!()
    };
    assert_eq!(cases.len(), 22);
    for case in &cases {
        let name = s(case, "name");
        let key_bytes = crypto::decode_hex::<32>(s(case, "public_key_hex")).unwrap();
        let key = PublicKey::from_bytes(&key_bytes).unwrap();
        let text = match opt(case, "jsonl_line0") {
            Some(line) => {
                let mut t = line.as_str().unwrap().as_bytes().to_vec();
                t.push(b'\n');
                t
            }
            None => lines(arr(case, "entries")),
        };
        if let Some(Value::Array(contents)) = opt(case, "canonical_content") {
            for (e, c) in arr(case, "entries").iter().zip(contents) {
                assert_eq!(
                    std::str::from_utf8(&content_of(e)).unwrap(),
                    c.as_str().unwrap(),
                    "{name}"
                );
            }
        }
        let verdict = verify_text(&text, Some(key));
        let expect = get(case, "expect");
        if get(expect, "ok") == &Value::Bool(false) {
            expect_invalid_at(&verdict, n(expect, "reject_at_line"), name);
            continue;
        }
        let Verdict::Valid(summary) = &verdict else {
            panic!("{name}: {verdict}")
        };
        if let Some(tail) = opt(expect, "unsigned_tail") {
            assert_eq!(
                summary.unsigned_tail as u64,
                tail.as_exact_u64().unwrap(),
                "{name}"
            );
        }
        if let Some(through) = opt(expect, "authenticated_through_seq") {
            assert_eq!(
                summary.authenticated_through.0,
                through.as_exact_u64().unwrap()
            );
        }
        if let Some(head) = opt(expect, "head_seq") {
            assert_eq!(summary.head_seq.0, head.as_exact_u64().unwrap(), "{name}");
        }
        if let Some(anchor) = opt(expect, "anchor") {
            assert_eq!(
                summary.anchor,
                Some((
                    Seq(n(anchor, "seq")),
                    Hash::from_hex(s(anchor, "hash")).unwrap()
                )),
                "{name}"
            );
        }
    }
}

#[test]
fn verify_edge_reasons_name_the_rule() {
    let Value::Array(cases) = load("verify_edge.json") else {
        panic!()
    };
    let reason = |name: &str| {
        let case = cases.iter().find(|c| s(c, "name") == name).unwrap();
        let key =
            PublicKey::from_bytes(&crypto::decode_hex::<32>(s(case, "public_key_hex")).unwrap())
                .unwrap();
        match verify_text(&lines(arr(case, "entries")), Some(key)) {
            Verdict::Invalid(i) => i.reason,
            other => panic!("{name}: {other}"),
        }
    };
    assert_eq!(reason("seq1_nongenesis_prev"), Reason::GenesisPrev);
    assert_eq!(reason("sig_receipt_tag"), Reason::BadSignature);
    assert_eq!(
        reason("identity_key_universal_signature"),
        Reason::BadSignature
    );
    assert!(
        reason("unknown_format_version")
            .to_string()
            .contains("version")
    );
    assert!(reason("nesting_depth_131").to_string().contains("nesting"));
    assert!(reason("sig_null").to_string().contains("\"sig\""));
    assert!(
        reason("agent_id_invalid")
            .to_string()
            .contains("position 0")
    );
}

#[test]
fn ed25519_strict_verdicts() {
    let doc = load("ed25519_strict.json");
    let cases = arr(&doc, "cases");
    assert_eq!(cases.len(), 9);
    for case in cases {
        let name = s(case, "name");
        let message = hex_decode(s(case, "message_hex"));
        let sig = Sig::from_hex(s(case, "sig_hex")).unwrap();
        let key_bytes = crypto::decode_hex::<32>(s(case, "public_key_hex")).unwrap();
        let accepted = PublicKey::from_bytes(&key_bytes)
            .map(|k| k.verify(&message, &sig))
            .unwrap_or(false);
        let expected = s(case, "expect_strict") == "accept";
        assert_eq!(accepted, expected, "{name}");
    }
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn receipt_for_nothing_stored() {
    let v = load("receipt_seq0.json");
    let chain = load("chain.json");
    let gw_secret =
        SecretKey::from_seed_hex(s(get(&chain, "receipt"), "gateway_key_seed_hex")).unwrap();
    assert_eq!(gw_secret.public().to_hex(), s(&v, "gateway_public_key_hex"));
    let gateway = AgentId::new(s(&v, "gateway")).unwrap();
    let agent = AgentId::new(s(&v, "agent")).unwrap();
    assert_eq!(n(&v, "seq"), 0);
    assert_eq!(Hash::from_hex(s(&v, "hash")).unwrap(), Hash::ZERO);
    assert_eq!(
        hex(&crypto::receipt_message(
            &gateway,
            &agent,
            Seq(0),
            &Hash::ZERO
        )),
        s(&v, "message_hex")
    );
    let r = Receipt::sign(&gw_secret, &gateway, &agent, Seq(0), Hash::ZERO);
    assert_eq!(r.sig.to_hex(), s(&v, "sig"));
}

fn reason_named(name: &str) -> RejectReason {
    RejectReason::ALL
        .into_iter()
        .find(|r| r.as_str() == name)
        .unwrap_or_else(|| panic!("unknown reason {name}"))
}

/// A reject as the vector describes it, with the vector's signature.
fn vector_nack(case: &Value, gateway: &AgentId, agent: &AgentId) -> (Nack, Nonce) {
    let nonce = Nonce::from_hex(s(case, "nonce")).unwrap();
    let mut nack = Nack::new(
        gateway,
        agent,
        NackKind::Reject {
            reason: reason_named(s(case, "reason")),
            seq: Seq(n(case, "seq")),
        },
    );
    nack.hello = Some(NackEcho {
        nonce,
        sig: Sig::from_hex(s(case, "sig")).unwrap(),
    });
    (nack, nonce)
}

#[test]
fn signed_rejects_stop_delivery_only_when_current_signed_and_stopping() {
    let v = load("nack.json");
    let chain = load("chain.json");
    let gw_secret =
        SecretKey::from_seed_hex(s(get(&chain, "receipt"), "gateway_key_seed_hex")).unwrap();
    let gw_key = gw_secret.public();
    assert_eq!(gw_key.to_hex(), s(&v, "gateway_public_key_hex"));
    let cases = arr(&v, "cases");
    assert_eq!(cases.len(), 3);
    for case in cases {
        let gateway = AgentId::new(s(case, "gateway")).unwrap();
        let agent = AgentId::new(s(case, "agent")).unwrap();
        let (nack, nonce) = vector_nack(case, &gateway, &agent);
        let NackKind::Reject { reason, seq } = nack.kind else {
            unreachable!()
        };
        let message = crypto::nack_message(&gateway, &agent, &nonce, reason.as_str(), seq);
        assert_eq!(hex(&message), s(case, "message_hex"));
        let signed = Nack::signed_reject(&gw_secret, &gateway, &agent, nonce, reason, seq);
        assert_eq!(signed, nack, "our signature matches the vector's");
        assert!(nack.stops_delivery(Some(&gw_key), &[nonce]));
        assert!(
            !nack.stops_delivery(None, &[nonce]),
            "no pinned key, no stop"
        );
        let mut unsigned = nack.clone();
        unsigned.hello = None;
        assert!(!unsigned.stops_delivery(Some(&gw_key), &[nonce]));
    }
    // Every refusal is refused for its own reason, against a gateway and
    // agent taken from the first case.
    let gateway = AgentId::new(s(&cases[0], "gateway")).unwrap();
    let agent = AgentId::new(s(&cases[0], "agent")).unwrap();
    let refusals = arr(&v, "refuse");
    assert_eq!(refusals.len(), 3);
    for case in refusals {
        let (nack, nonce) = vector_nack(case, &gateway, &agent);
        let current: Vec<Nonce> = match opt(case, "current_nonces") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|n| Nonce::from_hex(n.as_str().unwrap()).unwrap())
                .collect(),
            _ => vec![nonce],
        };
        if let Some(m) = opt(case, "message_hex") {
            let NackKind::Reject { reason, seq } = nack.kind else {
                unreachable!()
            };
            let message = crypto::nack_message(&gateway, &agent, &nonce, reason.as_str(), seq);
            assert_eq!(hex(&message), m.as_str().unwrap());
            assert!(
                gw_key.verify(&message, &nack.hello.as_ref().unwrap().sig),
                "{}: the signature itself is valid",
                s(case, "case")
            );
        }
        assert!(
            !nack.stops_delivery(Some(&gw_key), &current),
            "{}",
            s(case, "case")
        );
    }
}

#[test]
fn gap_entry_keeps_the_chain_linear() {
    let v = load("gap.json");
    let entries = arr(&v, "entries");
    for (e, c) in entries.iter().zip(arr(&v, "canonical_content")) {
        assert_eq!(content_of(e), c.as_str().unwrap().as_bytes());
    }
    let verdict = verify_text(&lines(entries), Some(agent_key()));
    let Verdict::Valid(summary) = &verdict else {
        panic!("{verdict}")
    };
    assert_eq!(summary.unsigned_tail, 0);
    let gap = &entries[2];
    assert_eq!(s(gap, "event"), "gap");
    assert_eq!(s(get(gap, "data"), "reason"), "disk_budget");
    // The wrong design (sequenced entries dropped) is rejected where the
    // hole is: seq 6 after seq 2, line 2.
    let wrong = arr(get(&v, "option_b_hole"), "entries");
    let verdict = verify_text(&lines(wrong), Some(agent_key()));
    expect_invalid_at(&verdict, 2, "option_b_hole");
}

#[test]
fn recovery_adoption_from_a_restored_image() {
    let v = load("recovery.json");
    let key = agent_key();
    let agent = AgentId::new("pi-s03-c07-a12").unwrap();
    let answer = get(&v, "hello_answer");
    let seq = Seq(n(answer, "seq"));
    let hash = Hash::from_hex(s(answer, "hash")).unwrap();
    let agent_sig = Sig::from_hex(s(answer, "agent_sig")).unwrap();
    assert!(key.verify_checkpoint(&agent, seq, &hash, &agent_sig));
    let chain = load("chain.json");
    let gw_key =
        PublicKey::trusted_hex(s(get(&chain, "receipt"), "gateway_public_key_hex")).unwrap();
    let gateway = AgentId::new(s(answer, "gateway")).unwrap();
    let receipt_sig = Sig::from_hex(s(answer, "receipt_sig")).unwrap();
    assert!(gw_key.verify_receipt(&gateway, &agent, seq, &hash, &receipt_sig));

    // A head the agent never signed must not be adopted.
    let fabricated = Hash::from_hex(s(get(&v, "fabricated_head"), "hash")).unwrap();
    assert!(!key.verify_checkpoint(&agent, seq, &fabricated, &agent_sig));

    // The gateway's export is one linear run.
    let gw = get(&v, "gateway_export");
    let verdict = verify_text(&lines(arr(gw, "entries")), Some(key));
    let Verdict::Valid(summary) = &verdict else {
        panic!("{verdict}")
    };
    assert_eq!(summary.unsigned_tail, 0);
    assert_eq!(summary.segments, vec![(Seq(1), Seq(9))]);

    // The agent's export has a break, accepted only at the verified recovery.
    let ag = get(&v, "agent_export");
    let ag_entries = arr(ag, "entries");
    let recovery = ag_entries
        .iter()
        .find(|e| s(e, "event") == "recovery")
        .unwrap();
    assert_eq!(content_of(recovery), s(&v, "recovery_canonical").as_bytes());
    let text = lines(ag_entries);
    let mut verifier = Verifier::new(Some(key)).allowing_recovery_breaks();
    verifier.push_text(&text).unwrap();
    let Verdict::Valid(summary) = verifier.finish() else {
        panic!()
    };
    let segments: Vec<(u64, u64)> = arr(get(ag, "expect"), "segments")
        .iter()
        .map(|p| match p {
            Value::Array(a) => (a[0].as_exact_u64().unwrap(), a[1].as_exact_u64().unwrap()),
            _ => panic!(),
        })
        .collect();
    assert_eq!(
        summary
            .segments
            .iter()
            .map(|(a, b)| (a.0, b.0))
            .collect::<Vec<_>>(),
        segments
    );
    // A plain run verifier rejects the break at the recovery line (line 3).
    expect_invalid_at(&verify_text(&text, Some(key)), 3, "agent export as one run");

    // A break whose recovery names a head the agent never signed fails.
    let forged = String::from_utf8(text.clone())
        .unwrap()
        .replace(s(answer, "agent_sig"), &"ab".repeat(64));
    let mut verifier = Verifier::new(Some(key)).allowing_recovery_breaks();
    let err = verifier.push_text(forged.as_bytes()).unwrap_err();
    assert_eq!(err.line, 3);
    assert!(matches!(err.reason, Reason::BadRecovery { .. }));
}

#[test]
fn baton_slice_loads_and_self_keyed_forgery_is_refused() {
    let v = load("baton.json");
    let key = agent_key();
    let doc = canonical::to_vec(get(get(&v, "valid_slice_from_3"), "doc"));
    let loaded = export::load_baton(&doc, BatonTrust::Key(&key)).unwrap();
    assert!(loaded.authenticated);
    assert_eq!(loaded.entries.len(), 5);
    assert_eq!(loaded.summary.first_seq, Seq(3));
    assert_eq!(loaded.summary.unsigned_tail, 0);
    assert_eq!(loaded.notes.len(), 1);
    assert_eq!(loaded.context.as_deref(), Some("growth-strategy-001"));
    // Without a trusted key it loads only on explicit request.
    assert!(matches!(
        export::load_baton(&doc, BatonTrust::None),
        Err(BatonError::NoTrustedKey(_))
    ));
    let unauth = export::load_baton(&doc, BatonTrust::Unauthenticated).unwrap();
    assert!(!unauth.authenticated);
    // A different trusted key refuses the whole document.
    let other = SecretKey::from_seed(&[42; 32]).public();
    assert!(matches!(
        export::load_baton(&doc, BatonTrust::Key(&other)),
        Err(BatonError::KeyMismatch { .. })
    ));

    let forgery = canonical::to_vec(get(get(&v, "self_keyed_forgery"), "doc"));
    for trust in [
        BatonTrust::Key(&key),
        BatonTrust::Unauthenticated,
        BatonTrust::None,
    ] {
        assert!(
            export::load_baton(&forgery, trust).is_err(),
            "forgery loaded under {trust:?}"
        );
    }
    assert_eq!(
        export::load_baton(&forgery, BatonTrust::Unauthenticated).unwrap_err(),
        BatonError::SmallOrderKey
    );
}

#[test]
fn baton_round_trips_through_the_writer() {
    let v = load("baton.json");
    let key = agent_key();
    let doc = canonical::to_vec(get(get(&v, "valid_slice_from_3"), "doc"));
    let loaded = export::load_baton(&doc, BatonTrust::Key(&key)).unwrap();
    let last = loaded.entries.last().unwrap();
    let written = export::BatonDoc {
        agent: loaded.agent.clone(),
        public_key: key.to_hex(),
        context: loaded.context.clone(),
        exported_at: "2026-11-22T19:10:00.000Z".into(),
        entries: loaded.entries.clone(),
        head: Some(export::SignedPoint {
            seq: Seq(7),
            hash: last.hash,
            sig: last.sig.unwrap(),
        }),
        receipt: None,
        notes: loaded.notes.clone(),
    }
    .to_json();
    let again = export::load_baton(&written, BatonTrust::Key(&key)).unwrap();
    assert_eq!(again.entries, loaded.entries);
    assert!(!again.truncated);
    // A head past the last event is reported as truncated.
    let mut short = loaded.entries.clone();
    short.pop();
    let truncated = export::BatonDoc {
        entries: short,
        head: Some(export::SignedPoint {
            seq: Seq(7),
            hash: last.hash,
            sig: last.sig.unwrap(),
        }),
        ..export::BatonDoc {
            agent: loaded.agent.clone(),
            public_key: key.to_hex(),
            context: None,
            exported_at: "2026-11-22T19:10:00.000Z".into(),
            entries: Vec::new(),
            head: None,
            receipt: None,
            notes: Vec::new(),
        }
    }
    .to_json();
    assert!(
        export::load_baton(&truncated, BatonTrust::Key(&key))
            .unwrap()
            .truncated
    );
}

#[test]
fn daily_set_verifies_only_merged_by_seq() {
    let v = load("daily.json");
    let key = agent_key();
    let files = get(&v, "files");
    let dir = "daily/pi-s03-c07-a12";
    let mut names: Vec<&str> = files
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.len() == 10)
        .collect();
    names.sort_unstable();
    let texts: Vec<Vec<u8>> = names
        .iter()
        .map(|d| read(&format!("{dir}/{d}.jsonl")))
        .collect();
    for (name, text) in names.iter().zip(&texts) {
        let expect = get(get(files, name), "alone");
        let verdict = verify_text(text, Some(key));
        let Verdict::Valid(summary) = &verdict else {
            panic!("{name}: {verdict}")
        };
        assert_eq!(
            expect,
            &Value::Object({
                let mut o = json::Object::new();
                o.insert("ok", Value::Bool(true));
                o.insert("line", Value::Null);
                o.insert(
                    "reason",
                    Value::from(format!("unsigned tail: {}", summary.unsigned_tail)),
                );
                o
            }),
            "{name}"
        );
        // Every line sits in the file its ts names.
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let ts = json::parse(line, Mode::Verify).unwrap();
            assert_eq!(export::daily_file_stem(s(&ts, "ts")), *name);
        }
    }
    let concatenated: Vec<u8> = texts.concat();
    let c = get(files, "concatenated_by_date");
    let verdict = verify_text(&concatenated, Some(key));
    expect_invalid_at(&verdict, n(c, "line"), "concatenated_by_date");
    let Verdict::Invalid(i) = verdict else {
        unreachable!()
    };
    assert_eq!(i.reason.to_string(), s(c, "reason"));

    let refs: Vec<&[u8]> = texts.iter().map(Vec::as_slice).collect();
    let merged = export::merge_daily(&refs).unwrap().join(&b'\n');
    let Verdict::Valid(summary) = verify_text(&merged, Some(key)) else {
        panic!("merged daily set does not verify")
    };
    assert_eq!(summary.unsigned_tail, 0);
    assert_eq!(summary.lines, 6);
}

#[test]
fn key_files() {
    let v = load("keys.json");
    let secret = SecretKey::from_pkcs8_pem(s(&v, "pkcs8_pem")).unwrap();
    assert_eq!(secret.public().to_hex(), s(&v, "public_key_hex"));
    assert_eq!(
        secret.to_pkcs8_pem(),
        s(&v, "pkcs8_pem"),
        "v1 PEM, as openssl writes"
    );
    let seeded = SecretKey::from_seed_hex(s(&v, "seed_hex")).unwrap();
    assert_eq!(seeded.public(), secret.public());
    let public = PublicKey::from_spki_pem(s(&v, "spki_pem")).unwrap();
    assert_eq!(public.to_hex(), s(&v, "public_key_hex"));
    assert_eq!(public.to_spki_pem(), s(&v, "spki_pem"));
}

#[test]
fn pkcs8_v2_public_key_must_match_the_seed() {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes, PublicKeyBytes};
    let seed = [1u8; 32];
    let right = SecretKey::from_seed(&seed).public().to_bytes();
    let wrong = SecretKey::from_seed(&[2u8; 32]).public().to_bytes();
    let v2 = |public: [u8; 32]| {
        KeypairBytes {
            secret_key: seed,
            public_key: Some(PublicKeyBytes(public)),
        }
        .to_pkcs8_pem(Default::default())
        .unwrap()
        .to_string()
    };
    let ok = SecretKey::from_pkcs8_pem(&v2(right)).unwrap();
    assert_eq!(ok.public().to_bytes(), right);
    assert!(SecretKey::from_pkcs8_pem(&v2(wrong)).is_err());
}

/// PROTOCOL §9 (`command.json`): the content's canonical form and hash,
/// the origin and delivery signatures byte for byte, the deliveries a
/// recipient must refuse, and the agent's `command` / `command_ack`
/// entries rebuilt from their parts, continuing chain.json's chain.
#[test]
fn commands_hash_sign_refuse_and_chain_as_the_vectors_say() {
    use baton_shared::command::{self, Answer, Command, ConflictKind, Presented, Refused, State};
    use baton_shared::entry::{ClockInfo, Stamp, build_content_at};
    use baton_shared::id::EventName;
    let v = load("command.json");
    let top = get(&v, "top_gateway");
    let cluster = get(&v, "cluster_gateway");
    let top_id = AgentId::new(s(top, "id")).unwrap();
    let top_key = SecretKey::from_seed_hex(s(top, "seed_hex")).unwrap();
    assert_eq!(top_key.public().to_hex(), s(top, "public_key_hex"));
    let gw_id = AgentId::new(s(cluster, "id")).unwrap();
    let gw_key = SecretKey::from_seed_hex(s(cluster, "seed_hex")).unwrap();
    assert_eq!(gw_key.public().to_hex(), s(cluster, "public_key_hex"));
    let agent = AgentId::new(s(get(&v, "agent"), "id")).unwrap();
    assert_eq!(agent_key().to_hex(), s(get(&v, "agent"), "public_key_hex"));

    let c = Command::from_content(get(&v, "content").clone()).unwrap();
    assert_eq!(c.canonical, s(&v, "canonical").as_bytes());
    assert_eq!(c.hash.to_hex(), s(&v, "command_hash"));
    let msg = |from: &AgentId, to: &AgentId| hex(&command::delivery_message(from, to, &c.hash));
    let origin = get(&v, "origin");
    assert_eq!(msg(&top_id, &top_id), s(origin, "message_hex"));
    let origin_sig = command::origin_sig(&top_key, &top_id, &c.hash);
    assert_eq!(origin_sig.to_hex(), s(origin, "sig"));
    let down = get(&v, "delivery_top_to_cluster");
    assert_eq!(msg(&top_id, &gw_id), s(down, "message_hex"));
    assert_eq!(
        command::sender_sig(&top_key, &top_id, &gw_id, &c.hash).to_hex(),
        s(down, "sig")
    );
    let last = get(&v, "delivery_cluster_to_agent");
    assert_eq!(msg(&gw_id, &agent), s(last, "message_hex"));
    let sender_sig = command::sender_sig(&gw_key, &gw_id, &agent, &c.hash);
    assert_eq!(sender_sig.to_hex(), s(last, "sig"));

    // Accepting: the cluster gateway's delivery, under the top's issuer key.
    let issuers = [top_key.public()];
    let delivery = |content: &[u8], origin: Sig, recipient: &AgentId, sig: Sig| {
        let p = Presented {
            content,
            issuer: &top_id,
            origin_sig: &origin,
            sender: &gw_id,
            recipient,
            sender_sig: &sig,
        };
        command::accept(&p, &agent, &gw_key.public(), &issuers)
    };
    let taken = delivery(&c.canonical, origin_sig, &agent, sender_sig).unwrap();
    assert_eq!(taken.hash, c.hash);
    // the cluster gateway's own key is not an issuer key here: the same
    // delivery is refused by an agent obeying only the top
    let p = Presented {
        content: &c.canonical,
        issuer: &top_id,
        origin_sig: &origin_sig,
        sender: &gw_id,
        recipient: &agent,
        sender_sig: &sender_sig,
    };
    assert_eq!(
        command::accept(&p, &agent, &gw_key.public(), &[gw_key.public()]),
        Err(Refused::Issuer)
    );
    for case in arr(&v, "refuse") {
        let name = s(case, "case");
        let sig = opt(case, "sig").map(|x| Sig::from_hex(x.as_str().unwrap()).unwrap());
        let origin = opt(case, "origin_sig").map(|x| Sig::from_hex(x.as_str().unwrap()).unwrap());
        match opt(case, "content_change") {
            None => {
                let recipient = opt(case, "recipient").map_or(agent.clone(), |r| {
                    AgentId::new(r.as_str().unwrap()).unwrap()
                });
                let presented =
                    opt(case, "presented_to").map(|p| AgentId::new(p.as_str().unwrap()).unwrap());
                let sig = sig.unwrap_or(sender_sig);
                let origin = origin.unwrap_or(origin_sig);
                // as addressed: not for this agent, or a bad signature
                let as_sent = delivery(&c.canonical, origin, &recipient, sig);
                assert!(as_sent.is_err(), "{name}");
                // re-addressed to the agent it was presented to: still refused
                if let Some(to) = presented {
                    let err = delivery(&c.canonical, origin, &to, sig).unwrap_err();
                    assert!(
                        matches!(err, Refused::SenderSig(_) | Refused::Issuer),
                        "{name}: {err}"
                    );
                }
                if opt(case, "origin_sig").is_some() {
                    assert_eq!(as_sent, Err(Refused::Issuer), "{name}");
                }
            }
            Some(change) => {
                let mut content = get(&v, "content").as_object().unwrap().clone();
                for (k, x) in change.as_object().unwrap().iter() {
                    content.insert(k, x.clone());
                }
                let altered = canonical::to_vec(&Value::Object(content));
                // the signatures were over the original: refused before the
                // content is read
                let err = delivery(&altered, origin_sig, &agent, sender_sig).unwrap_err();
                assert!(matches!(err, Refused::SenderSig(_)), "{name}: {err}");
                // and signed anew by the right keys, the content itself fails
                // (or, for the priority change, is a different command)
                let h = crypto::sha256(&altered);
                let o = command::origin_sig(&top_key, &top_id, &h);
                let sg = command::sender_sig(&gw_key, &gw_id, &agent, &h);
                match delivery(&altered, o, &agent, sg) {
                    Ok(other) => {
                        assert_eq!(name, "content altered after signing (priority 3)");
                        assert_eq!(other.priority, 3);
                        assert_ne!(other.hash, c.hash);
                    }
                    Err(err) => {
                        let says = if name.contains("unknown key") {
                            "unknown key"
                        } else {
                            "more than 24 h"
                        };
                        assert!(
                            matches!(err, Refused::Content(_)) && err.to_string().contains(says),
                            "{name}: {err}"
                        );
                    }
                }
            }
        }
    }

    let second = get(&v, "second_command");
    let c2 = Command::from_content(get(second, "content").clone()).unwrap();
    assert_eq!(c2.hash.to_hex(), s(second, "command_hash"));
    let origin2 = command::origin_sig(&top_key, &top_id, &c2.hash);
    assert_eq!(origin2.to_hex(), s(second, "origin_sig"));
    let sender2 = command::sender_sig(&gw_key, &gw_id, &agent, &c2.hash);
    assert_eq!(sender2.to_hex(), s(second, "sender_sig"));

    // The agent's chain continues chain.json's and verifies with it.
    let chain = load("chain.json");
    let mut all = arr(&chain, "entries").to_vec();
    let tail = arr(&v, "agent_chain");
    all.extend(tail.iter().cloned());
    let verdict = verify_text(&lines(&all), Some(agent_key()));
    assert!(verdict.is_valid(), "{verdict}");
    // Each entry rebuilt from its parts by the runtime's builders.
    let secret = agent_secret();
    let commands = [(&c, origin_sig, sender_sig), (&c2, origin2, sender2)];
    for (i, e) in tail.iter().enumerate() {
        let clock = get(e, "clock");
        let clock = ClockInfo {
            offset_ms: n(clock, "offset_ms") as i64,
            rtt_ms: n(clock, "rtt_ms") as i64,
            synced: true,
            boot: s(clock, "boot").to_owned(),
            mono_ms: n(clock, "mono_ms"),
        };
        let data = get(e, "data");
        let (cmd, o, sg) = commands[i / 2];
        let built = match s(e, "event") {
            "command" => {
                command::command_data(cmd, &o, gw_id.as_str(), &sg, n(data, "received_ms") as i64)
            }
            "command_ack" => {
                let answer = Answer::from_data(data).unwrap();
                assert_eq!(answer.hash, cmd.hash);
                if answer.state == State::Conflict {
                    assert_eq!(
                        answer.conflict.as_ref().unwrap().0,
                        ConflictKind::CapabilityMismatch
                    );
                    assert_eq!(cmd.select.missing_capabilities(&[]), vec!["motor"]);
                } else {
                    assert_eq!(answer.state, State::Ready);
                    assert!(cmd.on_time(answer.ready_ms.unwrap()));
                }
                answer.to_data()
            }
            other => panic!("{other}"),
        };
        let seq = Seq(n(e, "seq"));
        let stamp = Stamp {
            agent: &agent,
            seq,
            unix_ms: 0,
            clock: Some(&clock),
        };
        let event = EventName::new(s(e, "event")).unwrap();
        let content = build_content_at(&stamp, s(e, "ts"), &event, None, &built).unwrap();
        assert_eq!(content, content_of(e), "entry {seq}");
        let prev = Hash::from_hex(s(e, "prev")).unwrap();
        let hash = crypto::chain_hash(&content, &prev);
        assert_eq!(hash.to_hex(), s(e, "hash"), "entry {seq}");
        if let Some(sig) = opt(e, "sig") {
            assert_eq!(
                secret.sign_checkpoint(&agent, seq, &hash).to_hex(),
                sig.as_str().unwrap()
            );
        }
    }
}
