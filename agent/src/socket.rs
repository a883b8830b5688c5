//! The local append API: a Unix socket taking newline-delimited JSON
//! requests `{"event": …, "context": …, "data": …}` and answering each, in
//! order, with `{"seq": N, "hash": "…"}` once the entry is durable, or
//! `{"error": "…"}` (nothing changed). A client may pipeline many requests
//! before reading answers; they share group commits.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use baton_shared::entry::AppendRequest;
use baton_shared::json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::status::Shared;
use crate::writer::PitrTo;
use crate::writer::{AppendRefused, AppendResult, Writer};

/// Longest request line accepted (content is at most 64 KiB; escapes and
/// the request's own keys add some).
pub const MAX_LINE: usize = 256 * 1024;
/// Answers a connection may have outstanding before its reader waits.
const PIPELINE: usize = 4096;
/// Most connections served at once; more are told so and closed. With
/// `MAX_LINE`, this bounds what clients can make the agent buffer
/// (64 × 256 KiB = 16 MiB at worst).
pub const MAX_CONNECTIONS: usize = 64;
/// A line begun must be finished within this (an idle connection between
/// lines may stay open as long as it likes: it holds no buffer).
pub const LINE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Lines at least this long are parsed off the runtime's thread (the
/// agent's runtime is single-threaded: appends, uplink and timers share
/// it), at most `BIG_PARSES` at a time.
const BIG_LINE: usize = 16 * 1024;
const BIG_PARSES: usize = 2;

/// Binds the socket (replacing a stale file) with mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        // A live daemon answers on it; a stale file from a crash does not.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by a running agent", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Serves connections until the listener fails or the task is dropped.
pub async fn serve(listener: UnixListener, writer: Writer, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let parses = Arc::new(tokio::sync::Semaphore::new(BIG_PARSES));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    if writer
                        .stats
                        .socket_connections_refused
                        .fetch_add(1, Ordering::Relaxed)
                        == 0
                    {
                        warn!(
                            max = MAX_CONNECTIONS,
                            "append socket full: connections beyond the limit are refused (counted in status.json)"
                        );
                    }
                    let busy = error_line(&format!(
                        "busy: {MAX_CONNECTIONS} connections open to the append socket; retry later"
                    ));
                    // Best effort and never waiting: the socket buffer takes it.
                    let _ = stream.try_write(busy.as_bytes());
                    continue;
                };
                let (writer, shared, parses) = (writer.clone(), shared.clone(), parses.clone());
                tokio::spawn(async move {
                    connection(stream, writer, shared, parses).await;
                    drop(slot);
                });
            }
            Err(e) => {
                warn!(error = %e, "append socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// What to answer for the lines of one read, in order.
enum Pending {
    /// Answers known at once (a refused request).
    Now(String),
    /// The lines read together: each slot is either its answer or the
    /// next of the writer's answers.
    Batch {
        slots: Vec<Option<String>>,
        answers: oneshot::Receiver<Vec<AppendResult>>,
        /// When the lines were handed to the writer.
        since: std::time::Instant,
    },
}

/// Most lines handed to the writer as one message.
const MAX_BATCH: usize = 256;

/// One line of a connection, read or refused.
enum Line {
    Eof,
    Request(AppendRequest),
    Refused(String),
    Blank,
}

async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    shared: &Shared,
    parses: &tokio::sync::Semaphore,
) -> std::io::Result<Line> {
    line.clear();
    // Waiting for a line to begin costs nothing; once it has, it must end
    // within LINE_TIMEOUT.
    if reader.fill_buf().await?.is_empty() {
        return Ok(Line::Eof);
    }
    let mut limited = (&mut *reader).take(MAX_LINE as u64 + 1);
    let n = tokio::time::timeout(LINE_TIMEOUT, limited.read_until(b'\n', line))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("a request line was left unfinished for {LINE_TIMEOUT:?}"),
            )
        })??;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if line.last() != Some(&b'\n') && line.len() > MAX_LINE {
        // Skip the rest of the overlong line (in the same time), then refuse it.
        tokio::time::timeout(LINE_TIMEOUT, skip_line(reader))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("an overlong request line went on for {LINE_TIMEOUT:?}"),
                )
            })??;
        return Ok(Line::Refused(format!(
            "request line longer than {MAX_LINE} bytes"
        )));
    }
    let text = line.strip_suffix(b"\n").unwrap_or(line);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.iter().all(u8::is_ascii_whitespace) {
        return Ok(Line::Blank);
    }
    let parsed = if text.len() < BIG_LINE {
        AppendRequest::parse(text)
    } else {
        let _turn = parses.acquire().await.map_err(std::io::Error::other)?;
        let owned = text.to_vec();
        tokio::task::spawn_blocking(move || AppendRequest::parse(&owned))
            .await
            .map_err(std::io::Error::other)?
    };
    Ok(match parsed {
        Ok(_) if shared.rebuilding.load(Ordering::Relaxed) => Line::Refused(
            "alert: nothing of the ledger survived damage; appends resume once the gateway's \
             answer gives the chain back (see status.json); retry later"
                .into(),
        ),
        Ok(req) => Line::Request(req),
        Err(e) => Line::Refused(e.to_string()),
    })
}

