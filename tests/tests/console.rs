//! The web console (issue 18) in a real headless Chromium: the page loads
//! from the gateway with no script error and no console error, a click
//! drills down from the fleet to a cluster to an agent and shows its
//! entries, and a command issued from the page shows its answers filling
//! in. Screenshots go to `target/artefacts/` (CI keeps them).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use baton_shared::AgentId;
use baton_tests::browser::Browser;
use baton_tests::daemons::{Agent, Gateway, agent_key};
use baton_tests::{eventually, http};
use fantoccini::Locator;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_drills_down_to_an_agent_and_commands_the_fleet_from_the_page() {
    let Some(browser) = Browser::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let names = ["pi-a", "pi-b"];
    let trusted: Vec<_> = names
        .iter()
        .map(|n| (AgentId::new(*n).unwrap(), agent_key(&dir.path().join(n))))
        .collect();
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &trusted,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = gw.bound.http;
    let mut agents = Vec::new();
    for n in names {
        let extra = baton_agent::RawConfig {
            heartbeat: Some("200ms".into()),
            ..Default::default()
        };
        agents.push(
            Agent::start_with(n, &dir.path().join(n), Some(gw.mqtt()), Some(gw.key), extra).await,
        );
    }
    for n in names {
        assert!(
            eventually(WAIT, || http::agent_state(addr, n) == "active").await,
            "{n} never active"
        );
    }
    agents[0].append_marked(0, 5).await;
    let c = &browser.client;

    // the fleet: counts by state, the cluster table
    c.goto(&format!("http://{addr}/")).await.unwrap();
    let tiles = browser.wait_text("#fleet-tiles", "active", WAIT).await;
    assert!(tiles.contains("agents"), "{tiles}");
    browser.wait_text("table.clusters", "gw-e2e", WAIT).await;
    browser.shot("console-fleet").await;

    // a click on the cluster: its agents, searched and paged by the gateway
    let cluster = http::json(addr, "/api/v1/fleet");
    let cluster = cluster
        .as_object()
        .unwrap()
        .get("cluster")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    c.find(Locator::Css(&format!(
        "table.clusters a[href='#/cluster/{cluster}']"
    )))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    let list = browser.wait_text("table.agents", "pi-b", WAIT).await;
    assert!(list.contains("pi-a") && list.contains("active"), "{list}");
    // a search narrows the list on the server
    c.find(Locator::Id("agent-search"))
        .await
        .unwrap()
        .send_keys("pi-b\n")
        .await
        .unwrap();
    browser.wait_text("#agent-total", "1 agent ·", WAIT).await;
    let list = browser.wait_text("table.agents", "pi-b", WAIT).await;
    assert!(!list.contains("pi-a"), "{list}");
    browser.shot("console-cluster").await;

    // a click on an agent: its state, chart, chain and recent entries
    c.goto(&format!("http://{addr}/#/cluster/{cluster}"))
        .await
        .unwrap();
    browser.wait_text("table.agents", "pi-a", WAIT).await;
    c.find(Locator::Css("table.agents a[href='#/agent/pi-a']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let entries = browser.wait_text("#entries", "marker-000004", WAIT).await;
    assert!(entries.contains("reading"), "{entries}");
    // live: an entry appended now appears without a reload
    agents[0].append_marked(5, 1).await;
    browser.wait_text("#entries", "marker-000005", WAIT).await;
    c.find(Locator::Id("verify"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser
        .wait_text("#verify-result", "verified through seq", WAIT)
        .await;
    browser.shot("console-agent").await;

    // a command from the page: the operator's token, an order, its answers
    c.goto(&format!("http://{addr}/#/commands")).await.unwrap();
    let token = http::token_of(addr).unwrap();
    let field = c.find(Locator::Id("token")).await.unwrap();
    field.send_keys(&token).await.unwrap();
    // the token is taken when the field changes (loses focus)
    c.find(Locator::Id("payload"))
        .await
        .unwrap()
        .send_keys(r#"{"reading":"from-the-console"}"#)
        .await
        .unwrap();
    c.find(Locator::Css("#verb option[value='record']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.find(Locator::Id("issue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    browser.wait_text("#decision", "PROCEED", WAIT).await;
    let answers = browser.wait_text("#answers", "pi-b", WAIT).await;
    assert_eq!(
        answers.matches("ready").count(),
        2,
        "both agents answered ready: {answers}"
    );
    browser.shot("console-command").await;

    let errors = browser.errors().await;
    assert!(errors.is_empty(), "the page reported errors: {errors:?}");
    browser.close().await;
    for a in agents {
        a.stop().await;
    }
    gw.stop().await;
}

/// Rows of a page of `/api/v1/fleet/agents`: (id, state).
fn page_rows(addr: std::net::SocketAddr, query: &str) -> (u64, Vec<(String, String)>) {
    let v = http::json(addr, &format!("/api/v1/fleet/agents?{query}"));
    let o = v.as_object().unwrap();
    let total = o.get("total").unwrap().as_exact_u64().unwrap();
    let baton_shared::json::Value::Array(rows) = o.get("rows").unwrap() else {
        panic!("no rows in {v:?}")
    };
    let rows = rows
        .iter()
        .map(|r| {
            let r = r.as_object().unwrap();
            let s = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap().to_owned();
            (s("id"), s("state"))
        })
        .collect();
    (total, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_list_is_searched_filtered_sorted_and_paged_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    // 120 enrolled agents, never heard (offline), and one running
    let mut trusted: Vec<_> = (0..120)
        .map(|i| {
            let key = baton_shared::SecretKey::from_seed(&[u8::try_from(i).unwrap() + 1; 32]);
            (AgentId::new(format!("dev-{i:03}")).unwrap(), key.public())
        })
        .collect();
    trusted.push((
        AgentId::new("live-1").unwrap(),
        agent_key(&dir.path().join("live-1")),
    ));
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &trusted,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = gw.bound.http;
    let live = Agent::start(
        "live-1",
        &dir.path().join("live-1"),
        Some(gw.mqtt()),
        Some(gw.key),
    )
    .await;
    assert!(eventually(WAIT, || http::agent_state(addr, "live-1") == "active").await);

    // paged: 121 in all, 50 a page, the third page holds the last 21
    let (total, rows) = page_rows(addr, "per=50&page=3");
    assert_eq!((total, rows.len()), (121, 21));
    assert_eq!(rows[0].0, "dev-100");
    // searched on the server
    let (total, rows) = page_rows(addr, "q=dev-11");
    assert_eq!(total, 10, "{rows:?}");
    // filtered by state, and sorted either way
    let (total, rows) = page_rows(addr, "state=active");
    assert_eq!((total, rows[0].0.as_str()), (1, "live-1"));
    let (total, _) = page_rows(addr, "state=offline");
    assert_eq!(total, 120);
    let (_, rows) = page_rows(addr, "sort=id&order=desc&per=2");
    assert_eq!(rows[0].0, "live-1");
    assert_eq!(rows[1].0, "dev-119");
    // the heard agent has an impedance: first by impedance either way
    let (_, rows) = page_rows(addr, "sort=impedance&order=desc&per=1");
    assert_eq!(rows[0].0, "live-1");
    // every bad parameter is a 400 naming it
    for (query, field) in [
        ("sort=colour", "sort:"),
        ("order=up", "order:"),
        ("per=0", "per:"),
        ("per=501", "per:"),
        ("page=0", "page:"),
        ("state=asleep", "state:"),
        ("page=x", "page"),
    ] {
        let (status, body) = http::get(addr, &format!("/api/v1/fleet/agents?{query}")).unwrap();
        assert_eq!(status, 400, "{query}: {body}");
        assert!(
            body.starts_with("{\"error\":") && body.contains(field),
            "{query}: {body}"
        );
    }
    live.stop().await;
    gw.stop().await;
}

/// Appends raw append requests to `agent`; every one must be taken.
async fn append_lines(agent: &Agent, lines: &[&str]) {
    let answers = baton_agent::socket::client::send_lines(
        &agent.ready.socket,
        lines.iter().map(|l| l.as_bytes().to_vec()).collect(),
    )
    .await
    .unwrap();
    for a in &answers {
        assert!(a.is_ok(), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_lessons_points_in_time_and_resumed_watches_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-r");
    let trusted = [(AgentId::new("pi-r").unwrap(), agent_key(&adir))];
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &trusted,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = gw.bound.http;
    let agent = Agent::start("pi-r", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    append_lines(
        &agent,
        &[
            r#"{"event":"task_start","context":"shift-1","data":{"task_id":"calibrate"}}"#,
            r#"{"event":"error","context":"shift-1","data":{"message":"lens <b>fogged</b> | twice"}}"#,
            r#"{"event":"task_result","context":"shift-1","data":{"task_id":"calibrate","status":"ok"}}"#,
            r#"{"event":"lesson","context":"shift-1","data":{"trauma":"fogged lens","root_cause":"condensation","correction":"heater on","lesson":"warm the lens first"}}"#,
            r#"{"event":"info","context":"shift-2","data":{"message":"other session"}}"#,
        ],
    )
    .await;
    let head = agent.head();
    assert!(
        eventually(WAIT, || baton_tests::http::agent_field(
            addr, "pi-r", "head_seq"
        ) == Some(baton_shared::json::Value::from(head)))
        .await
    );

    // status.json: the session the agent works in, and its last task
    let status_has = |want: &[&str]| {
        std::fs::read_to_string(adir.join("status.json"))
            .is_ok_and(|t| want.iter().all(|w| t.contains(w)))
    };
    assert!(
        eventually(WAIT, || status_has(&[
            "\"session_id\":\"shift-2\"",
            "\"last_task_id\":\"calibrate\""
        ]))
        .await,
        "{:?}",
        std::fs::read_to_string(adir.join("status.json"))
    );

    // the session report: tasks with durations, errors escaped, lessons
    let (status, md) = http::get(addr, "/api/v1/agents/pi-r/report?context=shift-1").unwrap();
    assert_eq!(status, 200, "{md}");
    assert!(md.contains("## Session shift-1"), "{md}");
    assert!(!md.contains("shift-2"), "{md}");
    assert!(
        md.contains("| calibrate |") && md.contains("| ok |"),
        "{md}"
    );
    assert!(md.contains(r"lens \<b\>fogged\</b\> \| twice"), "{md}");
    assert!(md.contains("**warm the lens first**"), "{md}");
    let (status, html) = http::get(
        addr,
        "/api/v1/agents/pi-r/report?context=shift-1&format=html",
    )
    .unwrap();
    assert_eq!(status, 200);
    assert!(
        html.contains("<table>") && !html.contains("<b>fogged"),
        "{html}"
    );
    // lessons across the fleet, grouped
    let (_, lessons) = http::get(addr, "/api/v1/lessons").unwrap();
    assert!(
        lessons.contains("## warm the lens first (1 times, 1 agents)"),
        "{lessons}"
    );
    // bad parameters are 400s naming the field
    for (path, field) in [
        ("/api/v1/agents/pi-r/report?format=pdf", "format:"),
        ("/api/v1/agents/pi-r/report?since=yesterday-ish", "since:"),
        ("/api/v1/agents/pi-r/report?at=99999", "at:"),
        ("/api/v1/agents/pi-r/entries?limit=0", "limit:"),
        ("/api/v1/agents/pi-r/entries?event=Bad", "event:"),
        ("/api/v1/agents/pi-r/export?at=0", "at:"),
        ("/api/v1/agents/pi-r/export?format=daily", "day:"),
        ("/api/v1/agents/pi-r/export?to=3&at=2", "to and at"),
        ("/api/v1/watch?from=2", "from:"),
    ] {
        let (status, body) = http::get(addr, path).unwrap();
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(field), "{path}: {body}");
    }
    let (status, body) = http::get(addr, "/api/v1/watch?agent=nobody").unwrap();
    assert_eq!(status, 404, "{body}");

    // Get: by event and context
    let (_, lines) = http::get(addr, "/api/v1/agents/pi-r/entries?event=task_start").unwrap();
    assert_eq!(lines.lines().count(), 1, "{lines}");
    let (_, lines) = http::get(addr, "/api/v1/agents/pi-r/entries?context=shift-1").unwrap();
    assert_eq!(lines.lines().count(), 4, "{lines}");
    let (_, lines) = http::get(addr, "/api/v1/agents/pi-r/entries?from=2&to=3").unwrap();
    assert_eq!(lines.lines().count(), 2, "{lines}");

    // point in time: a baton at seq 3 holds 1..3 and verifies whole
    let (status, baton) =
        http::get(addr, "/api/v1/agents/pi-r/export?at=3&context=incident-7").unwrap();
    assert_eq!(status, 200, "{baton}");
    let b = baton_shared::export::load_baton(
        baton.as_bytes(),
        baton_shared::export::BatonTrust::Key(&trusted[0].1),
    )
    .unwrap();
    assert_eq!((b.summary.first_seq.0, b.summary.head_seq.0), (1, 3));
    assert!(b.authenticated && !b.truncated, "{:?}", b.summary);
    assert!(baton.contains("\"context\":\"incident-7\""));
    // the same point named by its hash
    let third = http::get(addr, "/api/v1/agents/pi-r/entries?from=3&to=3")
        .unwrap()
        .1;
    let hash = baton_shared::json::parse(third.trim().as_bytes(), baton_shared::json::Mode::Verify)
        .unwrap()
        .as_object()
        .unwrap()
        .get("hash")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let (_, by_hash) = http::get(
        addr,
        &format!("/api/v1/agents/pi-r/export?at={hash}&format=jsonl"),
    )
    .unwrap();
    assert_eq!(by_hash.lines().count(), 3, "{by_hash}");
    let (_, md) = http::get(addr, &format!("/api/v1/agents/pi-r/report?at={hash}")).unwrap();
    assert!(
        md.contains("taken as of seq 3") && !md.contains("warm the lens"),
        "{md}"
    );

    // Watch resumes: from=, and after a Last-Event-ID, each entry once
    let mut w = http::EventStream::open(addr, "/api/v1/watch?agent=pi-r&from=2").unwrap();
    let first = w.next_data().unwrap();
    assert!(first.contains("\"seq\":2"), "{first}");
    let mut w = http::EventStream::open_after(
        addr,
        "/api/v1/watch?agent=pi-r",
        Some(&format!("pi-r:{}", head - 1)),
    )
    .unwrap();
    let last = w.next_data().unwrap();
    assert!(last.contains(&format!("\"seq\":{head}")), "{last}");
    agent.append_marked(0, 1).await;
    let live = w.next_data().unwrap();
    assert!(live.contains(&format!("\"seq\":{}", head + 1)), "{live}");

    agent.stop().await;
    // the watch streams are still open: the gateway stops all the same
    // (it used to wait for them forever)
    let stopped = tokio::time::timeout(Duration::from_secs(30), gw.stop()).await;
    assert!(
        stopped.is_ok(),
        "the gateway did not stop while watch streams were open"
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_rollback_is_recorded_told_to_local_programs_and_applied_by_reports() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    // who may: root or the agent's own user, nobody else on the socket
    assert!(baton_agent::socket::may_roll_back(Some(0), 1000));
    assert!(baton_agent::socket::may_roll_back(Some(1000), 1000));
    assert!(!baton_agent::socket::may_roll_back(Some(1001), 1000));
    assert!(!baton_agent::socket::may_roll_back(None, 1000));

    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-p");
    let trusted = [(AgentId::new("pi-p").unwrap(), agent_key(&adir))];
    let gw = Gateway::start(
        &dir.path().join("gw"),
        &trusted,
        None,
        "127.0.0.1:0".parse().unwrap(),
    )
    .await;
    let addr = gw.bound.http;
    let agent = Agent::start("pi-p", &adir, Some(gw.mqtt()), Some(gw.key)).await;
    agent.append_marked(0, 5).await; // seqs 2..6
    let socket = agent.ready.socket.clone();

    // a local program serving commands, to be told
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let (read, mut write) = stream.into_split();
    write.write_all(b"{\"serve\":[\"act\"]}\n").await.unwrap();
    let mut program = tokio::io::BufReader::new(read).lines();
    let hello = program.next_line().await.unwrap().unwrap();
    assert!(hello.contains("serving"), "{hello}");

    // refused, naming what is wrong; nothing written
    let head = agent.head();
    for (to, reason, field) in [("99", "x", "to: seq 99"), ("3", " ", "pitr.reason")] {
        let v = baton_agent::socket::client::pitr(&socket, to, reason, None)
            .await
            .unwrap();
        let text = String::from_utf8(baton_shared::canonical::to_vec(&v)).unwrap();
        assert!(text.contains(field), "{text}");
    }
    assert_eq!(agent.head(), head);

    // another user on the device, let onto the socket (its directory and
    // mode opened up for the test): refused by its uid, nothing written
    // (/proc/self belongs to this process's effective user)
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if root {
        use std::os::unix::fs::PermissionsExt;
        let mut p = socket.clone();
        while let Some(parent) = p.parent().map(std::path::Path::to_path_buf) {
            if parent == std::path::Path::new("/") {
                break;
            }
            let mode = std::fs::metadata(&parent).unwrap().permissions().mode();
            std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(mode | 0o011))
                .unwrap();
            p = parent;
        }
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(baton_tests::bins::agent())
            .args(["pitr", "--to", "3", "--reason", "not mine", "--socket"])
            .arg(&socket)
            .output()
            .expect("setpriv (util-linux) runs the client as another user");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains("only root or the agent's own user") && err.contains("uid: 65534"),
            "{err}"
        );
        assert_eq!(agent.head(), head);
    } else {
        eprintln!("SKIPPED the other-user attempt: it needs root to act as another user");
    }

    // back to seq 3
    let v = baton_agent::socket::client::pitr(&socket, "3", "bad calibration", Some("test-op"))
        .await
        .unwrap();
    let text = String::from_utf8(baton_shared::canonical::to_vec(&v)).unwrap();
    assert!(text.contains(&format!("\"seq\":{}", head + 1)), "{text}");
    assert_eq!(agent.head(), head + 1);
    let told = tokio::time::timeout(WAIT, program.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        told.contains("\"pitr\"") && told.contains("bad calibration"),
        "{told}"
    );

    // the entry reaches the gateway; its report applies it
    assert!(
        eventually(WAIT, || http::agent_field(addr, "pi-p", "head_seq")
            == Some(baton_shared::json::Value::from(head + 1)))
        .await
    );
    let chain = String::from_utf8(http::gateway_chain(addr, "pi-p")).unwrap();
    let last = chain.lines().last().unwrap();
    assert!(
        last.contains("\"event\":\"pitr\"") && last.contains("\"seq\":3}"),
        "{last}"
    );
    let (_, md) = http::get(addr, "/api/v1/agents/pi-p/report").unwrap();
    assert!(md.contains("reading 2") && md.contains("pitr 1"), "{md}");
    agent.stop().await;
    gw.stop().await;
}

/// Every `<agent>/*.jsonl` under `dir`, oldest day first, one after another.
fn daily_text(dir: &std::path::Path, agent: &str) -> String {
    let Ok(listing) = std::fs::read_dir(dir.join(agent)) else {
        return String::new();
    };
    let mut files: Vec<_> = listing.map(|f| f.unwrap().path()).collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_daily_files_follow_the_chains_and_are_written_again_when_lost() {
    use baton_tests::daemons::{GatewayProc, Role, Via, free_port};
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir, daily) = (
        dir.path().join("gw"),
        dir.path().join("pi-d"),
        dir.path().join("daily"),
    );
    let trusted = [(AgentId::new("pi-d").unwrap(), agent_key(&adir))];
    let mqtt: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = GatewayProc::start_as(
        &gdir,
        &trusted,
        Via::Embedded(mqtt),
        Role::default().arg("--daily-dir", daily.to_str().unwrap()),
    );
    let agent = Agent::start("pi-d", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(0, 300).await;
    let head = agent.head();
    // the files hold exactly the stored chain as it grows (read between
    // two reads of the chain: the gateway's own grows meanwhile)
    let addr = gw.http;
    let follows = |agent: &str, lines: usize| {
        let before = http::gateway_chain(addr, agent);
        let files = daily_text(&daily, agent);
        let after = http::gateway_chain(addr, agent);
        http::lines(&before) >= lines
            && files.as_bytes().starts_with(&before)
            && after.starts_with(files.as_bytes())
    };
    let lines = usize::try_from(head).unwrap();
    assert!(
        eventually(WAIT, || follows("pi-d", lines)).await,
        "{} lines",
        http::lines(daily_text(&daily, "pi-d").as_bytes())
    );
    // the gateway's own chain too
    assert!(eventually(WAIT, || follows("gw-proc", 1)).await);
    assert!(http::metric(gw.http, "baton_daily_lines_total") >= 300.0);
    gw.kill();

    // lost: the agent's files deleted, the own chain's last line torn
    std::fs::remove_dir_all(daily.join("pi-d")).unwrap();
    let mut own: Vec<_> = std::fs::read_dir(daily.join("gw-proc"))
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    own.sort();
    let newest = own.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(newest)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    // and the agent goes on while the gateway is away
    agent.append(300, 100).await;

    gw.restart();
    let lines = usize::try_from(agent.head()).unwrap();
    assert!(
        eventually(WAIT, || follows("pi-d", lines)).await,
        "{} lines",
        http::lines(daily_text(&daily, "pi-d").as_bytes())
    );
    assert!(eventually(WAIT, || follows("gw-proc", 1)).await);
    assert_eq!(http::metric(gw.http, "baton_daily_errors_total"), 0.0);
    agent.stop().await;
}

/// `cmd` (a shell command) run on a terminal (`script` gives it one):
/// everything it drew there, stdout and stderr together.
fn on_a_terminal(cmd: &str) -> String {
    let out = std::process::Command::new("script")
        .args(["-qec", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script (util-linux) runs a command on a terminal");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{cmd}: {text}");
    text
}

/// `args` run with stdout and stderr piped: (stdout, stderr).
fn piped(bin: &std::path::Path, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(bin).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{args:?}: {stdout} {stderr}");
    (stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_work_shows_progress_on_a_terminal_and_is_quiet_otherwise() {
    use baton_tests::bins;
    use baton_tests::daemons::{GatewayProc, Via, free_port};
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-p"));
    let trusted = [(AgentId::new("pi-p").unwrap(), agent_key(&adir))];
    let mqtt: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gw = GatewayProc::start(&gdir, &trusted, Via::Embedded(mqtt));
    let agent = Agent::start("pi-p", &adir, Some(mqtt), Some(gw.key)).await;
    let (agent_bin, gateway_bin) = (bins::agent(), bins::gateway());
    let (a, g) = (agent_bin.display(), gateway_bin.display());

    // ingest of a file, on a terminal and piped
    let file = dir.path().join("log.jsonl");
    let log: String = (0..3000)
        .map(|i| format!("{{\"event\":\"note\",\"data\":{{\"n\":{i}}}}}\n"))
        .collect();
    std::fs::write(&file, log).unwrap();
    let socket = agent.ready.socket.display().to_string();
    let file = file.display().to_string();
    let shown = on_a_terminal(&format!("{a} ingest --socket {socket} {file}"));
    assert!(
        shown.contains("ingesting") && shown.contains("3000 appended, 0 rejected"),
        "{shown}"
    );
    let (out, err) = piped(&agent_bin, &["ingest", "--socket", &socket, &file]);
    assert_eq!(
        (out.trim(), err.as_str()),
        ("3000 appended, 0 rejected", "")
    );
    let head = usize::try_from(agent.head()).unwrap();
    assert!(
        eventually(WAIT, || http::lines(&http::gateway_chain(gw.http, "pi-p"))
            == head)
        .await
    );

    // load of a baton into the running gateway (all of it held already)
    agent.stop().await;
    let adir_s = adir.display().to_string();
    let baton = dir.path().join("pi-p.baton.json").display().to_string();
    piped(
        &agent_bin,
        &[
            "export",
            "--data-dir",
            &adir_s,
            "--format",
            "baton",
            "--out",
            &baton,
        ],
    );
    let token = gdir.join("operator.token").display().to_string();
    let url = format!("http://{}", gw.http);
    let load = format!("load --http {url} --token-file {token} {baton}");
    let shown = on_a_terminal(&format!("{g} {load}"));
    assert!(
        shown.contains("loading") && shown.contains("already_held"),
        "{shown}"
    );
    let args: Vec<&str> = load.split(' ').collect();
    let (out, err) = piped(&gateway_bin, &args);
    assert!(
        out.contains("already_held") && err.is_empty(),
        "{out} {err}"
    );

    // verify and export, the agent's and the stopped gateway's
    gw.kill();
    let gdir_s = gdir.display().to_string();
    let out_file = dir.path().join("out.jsonl").display().to_string();
    for (bin, args, says) in [
        (
            &agent_bin,
            vec!["verify", "--data-dir", &adir_s],
            "verifying pi-p",
        ),
        (
            &agent_bin,
            vec!["export", "--data-dir", &adir_s, "--out", &out_file],
            "exporting",
        ),
        (
            &gateway_bin,
            vec!["verify", "--data-dir", &gdir_s],
            "verifying pi-p",
        ),
        (
            &gateway_bin,
            vec![
                "export",
                "--data-dir",
                &gdir_s,
                "--agent",
                "pi-p",
                "--out",
                &out_file,
            ],
            "exporting pi-p",
        ),
    ] {
        let shown = on_a_terminal(&format!("{} {}", bin.display(), args.join(" ")));
        assert!(shown.contains(says), "{args:?} on a terminal: {shown}");
        let (_, err) = piped(bin, &args);
        assert_eq!(err, "", "{args:?} piped");
    }
}
