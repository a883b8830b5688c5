//! The console's HTTP side (PROTOCOL §9): issue a command, heal breakers,
//! list the commands in hand and one command's live tally, and the
//! fleet's status in a few numbers. Writes go through the ingest thread
//! like every operator action (recorded, answered once durable).

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use baton_shared::command::Verb;
use baton_shared::entry::parse_timestamp;
use baton_shared::json::{self, Mode, Object, Value};
use baton_shared::{AgentId, CommandId};

use super::{AppState, command, error, json_response};
use crate::ingest::{Issued, Order, Rerun};
use crate::operator::{Actor, Command, Done};

/// How long a command lives past T + window when the order does not say.
const DEFAULT_TTL_MS: i64 = 60_000;

/// Reads an order: `{"verb", "payload"?, "at"? (timestamp) | "in"? ("2s"),
/// "window"? ("50ms"), "expires"? (timestamp) | "ttl"? ("1m", after T +
/// window), "priority"?, "weight"?, "select"?, "quorum"?, "id"?}`; every
/// error names the field. Times are the top's, `now_ms` included.
pub fn read_order(body: &[u8], now_ms: i64) -> Result<Order, String> {
    let v = json::parse(body, Mode::Verify).map_err(|e| format!("body: {e}"))?;
    let o = v.as_object().ok_or("body is not a JSON object")?;
    const KEYS: [&str; 12] = [
        "verb", "payload", "at", "in", "window", "expires", "ttl", "priority", "weight", "select",
        "quorum", "id",
    ];
    if let Some((k, _)) = o.iter().find(|(k, _)| !KEYS.contains(&&**k)) {
        return Err(format!("{k}: unknown field"));
    }
    let verb = o
        .get("verb")
        .ok_or("verb is missing")?
        .as_str()
        .and_then(Verb::parse)
        .ok_or("verb: not one of observe, orient, decide, act, record, sync, freeze, thaw")?;
    let duration = |k: &str| duration_field(o, k);
    let time = |k: &str| time_field(o, k);
    let target_ms = target(o, now_ms, now_ms)?;
    let window_ms = duration("window")?.unwrap_or(0);
    let expires_ms = match (time("expires")?, duration("ttl")?) {
        (Some(_), Some(_)) => return Err("expires and ttl: give one".into()),
        (Some(t), None) => t,
        (None, ttl) => target_ms + window_ms + ttl.unwrap_or(DEFAULT_TTL_MS),
    };
    let priority = match o.get("priority") {
        None => 1,
        Some(v) => v
            .as_exact_u64()
            .and_then(|p| u8::try_from(p).ok())
            .filter(|p| *p <= 3)
            .ok_or("priority: an integer 0–3")?,
    };
    let weight = match o.get("weight") {
        None => 0.0,
        Some(v) => v.as_f64().ok_or("weight: a number ≥ 0")?,
    };
    let id = match o.get("id") {
        None => None,
        Some(v) => Some(
            v.as_str()
                .ok_or("id: a string".to_owned())
                .and_then(|s| CommandId::new(s).map_err(|e| format!("id: {e}")))?,
        ),
    };
    Ok(Order {
        id,
        verb,
        payload: o.get("payload").cloned().unwrap_or(Value::Null),
        target_ms,
        window_ms: u64::try_from(window_ms).unwrap_or(0),
        expires_ms,
        priority,
        weight,
        select: o.get("select").cloned(),
        quorum: o.get("quorum").cloned(),
        read_ms: now_ms,
    })
}

/// The duration at key `k` ("2s", "50ms"), ms.
fn duration_field(o: &Object, k: &str) -> Result<Option<i64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(|s| humantime::parse_duration(s).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .map(Some)
            .ok_or_else(|| format!("{k}: a duration like \"2s\" or \"50ms\"")),
    }
}

/// The timestamp at key `k`, ms.
fn time_field(o: &Object, k: &str) -> Result<Option<i64>, String> {
    match o.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(parse_timestamp)
            .map(Some)
            .ok_or_else(|| format!("{k}: a timestamp like 2026-12-04T10:00:00.000Z")),
    }
}