/// What a connection's first line is.
enum First {
    /// An append request (or nothing yet): the append API serves it.
    Append,
    /// A handler's `serve` request (`crate::serve`), read whole.
    Serve(Vec<u8>),
    /// An operator's rollback (`{"pitr": …}`), read whole.
    Pitr(Vec<u8>),
    /// A `serve` request left unfinished or unreadable: the connection ends.
    Gone,
}

/// Looks at the first line without taking an append request from it.
async fn first_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> First {
    let Ok(Ok(buf)) = tokio::time::timeout(LINE_TIMEOUT, r.fill_buf()).await else {
        return First::Append;
    };
    let start = buf.iter().position(|b| !b.is_ascii_whitespace());
    let pitr = start.is_some_and(|i| buf[i..].starts_with(b"{\"pitr\""));
    if !pitr && !start.is_some_and(|i| buf[i..].starts_with(b"{\"serve\"")) {
        return First::Append;
    }
    let mut line = Vec::new();
    let mut limited = r.take(MAX_LINE as u64);
    match tokio::time::timeout(LINE_TIMEOUT, limited.read_until(b'\n', &mut line)).await {
        Ok(Ok(_)) if pitr => First::Pitr(line),
        Ok(Ok(_)) => First::Serve(line),
        _ => First::Gone,
    }
}

/// Whether a program running as `peer` (the socket's peer credentials)
/// may roll the derived views back: root, or the agent's own user — an
/// operator on the device, not any program the socket's group lets in.
pub fn may_roll_back(peer: Option<u32>, own: u32) -> bool {
    matches!(peer, Some(0)) || peer == Some(own)
}

/// Reads a rollback request: `{"pitr": {"to": N | "HASH", "reason": "…",
/// "by"?: "…"}}`; every error names the field.
pub fn pitr_request(line: &[u8]) -> Result<(PitrTo, Option<String>, String), String> {
    let v = baton_shared::json::parse(line, baton_shared::json::Mode::Verify)
        .map_err(|e| format!("pitr: {e}"))?;
    let o = v
        .as_object()
        .and_then(|o| o.get("pitr"))
        .and_then(Value::as_object)
        .ok_or("pitr: not {\"pitr\": {\"to\", \"reason\"}}")?;
    if let Some((k, _)) = o
        .iter()
        .find(|(k, _)| !["to", "reason", "by"].contains(&&**k))
    {
        return Err(format!("pitr.{k}: unknown field (to, reason, by)"));
    }
    let to = match o.get("to") {
        Some(Value::String(h)) => {
            PitrTo::Hash(baton_shared::Hash::from_hex(h).map_err(|e| format!("pitr.to: {e}"))?)
        }
        Some(n) => PitrTo::Seq(baton_shared::Seq(
            n.as_exact_u64()
                .filter(|n| *n >= 1)
                .ok_or("pitr.to: a seq (1, 2, …) or an entry's hash")?,
        )),
        None => return Err("pitr.to: missing".into()),
    };
    let reason = match o.get("reason") {
        Some(Value::String(r)) if !r.trim().is_empty() => r.clone(),
        _ => return Err("pitr.reason: a non-empty string (why the rollback)".into()),
    };
    let by = match o.get("by") {
        None => None,
        Some(Value::String(b)) => Some(b.clone()),
        Some(_) => return Err("pitr.by: a string".into()),
    };
    Ok((to, by, reason))
}

