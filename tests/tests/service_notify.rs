//! The systemd protocol as the real binaries speak it: a test-owned
//! `NOTIFY_SOCKET` (what systemd gives a `Type=notify` service) receives
//! `READY=1` once the daemon serves, `WATCHDOG=1` repeatedly while it is
//! healthy (`WATCHDOG_USEC` set as `WatchdogSec=` would), and `STOPPING=1`
//! on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::daemons::free_port;

/// Collects the notify messages until `enough` says so or 30 s pass.
fn listen(sock: &UnixDatagram, mut enough: impl FnMut(&[String]) -> bool) -> Vec<String> {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !enough(&got) {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    got
}

fn notified(mut cmd: Command, dir: &Path) -> (Child, UnixDatagram) {
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    cmd.env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "1000000") // ping every 0.5 s
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    (cmd.spawn().unwrap(), sock)
}

fn check(mut child: Child, sock: &UnixDatagram) {
    let got = listen(sock, |g| {
        g.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3
    });
    let ready = got.iter().position(|m| m.contains("READY=1"));
    let first_ping = got.iter().position(|m| m.contains("WATCHDOG=1"));
    assert!(ready.is_some(), "{got:?}");
    assert!(
        got.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 3,
        "{got:?}"
    );
    assert!(ready < first_ping, "READY before the first ping: {got:?}");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let got = listen(sock, |g| g.iter().any(|m| m.contains("STOPPING=1")));
    assert!(got.iter().any(|m| m.contains("STOPPING=1")), "{got:?}");
    assert!(child.wait().unwrap().success());
}

#[test]
fn the_agent_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    baton_tests::daemons::agent_key(&data);
    let mut cmd = Command::new(baton_tests::bins::agent());
    cmd.args(["run", "--id", "pi-sd", "--cluster", "c1", "--data-dir"])
        .arg(&data);
    let (child, sock) = notified(cmd, dir.path());
    check(child, &sock);
}

#[test]
fn the_gateway_tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    baton_runtime::keys::generate(&data.join("gateway.key")).unwrap();
    let mut cmd = Command::new(baton_tests::bins::gateway());
    cmd.args(["run", "--id", "gw-sd", "--cluster", "c1", "--data-dir"])
        .arg(&data)
        .arg("--mqtt-listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--http-listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    let (child, sock) = notified(cmd, dir.path());
    check(child, &sock);
}
