//! The PostgreSQL archive (issue 19) against a real PostgreSQL server the
//! test makes and starts (`BATON_REQUIRE_POSTGRES=1` in CI): entries arrive
//! as the gateway stored them, PostgreSQL stopped mid-stream and started
//! again loses nothing and stores nothing twice, and the archive refuses
//! to be changed by hand.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use baton_shared::AgentId;
use baton_tests::daemons::{Agent, GatewayProc, Role, Via, agent_key, free_port};
use baton_tests::postgres::Postgres;
use baton_tests::{eventually, http};

const WAIT: Duration = Duration::from_secs(60);

/// `agent`'s archived rows: (count, hashes in seq order, comma-separated).
fn archived(pg: &Postgres, agent: &str) -> (u64, String) {
    let out = pg
        .sql(&format!(
            "SELECT count(*) || ' ' || coalesce(string_agg(encode(hash, 'hex'), ',' ORDER BY seq), '') \
             FROM baton_entries WHERE agent = '{agent}'"
        ))
        .unwrap_or_default();
    let (n, hashes) = out.split_once(' ').unwrap_or(("0", ""));
    (n.parse().unwrap_or(0), hashes.to_owned())
}

/// The hashes of the gateway's stored chain of `agent`, in seq order.
fn stored_hashes(addr: std::net::SocketAddr, agent: &str) -> String {
    let chain = http::gateway_chain(addr, agent);
    String::from_utf8(chain)
        .unwrap()
        .lines()
        .map(|l| {
            let at = l.find("\"hash\":\"").unwrap() + 8;
            l[at..at + 64].to_owned()
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A gateway in `dir/NAME` on its own embedded broker, as `role`, trusting
/// pi-a (whose files are in `dir/pi-a`): the gateway and its broker.
fn gateway_for_pi_a(
    dir: &std::path::Path,
    name: &str,
    role: Role,
) -> (GatewayProc, std::net::SocketAddr) {
    let trusted = [(AgentId::new("pi-a").unwrap(), agent_key(&dir.join("pi-a")))];
    let mqtt: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = GatewayProc::start_as(&dir.join(name), &trusted, Via::Embedded(mqtt), role);
    (gw, mqtt)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_holds_every_entry_once_through_a_postgres_restart_and_refuses_changes() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-a"));
    let (gw, mqtt) = gateway_for_pi_a(dir.path(), "gw", Role::default().arg("--archive", &pg.url));
    let agent = Agent::start("pi-a", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(0, 300).await;

    // every entry, as the gateway stored it, in seq order
    let head = agent.head();
    assert!(
        eventually(WAIT, || archived(&pg, "pi-a").0 == head).await,
        "{} of {head} archived",
        archived(&pg, "pi-a").0
    );
    assert_eq!(archived(&pg, "pi-a").1, stored_hashes(gw.http, "pi-a"));
    // the gateway's own chain too, and the chain heads
    assert!(eventually(WAIT, || archived(&pg, "gw-proc").0 > 0).await);
    assert_eq!(
        pg.sql("SELECT head_seq FROM baton_chains WHERE agent = 'pi-a'")
            .unwrap(),
        head.to_string()
    );

    // PostgreSQL stopped mid-stream, for a while, while the agent appends
    let appending = {
        let socket = agent.ready.socket.clone();
        tokio::spawn(async move {
            for chunk in 0..10u64 {
                let lines = (0..100u64)
                    .map(|i| {
                        format!(
                            "{{\"event\":\"note\",\"data\":{{\"n\":{}}}}}",
                            chunk * 100 + i
                        )
                        .into_bytes()
                    })
                    .collect();
                let answers = baton_agent::socket::client::send_lines(&socket, lines)
                    .await
                    .unwrap();
                assert!(answers.iter().all(Result::is_ok));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    pg.stop();
    appending.await.unwrap();
    let head = agent.head();
    // the gateway goes on receipting without it
    assert!(
        eventually(WAIT, || http::lines(&http::gateway_chain(gw.http, "pi-a"))
            == usize::try_from(head).unwrap())
        .await
    );
    assert!(
        eventually(WAIT, || http::metric(gw.http, "baton_archive_errors_total")
            >= 1.0)
        .await
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    pg.restart();
    // caught up: every entry once, nothing lost, nothing twice
    assert!(
        eventually(WAIT, || archived(&pg, "pi-a").0 == head).await,
        "{} of {head} archived",
        archived(&pg, "pi-a").0
    );
    assert_eq!(archived(&pg, "pi-a").1, stored_hashes(gw.http, "pi-a"));
    assert_eq!(
        pg.sql("SELECT count(*) FROM (SELECT agent, seq FROM baton_entries GROUP BY agent, seq HAVING count(*) > 1) d")
            .unwrap(),
        "0"
    );

    // the archive is evidence: it verifies under the keys the running
    // gateway enrolled, every chain it holds
    let gw_http = format!("http://{}", gw.http);
    let (ok, said) = verify_archive(&pg, &["--http", &gw_http]);
    assert!(ok, "{said}");
    assert!(
        said.contains("pi-a: valid: authenticated through seq"),
        "{said}"
    );
    assert!(said.contains("gw-proc: valid"), "{said}");

    // by hand: no change, no deletion, no truncation
    for sql in [
        "UPDATE baton_entries SET event = 'edited' WHERE agent = 'pi-a' AND seq = 2",
        "DELETE FROM baton_entries WHERE agent = 'pi-a' AND seq = 2",
        "TRUNCATE baton_entries",
    ] {
        let e = pg.sql(sql).unwrap_err();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    assert_eq!(archived(&pg, "pi-a").0, head);
    // the views answer
    assert_eq!(
        pg.sql("SELECT seq FROM baton_latest WHERE agent = 'pi-a'")
            .unwrap(),
        head.to_string()
    );
    assert!(
        pg.sql("SELECT sum(entries) FROM baton_entries_per_day")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= head
    );
    agent.stop().await;

    // the table's owner turns the trigger off and edits: verification
    // names both rows — a split-out column that no longer says what the
    // signed content says, and content that no longer has its hash
    pg.sql("ALTER TABLE baton_entries DISABLE TRIGGER USER")
        .unwrap();
    pg.sql("UPDATE baton_entries SET event = 'edited' WHERE agent = 'pi-a' AND seq = 5")
        .unwrap();
    pg.sql(
        "UPDATE baton_entries SET content = convert_to(replace(convert_from(content, 'UTF8'), \
         '\"seq\":7', '\"seq\":7,\"x\":1'), 'UTF8') WHERE agent = 'pi-a' AND seq = 7",
    )
    .unwrap();
    let (ok, said) = verify_archive(&pg, &["--http", &gw_http, "--agent", "pi-a"]);
    assert!(!ok, "{said}");
    assert!(
        said.contains("pi-a: invalid at line 6 (seq 7): hash mismatch"),
        "{said}"
    );
    assert!(said.contains("seq 5: event column \"edited\""), "{said}");
    // the keys can also come from a stopped gateway's data directory
    drop(gw);
    let gdir = gdir.display().to_string();
    let (ok, said) = verify_archive(&pg, &["--data-dir", &gdir, "--agent", "gw-proc"]);
    assert!(ok, "{said}");
    let (ok, said) = verify_archive(&pg, &["--data-dir", &gdir, "--agent", "pi-a"]);
    assert!(!ok && said.contains("hash mismatch"), "{said}");
}

/// `baton-gateway verify --archive` with `args`: whether it passed, and
/// what it said.
fn verify_archive(pg: &Postgres, args: &[&str]) -> (bool, String) {
    verify_archive_at(&pg.url, args)
}

/// As [`verify_archive`], of the archive at `url`.
fn verify_archive_at(url: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(baton_tests::bins::gateway())
        .args(["verify", "--archive", url])
        .args(args)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruned_gateway_keeps_what_the_archive_lacks_and_still_answers_and_exports() {
    let Some(mut pg) = Postgres::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (gdir, adir) = (dir.path().join("gw"), dir.path().join("pi-a"));
    let (mut gw, mqtt) = gateway_for_pi_a(
        dir.path(),
        "gw",
        Role::default()
            .arg("--archive", &pg.url)
            .arg("--retain-entries", "50"),
    );
    let held = |gw: &GatewayProc| http::lines(&http::gateway_chain(gw.http, "pi-a")) as u64;
    let agent = Agent::start("pi-a", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(0, 300).await;
    let head = agent.head();
    assert!(eventually(WAIT, || archived(&pg, "pi-a").0 == head).await);
    // archived (and no parent to wait for): all but the newest runs go
    assert!(
        eventually(WAIT, || held(&gw) < 150).await,
        "{} of {head} still held",
        held(&gw)
    );
    assert!(held(&gw) >= 50);
    assert!(http::metric(gw.http, "baton_archive_pruned_total") >= 150.0);

    // PostgreSQL away: what it does not hold stays, however long
    pg.stop();
    agent.append(300, 300).await;
    let head = agent.head();
    assert!(eventually(WAIT, || agent.receipted() == head).await);
    let kept_from = head - 300;
    tokio::time::sleep(Duration::from_secs(7)).await; // past a pruning round
    let chain = http::gateway_chain(gw.http, "pi-a");
    assert!(
        String::from_utf8_lossy(&chain).contains(&format!("\"seq\":{},", kept_from + 1)),
        "an entry the archive lacks was pruned"
    );
    pg.restart();
    assert!(eventually(WAIT, || archived(&pg, "pi-a").0 == head).await);
    assert!(
        eventually(WAIT, || held(&gw) < 150).await,
        "{} still held",
        held(&gw)
    );

    // the pruned gateway restarts clean, answers the agent's hello after
    // the agent restarts too, and takes what it appends next
    gw.restart();
    agent.stop().await;
    let agent = Agent::start("pi-a", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(600, 20).await;
    let head = agent.head();
    assert!(eventually(WAIT, || agent.receipted() == head).await);
    assert!(eventually(WAIT, || archived(&pg, "pi-a").0 == head).await);
    agent.stop().await;

    // what it holds exports and verifies; the archive holds the rest
    drop(gw);
    let out = std::process::Command::new(baton_tests::bins::gateway())
        .args(["export", "--agent", "pi-a", "--data-dir"])
        .arg(&gdir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = http::lines(&out.stdout) as u64;
    assert!((50..150).contains(&exported), "{exported} exported");
    let verdict = baton_shared::verify::verify_text(&out.stdout, Some(agent_key(&adir)));
    let summary = verdict.summary().unwrap();
    assert!(verdict.is_valid(), "{verdict}");
    assert_eq!(summary.head_seq.0, head);
    assert_eq!(summary.first_seq.0, head - exported + 1);
    let gdir = gdir.display().to_string();
    let (ok, said) = verify_archive(&pg, &["--data-dir", &gdir, "--agent", "pi-a"]);
    assert!(ok, "{said}");
    assert!(said.contains(&format!("seq 1..{head}")), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_archive_over_tls_trusts_only_the_ca_it_is_given() {
    let Some((pg, ca)) = Postgres::start_tls() else {
        return;
    };
    let url = format!("{}?sslmode=require", pg.url);
    let ca = ca.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let adir = dir.path().join("pi-a");
    let gateway = |name: &str, role: Role| gateway_for_pi_a(dir.path(), name, role);

    // without the test's CA the server's certificate is not trusted:
    // nothing reaches PostgreSQL, not even the schema
    let (gw, _) = gateway("gw-roots", Role::default().arg("--archive", &url));
    assert!(
        eventually(WAIT, || http::metric(gw.http, "baton_archive_errors_total")
            >= 2.0)
        .await
    );
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_tables WHERE tablename = 'baton_entries'")
            .unwrap(),
        "0"
    );
    drop(gw);

    // with it: archived over TLS
    let (gw, mqtt) = gateway(
        "gw-ca",
        Role::default()
            .arg("--archive", &url)
            .arg("--archive-ca", &ca),
    );
    let agent = Agent::start("pi-a", &adir, Some(mqtt), Some(gw.key)).await;
    agent.append(0, 50).await;
    let head = agent.head();
    assert!(eventually(WAIT, || archived(&pg, "pi-a").0 == head).await);
    assert_eq!(archived(&pg, "pi-a").1, stored_hashes(gw.http, "pi-a"));
    // the gateway's session is encrypted (psql's own is named "psql")
    assert_ne!(
        pg.sql(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE s.ssl AND a.application_name = ''"
        )
        .unwrap(),
        "0"
    );
    agent.stop().await;
    let gw_http = format!("http://{}", gw.http);
    let (ok, said) = verify_archive_at(&url, &["--http", &gw_http, "--archive-ca", &ca]);
    assert!(ok, "{said}");
    let (ok, said) = verify_archive_at(&url, &["--http", &gw_http]);
    assert!(!ok && said.contains("connecting"), "{said}");
}
