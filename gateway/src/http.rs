//! HTTP (axum): health, Prometheus metrics, the agent registry and stored
//! entries (reads), and the operator's actions (writes: enroll, unenroll,
//! resolve, load, enrollment windows). JSON errors say what was wrong.
//!
//! Every write needs the operator token (`Authorization: Bearer …`, see
//! `auth`) and a JSON body (`Content-Type: application/json`): a web page
//! can make a browser POST `text/plain` or a form across sites, never
//! JSON with an Authorization header. Reads need the token only with
//! `http_read_auth`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use baton_runtime::progress::Progress;
use baton_shared::json::{Object, Value};
use baton_shared::{AgentId, ClusterId, Seq};
use serde::Deserialize;

use crate::auth::OperatorToken;
use crate::ingest::{Committed, IssueError, LoadError, RerunError};
use crate::metrics::{Gauge, Metrics};
use crate::operator::{Actor, Command, CommandError, Done, Inbound};
use crate::store::Store;

pub mod console;
pub mod web;

#[derive(Debug, Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub gateway: AgentId,
    /// Signs the receipt inside exported batons.
    pub key: baton_shared::SecretKey,
    /// New durable entries, as the ingest thread commits them.
    pub committed: tokio::sync::broadcast::Sender<Committed>,
    /// Operator commands for the ingest thread.
    pub commands: tokio::sync::mpsc::Sender<Inbound>,
    /// Liveness: the live registry, and the clock its phi is measured on.
    pub registry: Arc<std::sync::Mutex<crate::registry::Registry>>,
    pub origin: std::time::Instant,
    pub cluster: baton_shared::ClusterId,
    /// The forwarder's state, when forwarding to a parent.
    pub upstream: Option<Arc<std::sync::Mutex<crate::upstream::UpstreamStatus>>>,
    /// The operator token writes need (`None`: `http_auth = "none"`).
    pub token: Option<Arc<OperatorToken>>,
    /// Reads need the token too.
    pub read_auth: bool,
    /// Turns for blocking work a request can cause (exports, loads): at
    /// most `HEAVY` at once.
    pub heavy: Arc<tokio::sync::Semaphore>,
    /// Commands in hand (the console's view).
    pub coordination: Arc<std::sync::Mutex<crate::ingest::Coordination>>,
    /// The top's time, as this gateway knows it.
    pub clock: Arc<crate::ingest::ParentClock>,
    /// The fleet as this gateway's chains describe it (the web console).
    pub fleet: Arc<std::sync::Mutex<crate::fleet::FleetView>>,
    /// The recent alerts of the gateway's own chain, read on from where
    /// the last request stopped (`web::RecentAlerts`).
    pub alerts: Arc<std::sync::Mutex<web::RecentAlerts>>,
}

/// Exports and loads produced at once; more wait their turn.
pub const HEAVY: usize = 2;

/// The largest baton `/api/v1/load` takes (about 150,000 entries of ~400
/// bytes): it is parsed whole, in memory. Longer chains load in parts
/// (`export --from/--to`), each continuing the stored head.
pub const LOAD_MAX_BYTES: usize = 64 * 1024 * 1024;

impl AppState {
    fn registry(&self) -> std::sync::MutexGuard<'_, crate::registry::Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn coordination(&self) -> std::sync::MutexGuard<'_, crate::ingest::Coordination> {
        self.coordination
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

pub fn router(state: AppState) -> Router {
    let writes = Router::new()
        .route(
            "/api/v1/load",
            post(load).layer(axum::extract::DefaultBodyLimit::max(LOAD_MAX_BYTES)),
        )
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/unenroll", post(unenroll))
        .route("/api/v1/resolve", post(resolve))
        .route("/api/v1/command", post(console::issue))
        .route("/api/v1/heal", post(console::heal))
        .route("/api/v1/commands/{key}/rerun", post(console::rerun))
        .route_layer(middleware::from_fn_with_state(state.clone(), operator_only));
    let mut reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/agents", get(agents))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/upstream", get(upstream))
        .route("/api/v1/agents/{id}", get(agent))
        .route("/api/v1/agents/{id}/entries", get(entries))
        .route("/api/v1/agents/{id}/export", get(export))
        .route("/api/v1/watch", get(watch))
        .route("/api/v1/status", get(console::status))
        .route("/api/v1/commands", get(console::list))
        .route("/api/v1/commands/{key}", get(console::show))
        .route("/api/v1/fleet", get(web::fleet))
        .route("/api/v1/fleet/agents", get(web::agents))
        .route("/api/v1/agents/{id}/detail", get(web::detail))
        .route("/api/v1/agents/{id}/verify", get(web::verify))
        .route("/api/v1/agents/{id}/report", get(web::report))
        .route("/api/v1/lessons", get(web::lessons))
        .route("/api/v1/console/events", get(web::events));
    if state.read_auth {
        reads = reads.route_layer(middleware::from_fn_with_state(state.clone(), reader_only));
    }
    Router::new()
        // health stays open: a supervisor probes it without a credential
        .route("/healthz", get(healthz))
        // the page, its script and style: no data, open like health
        .route("/", get(web::index))
        .route("/console.js", get(web::script))
        .route("/console.css", get(web::style))
        .merge(reads)
        .merge(writes)
        .fallback(not_found)
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such route: {} {}", req.method(), req.uri().path()),
    )
}