/// T from `at` or `in` (from `now_ms`), or `default_ms`.
fn target(o: &Object, now_ms: i64, default_ms: i64) -> Result<i64, String> {
    match (time_field(o, "at")?, duration_field(o, "in")?) {
        (Some(_), Some(_)) => Err("at and in: give one".into()),
        (Some(t), None) => Ok(t),
        (None, Some(d)) => Ok(now_ms + d),
        (None, None) => Ok(default_ms),
    }
}

/// T of a re-run when its order does not say: this long from now.
const RERUN_IN_MS: i64 = 2_000;

/// Reads a re-run's timing: `{"at"? | "in"? (default 2s), "window"?,
/// "ttl"?}` (an empty body takes the defaults; window and ttl default to
/// the original command's).
pub fn read_rerun(key: &str, body: &[u8], now_ms: i64) -> Result<Rerun, String> {
    let v = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Object::new())
    } else {
        json::parse(body, Mode::Verify).map_err(|e| format!("body: {e}"))?
    };
    let o = v.as_object().ok_or("body is not a JSON object")?;
    const KEYS: [&str; 4] = ["at", "in", "window", "ttl"];
    if let Some((k, _)) = o.iter().find(|(k, _)| !KEYS.contains(&&**k)) {
        return Err(format!("{k}: unknown field"));
    }
    Ok(Rerun {
        key: key.to_owned(),
        target_ms: target(o, now_ms, now_ms + RERUN_IN_MS)?,
        window_ms: duration_field(o, "window")?.and_then(|w| u64::try_from(w).ok()),
        ttl_ms: duration_field(o, "ttl")?,
        read_ms: now_ms,
    })
}

/// The answer to an issued command: what was planned.
fn issued_answer(i: &Issued) -> Object {
    let mut o = Object::new();
    o.insert("hash", Value::from(i.hash.to_hex()));
    o.insert("id", Value::from(i.id.as_str()));
    o.insert(
        "target",
        Value::from(baton_shared::entry::format_timestamp(i.target_ms)),
    );
    o.insert("selected", Value::from(i.selected));
    o.insert("sent", Value::from(i.sent));
    let mut skipped = Object::new();
    for (r, n) in &i.skipped {
        skipped.insert(r, Value::from(*n));
    }
    o.insert("skipped", Value::Object(skipped));
    o
}

/// `POST /api/v1/commands/{hash or id}/rerun`: issue a finished command
/// again for only the agents it did not reach (CONFLICT, TRANSIT,
/// unanswered, skipped); answered like an issue, with `rerun_of`.
pub async fn rerun(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    Path(key): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let rerun = match read_rerun(&key, &body, s.clock.now_ms()) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match command(&s, Command::Rerun { rerun }, by).await {
        Ok(Done::Rerun { issued, of }) => {
            let mut o = issued_answer(&issued);
            o.insert("rerun_of", Value::from(of.to_hex()));
            json_response(StatusCode::OK, &Value::Object(o))
        }
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        Err(r) => r,
    }
}

/// `POST /api/v1/command`: issue a command (operator credential).
/// Answered once its `command` entry is durable, with what was planned.
pub async fn issue(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    body: axum::body::Bytes,
) -> Response {
    let order = match read_order(&body, s.clock.now_ms()) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match command(
        &s,
        Command::Issue {
            order: Box::new(order),
        },
        by,
    )
    .await
    {
        Ok(Done::Issued(i)) => json_response(StatusCode::OK, &Value::Object(issued_answer(&i))),
        Ok(other) => error(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        Err(r) => r,
    }
}

/// `POST /api/v1/heal` `{"agents": [ID…]}`: close these children's
/// breakers at once and send them again, at the next tick, every command
/// in hand they have not answered (before its T + window).
pub async fn heal(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    body: axum::body::Bytes,
) -> Response {
    let v = match json::parse(&body, Mode::Verify) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let children: Result<Vec<AgentId>, String> = match v.as_object().and_then(|o| o.get("agents")) {
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .ok_or("agents: strings".to_owned())
                    .and_then(|a| AgentId::new(a).map_err(|e| format!("agents: {e}")))
            })
            .collect(),
        _ => Err("agents: an array of agent ids".to_owned()),
    };
    match children {
        Ok(children) => super::answer(&s, Command::Heal { children }, by).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `GET /api/v1/commands`: every command in hand and recently finished,
/// newest first, with its tally.
pub async fn list(State(s): State<AppState>) -> Response {
    let list = s.coordination().list();
    json_response(StatusCode::OK, &Value::Array(list))
}

/// `GET /api/v1/commands/{hash or id}`: one command's tally, skips,
/// conflicts and every child's outcome.
pub async fn show(State(s): State<AppState>, Path(key): Path<String>) -> Response {
    match s.coordination().show(&key) {
        Some(v) => json_response(StatusCode::OK, &v),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no command {key} in hand or recently finished"),
        ),
    }
}

