//! The ingest core against a real redb store, without MQTT.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use baton_gateway::ingest::{Ingest, IngestConfig, Outbound};
use baton_gateway::metrics::{BadInput, Metrics};
use baton_gateway::operator::{Actor, Command, Done, run_command};
use baton_gateway::store::{AgentRecord, EnrolledBy, Store, Write};
use baton_shared::json::{Object, Value};
use baton_shared::memory::MemLedger;
use baton_shared::uplink::Ledger;
use baton_shared::verify::{Verdict, Verifier};
use baton_shared::wire::{EntryBatch, Hello, Message, Nack, NackKind, Receipt, RejectReason};
use baton_shared::{AgentId, ClusterId, Hash, Nonce, SecretKey, Seq};

const T: Duration = Duration::ZERO;
const NOW_MS: i64 = 1_795_460_700_000;

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ingest: Ingest,
    metrics: Arc<Metrics>,
    gw_key: SecretKey,
}

fn cfg() -> IngestConfig {
    IngestConfig {
        gateway: AgentId::new("gw-1").unwrap(),
        cluster: ClusterId::new("c07").unwrap(),
        resend_timeout: Duration::from_secs(10),
        software: "test".into(),
        thresholds: baton_shared::liveness::Thresholds::default(),
        first_use: baton_gateway::config::FirstUseLimits::default(),
    }
}

fn open(dir: tempfile::TempDir) -> Fixture {
    let path = dir.path().join("gateway.redb");
    let store = Arc::new(Store::open(&path).unwrap());
    let metrics = Arc::new(Metrics::default());
    let gw_key = SecretKey::from_seed(&[0x77; 32]);
    let ingest = Ingest::open(cfg(), gw_key.clone(), store, Arc::clone(&metrics), NOW_MS).unwrap();
    Fixture {
        _dir: dir,
        path,
        ingest,
        metrics,
        gw_key,
    }
}

fn fixture() -> Fixture {
    open(tempfile::tempdir().unwrap())
}

fn agent_ledger(name: &str, seed: u8, n: u64) -> MemLedger {
    let mut l = MemLedger::genesis(
        AgentId::new(name).unwrap(),
        SecretKey::from_seed(&[seed; 32]),
        NOW_MS,
        4,
    )
    .unwrap();
    for i in 0..n {
        l.append(NOW_MS + i as i64, "info", Some("test"), Value::from(i))
            .unwrap();
    }
    l.sign_head();
    l
}

fn enroll(f: &mut Fixture, l: &MemLedger) {
    enroll_as(f, l, EnrolledBy::Operator);
}

fn enroll_as(f: &mut Fixture, l: &MemLedger, by: EnrolledBy) {
    f.ingest.stage_enrollment(
        NOW_MS,
        l.agent(),
        AgentRecord {
            public_key: l.key().public().to_bytes(),
            start_seq: None,
            revoked_from_seq: None,
            enrolled_by: by,
            enrolled_ms: NOW_MS,
        },
    );
    f.ingest.commit().unwrap();
}

fn topic(agent: &str, kind: &str) -> String {
    format!("baton/v1/c07/{agent}/{kind}")
}

fn send_batch(f: &mut Fixture, l: &MemLedger, from: u64, to: u64) -> Vec<Outbound> {
    send_on(f, "c07", l, from, to)
}

fn hello(l: &MemLedger, nonce: u8) -> Hello {
    Hello {
        agent: l.agent().clone(),
        public_key: l.key().public().to_bytes(),
        head_seq: l.head(),
        head_hash: l.head_hash(),
        nonce: Nonce([nonce; 16]),
        software: "test".into(),
    }
}

fn receipt_of(out: &Outbound) -> Receipt {
    assert!(out.topic.ends_with("/ack"), "{}", out.topic);
    Receipt::decode(&out.payload).unwrap()
}

/// `out` is a reject for `reason`.
fn assert_reject(out: &Outbound, reason: RejectReason) {
    match nack_of(out) {
        NackKind::Reject { reason: r, .. } => assert_eq!(r, reason),
        other => panic!("expected reject({reason}), got {other:?}"),
    }
}

fn nack_of(out: &Outbound) -> NackKind {
    assert!(out.topic.ends_with("/nack"), "{}", out.topic);
    Nack::decode(&out.payload).unwrap().kind
}

