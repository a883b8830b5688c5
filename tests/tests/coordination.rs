//! Coordination on the device (issue 16, PROTOCOL §9), over real MQTT to a
//! real agent: deliveries signed as the gateway would sign them are
//! recorded, answered once and idempotently, refused when forged, and a
//! command a restart interrupted is answered `handler_failed`. (The
//! gateway's own scheduling and relaying come later; here the test plays
//! the sending tier with the gateway's key on its broker.)

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use baton_shared::command::{self, Answer, ConflictKind, Draft, State, Verb};
use baton_shared::json::{self, Mode, Object, Value};
use baton_shared::topic::{self, Kind};
use baton_shared::wire::{CommandDelivery, CommandReply, Message};
use baton_shared::{AgentId, CommandId, Hash, PublicKey, SecretKey};
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::eventually;
use baton_tests::raw::Raw;
use rumqttc::Packet;

const GW: &str = "gw-e2e";

fn now() -> i64 {
    baton_runtime::unix_ms()
}

fn id(s: &str) -> AgentId {
    AgentId::new(s).unwrap()
}

/// The sending tier: the gateway's key on its broker, and what comes back.
struct Sender {
    key: SecretKey,
    agent: AgentId,
    agent_key: PublicKey,
    raw: Raw,
    n: u32,
}

impl Sender {
    async fn new(
        mqtt: std::net::SocketAddr,
        gdir: &Path,
        agent: &str,
        agent_key: PublicKey,
    ) -> Sender {
        let key = baton_runtime::keys::load(&gdir.join("gateway.key")).unwrap();
        let mut raw = Raw::connect(mqtt, "operator-probe", "", None)
            .await
            .unwrap();
        raw.subscribe(&topic::agent("c1", agent, Kind::CmdReply))
            .await;
        Sender {
            key,
            agent: id(agent),
            agent_key,
            raw,
            n: 0,
        }
    }

    fn draft(&mut self, verb: Verb, in_ms: i64) -> Draft {
        self.n += 1;
        let issued = now();
        Draft {
            issuer: id(GW),
            id: CommandId::new(format!("c-{}", self.n)).unwrap(),
            issued_ms: issued,
            target_ms: issued + in_ms,
            window_ms: 500,
            expires_ms: issued + in_ms + 30_000,
            priority: 2,
            verb,
            payload: Value::Object(Object::new()),
            weight: 0.0,
            select: None,
            quorum: None,
        }
    }

    /// A delivery of `d` to the agent, signed as the gateway.
    fn delivery(&self, d: &Draft) -> CommandDelivery {
        let c = d.build().unwrap();
        CommandDelivery {
            content: c.canonical.clone(),
            issuer: c.issuer.clone(),
            origin_sig: command::origin_sig(&self.key, &c.issuer, &c.hash),
            sender: id(GW),
            recipient: self.agent.clone(),
            sender_sig: command::sender_sig(&self.key, &id(GW), &self.agent, &c.hash),
            sent_ms: now(),
            lead_ms: 0,
        }
    }

    async fn publish(&mut self, d: &CommandDelivery) {
        let t = topic::agent("c1", &self.agent, Kind::Cmd);
        self.raw.publish(&t, false, d.encode()).await;
    }

    /// Sends `d` and waits for the final answer to it: (entry seq,
    /// answer). Like a sending tier, it sends again every second until
    /// answered (a delivery published before the agent subscribed is
    /// lost; a second one of a known hash is answered from the record).
    async fn ask(&mut self, d: &Draft) -> (u64, Answer) {
        let delivery = self.delivery(d);
        self.publish(&delivery).await;
        self.answer_resending(&d.build().unwrap().hash, Some(&delivery))
            .await
    }

    async fn final_answer(&mut self, hash: &Hash) -> (u64, Answer) {
        self.answer_resending(hash, None).await
    }

