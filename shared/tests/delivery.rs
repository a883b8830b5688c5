//! Scripted scenarios for each delivery rule of PROTOCOL §7, driving the
//! `uplink` and `intake` state machines directly in virtual time.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use baton_shared::crypto::{Hash, SecretKey, Sig};
use baton_shared::entry::{Entry, Seq};
use baton_shared::id::AgentId;
use baton_shared::intake::{Answer, Enrollment, Head, Intake, IntakeConfig, Verdict};
use baton_shared::json::Value;
use baton_shared::memory::{MemChain, MemLedger};
use baton_shared::uplink::{Alert, Ledger, Output, Uplink, UplinkConfig};
use baton_shared::wire::{EntryBatch, Hello, Nack, NackKind, Receipt, RejectReason};

const T0: Duration = Duration::ZERO;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn agent_id() -> AgentId {
    AgentId::new("pi-1").unwrap()
}

fn gw_id() -> AgentId {
    AgentId::new("gw-1").unwrap()
}

fn agent_key() -> SecretKey {
    SecretKey::from_seed(&[11; 32])
}

fn gw_key() -> SecretKey {
    SecretKey::from_seed(&[22; 32])
}

/// A ledger with genesis and `n` more entries, signed every `every`.
fn ledger(n: u64, every: usize) -> MemLedger {
    let mut l = MemLedger::genesis(agent_id(), agent_key(), 0, every).unwrap();
    for i in 0..n {
        l.append(i as i64, "info", None, Value::from(i)).unwrap();
    }
    l
}

fn intake_with(enrollment: Enrollment) -> Intake {
    let cfg = IntakeConfig {
        gateway: gw_id(),
        gateway_key: gw_key().public(),
        resend_timeout: ms(1000),
    };
    Intake::new(cfg, enrollment, Head::EMPTY, None)
}

fn enrollment() -> Enrollment {
    Enrollment {
        agent: agent_id(),
        key: agent_key().public(),
        start_seq: None,
        revoked_from_seq: None,
    }
}

fn intake() -> Intake {
    intake_with(enrollment())
}

/// The receiver side: an intake over a store, committing at once.
struct Gw {
    intake: Intake,
    store: MemChain,
}

impl Gw {
    fn new() -> Self {
        Gw {
            intake: intake(),
            store: MemChain::default(),
        }
    }

    fn take(&mut self, now: Duration, batch: &EntryBatch) -> Verdict {
        let v = self.intake.handle_batch(now, batch, &self.store);
        if let Verdict::Accepted { first, entries, .. } = &v {
            assert!(self.store.insert(*first, entries).is_empty());
            self.intake.committed(self.intake.accepted_head().seq);
        }
        v
    }

    fn receipt(&self) -> Receipt {
        self.intake.receipt(&gw_key())
    }
}

fn accepted_range(v: &Verdict) -> (Seq, usize) {
    match v {
        Verdict::Accepted { first, entries, .. } => (*first, entries.len()),
        other => panic!("expected Accepted, got {other:?}"),
    }
}

// ---------------------------------------------------------------- intake

#[test]
fn accepted_batches_are_receipted_only_after_commit() {
    let l = ledger(5, 3); // signed at 3 and 6
    let mut i = intake();
    let store = MemChain::default();
    let v = i.handle_batch(T0, &l.batch(Seq(1), Seq(3), None), &store);
    assert_eq!(accepted_range(&v), (Seq(1), 3));
    assert_eq!(v.answer(), Answer::Receipt);
    // not committed yet: the receipt still says "nothing stored"
    assert_eq!(i.receipt(&gw_key()).seq, Seq(0));
    assert_eq!(i.receipt(&gw_key()).hash, Hash::ZERO);
    i.committed(Seq(3));
    let r = i.receipt(&gw_key());
    assert_eq!((r.seq, r.hash), (Seq(3), l.hash_at(Seq(3)).unwrap()));
    assert!(r.verify(&gw_key().public()));
}

#[test]
fn duplicates_and_overlaps_rule_4() {
    let l = ledger(5, 3);
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(3), None));
    assert_eq!(
        gw.take(T0, &l.batch(Seq(1), Seq(3), None)),
        Verdict::Duplicate
    );
    let v = gw.take(T0, &l.batch(Seq(1), Seq(6), None));
    assert_eq!(
        accepted_range(&v),
        (Seq(4), 3),
        "only the new tail is stored"
    );
    // a copy differing only by sig is the same entry
    let mut b = l.batch(Seq(4), Seq(6), None);
    b.entries[0].sig = Some(agent_key().sign_checkpoint(&agent_id(), Seq(4), &b.entries[0].hash));
    assert_eq!(gw.take(T0, &b), Verdict::Duplicate);
    assert_eq!(gw.store.entries[&4].sig, None, "the stored copy is kept");
}

