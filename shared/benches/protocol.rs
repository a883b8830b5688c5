//! The protocol core's figures (BENCHMARKS.md): canonicalize + hash per
//! entry, verification of a 64-entry batch, the batch's wire codec, and
//! what authority costs: the topic ACL per packet, a broker login, a
//! signed reject.
//!
//! `cargo bench -p baton-shared`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use baton_shared::canonical;
use baton_shared::crypto::{Hash, SecretKey, chain_hash};
use baton_shared::entry::{self, AppendRequest, Entry, Seq, Stamp};
use baton_shared::id::AgentId;
use baton_shared::intake::{Enrollment, Head, Intake, IntakeConfig, Verdict};
use baton_shared::json::{Mode, Object, Value};
use baton_shared::memory::{MemChain, MemLedger};
use baton_shared::wire::{EntryBatch, Message};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// An append request whose `data` is about 256 bytes of typical telemetry.
fn request(i: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"task_result","context":"session-{}","data":{{"task_id":"wo-251116-{i:06}","status":"success","duration_sec":{}.25,"temp_c":61.5,"throttled":"0x0","files_touched":["/var/lib/app/out/{i}.json","/var/lib/app/log/{i}.txt"],"summary":"completed step {i} of the nightly batch without retries","ok":true}}}}"#,
        i % 7,
        i % 1000
    )
    .into_bytes()
}

fn agent() -> AgentId {
    AgentId::new("pi-s03-c07-a12").unwrap()
}

fn bench_canonical_hash(c: &mut Criterion) {
    let requests: Vec<Vec<u8>> = (0..64).map(request).collect();
    let sizes: Vec<usize> = requests.iter().map(Vec::len).collect();
    let agent = agent();
    let mut g = c.benchmark_group("canonicalize_hash");
    g.throughput(Throughput::Elements(requests.len() as u64));
    // The append path: parse the request, build the canonical content,
    // link and hash it.
    g.bench_function("append_path_64_entries", |b| {
        b.iter(|| {
            let mut prev = Hash::ZERO;
            for (i, r) in requests.iter().enumerate() {
                let req = AppendRequest::parse(r).unwrap();
                let stamp = Stamp {
                    agent: &agent,
                    seq: Seq(i as u64 + 2),
                    unix_ms: 1_795_460_700_123,
                    clock: None,
                };
                let content =
                    entry::build_content(&stamp, &req.event, req.context.as_deref(), &req.data)
                        .unwrap();
                prev = Entry::seal(content, prev).hash;
            }
            black_box(prev)
        })
    });
    // The receiver's path: check bytes are canonical, then hash.
    let contents: Vec<Vec<u8>> = requests
        .iter()
        .map(|r| {
            let req = AppendRequest::parse(r).unwrap();
            let stamp = Stamp {
                agent: &agent,
                seq: Seq(2),
                unix_ms: 0,
                clock: None,
            };
            entry::build_content(&stamp, &req.event, req.context.as_deref(), &req.data).unwrap()
        })
        .collect();
    g.bench_function("check_canonical_and_hash_64_entries", |b| {
        b.iter(|| {
            let mut prev = Hash::ZERO;
            for c in &contents {
                entry::check_canonical_content(c).unwrap();
                prev = chain_hash(c, &prev);
            }
            black_box(prev)
        })
    });
    g.bench_function("canonicalize_only_64_entries", |b| {
        b.iter(|| {
            for c in &contents {
                black_box(canonical::canonicalize(c, Mode::Verify).unwrap());
            }
        })
    });
    g.finish();
    eprintln!(
        "request sizes: {}..{} bytes; canonical content {}..{} bytes",
        sizes.iter().min().unwrap(),
        sizes.iter().max().unwrap(),
        contents.iter().map(Vec::len).min().unwrap(),
        contents.iter().map(Vec::len).max().unwrap()
    );
}

fn batch_of_64() -> (EntryBatch, SecretKey) {
    let key = SecretKey::from_seed(&[7; 32]);
    let mut l = MemLedger::new(agent(), key.clone());
    l.checkpoint_every = 1000;
    l.append(0, "genesis", None, Value::Object(Object::new()))
        .unwrap();
    for i in 0..63 {
        let req = AppendRequest::parse(&request(i)).unwrap();
        l.append(
            i as i64,
            req.event.as_str(),
            req.context.as_deref(),
            req.data,
        )
        .unwrap();
    }
    l.sign_head(); // one checkpoint at the end of the batch
    (l.batch(Seq(1), Seq(64), None), key)
}

fn bench_verify_batch(c: &mut Criterion) {
    let (batch, key) = batch_of_64();
    let gw = SecretKey::from_seed(&[8; 32]);
    let store = MemChain::default();
    let mut g = c.benchmark_group("verify_batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("intake_64_entries_1_checkpoint", |b| {
        b.iter(|| {
            let mut intake = Intake::new(
                IntakeConfig {
                    gateway: AgentId::new("gw").unwrap(),
                    gateway_key: gw.public(),
                    resend_timeout: Duration::from_secs(10),
                },
                Enrollment {
                    agent: agent(),
                    key: key.public(),
                    start_seq: None,
                    revoked_from_seq: None,
                },
                Head::EMPTY,
                None,
            );
            let v = intake.handle_batch(Duration::ZERO, black_box(&batch), &store);
            assert!(matches!(v, Verdict::Accepted { .. }));
        })
    });
    g.finish();
}