/// `GET /api/v1/status`: the fleet in a few numbers — agents active of
/// total, clusters, mean impedance, mode, open breakers, commands in hand,
/// conflicts in recent commands, the last command.
pub async fn status(State(s): State<AppState>) -> Response {
    let now = baton_runtime::unix_ms();
    let summary = s.registry().summary();
    let mut o = Object::new();
    o.insert("gateway", Value::from(s.gateway.as_str()));
    o.insert("agents", Value::from(summary.agents as u64));
    o.insert("active", Value::from(summary.active as u64));
    o.insert("mode", Value::from(summary.mode.as_str()));
    #[allow(clippy::cast_possible_truncation)]
    let clusters = summary.clusters.unwrap_or(1) as u64;
    o.insert("clusters", Value::from(clusters));
    o.insert(
        "impedance_mean_ms",
        summary.impedance_mean_ms.map_or(Value::Null, Value::Number),
    );
    let mut coord = s.coordination();
    let open: Vec<Value> = coord
        .breakers()
        .into_iter()
        .map(|(id, p)| {
            let mut b = Object::new();
            b.insert("child", Value::from(id.as_str()));
            b.insert("position", Value::from(p));
            Value::Object(b)
        })
        .collect();
    o.insert("breakers_not_closed", Value::Array(open));
    o.insert("commands_in_hand", Value::from(coord.in_hand() as u64));
    // frozen as a whole (a freeze naming this gateway): only thaw and
    // observe are relayed
    let frozen = coord
        .frozen(s.clock.now_ms())
        .map_or(Value::Null, |(hash, until)| {
            let mut f = Object::new();
            f.insert("by", Value::from(hash.to_hex()));
            f.insert(
                "until",
                Value::from(baton_shared::entry::format_timestamp(until)),
            );
            Value::Object(f)
        });
    o.insert("frozen", frozen);
    let list = coord.list();
    drop(coord);
    let conflicts: u64 = list
        .iter()
        .filter_map(|c| c.as_object()?.get("conflict")?.as_exact_u64())
        .sum();
    o.insert("conflicts_recent", Value::from(conflicts));
    o.insert(
        "last_command",
        list.into_iter().next().unwrap_or(Value::Null),
    );
    o.insert(
        "at",
        Value::from(baton_shared::entry::format_timestamp(now)),
    );
    json_response(StatusCode::OK, &Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rerun_reads_its_timing_and_names_a_wrong_field() {
        let now = 1_000_000;
        let r = read_rerun("c-1", b"", now).unwrap();
        assert_eq!(
            (
                r.key.as_str(),
                r.target_ms,
                r.window_ms,
                r.ttl_ms,
                r.read_ms
            ),
            ("c-1", now + RERUN_IN_MS, None, None, now)
        );
        let r = read_rerun("c-1", br#"{"in":"5s","window":"80ms","ttl":"1m"}"#, now).unwrap();
        assert_eq!(
            (r.target_ms, r.window_ms, r.ttl_ms),
            (now + 5_000, Some(80), Some(60_000))
        );
        let err = |body: &[u8]| read_rerun("c-1", body, now).unwrap_err();
        assert_eq!(err(br#"{"verb":"act"}"#), "verb: unknown field");
        assert_eq!(
            err(br#"{"in":"1s","at":"2026-12-04T10:00:00.000Z"}"#),
            "at and in: give one"
        );
        assert!(err(br#"{"in":"soon"}"#).starts_with("in: a duration"));
        assert_eq!(err(b"[]"), "body is not a JSON object");
    }
}