#[test]
fn out_of_order_batches_get_rate_limited_resend_nacks_rule_5() {
    let l = ledger(11, 3); // signed at 3, 6, 9, 12
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(3), None));
    let ahead = l.batch(Seq(7), Seq(9), None);
    let v = gw.take(ms(10), &ahead);
    assert_eq!(v, Verdict::Resend { from: Seq(4) });
    assert_eq!(v.answer(), Answer::Nack(NackKind::Resend { from: Seq(4) }));
    // within resend_timeout for the same head: the receipt instead
    let v = gw.take(ms(500), &ahead);
    assert_eq!(v, Verdict::ResendSuppressed);
    assert_eq!(v.answer(), Answer::Receipt);
    assert_eq!(gw.take(ms(1010), &ahead), Verdict::Resend { from: Seq(4) });
    // a new head value resets the limit
    gw.take(ms(1020), &l.batch(Seq(4), Seq(6), None));
    let further = l.batch(Seq(10), Seq(12), None);
    assert_eq!(
        gw.take(ms(1030), &further),
        Verdict::Resend { from: Seq(7) }
    );
    assert_eq!(accepted_range(&gw.take(ms(1040), &ahead)), (Seq(7), 3));
}

fn expect_reject(v: &Verdict, reason: RejectReason, seq: u64) {
    match v {
        Verdict::Rejected {
            reason: r, seq: s, ..
        } => {
            assert_eq!((*r, *s), (reason, Seq(seq)), "{v:?}")
        }
        other => panic!("expected reject {reason}, got {other:?}"),
    }
}

#[test]
fn invalid_batches_are_rejected_whole_rule_6() {
    let l = ledger(5, 3);
    let mut gw = Gw::new();

    let mut unsigned_end = l.batch(Seq(1), Seq(3), None);
    unsigned_end.entries[2].sig = None;
    expect_reject(&gw.take(T0, &unsigned_end), RejectReason::Invalid, 3);

    let mut forged = l.batch(Seq(1), Seq(3), None);
    let other = SecretKey::from_seed(&[99; 32]);
    forged.entries[2].sig =
        Some(other.sign_checkpoint(&agent_id(), Seq(3), &forged.entries[2].hash));
    expect_reject(&gw.take(T0, &forged), RejectReason::BadSignature, 3);

    let mut not_canonical = l.batch(Seq(1), Seq(3), None);
    let e = &mut not_canonical.entries[1];
    e.content = String::from_utf8(e.content.clone())
        .unwrap()
        .replacen('{', "{ ", 1)
        .into_bytes();
    // Content changed under its hash fails the cheap checks first (issue
    // 15: hashes, links and the signature before any content is parsed)…
    expect_reject(&gw.take(T0, &not_canonical), RejectReason::Invalid, 2);
    // …and a writer that hashed and signed its non-canonical content is
    // refused for what it wrote.
    let mut prev = Hash::ZERO;
    for e in &mut not_canonical.entries {
        e.prev = prev;
        e.hash = baton_shared::crypto::chain_hash(&e.content, &e.prev);
        prev = e.hash;
    }
    not_canonical.entries[2].sig =
        Some(agent_key().sign_checkpoint(&agent_id(), Seq(3), &not_canonical.entries[2].hash));
    expect_reject(&gw.take(T0, &not_canonical), RejectReason::NotCanonical, 2);

    let mut edited = l.batch(Seq(1), Seq(3), None);
    edited.entries[1].content = edited.entries[1]
        .content
        .iter()
        .map(|&b| if b == b'0' { b'1' } else { b })
        .collect();
    assert!(matches!(gw.take(T0, &edited), Verdict::Rejected { .. }));

    let mut foreign = l.batch(Seq(1), Seq(3), None);
    foreign.agent = AgentId::new("pi-2").unwrap();
    expect_reject(&gw.take(T0, &foreign), RejectReason::Invalid, 0);

    // nothing of it was stored, and the good batch still goes in
    assert!(gw.store.entries.is_empty());
    assert_eq!(
        accepted_range(&gw.take(T0, &l.batch(Seq(1), Seq(3), None))),
        (Seq(1), 3)
    );
}

/// Issue 15, finding 2: someone without the agent's key must never reach
/// the costly checks. Entries after the first hold what no parser would
/// take (a reader that parsed them would answer `not_canonical` or
/// `invalid` at seq 2), with correct hashes and links, and the last
/// signature is by another key: the answer is `bad_signature` at the last
/// seq, found before any of that content was read.
#[test]
fn a_forged_batch_is_refused_before_its_content_is_read() {
    let l = ledger(5, 3);
    let mut forged = l.batch(Seq(1), Seq(3), None);
    let mut prev = forged.entries[0].hash;
    for e in &mut forged.entries[1..] {
        e.content = b"{\"seq\": not json at all".repeat(100);
        e.prev = prev;
        e.hash = baton_shared::crypto::chain_hash(&e.content, &e.prev);
        prev = e.hash;
    }
    let mallory = SecretKey::from_seed(&[66; 32]);
    forged.entries[2].sig =
        Some(mallory.sign_checkpoint(&agent_id(), Seq(3), &forged.entries[2].hash));
    expect_reject(&Gw::new().take(T0, &forged), RejectReason::BadSignature, 3);
}