fn bench_codec(c: &mut Criterion) {
    let (batch, _) = batch_of_64();
    let bytes = batch.encode();
    eprintln!("64-entry batch: {} bytes encoded", bytes.len());
    let mut g = c.benchmark_group("postcard_batch");
    g.throughput(Throughput::Elements(64));
    g.bench_function("encode_64_entries", |b| {
        b.iter(|| black_box(black_box(&batch).encode()))
    });
    g.bench_function("decode_64_entries", |b| {
        b.iter(|| black_box(EntryBatch::decode(black_box(&bytes)).unwrap()))
    });
    g.finish();
}

/// Issue 14: the embedded broker asks the ACL about every packet, checks
/// one signature per login, and the agent one per reject answering a hello.
fn bench_authority(c: &mut Criterion) {
    use baton_shared::acl::{Access, Principal};
    use baton_shared::login::{self, Login};
    use baton_shared::topic::{self, Kind};
    use baton_shared::wire::{Nack, RejectReason};
    let mut g = c.benchmark_group("authority");
    let device = Principal::Device {
        cluster: baton_shared::ClusterId::new("c07").unwrap(),
        agent: agent(),
    };
    let entries = topic::agent("c07", agent(), Kind::Entries);
    g.bench_function("acl_publish_own_entries", |b| {
        b.iter(|| {
            black_box(&device).allows(Access::Publish {
                topic: black_box(&entries),
                retain: false,
                len: 28_000,
            })
        })
    });
    let key = SecretKey::from_seed(&[9; 32]);
    let public = key.public();
    let password = login::password(&key, agent().as_str(), 1_800_000_000_000, false);
    g.bench_function("login_parse_and_verify", |b| {
        b.iter(|| {
            let l = Login::parse(black_box(&password)).unwrap();
            l.verify(agent().as_str(), &public, None).unwrap();
        })
    });
    let gw = AgentId::new("gw-c07").unwrap();
    let nonce = baton_shared::Nonce([1; 16]);
    let nack = Nack::signed_reject(&key, &gw, &agent(), nonce, RejectReason::Fork, Seq(5));
    g.bench_function("signed_reject_check", |b| {
        b.iter(|| assert!(black_box(&nack).stops_delivery(Some(&public), &[nonce])))
    });
    g.finish();
}

/// Issue 15: what bad input costs now. One object of 100k keys (linear
/// duplicate check), and a forged batch of ~249 KiB whose content would be
/// slow to parse, refused at its signature before any but the first entry
/// is read.
fn bench_bounded(c: &mut Criterion) {
    use baton_shared::json::{Mode, parse};
    let mut g = c.benchmark_group("bounded");
    let keys: Vec<String> = (0..100_000).map(|i| format!("\"k{i}\":{i}")).collect();
    let doc = format!("{{{}}}", keys.join(","));
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("json_object_100k_keys", |b| {
        b.iter(|| parse(black_box(doc.as_bytes()), Mode::Verify).unwrap())
    });
    // Valid, canonical entries whose data is slow to read (floats near
    // the bottom of binary64), chained and checkpointed — by a key other
    // than the enrolled one. The reader that parsed every entry first
    // paid for all of it before the signature said no.
    let key = SecretKey::from_seed(&[7; 32]);
    let mallory = SecretKey::from_seed(&[66; 32]);
    let mut l = MemLedger::new(agent(), mallory);
    l.checkpoint_every = 1000;
    l.append(0, "genesis", None, Value::Object(Object::new()))
        .unwrap();
    let slow: Vec<Value> = (0..300)
        .map(|i| Value::Number(1.234_567_890_123_456_7e-300 * f64::from(i + 1)))
        .collect();
    for i in 1..32 {
        l.append(i, "info", None, Value::Array(slow.clone()))
            .unwrap();
    }
    l.sign_head();
    let batch = l.batch(Seq(1), Seq(32), None);
    let gw = SecretKey::from_seed(&[8; 32]);
    let store = MemChain::default();
    g.throughput(Throughput::Elements(1));
    g.bench_function("forged_batch_refused", |b| {
        b.iter(|| {
            let mut intake = Intake::new(
                IntakeConfig {
                    gateway: AgentId::new("gw").unwrap(),
                    gateway_key: gw.public(),
                    resend_timeout: Duration::from_secs(10),
                },
                Enrollment {
                    agent: agent(),
                    key: key.public(),
                    start_seq: None,
                    revoked_from_seq: None,
                },
                Head::EMPTY,
                None,
            );
            let v = intake.handle_batch(Duration::ZERO, black_box(&batch), &store);
            assert!(matches!(v, Verdict::Rejected { .. }));
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench_canonical_hash, bench_verify_batch, bench_codec, bench_authority, bench_bounded
}
criterion_main!(benches);