#[test]
fn receipts_follow_the_durable_commit() {
    let mut f = fixture();
    let l = agent_ledger("pi-1", 1, 11); // signed at 4, 8, 12
    enroll(&mut f, &l);
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 5).encode());
    let r = receipt_of(&out[0]);
    assert_eq!((r.seq, r.hash), (Seq(0), Hash::ZERO));
    assert_eq!(r.hello.as_ref().unwrap().nonce, Nonce([5; 16]));
    assert!(r.verify(&f.gw_key.public()));

    assert!(
        send_batch(&mut f, &l, 1, 4).is_empty(),
        "no receipt before the commit"
    );
    assert!(send_batch(&mut f, &l, 5, 8).is_empty());
    let outcome = f.ingest.commit().unwrap();
    assert_eq!(
        outcome.receipts.len(),
        1,
        "one cumulative receipt for the group"
    );
    let r = receipt_of(&outcome.receipts[0]);
    assert_eq!((r.seq, r.hash), (Seq(8), l.hash_at(Seq(8)).unwrap()));
    assert_eq!(
        f.metrics
            .entries_accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        8
    );

    // a re-sent batch is a duplicate, answered at once with the receipt
    let out = send_batch(&mut f, &l, 5, 8);
    assert_eq!(receipt_of(&out[0]).seq, Seq(8));

    // the hello answer now carries the agent's own sig on entry 8
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 6).encode());
    let echo = receipt_of(&out[0]).hello.unwrap();
    assert_eq!(echo.agent_sig, l.range(Seq(8), Seq(8))[0].sig);
}

#[test]
fn bad_input_is_counted_answered_or_dropped_and_never_stops_others() {
    let mut f = fixture();
    let good = agent_ledger("pi-1", 1, 3);
    let other = agent_ledger("pi-2", 2, 3);
    enroll(&mut f, &good);
    let m = Arc::clone(&f.metrics);

    // garbage, another version, oversized: dropped and counted
    assert!(
        f.ingest
            .handle(T, NOW_MS, &topic("pi-1", "entries"), b"\x01garbage")
            .is_empty()
    );
    let mut v2 = good.batch(Seq(1), Seq(4), None).encode();
    v2[0] = 2;
    assert!(
        f.ingest
            .handle(T, NOW_MS, &topic("pi-1", "entries"), &v2)
            .is_empty()
    );
    let huge = vec![1u8; 300 * 1024];
    assert!(
        f.ingest
            .handle(T, NOW_MS, &topic("pi-1", "entries"), &huge)
            .is_empty()
    );
    // a batch of pi-1 published on pi-2's topic
    let b = good.batch(Seq(1), Seq(4), None).encode();
    assert!(
        f.ingest
            .handle(T, NOW_MS, &topic("pi-2", "entries"), &b)
            .is_empty()
    );
    // a topic of another cluster
    assert!(
        f.ingest
            .handle(T, NOW_MS, "baton/v1/other/pi-1/entries", &b)
            .is_empty()
    );
    assert_eq!(m.bad_input_count(BadInput::Undecodable), 1);
    assert_eq!(m.bad_input_count(BadInput::Version), 1);
    assert_eq!(m.bad_input_count(BadInput::TooLarge), 1);
    assert_eq!(m.bad_input_count(BadInput::AgentMismatch), 1);
    assert_eq!(m.bad_input_count(BadInput::Topic), 1);

    // an unknown agent: told, counted
    let out = send_batch(&mut f, &other, 1, 4);
    assert_eq!(
        nack_of(&out[0]),
        NackKind::Reject {
            reason: RejectReason::UnknownAgent,
            seq: Seq(0)
        }
    );
    assert_eq!(m.bad_input_count(BadInput::UnknownAgent), 1);

    // a forged signature: rejected whole
    let mut forged = good.batch(Seq(1), Seq(4), None);
    let last = forged.entries.last_mut().unwrap();
    last.sig = Some(
        other
            .key()
            .sign_checkpoint(good.agent(), Seq(4), &last.hash),
    );
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "entries"), &forged.encode());
    assert_eq!(
        nack_of(&out[0]),
        NackKind::Reject {
            reason: RejectReason::BadSignature,
            seq: Seq(4)
        }
    );
    assert_eq!(m.rejected_count(RejectReason::BadSignature), 1);

    // non-canonical content
    let mut bent = good.batch(Seq(1), Seq(4), None);
    bent.entries[0].content.insert(1, b' ');
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "entries"), &bent.encode());
    assert_reject(&out[0], RejectReason::NotCanonical);

    // and the genuine batch still goes through
    assert!(send_batch(&mut f, &good, 1, 4).is_empty());
    let outcome = f.ingest.commit().unwrap();
    assert_eq!(receipt_of(&outcome.receipts[0]).seq, Seq(4));
    assert_eq!(
        f.ingest
            .store()
            .range(good.agent(), Seq(1), 100)
            .unwrap()
            .len(),
        4
    );
}