#[test]
fn genesis_is_seq_1_and_only_seq_1() {
    let mut l = MemLedger::new(agent_id(), agent_key());
    l.append(0, "info", None, Value::Null).unwrap();
    l.sign_head();
    expect_reject(
        &Gw::new().take(T0, &l.batch(Seq(1), Seq(1), None)),
        RejectReason::Invalid,
        1,
    );
    let mut l = ledger(0, 1);
    l.append(0, "genesis", None, Value::Null).unwrap();
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(1), None));
    expect_reject(
        &gw.take(T0, &l.batch(Seq(2), Seq(2), None)),
        RejectReason::Invalid,
        2,
    );
}

/// A second history of the same agent, diverging after `common` entries.
fn fork_of(l: &MemLedger, common: u64, extra: u64) -> MemLedger {
    let mut f = MemLedger::new(agent_id(), agent_key());
    f.checkpoint_every = 1000;
    for e in l.range(Seq(1), Seq(common)) {
        let h = e.header().unwrap();
        let v = baton_shared::json::parse(&e.content, baton_shared::json::Mode::Verify).unwrap();
        let data = v.as_object().unwrap().get("data").unwrap().clone();
        f.append(0, h.event.as_str(), h.context.as_deref(), data)
            .unwrap();
    }
    for i in 0..extra {
        f.append(1, "fact", None, Value::from(i + 100)).unwrap();
    }
    f.sign_head();
    f
}

#[test]
fn forks_halt_the_agent_until_resolved() {
    let l = ledger(5, 3);
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(6), None));
    let f = fork_of(&l, 2, 3); // 1..2 shared, 3..5 different
    assert_ne!(f.hash_at(Seq(3)), l.hash_at(Seq(3)));
    let v = gw.take(T0, &f.batch(Seq(3), Seq(5), None));
    match &v {
        Verdict::Fork { seq, evidence } => {
            assert_eq!(*seq, Seq(3));
            assert_eq!(evidence.len(), 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        v.answer(),
        Answer::Nack(NackKind::Reject {
            reason: RejectReason::Fork,
            seq: Seq(3)
        })
    );
    assert_eq!(
        gw.store.entries[&3].hash,
        l.hash_at(Seq(3)).unwrap(),
        "stored entry kept"
    );
    // halted: batches and hellos get the fork reject, nothing is accepted
    assert_eq!(
        gw.take(T0, &l.batch(Seq(7), Seq(6), None)),
        Verdict::Halted { seq: Seq(3) }
    );
    let hello = Hello {
        agent: agent_id(),
        public_key: agent_key().public().to_bytes(),
        head_seq: Seq(6),
        head_hash: Hash::ZERO,
        nonce: baton_shared::Nonce([1; 16]),
        software: String::new(),
    };
    assert_eq!(
        gw.intake.answer_hello(&hello, &gw_key()),
        Err(NackKind::Reject {
            reason: RejectReason::Fork,
            seq: Seq(3)
        })
    );
    // the halt is durable state: a restarted intake keeps it
    let restarted = Intake::new(
        IntakeConfig {
            gateway: gw_id(),
            gateway_key: gw_key().public(),
            resend_timeout: ms(1000),
        },
        enrollment(),
        gw.intake.durable_head(),
        gw.intake.halted(),
    );
    assert_eq!(restarted.halted(), Some(Seq(3)));
    gw.intake.resolve();
    assert!(gw.intake.answer_hello(&hello, &gw_key()).is_ok());
}

#[test]
fn a_conflicting_batch_that_links_to_nothing_held_is_bad_input_not_a_fork() {
    let l = ledger(5, 3);
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(6), None));
    let f = fork_of(&l, 2, 3);
    let mut b = f.batch(Seq(3), Seq(5), None);
    // cut the link to the stored entry 2: re-seal entry 3 on another prev
    b.entries.remove(0);
    let v = gw.take(T0, &b);
    expect_reject(&v, RejectReason::Invalid, 4);
    assert_eq!(gw.intake.halted(), None);
}

