//! Handlers subscribed over the agent's socket (PROTOCOL §9 on the
//! device): a local program connects to the append socket and, as its
//! first line, says which verbs it serves:
//!
//! ```text
//! → {"serve": ["act", "decide"]}
//! ← {"serving": ["act", "decide"]}
//! ```
//!
//! From then on the connection carries commands, not appends. For each
//! command of a served verb the agent writes
//! `{"command": {"hash", "id", "issuer", "verb", "payload", "target_ms",
//! "target_local_ms", "window_ms"}}` (T in the top's time and in this
//! device's clock) and the program answers, one line each,
//! `{"hash", "state": 1 | 0 | -1, "result"?, "conflict"?, "detail"?}`:
//! READY (with an optional JSON result), TRANSIT (still working; a final
//! answer follows) or CONFLICT (`conflict` one of the §9 kinds, `detail` in
//! words). A command answered READY is woken at T with `{"wake": hash}`.
//! A bad line is answered `{"error": "…"}` and counted; it changes nothing.
//! When an operator rolls the derived views back (`baton-agent pitr`),
//! every serving program is told `{"pitr": {"seq", "hash", "by", "reason"}}`.
//!
//! Only `orient`, `decide` and `act` can be served (the others are built
//! in). A served verb goes to its program before any configured
//! executable; the newest program to subscribe a verb serves it. A command
//! not answered finally by T + `window_ms` is answered −1
//! `temporal_paradox`; when the program's connection ends, every command it
//! held without a final answer is answered −1 `handler_failed`.

use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use baton_shared::Hash;
use baton_shared::command::{self, Answer, Command, ConflictKind, State, Verb};
use baton_shared::json::{self, Mode, Object, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Commands a program may have waiting to be written to it.
const QUEUE: usize = 64;
/// Longest answer line a program may write.
const MAX_ANSWER_LINE: usize = 64 * 1024;

/// A command handed to the program serving its verb.
#[derive(Debug)]
pub struct Assignment {
    pub command: Command,
    pub received_ms: i64,
    /// T in this device's clock, ms since the epoch.
    pub target_local_ms: i64,
    /// When to wake the program (T, as this process's monotonic clock).
    pub wake_at: tokio::time::Instant,
    /// Where its answers go (the coordinator).
    pub answers: mpsc::Sender<(Hash, Answer)>,
}

/// Which program serves which verb: verb → (session, its queue).
#[derive(Debug, Default)]
pub struct Subscribers {
    serving: Mutex<HashMap<Verb, (u64, mpsc::Sender<Assignment>)>>,
    next: AtomicU64,
    /// Notices for every subscribed program (a `pitr`: derived state goes
    /// back to an entry).
    notices: std::sync::OnceLock<tokio::sync::broadcast::Sender<Value>>,
}

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Verb, (u64, mpsc::Sender<Assignment>)>> {
        self.serving
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn subscribe(&self, verbs: &[Verb], tx: &mpsc::Sender<Assignment>) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        for v in verbs {
            s.insert(*v, (id, tx.clone()));
        }
        id
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().retain(|_, (s, _)| *s != id);
    }

    fn notices(&self) -> &tokio::sync::broadcast::Sender<Value> {
        self.notices
            .get_or_init(|| tokio::sync::broadcast::channel(16).0)
    }

    /// Tells every subscribed program `notice` (one line each).
    pub fn tell(&self, notice: &Value) {
        let _ = self.notices().send(notice.clone());
    }

    /// Hands `a` to the program serving its verb; `false` when none does
    /// (or its queue is full).
    pub fn assign(&self, a: Assignment) -> bool {
        let tx = self.lock().get(&a.command.verb).map(|(_, tx)| tx.clone());
        tx.is_some_and(|tx| tx.try_send(a).is_ok())
    }
}

/// What a connection's first line asks for: the verbs of a `serve`
/// request (`Some(Err)`: it is one, and wrong), or `None` (an append).
pub fn serve_request(line: &[u8]) -> Option<Result<Vec<Verb>, String>> {
    let text = std::str::from_utf8(line).ok()?.trim();
    if !text.starts_with('{') || !text.contains("\"serve\"") {
        return None;
    }
    let v = json::parse(text.as_bytes(), Mode::Verify).ok()?;
    let o = v.as_object()?;
    let list = o.get("serve")?;
    Some((|| {
        if o.len() != 1 {
            return Err("serve: the request has one key, \"serve\"".to_owned());
        }
        let Value::Array(items) = list else {
            return Err("serve: a list of verbs".to_owned());
        };
        if items.is_empty() {
            return Err("serve: at least one verb".to_owned());
        }
        items
            .iter()
            .map(|i| match i.as_str().and_then(Verb::parse) {
                Some(v @ (Verb::Orient | Verb::Decide | Verb::Act)) => Ok(v),
                _ => Err(format!(
                    "serve: {} is not one of orient, decide, act (the others are built in)",
                    String::from_utf8_lossy(&baton_shared::canonical::to_vec(i))
                )),
            })
            .collect()
    })())
}