/// Two histories of one agent sharing 1..4: the genuine one up to 8, and a
/// fork with another entry 5.
fn diverging() -> (MemLedger, EntryBatch) {
    let base = agent_ledger("pi-1", 1, 3); // 1..4, signed at 4
    let mut genuine = base.clone();
    for i in 0..4 {
        genuine
            .append(NOW_MS + 10 + i, "info", None, Value::from(i as u64))
            .unwrap();
    }
    genuine.sign_head();
    let mut fork = base;
    fork.append(NOW_MS, "fact", None, Value::from("the other history"))
        .unwrap();
    fork.sign_head();
    (genuine, fork.batch(Seq(5), Seq(5), None))
}

#[test]
fn a_fork_halts_the_agent_durably_with_evidence_and_an_alert() {
    let mut f = fixture();
    let (l, fork) = diverging();
    enroll(&mut f, &l);
    send_batch(&mut f, &l, 1, 8);
    f.ingest.commit().unwrap();
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "entries"), &fork.encode());
    assert_eq!(
        nack_of(&out[0]),
        NackKind::Reject {
            reason: RejectReason::Fork,
            seq: Seq(5)
        }
    );
    f.ingest.commit().unwrap();
    let store = Arc::clone(f.ingest.store());
    assert_eq!(store.halted(l.agent()).unwrap(), Some(Seq(5)));
    assert_eq!(store.evidence_count(l.agent()).unwrap(), 1);
    assert_eq!(
        store.entry(l.agent(), Seq(5)).unwrap().unwrap().hash,
        l.hash_at(Seq(5)).unwrap()
    );

    // the gateway's own chain names it, and verifies
    let gw = AgentId::new("gw-1").unwrap();
    let own = store.range(&gw, Seq(1), 100).unwrap();
    let events: Vec<String> = own
        .iter()
        .map(|(_, e)| e.header().unwrap().event.to_string())
        .collect();
    assert_eq!(events, ["genesis", "enroll", "alert"]);
    let mut v = Verifier::new(Some(f.gw_key.public()));
    for (_, e) in &own {
        v.push_line(e.to_jsonl().as_bytes()).unwrap();
    }
    assert!(matches!(v.finish(), Verdict::Valid(_)));

    // the halt survives a restart: hellos get the fork reject
    drop(store);
    let mut again = reopen(f);
    let out = again
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 1).encode());
    assert_eq!(
        signed_reject_of(&again, &out[0], 1),
        NackKind::Reject {
            reason: RejectReason::Fork,
            seq: Seq(5)
        }
    );
    // and only the operator lifts it, on the running gateway, durably
    let resolve = Command::Resolve {
        agent: l.agent().clone(),
    };
    let done = run_command(&mut again.ingest, T, resolve, &Actor::cli()).unwrap();
    assert_eq!(
        done,
        Done::Resolved {
            agent: l.agent().clone(),
            halted_at: Some(Seq(5))
        }
    );
    again.ingest.commit().unwrap();
    let out = again
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 2).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(8));
    let mut lifted = reopen(again);
    let out = lifted
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 3).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(8));
}

/// Stops the gateway (dropping its store) and opens the same directory.
fn reopen(f: Fixture) -> Fixture {
    let Fixture { _dir, ingest, .. } = f;
    drop(ingest);
    open(_dir)
}

#[test]
fn trust_on_first_use_only_inside_the_window() {
    let mut f = fixture();
    let l = agent_ledger("pi-9", 9, 3);
    // no window: refused
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-9", "hello"), &hello(&l, 1).encode());
    assert_reject(&out[0], RejectReason::UnknownAgent);
    // window open: the first key seen is enrolled
    f.ingest.set_window(Some(NOW_MS + 600_000)).unwrap();
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-9", "hello"), &hello(&l, 2).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(0));
    f.ingest.commit().unwrap();
    let record = f.ingest.store().agent(l.agent()).unwrap().unwrap();
    assert_eq!(record.enrolled_by, EnrolledBy::TrustOnFirstUse);
    // and the chain says how the trust came about
    let own = own_chain_text(&f);
    let enroll = own
        .lines()
        .find(|l| l.contains("\"agent\":\"pi-9\""))
        .unwrap();
    assert!(enroll.contains("\"by\":\"first-use\""), "{enroll}");
    assert_eq!(record.public_key, l.key().public().to_bytes());
    // another key for the same id, even inside the window, gets nowhere
    let impostor = agent_ledger("pi-9", 10, 3);
    let out = send_batch(&mut f, &impostor, 1, 4);
    assert_reject(&out[0], RejectReason::BadSignature);
    // after the window: a new id is refused again
    let late = agent_ledger("pi-10", 11, 1);
    let out = f.ingest.handle(
        T,
        NOW_MS + 600_001,
        &topic("pi-10", "hello"),
        &hello(&late, 3).encode(),
    );
    assert_reject(&out[0], RejectReason::UnknownAgent);
}