/// An operator's rollback: checked, recorded as a `pitr` entry, answered
/// `{"pitr": {"seq", "hash"}}`, and told to every program serving
/// commands on the socket.
async fn rollback(
    line: &[u8],
    peer: Option<u32>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    writer: &Writer,
    shared: &Shared,
) {
    let own = rustix::process::geteuid().as_raw();
    let answer = if may_roll_back(peer, own) {
        match pitr_request(line) {
            Ok((to, by, reason)) => {
                let who = format!(
                    "local operator uid {}{}",
                    peer.unwrap_or(u32::MAX),
                    by.map(|b| format!(" ({b})")).unwrap_or_default()
                );
                match writer
                    .pitr(baton_runtime::unix_ms(), to, who.clone(), reason.clone())
                    .await
                {
                    Ok((seq, hash)) if seq.0 > 0 => {
                        let mut o = baton_shared::json::Object::new();
                        o.insert("seq", Value::from(seq.0));
                        o.insert("hash", Value::from(hash.to_hex()));
                        o.insert("by", Value::from(who));
                        o.insert("reason", Value::from(reason));
                        let mut a = baton_shared::json::Object::new();
                        a.insert("pitr", Value::Object(o));
                        let v = Value::Object(a);
                        shared.subscribers.tell(&v);
                        Ok(v)
                    }
                    Ok(_) => Err("ledger: the rollback was not recorded (see status.json)".into()),
                    Err(e) => Err(e.to_string()),
                }
            }
            Err(e) => Err(e),
        }
    } else {
        Err(format!(
            "pitr: only root or the agent's own user may roll back (this connection's uid: {})",
            peer.map_or_else(|| "unknown".into(), |u| u.to_string())
        ))
    };
    let text = match answer {
        Ok(v) => {
            let mut t = baton_shared::canonical::to_vec(&v);
            t.push(b'\n');
            String::from_utf8_lossy(&t).into_owned()
        }
        Err(e) => {
            writer.stats.refused.fetch_add(1, Ordering::Relaxed);
            error_line(&e)
        }
    };
    let _ = write.write_all(text.as_bytes()).await;
}

/// Serves a handler that asked with `line`, or tells it what was wrong.
async fn handler_session(
    line: &[u8],
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut write: tokio::net::unix::OwnedWriteHalf,
    writer: &Writer,
    shared: &Shared,
) {
    let refused = || {
        writer.stats.refused.fetch_add(1, Ordering::Relaxed);
    };
    let e = match crate::serve::serve_request(line) {
        Some(Ok(verbs)) => {
            return crate::serve::session(reader, write, verbs, &shared.subscribers, refused).await;
        }
        Some(Err(e)) => e,
        None => "serve: not a JSON object {\"serve\": [verbs]}".to_owned(),
    };
    refused();
    let _ = write.write_all(error_line(&e).as_bytes()).await;
}

async fn connection(
    stream: UnixStream,
    writer: Writer,
    shared: Arc<Shared>,
    parses: Arc<tokio::sync::Semaphore>,
) {
    let peer = stream.peer_cred().ok().map(|c| c.uid());
    let (read, write) = stream.into_split();
    let mut reader = BufReader::new(read);
    // a program that serves commands says so on its first line
    match first_line(&mut reader).await {
        First::Append => {}
        First::Serve(line) => {
            return handler_session(&line, reader, write, &writer, &shared).await;
        }
        First::Pitr(line) => return rollback(&line, peer, write, &writer, &shared).await,
        First::Gone => return,
    }
    let (tx, mut rx) = mpsc::channel::<Pending>(PIPELINE / MAX_BATCH + 1);
    let answer_shared = shared.clone();
    let answers = tokio::spawn(async move {
        let mut out = BufWriter::new(write);
        while let Some(p) = rx.recv().await {
            let ok = match p {
                Pending::Now(s) => out.write_all(s.as_bytes()).await.is_ok(),
                Pending::Batch {
                    slots,
                    answers,
                    since,
                } => {
                    let mut results = answers.await.unwrap_or_default().into_iter();
                    // append → durable, for the impedance profile
                    answer_shared.processing(since.elapsed().as_secs_f64() * 1000.0);
                    let mut ok = true;
                    for slot in slots {
                        let line = slot.unwrap_or_else(|| {
                            answer(results.next().unwrap_or(Err(AppendRefused::Stopped)))
                        });
                        ok &= out.write_all(line.as_bytes()).await.is_ok();
                    }
                    ok
                }
            };
            // Flush when nothing more is ready, so pipelined answers batch.
            if !ok || (rx.is_empty() && out.flush().await.is_err()) {
                return;
            }
        }
        let _ = out.flush().await;
    });
    let mut line = Vec::with_capacity(1024);
    'conn: loop {
        // A long line's buffer is not kept for the connection's life.
        if line.capacity() > 64 * 1024 {
            line = Vec::with_capacity(1024);
        }
        // Wait for one line, then take every whole line already buffered.
        let mut slots = Vec::new();
        let mut reqs = Vec::new();
        loop {
            let read = match read_request(&mut reader, &mut line, &shared, &parses).await {
                Ok(r) => r,
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::TimedOut {
                        writer
                            .stats
                            .socket_lines_timed_out
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    debug!(error = %e, "append socket read failed");
                    break 'conn;
                }
            };
            match read {
                Line::Eof if slots.is_empty() => break 'conn,
                Line::Eof | Line::Blank => {}
                Line::Request(req) => {
                    shared.note_append(&req);
                    reqs.push(req);
                    slots.push(None);
                }
                Line::Refused(e) => {
                    writer.stats.refused.fetch_add(1, Ordering::Relaxed);
                    slots.push(Some(error_line(&e)));
                }
            }
            if slots.len() >= MAX_BATCH || !reader.buffer().contains(&b'\n') {
                break;
            }
        }
        if slots.is_empty() {
            continue;
        }
        let pending = if reqs.is_empty() {
            Pending::Now(slots.into_iter().flatten().collect())
        } else {
            Pending::Batch {
                slots,
                since: std::time::Instant::now(),
                answers: writer.append_many(baton_runtime::unix_ms(), reqs).await,
            }
        };
        if tx.send(pending).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = answers.await;
}