/// An answer line from the program, checked against the commands it holds.
fn read_answer(line: &[u8], open: &HashMap<Hash, Open>) -> Result<(Hash, Answer), String> {
    let v = json::parse(line, Mode::Verify).map_err(|e| format!("not JSON: {e}"))?;
    let o = v.as_object().ok_or("an answer is a JSON object")?;
    const KEYS: [&str; 5] = ["hash", "state", "result", "conflict", "detail"];
    if let Some((k, _)) = o.iter().find(|(k, _)| !KEYS.contains(&&**k)) {
        return Err(format!("{k}: unknown field"));
    }
    let hash = o
        .get("hash")
        .and_then(Value::as_str)
        .and_then(|h| Hash::from_hex(h).ok())
        .ok_or("hash: the command's hash, 64 hex digits")?;
    let held = open
        .get(&hash)
        .ok_or_else(|| format!("hash: {hash} is not a command this program holds"))?;
    let state = match o.get("state").and_then(Value::as_f64) {
        Some(1.0) => State::Ready,
        Some(0.0) => State::Transit,
        Some(-1.0) => State::Conflict,
        _ => return Err("state: 1 (READY), 0 (TRANSIT) or -1 (CONFLICT)".into()),
    };
    let result = o.get("result").cloned();
    if result
        .as_ref()
        .is_some_and(|r| baton_shared::canonical::to_vec(r).len() > command::MAX_RESULT_BYTES)
    {
        return Err(format!(
            "result: longer than {} bytes",
            command::MAX_RESULT_BYTES
        ));
    }
    let processing_ms = u64::try_from(held.since.elapsed().as_millis()).unwrap_or(u64::MAX);
    let now = held.clock_now();
    let a = match state {
        State::Conflict => {
            let kind = o
                .get("conflict")
                .and_then(Value::as_str)
                .and_then(ConflictKind::parse)
                .ok_or("conflict: one of the §9 conflict kinds, e.g. data_contradiction")?;
            let detail = o.get("detail").and_then(Value::as_str).unwrap_or_default();
            Answer::conflict(
                hash,
                held.received_ms,
                kind,
                detail.chars().take(200).collect::<String>(),
            )
        }
        state => Answer {
            hash,
            state,
            received_ms: held.received_ms,
            ready_ms: (state == State::Ready).then_some(now),
            processing_ms: Some(processing_ms),
            conflict: None,
            result,
        },
    };
    Ok((hash, a))
}

/// A command the program holds.
struct Open {
    received_ms: i64,
    since: std::time::Instant,
    /// The top's time − this device's, ms (to stamp `ready_ms`).
    offset_ms: i64,
    answers: mpsc::Sender<(Hash, Answer)>,
    ready: bool,
    done: bool,
}

impl Open {
    fn clock_now(&self) -> i64 {
        baton_runtime::unix_ms() + self.offset_ms
    }
}

fn line(v: Value) -> Vec<u8> {
    let mut b = baton_shared::canonical::to_vec(&v);
    b.push(b'\n');
    b
}

fn error_line(e: &str) -> Vec<u8> {
    let mut o = Object::new();
    o.insert("error", Value::from(e));
    line(Value::Object(o))
}