/// The nack in `out`, checked to be the gateway's signed reject answering
/// the hello with `nonce` (PROTOCOL §7 rule 3d).
fn signed_reject_of(f: &Fixture, out: &Outbound, nonce: u8) -> NackKind {
    assert!(out.topic.ends_with("/nack"), "{}", out.topic);
    let nack = Nack::decode(&out.payload).unwrap();
    let key = f.gw_key.public();
    assert!(
        nack.stops_delivery(Some(&key), &[Nonce([nonce; 16])]),
        "{nack:?} is not a signed stopping answer to hello {nonce}"
    );
    assert!(!nack.stops_delivery(Some(&key), &[Nonce([nonce ^ 1; 16])]));
    nack.kind
}

#[test]
fn refused_hellos_get_signed_rejects_and_a_foreign_key_is_an_unknown_agent() {
    let mut f = fixture();
    let l = agent_ledger("pi-1", 1, 3);
    let unknown = NackKind::Reject {
        reason: RejectReason::UnknownAgent,
        seq: Seq::ZERO,
    };
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 1).encode());
    assert_eq!(signed_reject_of(&f, &out[0], 1), unknown);
    enroll(&mut f, &l);
    // the same id with another key: refused before anything else
    let impostor = agent_ledger("pi-1", 2, 3);
    let out = f.ingest.handle(
        T,
        NOW_MS,
        &topic("pi-1", "hello"),
        &hello(&impostor, 4).encode(),
    );
    assert_eq!(signed_reject_of(&f, &out[0], 4), unknown);
    // the enrolled key is answered with a receipt
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 5).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(0));
    // a reject answering a batch is never signed: it cannot stop anyone
    let out = send_batch(&mut f, &impostor, 1, 4);
    let nack = Nack::decode(&out[0].payload).unwrap();
    assert!(nack.hello.is_none(), "{nack:?}");
}

#[test]
fn a_restarted_gateway_sends_identical_receipts() {
    let mut f = fixture();
    let l = agent_ledger("pi-1", 1, 7);
    enroll(&mut f, &l);
    send_batch(&mut f, &l, 1, 8);
    let before = receipt_of(&f.ingest.commit().unwrap().receipts[0]);
    let mut again = reopen(f);
    let startup = again.ingest.startup_receipts().unwrap();
    assert_eq!(startup.len(), 1);
    assert_eq!(receipt_of(&startup[0]), before);
    // a re-sent batch after the restart gets the same receipt
    let out = send_batch(&mut again, &l, 5, 8);
    assert_eq!(receipt_of(&out[0]), before);
}

#[test]
fn a_write_group_lands_whole_or_not_at_all() {
    // Enrollment plus entries in one commit: after a reopen either both are
    // there or neither (here: both, since the commit returned Ok).
    let f = fixture();
    let l = agent_ledger("pi-5", 5, 3);
    let store = Arc::clone(f.ingest.store());
    store
        .commit(&[
            Write::Enroll {
                agent: l.agent().clone(),
                record: AgentRecord {
                    public_key: l.key().public().to_bytes(),
                    start_seq: None,
                    revoked_from_seq: None,
                    enrolled_by: EnrolledBy::Operator,
                    enrolled_ms: 0,
                },
            },
            Write::Entries {
                agent: l.agent().clone(),
                first: Seq(1),
                entries: l.range(Seq(1), Seq(4)),
            },
        ])
        .unwrap();
    drop(f.ingest);
    drop(store);
    let reopened = Store::open(&f.path).unwrap();
    assert!(reopened.agent(l.agent()).unwrap().is_some());
    assert_eq!(reopened.head(l.agent()).unwrap().seq, Seq(4));
}

/// A gateway whose disk fails on demand: set the flag and every write and
/// sync fails until it is cleared.
fn flaky_fixture() -> (Fixture, Arc<std::sync::atomic::AtomicBool>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.redb");
    let (opener, failing) = baton_runtime::db::faults::flaky_opener();
    let store = Arc::new(Store::open_with(&path, opener).unwrap());
    let metrics = Arc::new(Metrics::default());
    let gw_key = SecretKey::from_seed(&[0x77; 32]);
    let ingest = Ingest::open(cfg(), gw_key.clone(), store, Arc::clone(&metrics), NOW_MS).unwrap();
    let f = Fixture {
        _dir: dir,
        path,
        ingest,
        metrics,
        gw_key,
    };
    (f, failing)
}