async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<()> {
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|b| *b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        r.consume(n);
    }
}

fn error_line(msg: &str) -> String {
    let mut o = baton_shared::json::Object::new();
    o.insert("error", Value::from(msg));
    let mut s = baton_shared::canonical::to_vec(&Value::Object(o));
    s.push(b'\n');
    String::from_utf8_lossy(&s).into_owned()
}

fn answer(r: AppendResult) -> String {
    match r {
        Ok((seq, hash)) => format!("{{\"hash\":\"{}\",\"seq\":{}}}\n", hash.to_hex(), seq.0),
        Err(e) => error_line(&e.to_string()),
    }
}

/// A client of the socket (the CLI's `append` and `ingest`).
pub mod client {
    use super::*;

    /// One answer: `Ok((seq, hash))` or the error message.
    pub type Answer = Result<(u64, String), String>;

    pub fn parse_answer(line: &str) -> Answer {
        let v =
            baton_shared::json::parse(line.trim_end().as_bytes(), baton_shared::json::Mode::Verify)
                .map_err(|e| format!("unreadable answer {line:?}: {e}"))?;
        let o = v
            .as_object()
            .ok_or_else(|| format!("unreadable answer {line:?}"))?;
        if let Some(e) = o.get("error").and_then(Value::as_str) {
            return Err(e.to_owned());
        }
        let seq = o.get("seq").and_then(Value::as_f64);
        let hash = o.get("hash").and_then(Value::as_str);
        match (seq, hash) {
            // seqs are below 2^53: exact in binary64
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            (Some(s), Some(h)) => Ok((s as u64, h.to_owned())),
            _ => Err(format!("unreadable answer {line:?}")),
        }
    }

    /// Asks the agent for a rollback (`pitr`): its answer line, parsed
    /// (`{"pitr": {"seq", "hash", "by", "reason"}}` or `{"error"}`).
    pub async fn pitr(
        socket: &Path,
        to: &str,
        reason: &str,
        by: Option<&str>,
    ) -> std::io::Result<Value> {
        let mut p = baton_shared::json::Object::new();
        let target = match to.parse::<u64>() {
            Ok(n) => Value::from(n),
            Err(_) => Value::from(to),
        };
        p.insert("to", target);
        p.insert("reason", Value::from(reason));
        if let Some(b) = by {
            p.insert("by", Value::from(b));
        }
        let mut o = baton_shared::json::Object::new();
        o.insert("pitr", Value::Object(p));
        let mut line = baton_shared::canonical::to_vec(&Value::Object(o));
        line.push(b'\n');
        let mut stream = UnixStream::connect(socket).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("connecting to {}: {e}", socket.display()))
        })?;
        stream.write_all(&line).await?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        reader.read_line(&mut answer).await?;
        baton_shared::json::parse(
            answer.trim_end().as_bytes(),
            baton_shared::json::Mode::Verify,
        )
        .map_err(|e| std::io::Error::other(format!("unreadable answer {answer:?}: {e}")))
    }

    /// Sends every line and collects the answers in order (pipelined).
    pub async fn send_lines(socket: &Path, lines: Vec<Vec<u8>>) -> std::io::Result<Vec<Answer>> {
        let stream = UnixStream::connect(socket).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("connecting to {}: {e}", socket.display()))
        })?;
        let (read, mut write) = stream.into_split();
        let n = lines.len();
        let sender = tokio::spawn(async move {
            let mut w = BufWriter::new(&mut write);
            for mut l in lines {
                l.push(b'\n');
                w.write_all(&l).await?;
            }
            w.flush().await?;
            Ok::<_, std::io::Error>(write)
        });
        let mut reader = BufReader::new(read);
        let mut answers = Vec::with_capacity(n);
        let mut line = String::new();
        while answers.len() < n {
            line.clear();
            if reader.read_line(&mut line).await? == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "the agent closed the socket after {} answers",
                        answers.len()
                    ),
                ));
            }
            answers.push(parse_answer(&line));
        }
        // Every line answered: a failed write after that (the agent
        // answered `busy` and closed at once) changes nothing.
        let _ = sender.await;
        Ok(answers)
    }
}