/// Every error answer is JSON (`{"error": …}`): axum's own refusals (a
/// query that does not parse, a body over the limit, a wrong method) come
/// as plain text or empty, and are rewritten here with their text.
async fn json_errors(req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    // axum's rejection texts are short; anything longer is cut.
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    let message = if text.is_empty() {
        format!("{what}: {}", status.canonical_reason().unwrap_or("refused"))
    } else {
        format!("{what}: {text}")
    };
    error(status, message)
}

/// Serves `app` on `listener` until `shutdown`, within `limits`: a
/// connection over `max_connections` is closed at accept (and counted), a
/// client that does not finish a request's headers within `header_timeout`
/// — the first request's, or the next one's on a kept-alive connection —
/// loses its connection, and an accept that fails (no file descriptors
/// left) pauses the loop 100 ms instead of spinning a core. On shutdown,
/// requests in progress get up to 2 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: crate::config::HttpLimits,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(64 * 1024);
    tokio::pin!(shutdown);
    // every connection's task: aborted after the grace period, so a client
    // that never goes away (a watch stream) cannot hold the gateway's
    // state, and with it its shutdown, forever
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    if metrics.http_accept_errors.fetch_add(1, Relaxed) == 0 {
                        tracing::warn!(error = %e, "HTTP accept failed; pausing 100 ms per failure (counted in baton_http_accept_errors_total)");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.http_connections_refused.fetch_add(1, Relaxed);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stream = StalledWrites::new(stream, WRITE_STALL_LIMIT);
        let connection = http1.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        let metrics = Arc::clone(&metrics);
        metrics.http_connections_open.fetch_add(1, Relaxed);
        connections.spawn(async move {
            let _ = connection.await;
            metrics.http_connections_open.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), graceful.shutdown()).await;
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

/// How long a client may leave a response unread (its receive window full)
/// before its connection is dropped: a watcher or an export that stops
/// reading frees its slot, its buffers and its task.
const WRITE_STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A stream whose writes fail with `TimedOut` once one has waited `limit`
/// without progress.
struct StalledWrites<S> {
    inner: S,
    limit: std::time::Duration,
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S> StalledWrites<S> {
    fn new(inner: S, limit: std::time::Duration) -> Self {
        StalledWrites {
            inner,
            limit,
            stalled: None,
        }
    }

    /// After a write returned `Pending`: fails once the stall outlasts the limit.
    fn check_stall(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for StalledWrites<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for StalledWrites<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match std::pin::Pin::new(&mut self.inner).poll_write(cx, buf) {
            std::task::Poll::Pending => self.check_stall(cx),
            ready => {
                self.stalled = None;
                ready
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The credential check: `Ok(fingerprint)` (none without `http_auth`),
/// or the status and reason to refuse with.
fn credential(s: &AppState, req: &Request) -> Result<Option<String>, (StatusCode, String)> {
    let Some(token) = &s.token else {
        return Ok(None);
    };
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match token.check(header) {
        Ok(fingerprint) => Ok(Some(fingerprint)),
        Err(e @ crate::auth::TokenError::Unreadable(_)) => {
            Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
        }
        Err(e) => {
            s.metrics
                .http_unauthorized
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Err((StatusCode::UNAUTHORIZED, e.to_string()))
        }
    }
}

/// The answer to a refused credential (a 401 names the scheme).
fn refused((status, why): (StatusCode, String)) -> Response {
    let mut r = error(status, why);
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

/// Writes: a JSON body and the operator's credential; the request carries
/// the [`Actor`] the chain records.
async fn operator_only(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        s.metrics
            .http_unauthorized
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "operator requests are JSON: Content-Type: application/json",
        );
    }
    match credential(&s, &req) {
        Ok(fingerprint) => {
            req.extensions_mut().insert(Actor::http(fingerprint));
            next.run(req).await
        }
        Err(e) => refused(e),
    }
}

/// Reads, with `http_read_auth`.
async fn reader_only(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match credential(&s, &req) {
        Ok(_) => next.run(req).await,
        Err(e) => refused(e),
    }
}

/// The agent named in a JSON body `{"agent": ID}`, or the error to answer.
fn body_agent(body: &[u8]) -> Result<AgentId, String> {
    use baton_shared::json::{self, Mode};
    let v = json::parse(body, Mode::Verify).map_err(|e| format!("body: {e}"))?;
    let agent = v.as_object().and_then(|o| o.get("agent"));
    match agent.map(|a| a.as_str().map(AgentId::new)) {
        Some(Some(Ok(a))) => Ok(a),
        Some(Some(Err(e))) => Err(format!("agent: {e}")),
        Some(None) => Err("agent is not a string".to_owned()),
        None => Err("agent is missing".to_owned()),
    }
}

/// The outcome of a command as the JSON answer `{"ok": "…"}`.
async fn answer(s: &AppState, cmd: Command, by: Actor) -> Response {
    match command(s, cmd, by).await {
        Ok(done) => {
            let mut o = Object::new();
            o.insert("ok", Value::from(done.to_string()));
            json_response(StatusCode::OK, &Value::Object(o))
        }
        Err(e) => e,
    }
}

/// `{"agent": ID}`: withdraw trust in an agent or child gateway at once
/// (its logins and deliveries are refused from now; its chain stays).
async fn unenroll(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    body: axum::body::Bytes,
) -> Response {
    match body_agent(&body) {
        Ok(agent) => answer(&s, Command::Unenroll { agent }, by).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// `{"agent": ID}`: lift a fork halt on the running gateway.
async fn resolve(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    body: axum::body::Bytes,
) -> Response {
    match body_agent(&body) {
        Ok(agent) => answer(&s, Command::Resolve { agent }, by).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The enrolled agent named in a path, or the error to answer with.
fn known_agent(s: &AppState, id: String) -> Result<AgentId, (StatusCode, String)> {
    let agent = AgentId::new(id).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
    match s.store.agent(&agent) {
        Ok(Some(_)) => Ok(agent),
        Ok(None) => Err((StatusCode::NOT_FOUND, format!("unknown agent {agent}"))),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// `{"agent": ID, "public_key": HEX, "start_seq"?: N, "revoked_from_seq"?: N,
/// "child_cluster"?: C}` enrolls an agent (with `child_cluster`: a child
/// gateway forwarding cluster C); `{"window": "10m"}` opens a trust-on-first-use window.
/// Answered after the enrollment (and its `enroll` entry) is durable.
async fn enroll(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    body: axum::body::Bytes,
) -> Response {
    use baton_shared::json::{self, Mode, Value};
    let v = match json::parse(&body, Mode::Verify) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
    };
    let Some(o) = v.as_object() else {
        return error(StatusCode::BAD_REQUEST, "body is not a JSON object");
    };
    let seq = |key: &str| -> Result<Option<Seq>, String> {
        match o.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_exact_u64()
                .map(|n| Some(Seq(n)))
                .ok_or_else(|| format!("{key} is not an integer")),
        }
    };
    let cmd = if let Some(w) = o.get("window") {
        let Some(length) = w.as_str().and_then(|w| humantime::parse_duration(w).ok()) else {
            return error(
                StatusCode::BAD_REQUEST,
                "window must be a duration like \"10m\"",
            );
        };
        Command::Window { length }
    } else {
        let agent = match o.get("agent").and_then(Value::as_str).map(AgentId::new) {
            Some(Ok(a)) => a,
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e.to_string()),
            None => return error(StatusCode::BAD_REQUEST, "agent is missing"),
        };
        let key = match o
            .get("public_key")
            .and_then(Value::as_str)
            .map(baton_shared::PublicKey::trusted_hex)
        {
            Some(Ok(k)) => k,
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("public_key: {e}")),
            None => return error(StatusCode::BAD_REQUEST, "public_key is missing"),
        };
        let (start_seq, revoked_from_seq) = match (seq("start_seq"), seq("revoked_from_seq")) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        };
        let child_cluster = match o.get("child_cluster").map(|v| {
            v.as_str()
                .ok_or_else(|| "child_cluster is not a string".to_owned())
                .and_then(|c| ClusterId::new(c).map_err(|e| format!("child_cluster: {e}")))
        }) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        };
        let enrolled_by = match crate::operator::operator_enrollment(&s.cluster, child_cluster) {
            Ok(by) => by,
            Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        };
        Command::Enroll {
            agent,
            record: crate::store::AgentRecord {
                public_key: key.to_bytes(),
                start_seq,
                revoked_from_seq,
                enrolled_by,
                enrolled_ms: baton_runtime::unix_ms(),
            },
        }
    };
    answer(&s, cmd, by).await
}

/// Hands `cmd` to the ingest thread and waits for its durable outcome; a
/// refusal comes back as the response to give.
async fn command(s: &AppState, cmd: Command, by: Actor) -> Result<Done, Response> {
    let shutting_down = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the gateway is shutting down",
        )
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    if s.commands
        .send(Inbound::Command(cmd, by, reply))
        .await
        .is_err()
    {
        return Err(shutting_down());
    }
    match answer.await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(error(command_status(&e), e.to_string())),
        Err(_) => Err(shutting_down()),
    }
}

/// The status an operator command's error is answered with.
fn command_status(e: &CommandError) -> StatusCode {
    match e {
        CommandError::KeyConflict { .. } => StatusCode::CONFLICT,
        CommandError::NotEnrolled { .. } => StatusCode::NOT_FOUND,
        CommandError::OwnChain { .. } | CommandError::WindowTooLong { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        CommandError::Load(LoadError::Store(_))
        | CommandError::Store(_)
        | CommandError::NotStored { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        CommandError::Load(_) => StatusCode::UNPROCESSABLE_ENTITY,
        CommandError::Issue(e) | CommandError::Rerun(RerunError::Issue(e)) => issue_status(e),
        CommandError::Rerun(RerunError::Unknown(_)) => StatusCode::NOT_FOUND,
        CommandError::Rerun(
            RerunError::InHand(_) | RerunError::Nothing(_) | RerunError::NotYet { .. },
        ) => StatusCode::CONFLICT,
        CommandError::Rerun(RerunError::Store { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The status a refused order is answered with (an issue or a re-run).
fn issue_status(e: &IssueError) -> StatusCode {
    match e {
        IssueError::IdReused(_) => StatusCode::CONFLICT,
        IssueError::TooMany => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

#[derive(Debug, Deserialize)]
struct ExportQuery {
    format: Option<String>,
    from: Option<u64>,
    to: Option<u64>,
    at: Option<String>,
    day: Option<String>,
    context: Option<String>,
}

/// `format=baton` (default), `jsonl`, or `daily&day=YYYY-MM-DD` (that
/// day's file of the daily set): the run holding the head, or `to` / `at`
/// (a seq or an entry's hash: the chain as it was when that entry was its
/// head), from `from`; a baton labelled with `context`.
async fn export(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<ExportQuery>,
) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, message)) => return error(status, message),
    };
    let format = q.format.clone().unwrap_or_else(|| "baton".into());
    if !["baton", "jsonl", "daily"].contains(&format.as_str()) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("format {format:?}: use baton, jsonl or daily"),
        );
    }
    let day = match (&*format, q.day.as_deref()) {
        ("daily", Some(d))
            if baton_shared::entry::parse_timestamp(&format!("{d}T00:00:00.000Z")).is_some() =>
        {
            Some(d.to_owned())
        }
        ("daily", _) => {
            return error(
                StatusCode::BAD_REQUEST,
                "day: YYYY-MM-DD (with format=daily)",
            );
        }
        (_, Some(_)) => return error(StatusCode::BAD_REQUEST, "day: only with format=daily"),
        _ => None,
    };
    let at = match q.at.as_deref().map(crate::report::At::parse).transpose() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if q.to.is_some() && at.is_some() {
        return error(StatusCode::BAD_REQUEST, "to and at: give one");
    }
    if q.from.is_some_and(|f| f == 0) || q.to.is_some_and(|t| t == 0) {
        return error(StatusCode::BAD_REQUEST, "from, to: seqs from 1");
    }
    let to = match at {
        Some(a) => {
            let (store, agent) = (Arc::clone(&s.store), agent.clone());
            match tokio::task::spawn_blocking(move || a.resolve(&store, &agent)).await {
                Ok(Ok(seq)) => Some(seq),
                Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, format!("{e:#}")),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        None => q.to.map(Seq),
    };
    let range = crate::export::Range {
        from: q.from.map(Seq),
        to,
    };
    let store = Arc::clone(&s.store);
    match format.as_str() {
        "baton" => {
            let (gateway, key) = (s.gateway.clone(), s.key.clone());
            let label = crate::export::Label {
                context: q.context,
                notes: Vec::new(),
            };
            streamed(&s, "application/json", move |out| {
                let hidden = Progress::hidden();
                let signer = crate::export::Signer {
                    gateway: &gateway,
                    key: &key,
                };
                crate::export::export_baton(&store, &agent, signer, range, label, &hidden, out)
            })
            .await
        }
        "daily" => {
            let day = format!("{}T", day.unwrap_or_default());
            streamed(&s, "application/x-ndjson", move |out| {
                // the day's file: the entries whose own `ts` falls on it
                let hidden = Progress::hidden();
                crate::export::for_each_in(&store, &agent, range, &hidden, |seq, e| {
                    if crate::report::Item::of(seq, &e.content)
                        .is_some_and(|i| i.ts.starts_with(&day))
                    {
                        std::io::Write::write_all(out, e.to_jsonl().as_bytes())?;
                        std::io::Write::write_all(out, b"\n")?;
                    }
                    Ok(())
                })
                .map(|_| ())
            })
            .await
        }
        _ => {
            streamed(&s, "application/x-ndjson", move |out| {
                crate::export::export_jsonl(&store, &agent, range, &Progress::hidden(), out)
                    .map(|_| ())
            })
            .await
        }
    }
}

/// A response body written by `produce` on a blocking thread, one
/// 64 KiB chunk at a time through a queue of four: memory stays flat
/// whatever its size, a client that stops reading stops the producer (its
/// writes fail once the connection drops), and at most `HEAVY` such
/// bodies are produced at once (more wait their turn).
async fn streamed(
    s: &AppState,
    content_type: &'static str,
    produce: impl FnOnce(&mut ChunkWriter) -> anyhow::Result<()> + Send + 'static,
) -> Response {
    let turn = match Arc::clone(&s.heavy).acquire_owned().await {
        Ok(t) => t,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<axum::body::Bytes>>(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        let done = produce(&mut out).and_then(|()| {
            std::io::Write::flush(&mut out)?;
            Ok(())
        });
        if let Err(e) = done {
            tracing::warn!(error = %format!("{e:#}"), "a streamed response stopped");
            let _ = tx.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
        }
        drop(turn);
    });
    let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (
        [(header::CONTENT_TYPE, content_type)],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Bytes of one streamed chunk.
const CHUNK: usize = 64 * 1024;

/// `std::io::Write` into a streamed response (see `streamed`).
#[derive(Debug)]
pub struct ChunkWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<axum::body::Bytes>>,
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(Ok(chunk.into())).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })
    }
}

#[derive(Debug, Deserialize)]
struct LoadQuery {
    /// Load without a trusted key (the result is marked unauthenticated).
    unauthenticated: Option<bool>,
}

/// Verifies a baton whole against the key this gateway trusts for its
/// agent and stores what its checkpoints cover through the same intake as
/// MQTT batches (new entries stored, held ones recognised); any failure
/// refuses it whole, with the reason. Without an enrolled key it is only
/// verified (`?unauthenticated=true`), never stored.
async fn load(
    State(s): State<AppState>,
    Extension(by): Extension<Actor>,
    Query(q): Query<LoadQuery>,
    body: axum::body::Bytes,
) -> Response {
    use baton_shared::export::{BatonTrust, load_baton};
    // Find the agent first, to look up the key this gateway trusts for it.
    let agent = baton_shared::json::parse_with(
        &body,
        baton_shared::json::Mode::Verify,
        baton_shared::json::MAX_DEPTH + 2,
    )
    .ok()
    .and_then(|v| v.as_object()?.get("agent")?.as_str().map(str::to_owned))
    .and_then(|a| AgentId::new(a).ok());
    let trusted = match &agent {
        Some(a) => match s.store.agent(a) {
            Ok(r) => r.and_then(|r| r.key()),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        None => None,
    };
    let trust = match (&trusted, q.unauthenticated.unwrap_or(false)) {
        (Some(k), _) => BatonTrust::Key(k),
        (None, true) => BatonTrust::Unauthenticated,
        (None, false) => BatonTrust::None,
    };
    match load_baton(&body, trust) {
        Ok(b) => {
            // Stored only when verified under the key enrolled here, and
            // only what a checkpoint covers (the unsigned tail is reported).
            let stored = if trusted.is_some() && b.authenticated {
                let through = b.summary.authenticated_through;
                let entries: Vec<_> = b
                    .entries
                    .iter()
                    .take(
                        usize::try_from(through.0.saturating_sub(b.summary.first_seq.0) + 1)
                            .unwrap_or(0),
                    )
                    .cloned()
                    .collect();
                let (stored, already_held) = if entries.is_empty() || through < b.summary.first_seq
                {
                    (0, 0)
                } else {
                    let cmd = Command::Load {
                        agent: b.agent.clone(),
                        first: b.summary.first_seq,
                        entries,
                    };
                    match command(&s, cmd, by).await {
                        Ok(Done::Loaded {
                            stored,
                            already_held,
                        }) => (stored, already_held),
                        Ok(other) => {
                            return error(
                                StatusCode::INTERNAL_SERVER_ERROR,
                                format!("load answered {other}"),
                            );
                        }
                        Err(refused) => return refused,
                    }
                };
                let mut o = Object::new();
                o.insert("stored", Value::from(stored));
                o.insert("already_held", Value::from(already_held));
                Value::Object(o)
            } else {
                Value::Null
            };
            let mut o = Object::new();
            o.insert("agent", Value::from(b.agent.as_str()));
            o.insert("first_seq", Value::from(b.summary.first_seq.0));
            o.insert("last_seq", Value::from(b.summary.head_seq.0));
            o.insert("authenticated", Value::from(b.authenticated));
            o.insert(
                "authenticated_through",
                Value::from(b.summary.authenticated_through.0),
            );
            o.insert("unsigned_tail", Value::from(b.summary.unsigned_tail as u64));
            o.insert("truncated", Value::from(b.truncated));
            o.insert("stored", stored);
            json_response(StatusCode::OK, &Value::Object(o))
        }
        Err(e) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("baton refused: {e}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
struct WatchQuery {
    agent: Option<String>,
    /// Resume from this seq (with `agent`).
    from: Option<u64>,
}

/// Entries replayed per read while a resumed watch catches up.
const REPLAY_CHUNK: usize = 256;

/// `Watch`: server-sent events, one `entry` event (a JSONL line, its id
/// `<agent>:<seq>`) per new durable entry, optionally of one agent (404
/// if unknown). With `agent`, a watch resumes: from `from=N`, or after the
/// `Last-Event-ID` a reconnecting client sends — the entries stored since
/// are sent first, then the live ones, each once. `lagged` says a slow
/// client missed live entries (reconnect with `Last-Event-ID` to get them).
async fn watch(
    State(s): State<AppState>,
    headers: axum::http::HeaderMap,
    Query(q): Query<WatchQuery>,
) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let filter = match q.agent.map(|a| known_agent(&s, a)).transpose() {
        Ok(f) => f,
        Err((status, message)) => return error(status, message),
    };
    let last_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let resume = match (&filter, q.from, last_id) {
        (None, Some(_), _) => return error(StatusCode::BAD_REQUEST, "from: only with agent"),
        (_, Some(0), _) => return error(StatusCode::BAD_REQUEST, "from: a seq from 1"),
        (Some(_), Some(f), _) => Some(Seq(f)),
        (Some(a), None, Some(id)) => {
            let seq = id
                .strip_prefix(&format!("{a}:"))
                .and_then(|n| n.parse::<u64>().ok());
            match seq {
                Some(n) => Some(Seq(n + 1)),
                None => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("Last-Event-ID: {id:?} is not {a}:<seq>"),
                    );
                }
            }
        }
        _ => None,
    };
    // subscribe before reading what is stored: nothing falls between
    let rx = s.committed.subscribe();
    let store = Arc::clone(&s.store);
    let line = |agent: &AgentId, seq: Seq, e: &baton_shared::Entry| {
        Event::default()
            .event("entry")
            .id(format!("{agent}:{seq}"))
            .data(e.to_jsonl())
    };
    let stream = futures_util::stream::unfold(
        (
            rx,
            store,
            filter,
            std::collections::VecDeque::<Event>::new(),
            resume,
        ),
        move |(mut rx, store, filter, mut queued, mut next)| async move {
            loop {
                if let Some(ev) = queued.pop_front() {
                    return Some((
                        Ok::<_, std::convert::Infallible>(ev),
                        (rx, store, filter, queued, next),
                    ));
                }
                // catching up (a resumed watch): stored entries first
                if let (Some(a), Some(n)) = (&filter, next) {
                    let (store2, a2) = (Arc::clone(&store), a.clone());
                    let rows =
                        tokio::task::spawn_blocking(move || store2.range(&a2, n, REPLAY_CHUNK))
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or_default();
                    if let Some((last, _)) = rows.last() {
                        next = Some(last.next());
                        queued.extend(rows.iter().map(|(sq, e)| line(a, *sq, e)));
                        continue;
                    }
                }
                match rx.recv().await {
                    Ok(c) => {
                        if filter.as_ref().is_some_and(|f| *f != c.agent) {
                            continue;
                        }
                        // what a resumed watch already sent is not sent again
                        let first = next.map_or(c.first, |n| n.max(c.first));
                        if first > c.last {
                            continue;
                        }
                        let n = usize::try_from(c.last.0 - first.0 + 1).unwrap_or(0);
                        if let Ok(rows) = store.range(&c.agent, first, n) {
                            queued.extend(rows.iter().map(|(sq, e)| line(&c.agent, *sq, e)));
                        }
                        if filter.is_some() {
                            next = Some(c.last.next());
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let ev = Event::default().event("lagged").data(n.to_string());
                        return Some((Ok(ev), (rx, store, filter, queued, next)));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        },
    );
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// `{"error": "…"}`, written by the JSON writer (any text is escaped as
/// JSON requires, control characters included).
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let mut o = Object::new();
    o.insert("error", Value::from(message.into()));
    json_response(status, &Value::Object(o))
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    let body = baton_shared::canonical::to_vec(v);
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `ok`, or 503 with the reason while the gateway is in alert: a stored
/// chain the start-up check set aside is not yet rebuilt.
async fn healthz(State(s): State<AppState>) -> Response {
    let store = Arc::clone(&s.store);
    let damage = tokio::task::spawn_blocking(move || store.damage()).await;
    let text = match damage {
        Ok(Ok(d)) if d.is_empty() => return "ok\n".into_response(),
        Ok(Ok(d)) => {
            let mut t = String::from(
                "alert: stored chains damaged, set aside and rebuilding from resends:\n",
            );
            for (agent, d) in d {
                let _ = std::fmt::Write::write_fmt(
                    &mut t,
                    format_args!(
                        "  {agent}: from seq {} to {} ({})\n",
                        d.from, d.head, d.problem
                    ),
                );
            }
            t
        }
        Ok(Err(e)) => format!("alert: the store cannot be read: {e}\n"),
        Err(e) => format!("alert: {e}\n"),
    };
    (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
}

/// Forwarding to the parent: per chain what is held, what the parent's
/// receipts cover and the receipt itself; recent alerts. 404 without an
/// upstream.
async fn upstream(State(s): State<AppState>) -> Response {
    let Some(status) = &s.upstream else {
        return error(StatusCode::NOT_FOUND, "this gateway has no upstream");
    };
    let v = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .to_value();
    let body = baton_shared::canonical::to_vec(&v);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The cluster summary; on a parent, the roll-up of its clusters with
/// `own` (its own agents) and `children` (each child cluster's latest
/// summary, with the gateway that wrote it and when).
async fn cluster(State(s): State<AppState>) -> Response {
    use baton_shared::json::{Object, Value};
    let now = baton_runtime::unix_ms();
    let reg = s.registry();
    let mut v = reg.summary().to_value(s.cluster.as_str(), now);
    if !reg.children().is_empty()
        && let Value::Object(o) = &mut v
    {
        o.insert("own", reg.own_summary().to_value(s.cluster.as_str(), now));
        let mut children = Object::new();
        for (cluster, c) in reg.children() {
            let mut cv = c.summary.to_value(cluster, c.at_ms);
            if let Value::Object(co) = &mut cv {
                co.insert("gateway", Value::from(c.gateway.as_str()));
            }
            children.insert(cluster, cv);
        }
        o.insert("children", Value::Object(children));
    }
    drop(reg);
    let body = baton_shared::canonical::to_vec(&v);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The cluster's gauges: summary figures, agents by state, modes (1 for
/// the current one) and each agent's clock offset.
#[allow(clippy::cast_precision_loss)]
fn cluster_gauges(s: &AppState) -> Vec<Gauge> {
    let reg = s.registry();
    let sum = reg.summary();
    let one = |v: f64| vec![(String::new(), v)];
    vec![
        Gauge {
            name: "baton_cluster_agents",
            help: "Agents in the cluster summary (enrolled).",
            samples: one(sum.agents as f64),
        },
        Gauge {
            name: "baton_http_connections_open",
            help: "HTTP connections open now (at most http_max_connections).",
            samples: one(s
                .metrics
                .http_connections_open
                .load(std::sync::atomic::Ordering::Relaxed) as f64),
        },
        Gauge {
            name: "baton_store_damaged_chains",
            help: "Stored chains set aside at start and not yet rebuilt (alert while > 0).",
            samples: one(s.store.damage().map_or(f64::NAN, |d| d.len() as f64)),
        },
        Gauge {
            name: "baton_cluster_active",
            help: "Agents in state active.",
            samples: one(sum.active as f64),
        },
        Gauge {
            name: "baton_cluster_agents_by_state",
            help: "Agents per liveness state.",
            samples: sum
                .by_state
                .iter()
                .map(|(st, n)| (format!("state=\"{st}\""), *n as f64))
                .collect(),
        },
        Gauge {
            name: "baton_cluster_impedance_mean_ms",
            help: "Mean impedance of reachable agents, ms (NaN: none reported).",
            samples: one(sum.impedance_mean_ms.unwrap_or(f64::NAN)),
        },
        Gauge {
            name: "baton_cluster_impedance_p95_ms",
            help: "95th percentile impedance of reachable agents, ms (NaN: none reported).",
            samples: one(sum.impedance_p95_ms.unwrap_or(f64::NAN)),
        },
        Gauge {
            name: "baton_cluster_mode",
            help: "Operating mode: 1 for the current one.",
            samples: baton_shared::summary::Mode::ALL
                .iter()
                .map(|m| {
                    (
                        format!("mode=\"{}\"", m.as_str()),
                        if *m == sum.mode { 1.0 } else { 0.0 },
                    )
                })
                .collect(),
        },
        Gauge {
            name: "baton_agent_clock_offset_ms",
            help: "Estimated clock offset per agent (gateway − agent), ms.",
            samples: reg
                .offsets()
                .into_iter()
                .map(|(a, off)| (format!("agent=\"{a}\""), off as f64))
                .collect(),
        },
    ]
}

/// Prometheus text. Its store reads (the registry's size, the damage
/// table) run on a blocking thread, like every other store read.
async fn metrics(State(s): State<AppState>) -> Response {
    match tokio::task::spawn_blocking(move || render_metrics(&s)).await {
        Ok(r) => r,
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering metrics: {e}\n"),
        )
            .into_response(),
    }
}

fn render_metrics(s: &AppState) -> Response {
    let agents = s.store.agents().map(|a| a.len()).unwrap_or(0);
    let cluster = cluster_gauges(s);
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
        s.metrics
            .render(&[gauges.as_slice(), cluster.as_slice()].concat()),
    )
        .into_response()
}

async fn agents(State(s): State<AppState>) -> Response {
    let list = match s.store.agents() {
        Ok(l) => l,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let rows = list
        .into_iter()
        .map(|(id, record)| Value::Object(full_row(&s, &id, &record)))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        baton_shared::canonical::to_vec(&Value::Array(rows)),
    )
        .into_response()
}

/// One agent: its stored registry row and its live fields.
async fn agent(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, msg)) => return error(status, msg),
    };
    match s.store.agent(&agent) {
        Ok(Some(record)) => (
            [(header::CONTENT_TYPE, "application/json")],
            baton_shared::canonical::to_vec(&Value::Object(full_row(&s, &agent, &record))),
        )
            .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("unknown agent {agent}")),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn full_row(s: &AppState, id: &AgentId, record: &crate::store::AgentRecord) -> Object {
    let head = s
        .store
        .head(id)
        .unwrap_or(baton_shared::intake::Head::EMPTY);
    let halted = s.store.halted(id).ok().flatten();
    let mut row = registry_row(id, record, head, halted);
    for (k, v) in s.registry().live_fields(id, s.origin.elapsed()) {
        row.insert(k, v);
    }
    row
}

/// One stored registry row.
fn registry_row(
    id: &AgentId,
    r: &crate::store::AgentRecord,
    head: baton_shared::intake::Head,
    halted: Option<Seq>,
) -> Object {
    let key: String = r.public_key.iter().map(|b| format!("{b:02x}")).collect();
    let mut o = Object::new();
    o.insert("id", Value::from(id.as_str()));
    o.insert("public_key", Value::from(key));
    o.insert("enrolled_by", Value::from(r.enrolled_by.describe()));
    o.insert("head_seq", Value::from(head.seq.0));
    o.insert("head_hash", Value::from(head.hash.to_hex()));
    o.insert(
        "halted_at",
        halted.map_or(Value::Null, |s| Value::from(s.0)),
    );
    o
}

#[derive(Debug, Deserialize)]
struct EntriesQuery {
    from: Option<u64>,
    to: Option<u64>,
    limit: Option<usize>,
    event: Option<String>,
    context: Option<String>,
}

/// `Get`: JSONL of `agent`'s stored entries from `from` through `to`
/// (default: the head), only those of `event` and of `context` when
/// given, at most `limit` (default 1,000; more than 10,000 is taken as
/// 10,000, as before).
async fn entries(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<EntriesQuery>,
) -> Response {
    let agent = match known_agent(&s, id) {
        Ok(a) => a,
        Err((status, message)) => return error(status, message),
    };
    if q.from == Some(0) {
        return error(StatusCode::BAD_REQUEST, "from: a seq from 1");
    }
    if let (Some(f), Some(t)) = (q.from, q.to)
        && t < f
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!("to: {t} is before from {f}"),
        );
    }
    if q.limit == Some(0) {
        return error(
            StatusCode::BAD_REQUEST,
            "limit: from 1 (at most 10,000 are sent)",
        );
    }
    if let Some(e) = &q.event
        && let Err(err) = baton_shared::EventName::new(e.as_str())
    {
        return error(StatusCode::BAD_REQUEST, format!("event: {err}"));
    }
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let from = Seq(q.from.unwrap_or(1));
    let to = Seq(q.to.unwrap_or(u64::MAX));
    // canonical content names them exactly so: a byte test, then a parse
    let event = q.event.map(|e| format!("\"event\":\"{e}\""));
    let context = q.context;
    // Read 256 at a time into a streamed body: the response never holds
    // more than a chunk, whatever the limit and the entries' sizes.
    let store = Arc::clone(&s.store);
    streamed(&s, "application/x-ndjson", move |out| {
        let mut next = from;
        let mut left = limit;
        while left > 0 && next <= to {
            let rows = store.range(&agent, next, 256)?;
            let Some((last, _)) = rows.last() else {
                break;
            };
            next = last.next();
            for (seq, e) in &rows {
                if *seq > to || left == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&e.content);
                if event.as_ref().is_some_and(|ev| !text.contains(ev.as_str())) {
                    continue;
                }
                if let Some(c) = &context
                    && crate::report::Item::of(*seq, &e.content)
                        .is_none_or(|i| i.context.as_deref() != Some(c.as_str()))
                {
                    continue;
                }
                std::io::Write::write_all(out, e.to_jsonl().as_bytes())?;
                std::io::Write::write_all(out, b"\n")?;
                left -= 1;
            }
        }
        Ok(())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(r: Response) -> Vec<u8> {
        axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .unwrap()
            .to_vec()
    }

    /// Regression: error bodies were written with Rust's `{:?}`, which is
    /// not JSON for control characters (`\u{1}`) among others.
    #[tokio::test]
    async fn error_bodies_are_json_whatever_the_message() {
        let message = "bad \u{1} \"quoted\" \\ \u{7f} é \n line";
        let r = error(StatusCode::BAD_REQUEST, message);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let body = body_of(r).await;
        let v = baton_shared::json::parse(&body, baton_shared::json::Mode::Verify)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        let got = v
            .as_object()
            .and_then(|o| o.get("error"))
            .and_then(Value::as_str);
        assert_eq!(got, Some(message));
    }

    #[test]
    fn a_key_conflict_is_409_by_its_variant() {
        let agent = AgentId::new("pi-1").unwrap();
        let conflict = CommandError::KeyConflict { agent };
        assert_eq!(command_status(&conflict), StatusCode::CONFLICT);
        let busy = CommandError::Load(LoadError::Busy(AgentId::new("pi-2").unwrap()));
        assert_eq!(command_status(&busy), StatusCode::UNPROCESSABLE_ENTITY);
    }
}