#[test]
fn an_io_error_fails_the_commit_without_receipts_and_the_store_is_reopened() {
    let (mut f, failing) = flaky_fixture();
    let store = Arc::clone(f.ingest.store());
    let l = agent_ledger("pi-1", 1, 11);
    enroll(&mut f, &l);
    assert!(send_batch(&mut f, &l, 1, 4).is_empty());
    f.ingest.commit().unwrap();

    // the disk fails: the commit fails, nothing is receipted
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(send_batch(&mut f, &l, 5, 8).is_empty());
    assert!(f.ingest.commit().is_err());
    assert_eq!(
        f.metrics
            .commit_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // a hello now still names the durable head, 4
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-1", "hello"), &hello(&l, 9).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(4));

    // the disk is back: the reopened store takes the resent batch
    assert!(send_batch(&mut f, &l, 5, 8).is_empty());
    let outcome = f.ingest.commit().unwrap();
    assert_eq!(receipt_of(&outcome.receipts[0]).seq, Seq(8));
    assert!(send_batch(&mut f, &l, 9, 12).is_empty());
    assert_eq!(
        receipt_of(&f.ingest.commit().unwrap().receipts[0]).seq,
        Seq(12)
    );
    let stored = store.range(l.agent(), Seq(1), 100).unwrap();
    assert_eq!(stored.len(), 12);
    assert!(stored.iter().zip(l.held()).all(|((_, a), b)| a == b));
}

/// A child gateway's own chain: genesis, an `enroll` of each (agent, key),
/// and a `cluster_summary`; every entry signed.
fn child_chain(name: &str, seed: u8, vouches: &[(&str, baton_shared::PublicKey)]) -> MemLedger {
    let mut l = MemLedger::genesis(
        AgentId::new(name).unwrap(),
        SecretKey::from_seed(&[seed; 32]),
        NOW_MS,
        1,
    )
    .unwrap();
    for (agent, key) in vouches {
        let mut d = Object::new();
        d.insert("agent", Value::from(*agent));
        d.insert("public_key", Value::from(key.to_hex()));
        d.insert("cluster", Value::from("c1"));
        l.append(NOW_MS, "enroll", None, Value::Object(d)).unwrap();
    }
    let summary = baton_shared::summary::Summary::of([baton_shared::summary::Member {
        id: "pi-1",
        state: baton_shared::liveness::AgentState::Active,
        impedance_ms: Some(12.0),
    }]);
    l.append(
        NOW_MS,
        "cluster_summary",
        None,
        summary.to_value("c1", NOW_MS),
    )
    .unwrap();
    l
}

fn enroll_child(f: &mut Fixture, l: &MemLedger, cluster: &str) {
    let cluster = ClusterId::new(cluster).unwrap();
    enroll_as(f, l, EnrolledBy::ChildGateway { cluster });
}

fn send_on(f: &mut Fixture, cluster: &str, l: &MemLedger, from: u64, to: u64) -> Vec<Outbound> {
    let b = l.batch(Seq(from), Seq(to), None);
    let t = format!("baton/v1/{cluster}/{}/entries", l.agent());
    f.ingest.handle(T, NOW_MS, &t, &b.encode())
}

fn own_chain_text(f: &Fixture) -> String {
    let gw = AgentId::new("gw-1").unwrap();
    f.ingest
        .store()
        .range(&gw, Seq(1), 10_000)
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.to_jsonl() + "\n")
        .collect()
}