/// Serves `verbs` for the program on this connection until it closes.
/// `refused` counts its bad lines.
pub async fn session<R, W>(
    mut reader: R,
    mut out: W,
    verbs: Vec<Verb>,
    subscribers: &Subscribers,
    refused: impl Fn(),
) where
    R: AsyncBufRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let (tx, mut assigned) = mpsc::channel::<Assignment>(QUEUE);
    let mut notices = subscribers.notices().subscribe();
    let id = subscribers.subscribe(&verbs, &tx);
    drop(tx);
    let names: Vec<Value> = verbs.iter().map(|v| Value::from(v.as_str())).collect();
    info!(verbs = ?verbs.iter().map(|v| v.as_str()).collect::<Vec<_>>(), "a program serves commands over the socket");
    let mut ok = Object::new();
    ok.insert("serving", Value::Array(names));
    let mut alive = out.write_all(&line(Value::Object(ok))).await.is_ok();
    // lines from the program, read on their own task
    let (lines_tx, mut lines) = mpsc::channel::<Result<Vec<u8>, String>>(16);
    let read = tokio::spawn(async move {
        loop {
            let mut buf = Vec::new();
            let mut limited = (&mut reader).take(MAX_ANSWER_LINE as u64 + 1);
            match limited.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) if buf.last() != Some(&b'\n') => {
                    let _ = lines_tx
                        .send(Err(format!(
                            "an answer line longer than {MAX_ANSWER_LINE} bytes"
                        )))
                        .await;
                    return;
                }
                Ok(_) => {
                    if lines_tx.send(Ok(buf)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut open: HashMap<Hash, Open> = HashMap::new();
    let mut wakes: BinaryHeap<std::cmp::Reverse<(tokio::time::Instant, Hash)>> = BinaryHeap::new();
    while alive {
        let next_wake = wakes.peek().map(|w| w.0.0);
        tokio::select! {
            n = notices.recv() => {
                if let Ok(n) = n {
                    alive = out.write_all(&line(n)).await.is_ok();
                }
            }
            a = assigned.recv() => {
                let Some(a) = a else { break };
                let c = &a.command;
                let mut d = Object::new();
                d.insert("hash", Value::from(c.hash.to_hex()));
                d.insert("id", Value::from(c.id.as_str()));
                d.insert("issuer", Value::from(c.issuer.as_str()));
                d.insert("verb", Value::from(c.verb.as_str()));
                d.insert("payload", c.payload.clone());
                #[allow(clippy::cast_precision_loss)] // ms: exact far past 2^53
                let ms = |t: i64| Value::Number(t as f64);
                d.insert("target_ms", ms(c.target_ms));
                d.insert("target_local_ms", ms(a.target_local_ms));
                d.insert("window_ms", Value::from(c.window_ms));
                let mut o = Object::new();
                o.insert("command", Value::Object(d));
                alive = out.write_all(&line(Value::Object(o))).await.is_ok();
                wakes.push(std::cmp::Reverse((a.wake_at, c.hash)));
                open.insert(c.hash, Open {
                    received_ms: a.received_ms,
                    since: std::time::Instant::now(),
                    offset_ms: c.target_ms - a.target_local_ms,
                    answers: a.answers,
                    ready: false,
                    done: false,
                });
            }
            l = lines.recv() => {
                let text = match l {
                    Some(Ok(t)) => t,
                    Some(Err(e)) => {
                        refused();
                        let _ = out.write_all(&error_line(&e)).await;
                        break;
                    }
                    None => break,
                };
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match read_answer(&text, &open) {
                    Ok((hash, a)) => {
                        let Some(held) = open.get_mut(&hash) else { continue };
                        if held.done {
                            refused();
                            alive = out.write_all(&error_line(&format!("hash: {hash} was already answered finally"))).await.is_ok();
                            continue;
                        }
                        held.ready = a.state == State::Ready;
                        held.done = a.state.is_final();
                        let _ = held.answers.send((hash, a)).await;
                        if held.done && !held.ready {
                            open.remove(&hash);
                        }
                    }
                    Err(e) => {
                        refused();
                        alive = out.write_all(&error_line(&e)).await.is_ok();
                    }
                }
            }
            () = async {
                match next_wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                if let Some(std::cmp::Reverse((_, hash))) = wakes.pop() {
                    if open.get(&hash).is_some_and(|h| h.ready) {
                        let mut o = Object::new();
                        o.insert("wake", Value::from(hash.to_hex()));
                        alive = out.write_all(&line(Value::Object(o))).await.is_ok();
                    }
                    if open.get(&hash).is_some_and(|h| h.done) {
                        open.remove(&hash);
                    }
                }
            }
        }
        if alive {
            alive = out.flush().await.is_ok();
        }
    }
    subscribers.unsubscribe(id);
    read.abort();
    // what it held without a final answer cannot be assumed done
    for (hash, held) in open.into_iter().filter(|(_, h)| !h.done) {
        let a = Answer::conflict(
            hash,
            held.received_ms,
            ConflictKind::HandlerFailed,
            "the program serving it over the socket went away",
        );
        let _ = held.answers.send((hash, a)).await;
    }
    warn!("a program serving commands over the socket disconnected");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_serve_request_is_told_from_an_append_and_checked() {
        assert_eq!(serve_request(br#"{"event":"x","data":{}}"#), None);
        assert_eq!(
            serve_request(br#"{"serve":["act","decide"]}"#),
            Some(Ok(vec![Verb::Act, Verb::Decide]))
        );
        let err = |l: &[u8]| serve_request(l).unwrap().unwrap_err();
        assert!(err(br#"{"serve":["record"]}"#).contains("not one of orient, decide, act"));
        assert!(err(br#"{"serve":[]}"#).contains("at least one"));
        assert!(err(br#"{"serve":"act"}"#).contains("a list"));
        assert!(err(br#"{"serve":["act"],"x":1}"#).contains("one key"));
    }
}