#[test]
fn start_seq_lets_a_new_gateway_meet_an_agent_that_pruned() {
    let l = ledger(8, 3);
    let mut i = intake_with(Enrollment {
        start_seq: Some(Seq(4)),
        ..enrollment()
    });
    let store = MemChain::default();
    assert_eq!(
        i.handle_batch(T0, &l.batch(Seq(7), Seq(9), None), &store),
        Verdict::Resend { from: Seq(1) }
    );
    assert_eq!(
        accepted_range(&i.handle_batch(T0, &l.batch(Seq(4), Seq(6), None), &store)),
        (Seq(4), 3)
    );
}

#[test]
fn revoked_keys_are_refused_from_their_seq() {
    let l = ledger(5, 3);
    let mut gw = Gw::new();
    gw.intake = intake_with(Enrollment {
        revoked_from_seq: Some(Seq(5)),
        ..enrollment()
    });
    gw.take(T0, &l.batch(Seq(1), Seq(3), None));
    expect_reject(
        &gw.take(T0, &l.batch(Seq(4), Seq(6), None)),
        RejectReason::UnknownAgent,
        5,
    );
}

#[test]
fn gateway_data_loss_refill_needs_the_gateways_own_receipt_rule_3b() {
    let mut l = ledger(8, 3);
    let mut gw = Gw::new();
    gw.take(T0, &l.batch(Seq(1), Seq(6), None));
    l.best = Some(gw.receipt()); // receipt at 6
    // the gateway loses 4..6; the agent pruned through 6
    gw.store.truncate_after(Seq(3));
    let head3 = Head {
        seq: Seq(3),
        hash: l.hash_at(Seq(3)).unwrap(),
        sig: None,
    };
    let cfg = IntakeConfig {
        gateway: gw_id(),
        gateway_key: gw_key().public(),
        resend_timeout: ms(1000),
    };
    gw.intake = Intake::new(cfg.clone(), enrollment(), head3, None);
    l.prune_through(Seq(6));
    assert_eq!(l.oldest(), Seq(7));

    // without a proof: just out of order
    assert_eq!(
        gw.take(T0, &l.batch(Seq(7), Seq(9), None)),
        Verdict::Resend { from: Seq(4) }
    );
    // a proof signed by another key is refused
    let forged = Receipt::sign(
        &SecretKey::from_seed(&[5; 32]),
        &gw_id(),
        &agent_id(),
        Seq(6),
        l.hash_at(Seq(6)).unwrap_or(Hash::ZERO),
    );
    expect_reject(
        &gw.take(T0, &l.batch(Seq(7), Seq(9), Some(forged))),
        RejectReason::Invalid,
        7,
    );
    // with its own receipt covering 6: accepted, the hole reported
    let v = gw.take(T0, &l.batch(Seq(7), Seq(9), l.best.clone()));
    match v {
        Verdict::Accepted { first, gap, .. } => {
            assert_eq!(first, Seq(7));
            assert_eq!(gap, Some((Seq(4), Seq(6))));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- uplink

fn uplink_cfg() -> UplinkConfig {
    let mut cfg = UplinkConfig::new(agent_id(), agent_key().public(), Some(gw_key().public()), 7);
    cfg.window = 2;
    cfg.resend_timeout = ms(1000);
    cfg.backoff_min = ms(100);
    cfg.backoff_max = ms(800);
    cfg
}

fn drain(u: &mut Uplink, now: Duration, l: &mut MemLedger) -> Vec<Output> {
    let mut out = Vec::new();
    while let Some(o) = u.poll(now, l) {
        match &o {
            Output::SignHead { .. } => l.sign_head(),
            Output::StoreBestReceipt(r) => l.best = Some(r.clone()),
            _ => {}
        }
        out.push(o);
    }
    out
}

fn hello_of(out: &[Output]) -> Hello {
    out.iter()
        .find_map(|o| match o {
            Output::Hello(h) => Some(h.clone()),
            _ => None,
        })
        .expect("a hello")
}

fn batches(out: &[Output]) -> Vec<(u64, u64)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Batch { from, to, .. } => Some((from.0, to.0)),
            _ => None,
        })
        .collect()
}

fn alerts(out: &[Output]) -> Vec<Alert> {
    out.iter()
        .filter_map(|o| match o {
            Output::Alert(a) => Some(a.clone()),
            _ => None,
        })
        .collect()
}

/// The gateway's receipt for the ledger's own entry at `seq`.
fn receipt_at(l: &MemLedger, seq: u64) -> Receipt {
    let hash = l.hash_at(Seq(seq)).unwrap();
    Receipt::sign(&gw_key(), &gw_id(), &agent_id(), Seq(seq), hash)
}

/// A fresh uplink, connected, with the hello it sent first.
fn connect(cfg: UplinkConfig, best: Option<Receipt>, l: &mut MemLedger) -> (Uplink, Hello) {
    let mut u = Uplink::new(cfg, best);
    u.connected(T0);
    let hello = hello_of(&drain(&mut u, T0, l));
    (u, hello)
}