#[test]
fn a_child_gateway_vouches_for_its_agents_through_its_own_chain() {
    let mut f = fixture();
    let child = child_chain(
        "c1-gw",
        0x31,
        &[("pi-1", agent_ledger("pi-1", 1, 0).key().public())],
    );
    enroll_child(&mut f, &child, "c1");
    let filters = f.ingest.take_new_subscriptions();
    assert!(
        filters.contains(&"baton/v1/c1/+/entries".to_owned()),
        "{filters:?}"
    );
    assert!(
        f.ingest
            .subscriptions()
            .contains(&"baton/v1/c1/+/hello".to_owned())
    );
    let pi = agent_ledger("pi-1", 1, 10);

    // Before the child vouches, pi-1 is unknown on c1's topics.
    let out = send_on(&mut f, "c1", &pi, 1, pi.head().0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].topic, "baton/v1/c1/pi-1/nack");
    assert_reject(&out[0], RejectReason::UnknownAgent);

    // The child's chain arrives: pi-1 is trusted, on c1's topics only.
    assert!(send_on(&mut f, "c1", &child, 1, child.head().0).is_empty());
    let receipts = f.ingest.commit().unwrap().receipts;
    assert_eq!(receipts.len(), 1);
    assert_eq!(receipts[0].topic, "baton/v1/c1/c1-gw/ack");
    assert_eq!(receipt_of(&receipts[0]).seq, child.head());
    let record = f
        .ingest
        .store()
        .agent(&AgentId::new("pi-1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        record.enrolled_by,
        EnrolledBy::Vouched {
            via: AgentId::new("c1-gw").unwrap(),
            cluster: ClusterId::new("c1").unwrap(),
            at_seq: Seq(2),
        }
    );
    let own = own_chain_text(&f);
    assert!(
        own.lines().any(|l| l.contains("\"event\":\"enroll\"")
            && l.contains("\"agent\":\"pi-1\"")
            && l.contains("\"cluster\":\"c1\"")),
        "{own}"
    );
    // on this gateway's own cluster it is not pi-1's chain
    let out = send_batch(&mut f, &pi, 1, pi.head().0);
    assert_eq!(out[0].topic, "baton/v1/c07/pi-1/nack");
    // child clusters carry chains only
    f.ingest.handle(T, NOW_MS, "baton/v1/c1/pi-1/hb", b"\x01");
    assert_eq!(f.metrics.bad_input_count(BadInput::Topic), 1);
    // a cluster that is no child's is refused like any foreign topic
    f.ingest
        .handle(T, NOW_MS, "baton/v1/c9/pi-1/entries", b"\x01");
    assert_eq!(f.metrics.bad_input_count(BadInput::Topic), 2);

    assert!(send_on(&mut f, "c1", &pi, 1, pi.head().0).is_empty());
    let receipts = f.ingest.commit().unwrap().receipts;
    assert_eq!(receipts[0].topic, "baton/v1/c1/pi-1/ack");
    assert_eq!(receipt_of(&receipts[0]).seq, pi.head());

    // The child's summary feeds the sector view.
    {
        let reg = f.ingest.registry_handle();
        let reg = reg.lock().unwrap();
        assert_eq!(reg.children().len(), 1);
        let s = reg.summary();
        assert_eq!((s.clusters, s.agents, s.active), (Some(1), 1, 1));
        assert_eq!(s.slowest.map(|(c, _)| c), Some("c1".to_owned()));
    }

    // After a restart the routes and subscriptions come back from the store.
    let mut f = reopen(f);
    assert!(
        f.ingest
            .subscriptions()
            .contains(&"baton/v1/c1/+/entries".to_owned())
    );
    let mut pi = pi;
    pi.append(NOW_MS, "info", None, Value::from(99)).unwrap();
    pi.sign_head();
    assert!(send_on(&mut f, "c1", &pi, 12, 12).is_empty());
    let receipts = f.ingest.commit().unwrap().receipts;
    assert_eq!(receipt_of(&receipts[0]).seq, Seq(12));

    // A second child vouching for pi-1 with another key is refused, named.
    let impostor = SecretKey::from_seed(&[0x66; 32]).public();
    let child2 = child_chain("c2-gw", 0x32, &[("pi-1", impostor)]);
    enroll_child(&mut f, &child2, "c2");
    assert!(send_on(&mut f, "c2", &child2, 1, child2.head().0).is_empty());
    f.ingest.commit().unwrap();
    let record = f
        .ingest
        .store()
        .agent(&AgentId::new("pi-1").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        record.public_key,
        pi.key().public().to_bytes(),
        "the first key stays"
    );
    let own = own_chain_text(&f);
    assert!(
        own.lines()
            .any(|l| l.contains("\"kind\":\"conflicting_vouch\"")
                && l.contains("\"child\":\"c2-gw\"")),
        "{own}"
    );
    // pi-1's genesis under the impostor's key (seed 0x66)
    let forged = agent_ledger("pi-1", 0x66, 0);
    let out = send_on(&mut f, "c2", &forged, 1, 1);
    assert_eq!(out[0].topic, "baton/v1/c2/pi-1/nack");
    assert_reject(&out[0], RejectReason::UnknownAgent);
}

