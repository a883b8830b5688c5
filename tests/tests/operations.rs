//! Operations that must not mislead (issue 15, finding 11), against the
//! real binaries: what `status` says of a stopped agent, what a log file
//! holds, what a second daemon on one data directory hears.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_shared::json::{self, Value};
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::{bins, eventually, http};

fn status_json(dir: &Path) -> json::Object {
    let out = Command::new(bins::agent())
        .args(["status", "--json", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    match json::parse(&out.stdout, json::Mode::Verify).unwrap() {
        Value::Object(o) => o,
        other => panic!("status --json printed {other:?}"),
    }
}

fn status_table(dir: &Path) -> String {
    let out = Command::new(bins::agent())
        .args(["status", "--data-dir"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn a_killed_agent_is_shown_stopped_and_its_log_file_is_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pi-ops");
    std::fs::create_dir_all(&data).unwrap();
    agent_key(&data);
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let run = |stderr: Stdio| {
        Command::new(bins::agent())
            .args(["run", "--id", "pi-ops", "--cluster", "c1", "--data-dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let mut daemon = run(Stdio::from(log));
    let status = data.join("status.json");
    assert!(eventually(Duration::from_secs(30), || status.exists()).await);
    let seen = status_json(&data);
    assert_eq!(seen.get("running"), Some(&Value::Bool(true)));
    assert_ne!(seen.get("state").and_then(Value::as_str), Some("stopped"));

    // A second daemon on the same directory is refused, and says why.
    let second = run(Stdio::piped()).wait_with_output().unwrap();
    assert!(!second.status.success());
    let why = String::from_utf8_lossy(&second.stderr);
    assert!(why.contains("another baton-agent is running"), "{why}");

    // Killed: it writes nothing on the way out; status must not believe
    // the last file it wrote.
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    let seen = status_json(&data);
    assert_eq!(seen.get("running"), Some(&Value::Bool(false)));
    assert_eq!(seen.get("state").and_then(Value::as_str), Some("stopped"));
    assert_eq!(seen.get("connected"), Some(&Value::Bool(false)));
    let table = status_table(&data);
    assert!(table.contains("stopped (not running"), "{table}");

    // The log went to a file: no terminal escape codes in it.
    let text = std::fs::read(dir.path().join("agent.log")).unwrap();
    assert!(
        String::from_utf8_lossy(&text).contains("agent ready"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert!(!text.contains(&0x1b), "{}", String::from_utf8_lossy(&text));
}

fn doc_of(a: &Agent) -> json::Object {
    match a
        .ready
        .shared
        .document(a.id.as_str(), &a.ready.writer.head(), true, now_ms())
    {
        Value::Object(o) => o,
        other => panic!("status document {other:?}"),
    }
}

fn now_ms() -> i64 {
    baton_runtime::unix_ms()
}

fn text(o: &json::Object, key: &str) -> String {
    o.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn enroll(gw: &Gateway, id: &str, key: &baton_shared::PublicKey) {
    let body = format!(r#"{{"agent":"{id}","public_key":"{}"}}"#, key.to_hex());
    let (status, answer) = http::post(gw.bound.http, "/api/v1/enroll", body.as_bytes()).unwrap();
    assert_eq!(status, 200, "{answer}");
}

/// A device the broker will not let in hears why at once (its status says
/// the login was refused and what to check), not after silent retries; once
/// the operator enrolls it, it connects and the error is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_said_at_once_and_cleared_by_enrollment() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-new");
    let key = agent_key(&a_dir);
    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gw = Gateway::start_config(&dir.path().join("gw"), &[], broker, |_| {}).await;
    let a = Agent::start("pi-new", &a_dir, Some(gw.mqtt()), Some(gw.key)).await;
    assert!(
        eventually(Duration::from_secs(10), || text(&doc_of(&a), "last_error")
            .contains("refused the login"))
        .await,
        "{:?}",
        doc_of(&a)
    );
    assert_eq!(text(&doc_of(&a), "state"), "error");
    enroll(&gw, "pi-new", &key);
    a.append(0, 3).await;
    assert!(eventually(Duration::from_secs(60), || a.receipted() == a.head()).await);
    let doc = doc_of(&a);
    assert_eq!(doc.get("connected"), Some(&Value::Bool(true)));
    assert_eq!(text(&doc, "state"), "idle", "{doc:?}");
    a.stop().await;
    gw.stop().await;
}

/// The gateway's signed `unknown_agent` answer (rule 3d) is shown in
/// words, not as a Rust value, and goes away once the gateway answers the
/// device again (here: after the operator enrolls it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_reject_reads_as_words_and_clears_when_the_gateway_answers() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-new");
    let key = agent_key(&a_dir);
    let gw = Gateway::start_open(&dir.path().join("gw"), &[]).await;
    let a = Agent::start("pi-new", &a_dir, Some(gw.mqtt()), Some(gw.key)).await;
    assert!(
        eventually(Duration::from_secs(10), || !text(&doc_of(&a), "alert")
            .is_empty())
        .await
    );
    let alert = text(&doc_of(&a), "alert");
    assert!(
        alert.contains("refused this agent (unknown_agent"),
        "{alert}"
    );
    assert!(!alert.contains("Seq("), "{alert}");
    enroll(&gw, "pi-new", &key);
    a.append(0, 3).await;
    assert!(eventually(Duration::from_secs(60), || a.receipted() == a.head()).await);
    assert!(
        eventually(Duration::from_secs(10), || doc_of(&a).get("alert")
            == Some(&Value::Null))
        .await,
        "{:?}",
        doc_of(&a)
    );
    a.stop().await;
    gw.stop().await;
}

/// Every HTTP error is JSON that says what was wrong: a route that does not
/// exist, a query that does not parse, a method a route does not take.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_errors_are_json_whatever_refused_them() {
    let dir = tempfile::tempdir().unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gw = Gateway::start_config(&dir.path().join("gw"), &[], broker, |_| {}).await;
    let addr = gw.bound.http;
    let error_of = |status: u16, body: &str| -> String {
        let v = json::parse(body.as_bytes(), json::Mode::Verify)
            .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {body:?}"));
        text(v.as_object().unwrap(), "error")
    };
    let (status, body) = http::get(addr, "/api/v1/nothing-here").unwrap();
    assert_eq!(status, 404);
    assert!(
        error_of(status, &body).contains("no such route: GET /api/v1/nothing-here"),
        "{body}"
    );
    let (status, body) = http::get(addr, "/api/v1/agents/gw-e2e/entries?limit=many").unwrap();
    assert_eq!(status, 400);
    assert!(error_of(status, &body).contains("limit"), "{body}");
    let (status, body) = http::post(addr, "/api/v1/agents", b"{}").unwrap();
    assert_eq!(status, 405);
    assert!(
        error_of(status, &body).contains("POST /api/v1/agents"),
        "{body}"
    );
    gw.stop().await;
}

/// `run` without a key names the key file to create; an offline tool on a
/// running gateway's directory says a gateway holds it (and only then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_start_errors_blame_the_right_cause() {
    let dir = tempfile::tempdir().unwrap();
    let fresh = dir.path().join("fresh");
    let out = Command::new(bins::gateway())
        .args(["run", "--id", "gw-1", "--cluster", "c1"])
        .args([
            "--mqtt-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(&fresh)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(
        why.contains("gateway.key") && why.contains("keygen"),
        "{why}"
    );
    assert!(!why.contains("running gateway"), "{why}");

    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gdir = dir.path().join("gw");
    let gw = Gateway::start_config(&gdir, &[], broker, |_| {}).await;
    let out = Command::new(bins::gateway())
        .args(["agents", "--data-dir"])
        .arg(&gdir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(why.contains("a running gateway holds"), "{why}");
    // Stopped, the store is free at once: nothing of the gateway (its
    // broker's threads live on in this process) keeps it open.
    gw.stop().await;
    let out = Command::new(bins::gateway())
        .args(["agents", "--data-dir"])
        .arg(&gdir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
