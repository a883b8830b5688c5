//! The read side over HTTP (axum): health, Prometheus metrics, the agent
//! registry and stored entries. JSON errors say what was wrong.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use baton_shared::{AgentId, Seq};
use serde::Deserialize;

use crate::metrics::{Gauge, Metrics};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub gateway: AgentId,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/agents/{id}/entries", get(entries))
        .with_state(state)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = format!("{{\"error\":{:?}}}", message.into());
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn metrics(State(s): State<AppState>) -> Response {
    let agents = s.store.agents().map(|a| a.len()).unwrap_or(0);
    #[allow(clippy::cast_precision_loss)]
    let gauges = [
        Gauge {
            name: "baton_agents_enrolled",
            help: "Agents in the registry (including this gateway).",
            samples: vec![(String::new(), agents as f64)],
        },
        Gauge {
            name: "baton_store_bytes",
            help: "Size of the redb store file.",
            samples: vec![(String::new(), s.store.file_size() as f64)],
        },
    ];
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(&gauges),
    )
        .into_response()
}

async fn agents(State(s): State<AppState>) -> Response {
    let list = match s.store.agents() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut out = Vec::new();
    for (id, record) in list {
        let head = s
            .store
            .head(&id)
            .unwrap_or(baton_shared::intake::Head::EMPTY);
        let halted = s.store.halted(&id).ok().flatten();
        out.push(serde_json_like(&id, &record, head, halted));
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        format!("[{}]", out.join(",")),
    )
        .into_response()
}

/// One registry row as JSON (hand-written: the values are ids, hex and numbers).
fn serde_json_like(
    id: &AgentId,
    r: &crate::store::AgentRecord,
    head: baton_shared::intake::Head,
    halted: Option<Seq>,
) -> String {
    let key: String = r.public_key.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{{\"id\":\"{id}\",\"public_key\":\"{key}\",\"enrolled_by\":\"{:?}\",\"head_seq\":{},\"head_hash\":\"{}\",\"halted_at\":{}}}",
        r.enrolled_by,
        head.seq,
        head.hash,
        halted.map_or("null".to_owned(), |s| s.to_string())
    )
}

#[derive(Debug, Deserialize)]
struct EntriesQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn entries(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EntriesQuery>,
) -> Response {
    let agent = match AgentId::new(id) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match s.store.agent(&agent) {
        Ok(Some(_)) => {}
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("unknown agent {agent}")),
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    match s.store.range(&agent, Seq(q.from.unwrap_or(1)), limit) {
        Ok(rows) => {
            let mut body = String::new();
            for (_, e) in rows {
                body.push_str(&e.to_jsonl());
                body.push('\n');
            }
            ([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