fn answer(seq: u64, hash: Hash, hello: &Hello, agent_sig: Option<Sig>) -> Receipt {
    let mut r = Receipt::sign(&gw_key(), &gw_id(), &agent_id(), Seq(seq), hash);
    r.hello = Some(baton_shared::wire::HelloEcho {
        nonce: hello.nonce,
        agent_sig,
        gateway_key: gw_key().public().to_bytes(),
    });
    r
}

#[test]
fn hello_then_windowed_batches_then_receipts_advance() {
    let mut l = ledger(11, 3); // signed at 3, 6, 9, 12
    let mut cfg = uplink_cfg();
    cfg.limits.max_entries = 3; // one span per batch
    let mut u = Uplink::new(cfg, None);
    assert!(
        drain(&mut u, T0, &mut l).is_empty(),
        "nothing before connect"
    );
    u.connected(T0);
    let out = drain(&mut u, T0, &mut l);
    let hello = hello_of(&out);
    assert_eq!(hello.head_seq, Seq(12));
    assert!(
        batches(&out).is_empty(),
        "nothing streams before the answer"
    );
    u.handle_receipt(ms(1), &answer(0, Hash::ZERO, &hello, None), &l);
    // window 2: two batches in flight, then nothing until a receipt
    assert_eq!(batches(&drain(&mut u, ms(1), &mut l)), [(1, 3), (4, 6)]);
    assert_eq!(u.in_flight(), 2);
    let r6 = receipt_at(&l, 6);
    u.handle_receipt(ms(2), &r6, &l);
    assert_eq!(u.acked(), Seq(6));
    assert_eq!(u.in_flight(), 0);
    let out = drain(&mut u, ms(2), &mut l);
    assert!(out.contains(&Output::StoreBestReceipt(r6)));
    assert_eq!(batches(&out), [(7, 9), (10, 12)]);
}

#[test]
fn unsigned_tail_is_signed_before_it_is_sent() {
    let mut l = ledger(4, 1000); // nothing signed
    let (mut u, hello) = connect(uplink_cfg(), None, &mut l);
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    let mut saw_sign = false;
    while let Some(o) = u.poll(T0, &l) {
        match o {
            Output::SignHead { seq } => {
                assert_eq!(seq, Seq(5));
                saw_sign = true;
                l.sign_head();
            }
            Output::Batch { from, to, .. } => {
                assert!(saw_sign, "batch before the sign");
                assert_eq!((from, to), (Seq(1), Seq(5)));
            }
            _ => {}
        }
    }
    assert!(saw_sign);
}

#[test]
fn receipts_count_only_if_signed_by_the_pinned_key_and_matching_rule_2() {
    let mut l = ledger(5, 3);
    let (mut u, hello) = connect(uplink_cfg(), None, &mut l);
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    drain(&mut u, T0, &mut l);
    let h3 = l.hash_at(Seq(3)).unwrap();
    let impostor = Receipt::sign(
        &SecretKey::from_seed(&[3; 32]),
        &gw_id(),
        &agent_id(),
        Seq(3),
        h3,
    );
    u.handle_receipt(ms(1), &impostor, &l);
    assert_eq!(u.acked(), Seq(0));
    assert!(matches!(
        alerts(&drain(&mut u, ms(1), &mut l))[..],
        [Alert::BadReceiptSignature { .. }]
    ));
    let wrong_hash = Receipt::sign(&gw_key(), &gw_id(), &agent_id(), Seq(3), Hash([9; 32]));
    u.handle_receipt(ms(2), &wrong_hash, &l);
    assert_eq!(u.acked(), Seq(0));
    assert_eq!(
        alerts(&drain(&mut u, ms(2), &mut l)),
        [Alert::ReceiptMismatch { seq: Seq(3) }]
    );
    // a genuine one counts; an older one never lowers the view
    u.handle_receipt(ms(3), &receipt_at(&l, 6), &l);
    u.handle_receipt(
        ms(4),
        &Receipt::sign(&gw_key(), &gw_id(), &agent_id(), Seq(3), h3),
        &l,
    );
    assert_eq!(u.acked(), Seq(6));
    assert_eq!(u.best().unwrap().seq, Seq(6));
}

#[test]
fn no_receipt_for_resend_timeout_means_hello_again_rule_3() {
    let mut l = ledger(5, 3);
    let (mut u, hello) = connect(uplink_cfg(), None, &mut l);
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    assert!(!batches(&drain(&mut u, T0, &mut l)).is_empty());
    assert_eq!(u.poll_timeout(), Some(ms(1000)));
    assert!(drain(&mut u, ms(999), &mut l).is_empty());
    let again = hello_of(&drain(&mut u, ms(1000), &mut l));
    assert_ne!(again.nonce, hello.nonce, "a fresh nonce each time");
    // the answer to the old hello no longer counts as an answer
    u.handle_receipt(ms(1001), &answer(0, Hash::ZERO, &hello, None), &l);
    assert!(!u.is_streaming());
    u.handle_receipt(
        ms(1002),
        &answer(3, l.hash_at(Seq(3)).unwrap(), &again, None),
        &l,
    );
    assert!(u.is_streaming());
    assert_eq!(
        batches(&drain(&mut u, ms(1002), &mut l))[0].0,
        4,
        "resend from N+1 (3a)"
    );
}