    async fn answer_resending(
        &mut self,
        hash: &Hash,
        resend: Option<&CommandDelivery>,
    ) -> (u64, Answer) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no answer within 20 s"
            );
            let p = match tokio::time::timeout(Duration::from_secs(1), self.raw.incoming.recv())
                .await
            {
                Ok(p) => p.unwrap(),
                Err(_) => {
                    if let Some(d) = resend {
                        self.publish(d).await;
                    }
                    continue;
                }
            };
            let Packet::Publish(p) = p else { continue };
            let reply = CommandReply::decode(&p.payload).unwrap();
            assert_eq!(reply.agent, self.agent);
            let e = reply.entry;
            // every answer is a signed entry of the agent's chain
            let h = e.header().unwrap();
            let sig = e.sig.expect("answers are signed at once");
            assert!(
                self.agent_key
                    .verify_checkpoint(&self.agent, h.seq, &e.hash, &sig)
            );
            let content = json::parse(&e.content, Mode::Verify).unwrap();
            let data = content.as_object().unwrap().get("data").unwrap();
            let a = Answer::from_data(data).unwrap();
            if a.hash == *hash && a.state.is_final() {
                return (h.seq.0, a);
            }
        }
    }
}

/// The agent's own chain, as `baton-agent export` writes it (stopped).
fn exported(dir: &Path) -> Vec<Value> {
    baton_tests::own_chain_text(dir)
        .lines()
        .map(|l| json::parse(l.as_bytes(), Mode::Verify).unwrap())
        .collect()
}

fn event(e: &Value) -> &str {
    e.as_object()
        .unwrap()
        .get("event")
        .unwrap()
        .as_str()
        .unwrap()
}

fn conflict_kind(a: &Answer) -> ConflictKind {
    a.conflict.as_ref().unwrap().0
}

