//! The web console: one page, its script and its style, compiled into the
//! binary (no CDN, no fetch from anywhere but this gateway: it works on an
//! isolated LAN), and the reads it is built on — the fleet's tree, agents
//! searched, filtered, sorted and paged on the server (30,000 agents stay
//! one small page), one agent in detail, and a stream that says when to
//! read again.
//!
//! The page holds no data of its own: every figure is one of these JSON
//! reads, which scripts may use as they are. Writes (commands, re-runs)
//! go through the operator's API like the CLI's.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_shared::json::{self, Mode, Object, Value};
use baton_shared::{AgentId, Seq};
use serde::Deserialize;

use super::{AppState, error, json_response, known_agent};

const INDEX: &str = include_str!("web/index.html");
const SCRIPT: &str = include_str!("web/console.js");
const STYLE: &str = include_str!("web/console.css");

/// Only this gateway's own script and style run or load; nothing is
/// framed; no address leaks in a referrer.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

impl AppState {
    pub(super) fn fleet(&self) -> std::sync::MutexGuard<'_, crate::fleet::FleetView> {
        self.fleet
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Recent alerts shown on the fleet page: the last this many `alert`
/// entries among the last [`ALERT_SCAN`] entries of the gateway's chain.
const ALERTS_SHOWN: usize = 10;
const ALERT_SCAN: u64 = 2_000;

/// The gateway's recent alerts, kept between requests: each request reads
/// only the own chain's entries committed since the last one (at most
/// `ALERT_SCAN`), so the fleet page costs the same however often it is
/// asked for.
#[derive(Debug, Default)]
pub struct RecentAlerts {
    /// The last own-chain seq read.
    through: Seq,
    /// Oldest first, at most [`ALERTS_SHOWN`].
    alerts: std::collections::VecDeque<Value>,
}

impl RecentAlerts {
    /// Reads the own chain on to its head; returns the alerts, newest first.
    fn catch_up(&mut self, store: &crate::store::Store, own: &AgentId) -> Vec<Value> {
        if let Ok(head) = store.head(own) {
            let mut next =
                Seq((self.through.0 + 1).max(head.seq.0.saturating_sub(ALERT_SCAN).max(1)));
            while next <= head.seq {
                let Ok(rows) = store.range(own, next, 256) else {
                    break;
                };
                let Some((last, _)) = rows.last() else {
                    break;
                };
                next = last.next();
                for (seq, e) in rows.into_iter().filter(|(s, _)| *s <= head.seq) {
                    self.through = seq;
                    // (canonical content: the key once, `event` then `seq`)
                    const ALERT: &[u8] = b"\"event\":\"alert\",";
                    if !e.content.windows(ALERT.len()).any(|w| w == ALERT) {
                        continue;
                    }
                    if let Ok(Value::Object(mut c)) = json::parse(&e.content, Mode::Verify) {
                        c.insert("seq", Value::from(seq.0));
                        if self.alerts.len() == ALERTS_SHOWN {
                            self.alerts.pop_front();
                        }
                        self.alerts.push_back(Value::Object(c));
                    }
                }
            }
        }
        self.alerts.iter().rev().cloned().collect()
    }
}

/// `GET /api/v1/fleet`: this gateway, its roll-up (live), every cluster it
/// knows with its gateway, parent and latest summary, how many agents it
/// knows in each, and its recent alerts.
pub async fn fleet(State(s): State<AppState>) -> Response {
    let s2 = s.clone();
    let alerts = tokio::task::spawn_blocking(move || recent_alerts(&s2))
        .await
        .unwrap_or_default();
    let now = baton_runtime::unix_ms();
    let live = s.registry().summary().to_value(s.cluster.as_str(), now);
    let f = s.fleet();
    let mut per_cluster: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    for n in f.agents().values() {
        *per_cluster.entry(n.cluster.as_str()).or_default() += 1;
    }
    let clusters: Vec<Value> = f
        .clusters()
        .iter()
        .map(|(c, n)| {
            let mut o = Object::new();
            o.insert("cluster", Value::from(c.as_str()));
            o.insert("gateway", Value::from(n.gateway.as_str()));
            o.insert(
                "parent",
                n.parent.as_deref().map_or(Value::Null, Value::from),
            );
            let summary = if *c == f.own_cluster() {
                live.clone()
            } else {
                n.summary
                    .as_deref()
                    .and_then(|b| json::parse(b, Mode::Verify).ok())
                    .unwrap_or(Value::Null)
            };
            o.insert("summary", summary);
            o.insert(
                "agents_known",
                Value::from(per_cluster.get(c.as_str()).copied().unwrap_or(0)),
            );
            Value::Object(o)
        })
        .collect();
    let mut o = Object::new();
    o.insert("gateway", Value::from(s.gateway.as_str()));
    o.insert("cluster", Value::from(s.cluster.as_str()));
    o.insert("version", Value::from(f.version()));
    o.insert("agents_known", Value::from(f.agents().len() as u64));
    drop(f);
    o.insert("summary", live);
    o.insert("clusters", Value::Array(clusters));
    o.insert("alerts", Value::Array(alerts));
    json_response(StatusCode::OK, &Value::Object(o))
}

/// The last alerts in the gateway's own chain, newest first.
fn recent_alerts(s: &AppState) -> Vec<Value> {
    s.alerts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .catch_up(&s.store, &s.gateway)
}

/// `GET /api/v1/fleet/agents?cluster=&q=&state=&sort=&order=&page=&per=`:
/// one page of the agents this gateway knows ([`crate::fleet::agent_page`]).
/// A bad parameter is a 400 naming it.
pub async fn agents(
    State(s): State<AppState>,
    Query(q): Query<crate::fleet::AgentQuery>,
) -> Response {
    let now = s.origin.elapsed();
    let page = {
        let f = s.fleet();
        let reg = s.registry();
        crate::fleet::agent_page(&f, &reg, &q, now)
    };
    match page {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /api/v1/agents/{id}/detail`: the registry row with the live
/// fields, the fleet view's cluster and state, the recent impedance, and
/// the stored chain's status — verified through its head on ingest, any
/// fork halt, gaps, and whether a start-up check set it aside.
pub async fn detail(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg),
    };
    let s2 = s.clone();
    let a2 = agent.clone();
    let stored = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let record = s2.store.agent(&a2)?;
        let gaps = s2.store.gaps(&a2)?;
        let damaged = s2.store.damage()?.into_iter().any(|(d, _)| d == a2);
        Ok((record, gaps, damaged))
    })
    .await;
    let (record, gaps, damaged) = match stored {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let Some(record) = record else {
        return error(StatusCode::NOT_FOUND, format!("unknown agent {agent}"));
    };
    let mut o = super::full_row(&s, &agent, &record);
    if let Some(n) = s.fleet().agent(&agent).cloned() {
        o.insert("cluster", Value::from(n.cluster));
        if !o.contains_key("state") {
            o.insert("state", n.state.map_or(Value::Null, Value::from));
            o.insert("state_reason", Value::from(n.reason));
            #[allow(clippy::cast_precision_loss)]
            o.insert("state_since_ms", Value::Number(n.since_ms as f64));
        }
    }
    o.insert(
        "impedance_history",
        s.registry()
            .impedance_history(&agent)
            .unwrap_or(Value::Array(Vec::new())),
    );
    let mut chain = Object::new();
    let head = o.get("head_seq").cloned().unwrap_or(Value::Null);
    chain.insert("verified_through", head);
    chain.insert(
        "gaps",
        Value::Array(
            gaps.iter()
                .map(|(f, t)| Value::Array(vec![Value::from(f.0), Value::from(t.0)]))
                .collect(),
        ),
    );
    chain.insert("set_aside", Value::Bool(damaged));
    o.insert("chain", Value::Object(chain));
    json_response(StatusCode::OK, &Value::Object(o))
}

/// `GET /api/v1/agents/{id}/verify`: checks the stored chain, entry by
/// entry (hashes, links, signatures under the key trusted here) from where
/// the last check left its mark to the head, one heavy turn at a time.
pub async fn verify(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg),
    };
    let Ok(_turn) = Arc::clone(&s.heavy).acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let store = Arc::clone(&s.store);
    let checked = tokio::task::spawn_blocking(move || -> anyhow::Result<Value> {
        let key = store.agent(&agent)?.and_then(|r| r.key());
        let mut o = Object::new();
        match store.check_chain(&agent, key.as_ref())? {
            crate::store::ChainCheck::Verified { from, head } => {
                o.insert("ok", Value::Bool(true));
                o.insert("checked_from", Value::from(from.0));
                o.insert("head", Value::from(head.0));
            }
            crate::store::ChainCheck::Damaged { at, problem } => {
                o.insert("ok", Value::Bool(false));
                o.insert("at", Value::from(at.0));
                o.insert("problem", Value::from(problem));
            }
        }
        Ok(Value::Object(o))
    })
    .await;
    match checked {
        Ok(Ok(v)) => json_response(StatusCode::OK, &v),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/console/events`: server-sent events for the page. Each
/// second, if anything it shows may have moved (an entry committed, a
/// heartbeat heard, the fleet view changed), one `changed` event
/// carrying the fleet view's version; the page then reads what it shows
/// again. Bounded: at most one event a second per client, whatever the
/// load.
pub async fn events(State(s): State<AppState>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use std::sync::atomic::Ordering::Relaxed;
    let digest = move |s: &AppState| {
        (
            s.fleet().version(),
            s.metrics.commits.load(Relaxed),
            s.metrics.heartbeats.load(Relaxed),
        )
    };
    let stream = futures_util::stream::unfold(
        (s, None::<(u64, u64, u64)>),
        move |(s, mut sent)| async move {
            loop {
                let now = digest(&s);
                if sent != Some(now) {
                    sent = Some(now);
                    let ev = Event::default().event("changed").data(now.0.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(ev), (s, sent)));
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[derive(Debug, Deserialize)]
pub struct ReportQuery {
    context: Option<String>,
    since: Option<String>,
    at: Option<String>,
    format: Option<String>,
    cluster: Option<String>,
}

/// A report's answer: markdown, or an HTML page that runs nothing.
fn report_response(format: &str, title: &str, md: String) -> Response {
    if format == "html" {
        (
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            crate::report::html_page(title, &md),
        )
            .into_response()
    } else {
        ([(header::CONTENT_TYPE, "text/markdown; charset=utf-8")], md).into_response()
    }
}

fn report_format(q: &ReportQuery) -> Result<&'static str, String> {
    match q.format.as_deref() {
        None | Some("md") => Ok("md"),
        Some("html") => Ok("html"),
        Some(_) => Err("format: md or html".into()),
    }
}

/// `GET /api/v1/agents/{id}/report?context=&since=&at=&format=md|html`:
/// the session report (see `crate::report`), one heavy turn at a time.
pub async fn report(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ReportQuery>,
) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg),
    };
    let format = match report_format(&q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let opts = match (|| -> Result<crate::report::Options, String> {
        if q.cluster.is_some() {
            return Err("cluster: only for /api/v1/lessons".into());
        }
        Ok(crate::report::Options {
            context: q.context.clone(),
            since_ms: q
                .since
                .as_deref()
                .map(|v| crate::report::parse_since(v, baton_runtime::unix_ms()))
                .transpose()?,
            at: q.at.as_deref().map(crate::report::At::parse).transpose()?,
        })
    })() {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Ok(_turn) = Arc::clone(&s.heavy).acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let states_from = {
        let f = s.fleet();
        f.agent(&agent)
            .and_then(|n| f.clusters().get(&n.cluster))
            .and_then(|c| AgentId::new(c.gateway.as_str()).ok())
    };
    let (store, gateway) = (Arc::clone(&s.store), s.gateway.clone());
    let title = format!("Session report: {agent}");
    let built = tokio::task::spawn_blocking(move || {
        crate::report::report(&store, &gateway, &agent, states_from.as_ref(), &opts)
            .map(|r| r.markdown())
    })
    .await;
    match built {
        Ok(Ok(md)) => report_response(format, &title, md),
        // `at` that names nothing here is the caller's mistake
        Ok(Err(e)) if format!("{e}").starts_with("at:") => {
            error(StatusCode::BAD_REQUEST, format!("{e:#}"))
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /api/v1/lessons?cluster=&since=&format=md|html`: every lesson of
/// the fleet this gateway knows (or of one cluster), grouped.
pub async fn lessons(State(s): State<AppState>, Query(q): Query<ReportQuery>) -> Response {
    let format = match report_format(&q) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if q.context.is_some() || q.at.is_some() {
        return error(
            StatusCode::BAD_REQUEST,
            "context, at: only for one agent's report",
        );
    }
    let since_ms = match q
        .since
        .as_deref()
        .map(|v| crate::report::parse_since(v, baton_runtime::unix_ms()))
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut agents: Vec<AgentId> = s
        .fleet()
        .agents()
        .iter()
        .filter(|(_, n)| q.cluster.as_deref().is_none_or(|c| n.cluster == c))
        .map(|(a, _)| a.clone())
        .collect();
    agents.sort();
    let scope = q.cluster.clone().map_or_else(
        || format!("the fleet as {} knows it", s.gateway),
        |c| format!("cluster {c}"),
    );
    let Ok(_turn) = Arc::clone(&s.heavy).acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let store = Arc::clone(&s.store);
    let built = tokio::task::spawn_blocking(move || {
        crate::report::lessons(&store, &agents, since_ms, &scope)
    })
    .await;
    match built {
        Ok(Ok(md)) => report_response(format, "Lessons", md),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