#[test]
fn a_forwarded_batch_that_fails_verification_raises_an_alert_naming_the_child() {
    let mut f = fixture();
    let pi = agent_ledger("pi-1", 1, 10);
    let child = child_chain("c1-gw", 0x31, &[("pi-1", pi.key().public())]);
    enroll_child(&mut f, &child, "c1");
    send_on(&mut f, "c1", &child, 1, child.head().0);
    f.ingest.commit().unwrap();
    // entry 3's data altered, the chain re-hashed, the agent's sigs kept
    let mut b = pi.batch(Seq(1), pi.head(), None);
    let mut prev = Hash::ZERO;
    for (i, e) in b.entries.iter_mut().enumerate() {
        if i == 2 {
            e.content = String::from_utf8(e.content.clone())
                .unwrap()
                .replace("\"data\":1", "\"data\":7")
                .into_bytes();
        }
        let sig = e.sig;
        *e = baton_shared::Entry::seal(e.content.clone(), prev);
        e.sig = sig;
        prev = e.hash;
    }
    let out = f
        .ingest
        .handle(T, NOW_MS, "baton/v1/c1/pi-1/entries", &b.encode());
    assert_reject(&out[0], RejectReason::BadSignature);
    f.ingest.commit().unwrap();
    assert_eq!(
        f.metrics
            .forwarded_rejected
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let own = own_chain_text(&f);
    assert!(
        own.lines()
            .any(|l| l.contains("\"kind\":\"forwarded_chain_refused\"")
                && l.contains("\"child\":\"c1-gw\"")
                && l.contains("bad_signature")),
        "{own}"
    );
    // a retry within the minute is refused again but alerts once
    f.ingest
        .handle(T, NOW_MS, "baton/v1/c1/pi-1/entries", &b.encode());
    f.ingest.commit().unwrap();
    assert_eq!(
        own_chain_text(&f)
            .matches("forwarded_chain_refused")
            .count(),
        1
    );
    assert_eq!(
        f.ingest
            .store()
            .head(&AgentId::new("pi-1").unwrap())
            .unwrap()
            .seq,
        Seq::ZERO,
        "nothing of it is stored"
    );
}

/// Regression: trust on first use committed the whole staged group from
/// inside `hello` — a second commit point that skipped `commit()`'s
/// receipts (other agents' receipts waited for an unrelated later write)
/// and its failure path (a failed mid-group commit dropped staged entries
/// while their intakes kept them as pending, so a later commit receipted
/// entries that were never stored: PROTOCOL §7 rule 1).
#[test]
fn enroll_on_first_use_is_no_second_commit_point() {
    // No commit outside `commit()`, and the group's receipts come from it.
    let mut f = fixture();
    let a = agent_ledger("pi-1", 1, 7);
    enroll(&mut f, &a);
    assert!(send_batch(&mut f, &a, 1, 4).is_empty());
    f.ingest.set_window(Some(NOW_MS + 600_000)).unwrap();
    let b = agent_ledger("pi-2", 2, 3);
    let out = f
        .ingest
        .handle(T, NOW_MS, &topic("pi-2", "hello"), &hello(&b, 1).encode());
    assert_eq!(receipt_of(&out[0]).seq, Seq(0), "the newcomer is answered");
    assert_eq!(
        f.ingest.store().head(a.agent()).unwrap().seq,
        Seq(0),
        "a hello committed another agent's staged entries"
    );
    assert!(f.ingest.store().agent(b.agent()).unwrap().is_none());
    let outcome = f.ingest.commit().unwrap();
    let acked: Vec<Receipt> = outcome.receipts.iter().map(receipt_of).collect();
    assert!(
        acked
            .iter()
            .any(|r| r.agent == *a.agent() && r.seq == Seq(4)),
        "the staged batch's receipt comes with the group's commit: {acked:?}"
    );
    assert!(f.ingest.store().agent(b.agent()).unwrap().is_some());

    // With the disk failing, nothing is receipted that is not stored.
    let (mut f, failing) = flaky_fixture();
    let store = Arc::clone(f.ingest.store());
    enroll(&mut f, &a);
    f.ingest.set_window(Some(NOW_MS + 600_000)).unwrap();
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(send_batch(&mut f, &a, 1, 4).is_empty());
    f.ingest
        .handle(T, NOW_MS, &topic("pi-2", "hello"), &hello(&b, 2).encode());
    assert!(f.ingest.commit().is_err());
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut receipts = send_batch(&mut f, &a, 5, 8);
    receipts.extend(f.ingest.commit().unwrap().receipts);
    let durable = store.head(a.agent()).unwrap().seq;
    for out in receipts.iter().filter(|o| o.topic.ends_with("/ack")) {
        let r = receipt_of(out);
        assert!(
            r.agent != *a.agent() || r.seq <= durable,
            "receipt at seq {} while the store holds up to {durable}",
            r.seq
        );
    }
    // the newcomer whose enrollment was lost with the failed commit is
    // not trusted until it is enrolled again
    assert!(store.agent(b.agent()).unwrap().is_none());
    let out = send_batch(&mut f, &b, 1, 3);
    assert!(
        !out.iter().any(|o| o.topic.ends_with("/ack")),
        "an agent whose enrollment never reached the disk got a receipt"
    );
}

#[test]
fn a_state_from_the_future_is_dropped_and_the_real_will_still_counts() {
    use baton_shared::wire::{PresenceState, StateMsg};
    let mut f = fixture();
    let l = agent_ledger("pi-1", 1, 1);
    enroll(&mut f, &l);
    let state = |state, connect_ms| {
        StateMsg {
            agent: l.agent().clone(),
            state,
            connect_ms,
        }
        .encode()
    };
    let t = topic("pi-1", "state");
    f.ingest
        .handle(T, NOW_MS, &t, &state(PresenceState::Online, NOW_MS));
    // it is alive and beating
    let hb = baton_shared::wire::Heartbeat {
        agent: l.agent().clone(),
        sent_ms: NOW_MS,
        interval_ms: 1000,
        state: "ok".into(),
        head_seq: Seq(2),
        receipted_seq: Seq(0),
        backlog: 0,
        impedance: Default::default(),
        system: Default::default(),
        clock: None,
        capabilities: Vec::new(),
    };
    f.ingest
        .handle(T, NOW_MS, &topic("pi-1", "hb"), &hb.encode());
    // forged: a session "starting" at the end of time would make the
    // agent's real last will look old and be ignored
    f.ingest
        .handle(T, NOW_MS, &t, &state(PresenceState::Online, i64::MAX));
    f.ingest
        .handle(T, NOW_MS, &t, &state(PresenceState::Offline, NOW_MS));
    f.ingest.stage_liveness(T, NOW_MS);
    let registry = f.ingest.registry_handle();
    let st = registry.lock().unwrap().state_of(l.agent());
    assert_eq!(st, Some(baton_shared::liveness::AgentState::Offline));
    assert_eq!(f.metrics.bad_input_count(BadInput::Implausible), 1);
}

/// A re-run keeps the original's `sample` (PROTOCOL §9: at most this many
/// per cluster, applied by cluster gateways). A child gateway skipped as
/// a whole stands in the re-run for every agent behind it; without the
/// sample its cluster would command all of them, more than the original
/// would have. Agents named from a cluster's outcomes were within its
/// sample already, so keeping it drops none of them.
#[test]
fn a_rerun_keeps_the_originals_sample() {
    use baton_gateway::ingest::{Order, Rerun};
    let mut f = fixture();
    let ledgers: Vec<MemLedger> = (1..=3u8)
        .map(|n| agent_ledger(&format!("pi-{n}"), n, 0))
        .collect();
    let vouches: Vec<(&str, baton_shared::PublicKey)> = ledgers
        .iter()
        .map(|l| (l.agent().as_str(), l.key().public()))
        .collect();
    let child = child_chain("c1-gw", 0x31, &vouches);
    enroll_child(&mut f, &child, "c1");
    assert!(send_on(&mut f, "c1", &child, 1, child.head().0).is_empty());
    f.ingest.commit().unwrap();
    let select = |text: &str| {
        Some(baton_shared::json::parse(text.as_bytes(), baton_shared::json::Mode::Verify).unwrap())
    };
    // T now: no lead to c1's gateway can be met, it is skipped as a whole
    let order = Order {
        id: None,
        verb: baton_shared::command::Verb::Record,
        payload: Value::Null,
        target_ms: NOW_MS,
        window_ms: 0,
        expires_ms: NOW_MS + 1_000,
        priority: 1,
        weight: 0.0,
        select: select(r#"{"sample":1}"#),
        quorum: None,
        read_ms: NOW_MS,
    };
    let issued = f.ingest.issue(NOW_MS, order, "operator/test").unwrap();
    assert_eq!(issued.sent, 0, "{issued:?}");
    // its final phase is recorded: the command can be re-run
    f.ingest.stage_coordination(NOW_MS + 60_000);
    f.ingest.commit().unwrap();
    let rerun = Rerun {
        key: issued.hash.to_hex(),
        target_ms: NOW_MS + 70_000,
        window_ms: None,
        ttl_ms: None,
        read_ms: NOW_MS + 60_000,
    };
    let (again, of) = f
        .ingest
        .rerun(NOW_MS + 60_000, rerun, "operator/test")
        .unwrap();
    assert_eq!(of, issued.hash);
    let view = f
        .ingest
        .coordination()
        .lock()
        .unwrap()
        .show(&again.hash.to_hex())
        .unwrap();
    let sel = view
        .as_object()
        .and_then(|v| v.get("content")?.as_object()?.get("select")?.as_object())
        .cloned()
        .unwrap();
    let named: Vec<&str> = sel
        .get("agents")
        .and_then(|v| match v {
            Value::Array(a) => Some(a),
            _ => None,
        })
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(named, ["pi-1", "pi-2", "pi-3"], "{sel:?}");
    assert_eq!(
        sel.get("sample").and_then(Value::as_exact_u64),
        Some(1),
        "the re-run lost the sample: {sel:?}"
    );
    // and it reaches c1's gateway, which samples them again
    f.ingest.commit().unwrap();
    let to: Vec<String> = f
        .ingest
        .take_deliveries()
        .into_iter()
        .map(|d| d.topic)
        .collect();
    assert!(
        to.iter().any(|t| t.contains("/c1-gw/")),
        "no delivery to c1-gw: {to:?}"
    );
}
