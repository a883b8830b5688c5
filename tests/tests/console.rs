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
