//! Liveness end to end, with real agent processes: a SIGKILLed agent is
//! `offline` by its last will within two heartbeat intervals; a SIGSTOPped
//! one (connection open, heartbeats stopped) is judged by phi alone; an
//! agent whose clock is years off (libfaketime) is flagged and its entries
//! still verify; summaries count what was started — over HTTP and on the
//! retained MQTT summary topic.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_shared::AgentId;
use baton_shared::json::{Mode, Value, parse};
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::http::{agent_field, agent_state as state, json};
use baton_tests::watch::Watcher;
use baton_tests::{eventually, http};

/// An agent process, SIGKILLed when dropped (that ends a SIGSTOPped one
/// too), so a failed assertion leaves nothing behind.
struct Proc(Child);

impl std::ops::Deref for Proc {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the agent binary; `env` adds variables (libfaketime).
fn spawn_agent(
    id: &str,
    dir: &Path,
    mqtt: SocketAddr,
    heartbeat: &str,
    env: &[(&str, String)],
) -> Proc {
    let mut cmd = Command::new(baton_tests::bins::agent());
    cmd.args([
        "run",
        "--id",
        id,
        "--cluster",
        "c1",
        "--heartbeat",
        heartbeat,
    ])
    .arg("--data-dir")
    .arg(dir)
    .arg("--gateway")
    .arg(format!("mqtt://{mqtt}"))
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

fn cluster_num(addr: SocketAddr, path: &[&str]) -> f64 {
    let mut v = json(addr, "/api/v1/cluster");
    for k in path {
        v = v
            .as_object()
            .and_then(|o| o.get(k))
            .cloned()
            .unwrap_or(Value::Null);
    }
    v.as_f64().unwrap_or(f64::NAN)
}

fn cluster_mode(addr: SocketAddr) -> String {
    let v = json(addr, "/api/v1/cluster");
    let mode = v.as_object().and_then(|o| o.get("mode"));
    mode.and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// A chain the gateway holds (its own, or an agent's), parsed.
fn chain_events(addr: SocketAddr, id: &str) -> Vec<Value> {
    let (status, body) =
        http::get(addr, &format!("/api/v1/agents/{id}/entries?limit=100000")).unwrap();
    assert_eq!(status, 200, "{body}");
    body.lines()
        .map(|l| parse(l.as_bytes(), Mode::Verify).unwrap())
        .collect()
}

fn has_state_entry(addr: SocketAddr, agent: &str, to: &str) -> bool {
    chain_events(addr, "gw-e2e").iter().any(|e| {
        let o = e.as_object().unwrap();
        let d = o.get("data").and_then(Value::as_object);
        o.get("event").and_then(Value::as_str) == Some("agent_state")
            && d.and_then(|d| d.get("agent")).and_then(Value::as_str) == Some(agent)
            && d.and_then(|d| d.get("to")).and_then(Value::as_str) == Some(to)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_is_offline_within_two_heartbeats_and_summaries_count_the_cluster() {
    let gw_dir = tempfile::tempdir().unwrap();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let ids = ["pi-a", "pi-b", "pi-k"];
    let keys: Vec<_> = ids
        .iter()
        .zip(&dirs)
        .map(|(id, d)| (AgentId::new(*id).unwrap(), agent_key(d.path())))
        .collect();
    // The retained summary is read here by an outside subscriber, which
    // the embedded broker's ACL allows nobody but the gateway: no logins.
    let gw = Gateway::start_open(gw_dir.path(), &keys).await;
    let http = gw.bound.http;
    let mqtt = gw.mqtt();
    let extra = baton_agent::RawConfig {
        heartbeat: Some("1s".into()),
        heartbeat_summary: Some("2s".into()),
        class: Some("CLASS_X_TEST".into()),
        ..Default::default()
    };
    let a = Agent::start_with(
        "pi-a",
        dirs[0].path(),
        Some(mqtt),
        Some(gw.key),
        extra.clone(),
    )
    .await;
    let b = Agent::start_with("pi-b", dirs[1].path(), Some(mqtt), Some(gw.key), extra).await;
    // the process to kill heartbeats at the default 5 s
    let mut k = spawn_agent("pi-k", dirs[2].path(), mqtt, "5s", &[]);

    assert!(
        eventually(Duration::from_secs(30), || cluster_num(http, &["active"])
            == 3.0)
        .await,
        "{:?}",
        json(http, "/api/v1/cluster")
    );
    assert_eq!(cluster_num(http, &["agents"]), 3.0);
    assert_eq!(cluster_num(http, &["by_state", "offline"]), 0.0);
    assert_eq!(cluster_mode(http), "FULL");
    // the retained summary on MQTT says the same
    let retained = retained_summary(mqtt).await;
    assert_eq!(
        retained
            .as_object()
            .unwrap()
            .get("agents")
            .unwrap()
            .as_f64(),
        Some(3.0)
    );

    // SIGKILL: no DISCONNECT; the broker fires the last will
    k.kill().unwrap();
    let killed = Instant::now();
    k.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || state(http, "pi-k") == "offline").await,
        "pi-k is {}",
        state(http, "pi-k")
    );
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_secs(10),
        "offline after {took:?}, over two 5 s intervals"
    );
    // Normally the will (a quarter of a second, see BENCHMARKS.md); on a
    // loaded machine the session may have dropped before the kill (its
    // will then named an older session) and phi is what notices.
    let reason = agent_field(http, "pi-k", "state_reason")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    assert!(
        reason == "last will" || reason.starts_with("silent, phi"),
        "{reason}"
    );
    // counts follow; 2 of 3 active is DEGRADED_MODERATE (≥ 60 %)
    assert!(
        eventually(Duration::from_secs(5), || cluster_num(
            http,
            &["by_state", "offline"]
        ) == 1.0)
        .await
    );
    assert_eq!(cluster_num(http, &["active"]), 2.0);
    assert_eq!(cluster_mode(http), "DEGRADED_MODERATE");
    // the change is in the gateway's chain
    assert!(
        eventually(Duration::from_secs(5), || has_state_entry(
            http, "pi-k", "offline"
        ))
        .await
    );
    assert!(has_state_entry(http, "pi-a", "active"));
    // the agents' own chains hold heartbeat summaries, and their entries
    // carry the clock the exchange measured
    assert!(
        eventually(Duration::from_secs(20), || {
            chain_events(http, "pi-a").iter().any(|e| {
                let o = e.as_object().unwrap();
                let d = o.get("data").and_then(Value::as_object);
                let class = d
                    .and_then(|d| d.get("system"))
                    .and_then(Value::as_object)
                    .and_then(|s| s.get("class"))
                    .and_then(Value::as_str);
                o.get("event").and_then(Value::as_str) == Some("heartbeat_summary")
                    && class == Some("CLASS_X_TEST")
                    && d.is_some_and(|d| d.contains_key("impedance"))
            })
        })
        .await
    );
    let events = chain_events(http, "pi-a");
    let clock = events
        .last()
        .and_then(|e| e.as_object()?.get("clock")?.as_object().cloned())
        .unwrap();
    assert_eq!(clock.get("synced"), Some(&Value::Bool(true)), "{clock:?}");
    assert_eq!(
        clock.get("boot").and_then(Value::as_str).map(str::len),
        Some(36)
    );
    // Prometheus gauges
    let (_, metrics) = http::get(http, "/metrics").unwrap();
    assert!(metrics.contains("baton_cluster_agents 3"), "{metrics}");
    assert!(
        metrics.contains("baton_cluster_agents_by_state{state=\"offline\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("baton_cluster_mode{mode=\"DEGRADED_MODERATE\"} 1"),
        "{metrics}"
    );
    // the operator's table
    let (_, body) = http::get(http, "/api/v1/agents").unwrap();
    let table = baton_gateway::cli::agents_table(&body).unwrap();
    let row = table.lines().find(|l| l.starts_with("pi-k")).unwrap();
    assert!(row.contains("offline"), "{table}");

    a.stop().await;
    b.stop().await;
    gw.stop().await;
}

/// The retained summary, as a fresh subscriber gets it.
async fn retained_summary(mqtt: SocketAddr) -> Value {
    let mut reader = Watcher::start(mqtt, "summary-reader", &["baton/v1/c1/summary"]).await;
    let body = reader
        .next(Duration::from_secs(20))
        .await
        .expect("no retained summary");
    parse(&body, Mode::Verify).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_is_suspected_by_phi_and_recovers_when_resumed() {
    let gw_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = [(AgentId::new("pi-s").unwrap(), agent_key(dir.path()))];
    let gw = Gateway::start(gw_dir.path(), &keys, None, "127.0.0.1:0".parse().unwrap()).await;
    let http = gw.bound.http;
    let mut p = spawn_agent("pi-s", dir.path(), gw.mqtt(), "1s", &[]);
    // a rhythm to learn: active, and a few heartbeats more
    assert!(eventually(Duration::from_secs(30), || state(http, "pi-s") == "active").await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = p.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // The TCP connection stays open (keep-alive 30 s): no will, only phi.
    let mut seen = Vec::new();
    let judged = eventually(Duration::from_secs(20), || {
        let s = state(http, "pi-s");
        if seen.last() != Some(&s) {
            seen.push(s.clone());
        }
        s == "offline"
    })
    .await;
    let reason =
        agent_field(http, "pi-s", "state_reason").and_then(|v| v.as_str().map(str::to_owned));
    assert!(judged, "states seen: {seen:?}");
    assert!(
        reason.as_deref().unwrap_or("").starts_with("silent, phi"),
        "{reason:?}"
    );
    // the state is visible at once; its chain entry at the next commit
    assert!(
        eventually(Duration::from_secs(5), || has_state_entry(
            http, "pi-s", "offline"
        ))
        .await
    );
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    assert!(
        eventually(Duration::from_secs(20), || state(http, "pi-s") == "active").await,
        "{}",
        state(http, "pi-s")
    );
    p.kill().unwrap();
    p.wait().unwrap();
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_with_a_clock_years_off_is_flagged_and_its_entries_verify() {
    let Some(lib) = baton_tests::faketime() else {
        return;
    };
    let gw_dir = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = agent_key(dir.path());
    let keys = [(AgentId::new("pi-old").unwrap(), key)];
    let gw = Gateway::start(gw_dir.path(), &keys, None, "127.0.0.1:0".parse().unwrap()).await;
    let http = gw.bound.http;
    // 1,200 days behind, monotonic clocks left alone
    let env = [
        ("LD_PRELOAD", lib),
        ("FAKETIME", "-1200d".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
        ("FAKETIME_DONT_RESET", "1".to_owned()),
    ];
    let mut p = spawn_agent("pi-old", dir.path(), gw.mqtt(), "1s", &env);
    let band_ms = 1200.0 * 86_400_000.0;
    assert!(
        eventually(Duration::from_secs(30), || state(http, "pi-old")
            == "clock_skewed")
        .await,
        "{}",
        state(http, "pi-old")
    );
    let offset = agent_field(http, "pi-old", "clock_offset_ms")
        .and_then(|v| v.as_f64())
        .unwrap();
    assert!((offset - band_ms).abs() < 60_000.0, "offset {offset}");
    assert_eq!(
        agent_field(http, "pi-old", "clock_skewed"),
        Some(Value::Bool(true))
    );
    let (_, metrics) = http::get(http, "/metrics").unwrap();
    assert!(
        metrics.contains("baton_agent_clock_offset_ms{agent=\"pi-old\"}"),
        "{metrics}"
    );

    // it still appends; once synced its entries carry the offset
    let socket = dir.path().join("agent.sock");
    let status = dir.path().join("status.json");
    assert!(
        eventually(Duration::from_secs(30), || {
            std::fs::read_to_string(&status).is_ok_and(|s| s.contains("\"synced\":true"))
        })
        .await
    );
    let mut acked = 0;
    for i in 0..20 {
        let line = format!("{{\"event\":\"reading\",\"data\":{{\"i\":{i}}}}}").into_bytes();
        let answers = baton_agent::socket::client::send_lines(&socket, vec![line])
            .await
            .unwrap();
        assert!(answers[0].is_ok(), "{:?}", answers[0]);
        acked += 1;
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            agent_field(http, "pi-old", "head_seq").and_then(|v| v.as_f64())
                == Some(f64::from(acked + 1))
        })
        .await
    );
    let (_, body) = http::get(http, "/api/v1/agents/pi-old/entries?limit=1000").unwrap();
    // the chain verifies under the agent's key, ts and all
    let verdict = baton_shared::verify::verify_text(body.as_bytes(), Some(key));
    assert!(
        matches!(verdict, baton_shared::verify::Verdict::Valid(_)),
        "{verdict}"
    );
    let last = parse(body.lines().last().unwrap().as_bytes(), Mode::Verify).unwrap();
    let o = last.as_object().unwrap();
    let ts = o.get("ts").and_then(Value::as_str).unwrap();
    let now_year: i32 = baton_shared::entry::format_timestamp(baton_runtime::unix_ms())[..4]
        .parse()
        .unwrap();
    let ts_year: i32 = ts[..4].parse().unwrap();
    assert!(
        now_year - ts_year >= 3,
        "ts {ts} is the device's own (wrong) time"
    );
    let clock = o.get("clock").and_then(Value::as_object).unwrap();
    assert_eq!(clock.get("synced"), Some(&Value::Bool(true)));
    let entry_offset = clock.get("offset_ms").and_then(Value::as_f64).unwrap();
    assert!((entry_offset - band_ms).abs() < 60_000.0, "{entry_offset}");
    p.kill().unwrap();
    p.wait().unwrap();
    gw.stop().await;
}
