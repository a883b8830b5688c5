//! The device build, emulated: the aarch64 agent binary (CI: the
//! release-small `aarch64-unknown-linux-musl` build) runs under
//! qemu-aarch64 against an x86 gateway on loopback. Its identity is made by
//! its own `keygen`, entries go in through its own `ingest` and `append`
//! (also under qemu), and every one is receipted; the gateway's copy is the
//! agent's chain byte for byte.
//!
//! `BATON_CROSS_AGENT` names the binary; without it the test is skipped,
//! unless `BATON_REQUIRE_CROSS=1` (CI), which makes that a failure.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_shared::json::{Mode, Value, parse};
use baton_shared::verify::verify_text;
use baton_shared::{AgentId, PublicKey};
use baton_tests::daemons::Gateway;
use baton_tests::eventually;
use baton_tests::http::{gateway_chain, lines};

fn cross_agent() -> Option<PathBuf> {
    match std::env::var_os("BATON_CROSS_AGENT") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var("BATON_REQUIRE_CROSS").as_deref() != Ok("1"),
                "BATON_REQUIRE_CROSS=1 but BATON_CROSS_AGENT names no binary"
            );
            eprintln!("SKIPPED: set BATON_CROSS_AGENT to an aarch64 baton-agent");
            None
        }
    }
}

/// `baton-agent ARGS` under qemu-aarch64; its stdout, or a failure.
fn qemu(bin: &Path, args: &[&str]) -> String {
    let out = Command::new("qemu-aarch64")
        .arg(bin)
        .args(args)
        .output()
        .expect("qemu-aarch64 (Debian package qemu-user)");
    assert!(
        out.status.success(),
        "baton-agent {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn status(dir: &Path) -> Option<Value> {
    let text = std::fs::read(dir.join("status.json")).ok()?;
    parse(&text, Mode::Verify).ok()
}

fn field(v: &Value, path: &[&str]) -> Option<u64> {
    let mut v = v;
    for k in path {
        let Value::Object(o) = v else { return None };
        v = o.get(k)?;
    }
    v.as_exact_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aarch64_agent_under_qemu_is_receipted_by_an_x86_gateway() {
    let Some(bin) = cross_agent() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-arm");
    let dir_s = adir.to_str().unwrap();
    let hex = qemu(&bin, &["keygen", "--data-dir", dir_s]);
    let key = PublicKey::trusted_hex(hex.trim()).unwrap();
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &[(AgentId::new("pi-arm").unwrap(), key)],
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let socket = adir.join("agent.sock");
    let mut agent = Command::new("qemu-aarch64")
        .arg(&bin)
        .args([
            "run",
            "--id",
            "pi-arm",
            "--cluster",
            "c1",
            "--data-dir",
            dir_s,
        ])
        .arg("--gateway")
        .arg(format!("mqtt://{}", gw.mqtt()))
        .arg("--gateway-key")
        .arg(gw.key.to_hex())
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(60), || socket.exists()).await,
        "the emulated agent never opened its socket"
    );

    let jsonl = dir.path().join("readings.jsonl");
    let body: String = (0..1000)
        .map(|i| format!("{{\"event\":\"reading\",\"data\":{{\"i\":{i}}}}}\n"))
        .collect();
    std::fs::write(&jsonl, body).unwrap();
    let sock = socket.to_str().unwrap();
    qemu(&bin, &["ingest", "--socket", sock, jsonl.to_str().unwrap()]);
    let answer = qemu(
        &bin,
        &[
            "append",
            "--socket",
            sock,
            "--event",
            "done",
            "--data",
            "{\"n\":1000}",
        ],
    );
    assert!(answer.contains("1002"), "append answered: {answer}");

    // genesis, 1000 readings, one `done`: all receipted
    assert!(
        eventually(Duration::from_secs(120), || status(&adir).is_some_and(
            |s| { field(&s, &["head", "seq"]) >= Some(1002) && field(&s, &["backlog"]) == Some(0) }
        ))
        .await,
        "not all receipted: {:?}",
        status(&adir)
    );
    let _ = Command::new("kill").arg(agent.id().to_string()).status();
    let _ = agent.wait();

    let g = gateway_chain(gw.bound.http, "pi-arm");
    assert!(lines(&g) >= 1002, "gateway holds {} entries", lines(&g));
    let mine = qemu(&bin, &["export", "--data-dir", dir_s, "--format", "jsonl"]);
    assert!(
        g == mine.as_bytes(),
        "the gateway's chain differs from the agent's own export"
    );
    let v = verify_text(&g, Some(key));
    assert!(v.is_valid(), "{v:?}");
    gw.stop().await;
}