async fn synced(s: &mut Sender) {
    for _ in 0..50 {
        let d = s.draft(Verb::Observe, 0);
        let (_, a) = s.ask(&d).await;
        let synced = a.result.as_ref().and_then(|r| {
            r.as_object()?
                .get("clock")?
                .as_object()?
                .get("synced")
                .cloned()
        });
        if synced == Some(Value::Bool(true)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the agent's clock never synced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_are_recorded_answered_once_and_freeze_holds_commands_not_appends() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-k"));
    let key = agent_key(&adir);
    let gw = Gateway::start_open(&gdir, &[(id("pi-k"), key)]).await;
    let extra = baton_agent::RawConfig {
        capabilities: Some(vec!["camera".into()]),
        heartbeat: Some("200ms".into()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-k", &adir, Some(gw.mqtt()), Some(gw.key), extra).await;
    let mut s = Sender::new(gw.mqtt(), &gdir, "pi-k", key).await;
    synced(&mut s).await;
    // its capabilities reach the gateway's registry with its heartbeats
    assert!(
        eventually(Duration::from_secs(10), || {
            baton_tests::http::get(gw.bound.http, "/api/v1/agents/pi-k")
                .is_ok_and(|(_, b)| b.contains("\"capabilities\":[\"camera\"]"))
        })
        .await
    );

    // record: READY at once (prepared), the payload appended at T
    let mut d = s.draft(Verb::Record, 300);
    let mut p = Object::new();
    p.insert("reading", Value::from("marker-cmd-record"));
    d.payload = Value::Object(p);
    let record = d.clone();
    let (seq, answer) = s.ask(&d).await;
    assert_eq!(answer.state, State::Ready, "{answer:?}");
    assert!(answer.ready_ms.unwrap() <= d.target_ms + 500);

    // the same delivery again: the recorded answer, nothing run or written
    let head = a.head();
    let (again, same) = s.ask(&record).await;
    assert_eq!((again, &same), (seq, &answer));
    // (the record entry lands at T; wait for it before comparing heads)
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(a.head() <= head + 1, "a second delivery wrote entries");

    // no handler for the verb; a capability this device lacks
    let d = s.draft(Verb::Act, 200);
    let (_, x) = s.ask(&d).await;
    assert_eq!(conflict_kind(&x), ConflictKind::CapabilityMismatch);
    let mut d = s.draft(Verb::Record, 200);
    d.select = Some(json::parse(br#"{"capabilities":["motor"]}"#, Mode::Verify).unwrap());
    let (_, x) = s.ask(&d).await;
    assert_eq!(conflict_kind(&x), ConflictKind::CapabilityMismatch);
    assert!(x.conflict.unwrap().1.contains("motor"));

    // freeze: commands refused `frozen`, appends go on; thaw lifts it
    let freeze = s.draft(Verb::Freeze, 0);
    let freeze_hash = freeze.build().unwrap().hash;
    assert_eq!(s.ask(&freeze).await.1.state, State::Ready);
    let d = s.draft(Verb::Record, 200);
    assert_eq!(conflict_kind(&s.ask(&d).await.1), ConflictKind::Frozen);
    let appended = a.append(0, 3).await;
    assert_eq!(appended.len(), 3, "a frozen agent takes appends");
    let mut thaw = s.draft(Verb::Thaw, 0);
    let mut p = Object::new();
    p.insert("freeze", Value::from(freeze_hash.to_hex()));
    thaw.payload = Value::Object(p);
    let (_, t) = s.ask(&thaw).await;
    assert_eq!(t.state, State::Ready);
    let d = s.draft(Verb::Record, 200);
    assert_eq!(s.ask(&d).await.1.state, State::Ready);

    // the same issuer and id with another content: hash_mismatch
    let mut twin = record.clone();
    twin.priority = 3;
    assert_eq!(
        conflict_kind(&s.ask(&twin).await.1),
        ConflictKind::HashMismatch
    );
    // received after it expired
    let mut old = s.draft(Verb::Record, 0);
    old.issued_ms -= 60_000;
    old.target_ms -= 60_000;
    old.expires_ms = now() - 1_000;
    assert_eq!(conflict_kind(&s.ask(&old).await.1), ConflictKind::Expired);
    // every draft is one command (the observe probes too), plus the twin
    let expected = s.n as usize + 1;
    a.stop().await;

    // The chain: every command_ack after its command, the record at T,
    // and it verifies under the agent's key.
    let entries = exported(&adir);
    let text: String = entries
        .iter()
        .map(|e| String::from_utf8(baton_shared::canonical::to_vec(e)).unwrap() + "\n")
        .collect();
    assert!(baton_shared::verify::verify_text(text.as_bytes(), Some(key)).is_valid());
    let mut commands = std::collections::HashSet::new();
    let mut acks = 0;
    for e in &entries {
        let data = e.as_object().unwrap().get("data").unwrap();
        match event(e) {
            "command" => {
                let content = data.as_object().unwrap().get("content").unwrap().clone();
                commands.insert(
                    baton_shared::command::Command::from_content(content)
                        .unwrap()
                        .hash,
                );
            }
            "command_ack" => {
                let a = Answer::from_data(data).unwrap();
                assert!(commands.contains(&a.hash), "an answer before its command");
                acks += 1;
            }
            _ => {}
        }
    }
    assert_eq!(commands.len(), expected);
    assert_eq!(acks, expected, "one answer per command");
    assert!(
        text.contains("marker-cmd-record"),
        "the record was appended at T"
    );
    gw.stop().await;
}

/// Forged, misaddressed, re-signed and unauthorised deliveries change
/// nothing but a counter: no entry, no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_deliveries_change_nothing_but_a_counter() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-f"));
    let key = agent_key(&adir);
    let gw = Gateway::start_open(&gdir, &[(id("pi-f"), key)]).await;
    let a = Agent::start("pi-f", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let mut s = Sender::new(gw.mqtt(), &gdir, "pi-f", key).await;
    synced(&mut s).await;
    let head = a.head();
    let mallory = SecretKey::from_seed(&[66; 32]);
    let d = s.draft(Verb::Record, 500);
    let good = s.delivery(&d);
    let c = d.build().unwrap();
    let mut forged = Vec::new();
    // another key signs as the gateway
    forged.push(CommandDelivery {
        sender_sig: command::sender_sig(&mallory, &id(GW), &id("pi-f"), &c.hash),
        ..good.clone()
    });
    // addressed to another agent
    forged.push(CommandDelivery {
        recipient: id("pi-x"),
        sender_sig: command::sender_sig(&s.key, &id(GW), &id("pi-x"), &c.hash),
        ..good.clone()
    });
    // issued by someone else, relayed by the gateway (no issuer_keys set:
    // only the gateway's own commands are obeyed)
    let mut other = d.clone();
    other.issuer = id("gw-top");
    let oc = other.build().unwrap();
    forged.push(CommandDelivery {
        content: oc.canonical.clone(),
        issuer: id("gw-top"),
        origin_sig: command::origin_sig(&mallory, &id("gw-top"), &oc.hash),
        sender_sig: command::sender_sig(&s.key, &id(GW), &id("pi-f"), &oc.hash),
        ..good.clone()
    });
    // content altered after signing
    let mut altered = good.clone();
    let n = altered.content.len();
    altered.content[n - 3] ^= 1;
    forged.push(altered);
    for f in &forged {
        s.publish(f).await;
    }
    s.raw
        .publish(
            &topic::agent("c1", "pi-f", Kind::Cmd),
            false,
            b"\x01garbage".to_vec(),
        )
        .await;
    let refused = |a: &Agent| -> u64 {
        let doc = a
            .ready
            .shared
            .document("pi-f", &a.ready.writer.head(), true, 0);
        let r = doc
            .as_object()
            .unwrap()
            .get("commands_refused")
            .unwrap()
            .as_object()
            .unwrap()
            .clone();
        r.iter().map(|(_, v)| v.as_exact_u64().unwrap()).sum()
    };
    assert!(
        eventually(Duration::from_secs(10), || refused(&a) == 5).await,
        "{}",
        refused(&a)
    );
    assert_eq!(a.head(), head, "a forged delivery wrote an entry");
    // the genuine one still goes through
    s.publish(&good).await;
    assert_eq!(s.final_answer(&c.hash).await.1.state, State::Ready);
    a.stop().await;
    gw.stop().await;
}

/// A command in hand when the agent stops (here: `sync`, answered TRANSIT
/// and waiting for a receipt a gateway that does not know the agent never
/// gives) is answered `handler_failed` at the next start, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_a_restart_interrupted_is_answered_handler_failed_once() {
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-r"));
    let key = agent_key(&adir);
    // not enrolled: the gateway never receipts it
    let gw = Gateway::start_open(&gdir, &[]).await;
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let mut s = Sender::new(gw.mqtt(), &gdir, "pi-r", key).await;
    synced(&mut s).await;
    let d = s.draft(Verb::Sync, 20_000);
    let hash = d.build().unwrap().hash;
    let delivery = s.delivery(&d);
    s.publish(&delivery).await;
    // recorded (the command entry), not answered
    let recorded = a.head();
    assert!(
        eventually(Duration::from_secs(10), || a.head() > recorded).await,
        "the command was not recorded"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.stop().await;
    let before = exported(&adir);
    // (state of each answer to the sync command, in chain order)
    let answers_of = |entries: &[Value]| -> Vec<State> {
        entries
            .iter()
            .filter(|e| event(e) == "command_ack")
            .map(|e| Answer::from_data(e.as_object().unwrap().get("data").unwrap()).unwrap())
            .filter(|a| a.hash == hash)
            .map(|a| a.state)
            .collect()
    };
    assert!(before.iter().any(|e| event(e) == "command"));
    assert_eq!(
        answers_of(&before),
        [State::Transit],
        "only TRANSIT before the restart"
    );

    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    let (_, answer) = s.final_answer(&hash).await;
    assert_eq!(conflict_kind(&answer), ConflictKind::HandlerFailed);
    // delivered again: the recorded answer, not a second run. Resent
    // until answered, as a sending tier does: the restarted agent
    // publishes that answer as it connects, before the broker has taken
    // its subscription, so one delivery sent on seeing it can be lost.
    let (_, again) = s.answer_resending(&hash, Some(&delivery)).await;
    assert_eq!(again, answer);
    a.stop().await;
    let a = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.stop().await;
    assert_eq!(
        answers_of(&exported(&adir)),
        [State::Transit, State::Conflict],
        "one final answer across two restarts"
    );
    gw.stop().await;
}

/// `act` served by a program subscribed over the agent's socket, before
/// the configured executable: it is handed the command, answers TRANSIT
/// then READY with its result, and is woken at T by the device's clock; a
/// bad answer line is refused with an error and changes nothing; when the
/// program goes away holding a command, that command is answered
/// `handler_failed`, and the executable serves `act` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_subscribed_on_the_socket_serves_act_and_is_woken_at_t() {
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-s"));
    let key = agent_key(&adir);
    let script = dir.path().join("act.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho '{\"from\":\"exe\"}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gw = Gateway::start_open(&gdir, &[(id("pi-s"), key)]).await;
    let extra = baton_agent::RawConfig {
        handlers: Some([("act".to_owned(), script.clone())].into_iter().collect()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-s", &adir, Some(gw.mqtt()), Some(gw.key), extra).await;
    let mut s = Sender::new(gw.mqtt(), &gdir, "pi-s", key).await;
    synced(&mut s).await;

    // the program subscribes
    let stream = tokio::net::UnixStream::connect(&a.ready.socket)
        .await
        .unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut next_line = async || -> Value {
        let l = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("a line from the agent within 10 s")
            .unwrap()
            .expect("the agent closed the connection");
        json::parse(l.as_bytes(), Mode::Verify).unwrap()
    };
    w.write_all(b"{\"serve\":[\"act\"]}\n").await.unwrap();
    let serving = next_line().await;
    assert_eq!(
        serving.as_object().unwrap().get("serving"),
        Some(&Value::Array(vec![Value::from("act")]))
    );

    let mut d = s.draft(Verb::Act, 1_000);
    d.payload = Value::from("capture");
    let hash = d.build().unwrap().hash;
    let delivery = s.delivery(&d);
    s.publish(&delivery).await;
    let handed = next_line().await;
    let c = handed
        .as_object()
        .unwrap()
        .get("command")
        .unwrap()
        .as_object()
        .unwrap();
    assert_eq!(
        c.get("hash").unwrap().as_str(),
        Some(hash.to_hex().as_str())
    );
    assert_eq!(c.get("payload"), Some(&Value::from("capture")));
    let target_local = c.get("target_local_ms").unwrap().as_f64().unwrap();
    // a wrong line first: refused, nothing changes
    w.write_all(b"{\"hash\":\"00\",\"state\":1}\n")
        .await
        .unwrap();
    let refused = next_line().await;
    assert!(
        refused
            .as_object()
            .unwrap()
            .get("error")
            .unwrap()
            .as_str()
            .unwrap()
            .starts_with("hash:"),
        "{refused:?}"
    );
    let answer = |state: i8, extra: &str| {
        format!(
            "{{\"hash\":\"{}\",\"state\":{state}{extra}}}\n",
            hash.to_hex()
        )
    };
    w.write_all(answer(0, "").as_bytes()).await.unwrap();
    w.write_all(answer(1, ",\"result\":{\"served\":\"socket\"}").as_bytes())
        .await
        .unwrap();
    let (_, ready) = s.answer_resending(&hash, Some(&delivery)).await;
    assert_eq!(ready.state, State::Ready, "{ready:?}");
    assert_eq!(
        ready
            .result
            .as_ref()
            .and_then(|r| r.as_object()?.get("served").cloned()),
        Some(Value::from("socket"))
    );
    // woken at T, by the device's clock
    let wake = next_line().await;
    #[allow(clippy::cast_precision_loss)]
    let woken_at = now() as f64;
    assert_eq!(
        wake.as_object().unwrap().get("wake").unwrap().as_str(),
        Some(hash.to_hex().as_str())
    );
    assert!(
        woken_at >= target_local - 5.0,
        "woken {} ms before T",
        target_local - woken_at
    );

    // handed a command, the program goes away: handler_failed
    let mut d2 = s.draft(Verb::Act, 5_000);
    d2.payload = Value::from("abandoned");
    let hash2 = d2.build().unwrap().hash;
    let delivery2 = s.delivery(&d2);
    s.publish(&delivery2).await;
    let handed = next_line().await;
    assert!(format!("{handed:?}").contains(&hash2.to_hex()));
    drop(w);
    drop(lines);
    let (_, failed) = s.answer_resending(&hash2, Some(&delivery2)).await;
    assert_eq!(
        conflict_kind(&failed),
        ConflictKind::HandlerFailed,
        "{failed:?}"
    );
    // the executable serves act again
    let d3 = s.draft(Verb::Act, 800);
    let (_, exe) = s.ask(&d3).await;
    assert_eq!(
        exe.result
            .as_ref()
            .and_then(|r| r.as_object()?.get("from").cloned()),
        Some(Value::from("exe")),
        "{exe:?}"
    );
    a.stop().await;
    // one TRANSIT, then one final answer, in the chain
    let acks: Vec<State> = exported(&adir)
        .iter()
        .filter(|e| event(e) == "command_ack")
        .map(|e| Answer::from_data(e.as_object().unwrap().get("data").unwrap()).unwrap())
        .filter(|x| x.hash == hash)
        .map(|x| x.state)
        .collect();
    assert_eq!(acks, [State::Transit, State::Ready]);
    gw.stop().await;
}

/// `act` served by a configured executable: prepared at receipt (its
/// stdout the result), run again at T; its exit status 11 is
/// `data_contradiction`; one not prepared by T + window is killed and
/// answered `temporal_paradox` — and while it runs, other commands are
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_executable_serves_act_prepared_at_receipt_and_run_at_t() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-x"));
    let key = agent_key(&adir);
    let script = dir.path().join("act.sh");
    let acted = dir.path().join("acted.log");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\npayload=$(cat)\ncase \"$BATON_PHASE\" in\n\
             prepare)\n  case \"$payload\" in\n    *contradict*) echo 'the sensor disagrees' >&2; exit 11;;\n    *slow*) sleep 10;;\n  esac\n  echo \"{{\\\"prepared\\\":\\\"$BATON_COMMAND_ID\\\"}}\";;\n\
             act) echo \"$BATON_COMMAND_ID $BATON_TARGET_LOCAL_MS $(date +%s%3N)\" >> {};;\n\
             esac\n",
            acted.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let gw = Gateway::start_open(&gdir, &[(id("pi-x"), key)]).await;
    let extra = baton_agent::RawConfig {
        handlers: Some([("act".to_owned(), script.clone())].into_iter().collect()),
        ..Default::default()
    };
    let a = Agent::start_with("pi-x", &adir, Some(gw.mqtt()), Some(gw.key), extra).await;
    let mut s = Sender::new(gw.mqtt(), &gdir, "pi-x", key).await;
    synced(&mut s).await;

    let mut d = s.draft(Verb::Act, 800);
    d.payload = Value::from("capture");
    let (_, ready) = s.ask(&d).await;
    assert_eq!(ready.state, State::Ready, "{ready:?}");
    let result = ready.result.unwrap();
    assert_eq!(
        result
            .as_object()
            .unwrap()
            .get("prepared")
            .unwrap()
            .as_str(),
        Some(d.id.as_str())
    );
    // run again at T, by the device's clock
    assert!(
        eventually(Duration::from_secs(10), || std::fs::read_to_string(&acted)
            .is_ok_and(|t| t.contains(d.id.as_str())))
        .await,
        "the act phase never ran"
    );
    let line = std::fs::read_to_string(&acted).unwrap();
    let fields: Vec<i64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    assert!(
        fields[1] >= fields[0] - 50,
        "acted at {} before T {}",
        fields[1],
        fields[0]
    );

    let mut d = s.draft(Verb::Act, 300);
    d.payload = Value::from("contradict");
    let (_, x) = s.ask(&d).await;
    assert_eq!(conflict_kind(&x), ConflictKind::DataContradiction);
    assert!(x.conflict.unwrap().1.contains("the sensor disagrees"));

    // a slow one is killed at T + window; meanwhile another is answered
    let mut slow = s.draft(Verb::Act, 300);
    slow.payload = Value::from("slow");
    let slow_hash = slow.build().unwrap().hash;
    let delivery = s.delivery(&slow);
    s.publish(&delivery).await;
    let quick = s.draft(Verb::Observe, 0);
    let started = std::time::Instant::now();
    assert_eq!(s.ask(&quick).await.1.state, State::Ready);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the observe waited behind the slow handler"
    );
    let (_, late) = s.final_answer(&slow_hash).await;
    assert_eq!(conflict_kind(&late), ConflictKind::TemporalParadox);
    a.stop().await;
    gw.stop().await;
}