#[test]
fn gateway_behind_the_best_receipt_is_alerted_and_refilled_rule_3b() {
    let mut l = ledger(8, 3);
    let best = receipt_at(&l, 6);
    l.best = Some(best.clone());
    let (mut u, hello) = connect(uplink_cfg(), Some(best.clone()), &mut l);
    u.handle_receipt(T0, &answer(3, l.hash_at(Seq(3)).unwrap(), &hello, None), &l);
    let out = drain(&mut u, T0, &mut l);
    assert_eq!(
        alerts(&out),
        [Alert::GatewayDataLoss {
            best: Seq(6),
            gateway_head: Seq(3)
        }]
    );
    assert_eq!(batches(&out)[0].0, 4);
    assert_eq!(u.best().unwrap().seq, Seq(6), "best kept as evidence");

    // same, but the agent already pruned 4..6: send from 7 with the proof
    l.prune_through(Seq(6));
    let (mut u, hello) = connect(uplink_cfg(), Some(best.clone()), &mut l);
    u.handle_receipt(T0, &answer(3, Hash([1; 32]), &hello, None), &l);
    let out = drain(&mut u, T0, &mut l);
    let proofs: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Batch { from, proof, .. } => Some((from.0, proof.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(proofs[0], (7, Some(best)));
}

#[test]
fn a_gateway_ahead_is_adopted_only_with_the_agents_own_signature_rule_3c() {
    // the device was restored from an image holding 1..3; the gateway holds 1..6
    let full = ledger(5, 3);
    let mut l = ledger(2, 3);
    let r3 = receipt_at(&l, 3);
    l.best = Some(r3.clone());
    let (n, h) = (Seq(6), full.hash_at(Seq(6)).unwrap());
    let sig6 = full.range(Seq(6), Seq(6))[0].sig.unwrap();

    // a head the agent never signed: refused, nothing sent, hello retried
    let (mut u, hello) = connect(uplink_cfg(), Some(r3.clone()), &mut l);
    let fabricated = Hash([0xab; 32]);
    u.handle_receipt(T0, &answer(6, fabricated, &hello, Some(sig6)), &l);
    let out = drain(&mut u, T0, &mut l);
    assert_eq!(
        alerts(&out),
        [Alert::UnsignedHead {
            seq: n,
            hash: fabricated
        }]
    );
    assert!(batches(&out).is_empty());
    assert!(u.is_halted());
    let retry = u.poll_timeout().unwrap();
    assert!(retry > T0 && retry <= ms(100));
    assert!(matches!(u.poll(retry, &l), Some(Output::Hello(_))));

    // the genuine head: adopted
    let (mut u, hello) = connect(uplink_cfg(), Some(r3), &mut l);
    u.handle_receipt(T0, &answer(6, h, &hello, Some(sig6)), &l);
    let out = drain(&mut u, T0, &mut l);
    let Some(Output::Adopt(adoption)) = out.iter().find(|o| matches!(o, Output::Adopt(_))) else {
        panic!("no adoption in {out:?}")
    };
    l.adopt(adoption, 1).unwrap();
    u.adopted(ms(1), adoption);
    let out = drain(&mut u, ms(1), &mut l);
    assert_eq!(batches(&out)[0].0, 7);
    assert_eq!(u.best().unwrap().seq, Seq(6));

    // and the gateway's chain stays linear: the batch extends its head
    let mut gw = Gw::new();
    gw.take(T0, &full.batch(Seq(1), Seq(6), None));
    let (from, to) = batches(&out)[0];
    assert_eq!(
        accepted_range(&gw.take(ms(2), &l.batch(Seq(from), Seq(to), None))).0,
        Seq(7)
    );
}

/// The gateway's signed reject answering `hello` (rule 3d).
fn signed_reject(hello: &Hello, reason: RejectReason, seq: u64) -> Nack {
    Nack::signed_reject(
        &gw_key(),
        &gw_id(),
        &agent_id(),
        hello.nonce,
        reason,
        Seq(seq),
    )
}

#[test]
fn a_signed_reject_of_the_current_hello_stops_transmission_and_hello_retries_with_backoff_rule_3d()
{
    let mut l = ledger(5, 3);
    let (mut u, mut hello) = connect(uplink_cfg(), None, &mut l);
    let mut delays = Vec::new();
    let mut now = T0;
    for _ in 0..6 {
        u.handle_nack(now, &signed_reject(&hello, RejectReason::UnknownAgent, 0));
        let out = drain(&mut u, now, &mut l);
        assert_eq!(
            alerts(&out),
            [Alert::Rejected {
                reason: RejectReason::UnknownAgent,
                seq: Seq(0)
            }]
        );
        assert!(batches(&out).is_empty());
        assert!(u.is_halted());
        let retry = u.poll_timeout().unwrap();
        delays.push(retry - now);
        assert!(u.poll(retry - ms(1).min(retry - now), &l).is_none() || retry == now);
        let Some(Output::Hello(next)) = u.poll(retry, &l) else {
            panic!("no hello at the retry time")
        };
        hello = next;
        now = retry;
    }
    // capped exponential: grows, never past the cap
    assert!(delays.iter().all(|d| *d <= ms(800)));
    assert!(delays[4] > delays[0]);
}

/// Streams a 9-entry ledger (signed every 3) with window 2, the first
/// batch receipted at `at`: batches 4..6 and 7..9 are in flight.
fn streaming(at: Duration) -> (Uplink, MemLedger, Hello) {
    let mut l = ledger(8, 3);
    let mut cfg = uplink_cfg();
    cfg.limits.max_entries = 3;
    let (mut u, hello) = connect(cfg, None, &mut l);
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    assert_eq!(batches(&drain(&mut u, T0, &mut l)), [(1, 3), (4, 6)]);
    u.handle_receipt(at, &receipt_at(&l, 3), &l);
    assert_eq!(batches(&drain(&mut u, at, &mut l)), [(7, 9)]);
    (u, l, hello)
}

#[test]
fn rejects_that_are_not_the_signed_answer_to_a_current_hello_never_stop_delivery() {
    let (_, _, first_hello) = streaming(ms(1));
    let mut forged = signed_reject(&first_hello, RejectReason::Fork, 5);
    forged.hello = None; // unsigned, as anyone on the broker can send it
    let mut foreign = forged.clone();
    foreign.hello = Some(baton_shared::wire::NackEcho {
        nonce: first_hello.nonce,
        sig: SecretKey::from_seed(&[66; 32]).sign_nack(
            &gw_id(),
            &agent_id(),
            &first_hello.nonce,
            "fork",
            Seq(5),
        ),
    });
    let stale = Nack::signed_reject(
        &gw_key(),
        &gw_id(),
        &agent_id(),
        baton_shared::crypto::Nonce([0xa5; 16]),
        RejectReason::Fork,
        Seq(5),
    );
    let not_stopping = signed_reject(&first_hello, RejectReason::BadSignature, 4);
    for (what, nack) in [
        ("unsigned", forged),
        ("signed by another key", foreign),
        ("signed over a stale nonce", stale),
        ("a reason that never stops", not_stopping),
    ] {
        let (mut u, mut l, _) = streaming(ms(1));
        u.handle_receipt(ms(1), &receipt_at(&l, 9), &l);
        let mut hellos = 0;
        // A flood: a reject every 10 ms for 3 resend timeouts.
        for t in (2..3000).step_by(10) {
            let now = ms(t);
            u.handle_nack(now, &nack);
            let out = drain(&mut u, now, &mut l);
            hellos += out.iter().filter(|o| matches!(o, Output::Hello(_))).count();
            assert!(!u.is_halted(), "{what}: halted");
            assert!(u.is_streaming(), "{what}: streaming interrupted");
            assert!(
                !alerts(&out)
                    .iter()
                    .any(|a| matches!(a, Alert::Rejected { .. })),
                "{what}: obeyed"
            );
        }
        // at most one prompted hello per resend_timeout (1 s)
        assert!((1..=3).contains(&hellos), "{what}: {hellos} hellos");
        // delivery goes on: the next append is sent at once
        l.append(9, "info", None, Value::Null).unwrap();
        l.sign_head();
        assert_eq!(
            batches(&drain(&mut u, ms(3000), &mut l)),
            [(10, 10)],
            "{what}"
        );
        assert!(u.stats().rejects_ignored >= 290, "{what}");
    }
}

#[test]
fn the_answer_to_a_prompted_hello_never_rewinds_what_is_sent() {
    // 3 receipted at 900 ms: the resend timer is due at 1900 ms, a prompted
    // hello may go at 1000 ms (one resend_timeout after the first hello).
    let (mut u, mut l, first_hello) = streaming(ms(900));
    let mut forged = signed_reject(&first_hello, RejectReason::Fork, 5);
    forged.hello = None;
    u.handle_nack(ms(1000), &forged);
    let out = drain(&mut u, ms(1000), &mut l);
    let probe = hello_of(&out);
    // The honest gateway answers the probe with its head at 3 (4..9 are
    // still on their way): nothing is resent, the view does not drop.
    u.handle_receipt(
        ms(1001),
        &answer(3, l.hash_at(Seq(3)).unwrap(), &probe, None),
        &l,
    );
    assert!(batches(&drain(&mut u, ms(1001), &mut l)).is_empty());
    assert!(u.is_streaming());
    assert_eq!(u.in_flight(), 2);
    // A signed stopping reject answering the probe (one of the last two
    // hellos) stops delivery: the probe is a real hello.
    u.handle_nack(ms(1002), &signed_reject(&probe, RejectReason::Halted, 5));
    assert!(u.is_halted());
}

#[test]
fn only_the_verified_answer_to_the_current_hello_counts_as_one() {
    let mut l = MemLedger::new(agent_id(), agent_key());
    let (mut u, hello) = connect(uplink_cfg(), None, &mut l);
    // forged: unsigned (a bad signature), and one for another hello
    let mut unsigned = answer(0, Hash::ZERO, &hello, None);
    unsigned.sig = Sig([0; 64]);
    assert!(!u.handle_receipt(T0, &unsigned, &l));
    let other = Hello {
        nonce: baton_shared::crypto::Nonce([1; 16]),
        ..hello.clone()
    };
    assert!(!u.handle_receipt(T0, &answer(0, Hash::ZERO, &other, None), &l));
    assert!(!u.is_streaming());
    assert!(u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l));
    assert!(u.is_streaming());
}

#[test]
fn resend_nacks_at_or_below_the_best_receipt_are_ignored() {
    let mut l = ledger(8, 3);
    let (mut u, hello) = connect(uplink_cfg(), None, &mut l);
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    drain(&mut u, T0, &mut l);
    u.handle_receipt(T0, &receipt_at(&l, 3), &l);
    drain(&mut u, T0, &mut l);
    let resend = |from| Nack::new(&gw_id(), &agent_id(), NackKind::Resend { from: Seq(from) });
    u.handle_nack(T0, &resend(2));
    assert!(batches(&drain(&mut u, T0, &mut l)).is_empty());
    u.handle_nack(T0, &resend(4));
    assert_eq!(batches(&drain(&mut u, T0, &mut l))[0].0, 4);
}

#[test]
fn pin_on_first_contact_then_refuse_other_keys() {
    let mut l = ledger(5, 3);
    let mut cfg = uplink_cfg();
    cfg.gateway_key = None;
    cfg.pin_on_first_contact = true;
    let mut u = Uplink::new(cfg, None);
    u.connected(T0);
    // a receipt that is no hello answer cannot pin anything
    u.handle_receipt(
        T0,
        &Receipt::sign(&gw_key(), &gw_id(), &agent_id(), Seq(0), Hash::ZERO),
        &l,
    );
    assert!(u.pinned_key().is_none());
    let hello = hello_of(&drain(&mut u, T0, &mut l));
    u.handle_receipt(T0, &answer(0, Hash::ZERO, &hello, None), &l);
    let out = drain(&mut u, T0, &mut l);
    assert!(out.contains(&Output::PinGatewayKey(gw_key().public())));
    let other = SecretKey::from_seed(&[77; 32]);
    let r = Receipt::sign(
        &other,
        &gw_id(),
        &agent_id(),
        Seq(3),
        l.hash_at(Seq(3)).unwrap(),
    );
    u.handle_receipt(T0, &r, &l);
    assert_eq!(u.acked(), Seq(0));
    assert_eq!(u.pinned_key(), Some(&gw_key().public()));
}

#[test]
fn end_to_end_in_memory_all_entries_receipted() {
    let mut l = ledger(50, 4);
    let mut gw = Gw::new();
    let mut u = Uplink::new(uplink_cfg(), None);
    u.connected(T0);
    let now = T0;
    for _ in 0..100 {
        let out = drain(&mut u, now, &mut l);
        for o in out {
            match o {
                Output::Hello(h) => {
                    let r = gw.intake.answer_hello(&h, &gw_key()).unwrap();
                    u.handle_receipt(now, &r, &l);
                }
                Output::Batch { from, to, proof } => {
                    let v = gw.take(now, &l.batch(from, to, proof));
                    assert_eq!(v.answer(), Answer::Receipt);
                    u.handle_receipt(now, &gw.receipt(), &l);
                }
                Output::Alert(a) => panic!("{a:?}"),
                _ => {}
            }
        }
        if u.acked() == l.head() {
            break;
        }
    }
    assert_eq!(u.acked(), Seq(51));
    let stored: Vec<&Entry> = gw.store.entries.values().collect();
    let held: Vec<Entry> = l.range(Seq(1), Seq(51));
    assert_eq!(stored.len(), 51);
    assert!(stored.iter().zip(&held).all(|(a, b)| a.hash == b.hash));
    let _: BTreeMap<u64, Entry> = gw.store.entries;
}
