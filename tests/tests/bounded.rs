//! Work an attacker on the host can make Baton do is bounded (issue 15,
//! findings 1–5), performed for real against running daemons.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use baton_shared::AgentId;
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::{bins, eventually, http};

/// Whether the peer closed `s` within `limit` (a read of 0 or a reset).
fn closed_by_peer(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

/// A thousand idle TCP connections to the HTTP port: the gateway keeps at
/// most `http_max_connections` of them (closing the rest at accept, counted),
/// closes those that never send a request within the header timeout, and
/// meanwhile MQTT — ingest and receipts — goes on; then HTTP answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_http_connections_exhaust_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let a_dir = dir.path().join("pi-a");
    let keys = [(AgentId::new("pi-a").unwrap(), agent_key(&a_dir))];
    let listen = "127.0.0.1:0".parse().unwrap();
    let broker = baton_gateway::config::Broker::Embedded { listen };
    let gw = Gateway::start_config(&dir.path().join("gw"), &keys, broker, |c| {
        c.security.http.max_connections = 32;
        c.security.http.header_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = gw.bound.http;
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // MQTT is untouched: an agent connects, delivers and is receipted.
    let a = Agent::start("pi-a", &a_dir, Some(gw.mqtt()), Some(gw.key)).await;
    a.append(0, 20).await;
    assert!(eventually(Duration::from_secs(30), || a.receipted() == a.head()).await);
    // Every idle connection is closed by the gateway: most at accept, the
    // ones it kept once the header timeout passed.
    let still_open = tokio::task::spawn_blocking(move || {
        let mut open = 0;
        for s in &mut idle {
            if !closed_by_peer(s, Duration::from_secs(10)) {
                open += 1;
            }
        }
        open
    })
    .await
    .unwrap();
    assert_eq!(still_open, 0, "idle connections the gateway kept open");
    // and HTTP serves again, having counted what it refused
    let (status, body) = http::get(addr, "/healthz").unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let refused = http::metric(addr, "baton_http_connections_refused_total");
    assert!(refused >= 900.0, "{refused} refused");
    a.stop().await;
    gw.stop().await;
}

fn rss_kb(pid: u32) -> u64 {
    baton_runtime::proc::rss_kb(pid, "VmRSS:")
}

/// 400 connections to the agent's append socket, each with 200 KiB of an
/// unfinished line: the agent serves at most 64 of them (the rest hear
/// `busy`), closes those that do not finish their line in time, and grows
/// by at most what 64 lines can take; then appends go through again.
#[tokio::test]
async fn unfinished_lines_on_the_append_socket_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("pi-s");
    std::fs::create_dir_all(&data).unwrap();
    agent_key(&data);
    let mut daemon = Command::new(bins::agent())
        .args(["run", "--id", "pi-s", "--cluster", "c1", "--data-dir"])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let socket = data.join("agent.sock");
    assert!(eventually(Duration::from_secs(30), || socket.exists()).await);
    let before = rss_kb(daemon.id());
    let partial = vec![b' '; 200 * 1024];
    let mut flood = Vec::new();
    for _ in 0..400 {
        let Ok(mut s) = UnixStream::connect(&socket) else {
            continue;
        };
        s.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        // A refused connection may be gone before all of it is written.
        let _ = s.write_all(b"{\"event\":\"info\",\"data\":{\"pad\":\"");
        let _ = s.write_all(&partial);
        flood.push(s);
        // paced, so the agent has accepted each before the next
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(flood.len(), 400);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = rss_kb(daemon.id());
    let grown_mib = during.saturating_sub(before) / 1024;
    assert!(
        grown_mib <= 40,
        "the agent grew {grown_mib} MiB under 400 unfinished lines"
    );
    // Appends wait their turn: once the unfinished lines time out, one goes in.
    let append = || {
        Command::new(bins::agent())
            .args(["append", "--event", "info", "--socket"])
            .arg(&socket)
            .output()
            .unwrap()
    };
    let first = append();
    let why = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success() && why.contains("busy"), "{first:?}");
    let mut done = first;
    for _ in 0..60 {
        if done.status.success() {
            break;
        }
        let why = String::from_utf8_lossy(&done.stderr);
        assert!(why.contains("busy"), "{why}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        done = append();
    }
    assert!(done.status.success(), "{done:?}");
    drop(flood);
    // and the status counts what was refused and timed out
    let counters = || {
        let text = std::fs::read(data.join("status.json")).unwrap();
        let doc = baton_shared::json::parse(&text, baton_shared::json::Mode::Verify).unwrap();
        let c = doc.as_object().unwrap().get("counters").cloned().unwrap();
        let n = |k: &str| {
            c.as_object()
                .unwrap()
                .get(k)
                .unwrap()
                .as_exact_u64()
                .unwrap()
        };
        (n("socket_connections_refused"), n("socket_lines_timed_out"))
    };
    assert!(
        eventually(Duration::from_secs(5), || counters().1 >= 1).await,
        "{:?}",
        counters()
    );
    // 336 of the flood, and the appends that heard `busy`
    assert!(counters().0 > 336, "{:?}", counters());
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// CPU time (user + system, clock ticks) of a process so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the command's closing parenthesis; utime, stime are 14, 15
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// The gateway out of file descriptors (here: 128, then 300 idle MQTT
/// connections): accepting pauses after each failure instead of spinning a
/// core on EMFILE, HTTP still answers once the idle connections go, and it
/// accepts again.
#[tokio::test]
async fn out_of_descriptors_the_gateway_waits_instead_of_spinning() {
    use baton_tests::daemons::{free_port, gateway_key};
    let dir = tempfile::tempdir().unwrap();
    gateway_key(dir.path());
    let mqtt = format!("127.0.0.1:{}", free_port());
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut daemon = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 128 && exec {} run --id gw-fd --cluster c1 --data-dir {} --mqtt-listen {mqtt} --http-listen {http_addr}",
            bins::gateway().display(),
            dir.path().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || http::get(http_addr, "/healthz")
            .is_ok_and(|(s, _)| s == 200))
        .await
    );
    let idle: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(&mqtt).ok())
        .collect();
    assert!(idle.len() > 128, "only {} connections made", idle.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_ticks(daemon.id());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let spent = cpu_ticks(daemon.id()) - before;
    // A spinning accept loop costs a whole core: ~300 ticks in 3 s.
    assert!(spent < 60, "{spent} ticks of CPU in 3 s out of descriptors");
    drop(idle);
    assert!(
        eventually(Duration::from_secs(10), || http::get(http_addr, "/healthz")
            .is_ok_and(|(s, _)| s == 200))
        .await
    );
    assert!(TcpStream::connect(&mqtt).is_ok());
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// Finding 5: the embedded broker kept every retained message for its
/// life — 600 retained 250 KiB messages took it from 12 to 169 MiB. It now
/// keeps at most 32 MiB of them (and none over 256 KiB); past that a
/// retained message is still delivered, only not kept. With
/// `broker_auth = "none"`, so that no ACL stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_on_the_embedded_broker_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let gdir = dir.path().join("gw");
    std::fs::create_dir_all(&gdir).unwrap();
    let mqtt: std::net::SocketAddr = format!("127.0.0.1:{}", baton_tests::daemons::free_port())
        .parse()
        .unwrap();
    let mut gw = baton_tests::daemons::GatewayProc::start_as(
        &gdir,
        &[],
        baton_tests::daemons::Via::Embedded(mqtt),
        baton_tests::daemons::Role::default().arg("--broker-auth", "none"),
    );
    let pid = gw.pid().unwrap();
    let before = rss_kb(pid);
    let mut raw = baton_tests::raw::Raw::connect(mqtt, "flooder", "x", None)
        .await
        .unwrap();
    let payload = vec![b'r'; 250 * 1024];
    for i in 0..600 {
        raw.publish(&format!("junk/{i}"), true, payload.clone())
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kb(pid);
    let grown_mib = after.saturating_sub(before) / 1024;
    // A new subscriber gets what was kept: at most 32 MiB of it.
    let mut reader = baton_tests::raw::Raw::connect(mqtt, "reader", "x", None)
        .await
        .unwrap();
    reader.subscribe("junk/#").await;
    let mut kept = 0usize;
    while let Ok(Some(p)) =
        tokio::time::timeout(Duration::from_secs(2), reader.incoming.recv()).await
    {
        if let rumqttc::Packet::Publish(p) = p {
            kept += p.payload.len();
        }
    }
    gw.kill();
    eprintln!("600 retained 250 KiB messages: broker grew {grown_mib} MiB, {kept} bytes kept");
    assert!(kept > 0, "retained messages are still kept, within bounds");
    assert!(kept <= 32 * 1024 * 1024, "{kept} bytes retained");
    assert!(
        grown_mib <= 80,
        "the broker grew {grown_mib} MiB under 150 MiB of retained messages"
    );
}
