//! A minimal HTTP/1.1 client for tests: reads, and operator writes with
//! the gateway's operator token.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Mutex;

/// Where each test gateway's operator token is (by HTTP address), so that
/// [`post`] can act as its operator.
static TOKENS: Mutex<Option<HashMap<SocketAddr, PathBuf>>> = Mutex::new(None);

/// Notes that the gateway serving HTTP on `addr` keeps its operator token
/// in `file` (the test daemons call this when they start one).
pub fn remember_token(addr: SocketAddr, file: PathBuf) {
    TOKENS
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .insert(addr, file);
}

/// The operator token of the gateway at `addr`, if one was remembered. A
/// gateway process listens before it has made its token (its listeners
/// are bound first): wait up to 20 s for the file.
pub fn token_of(addr: SocketAddr) -> Option<String> {
    let file = TOKENS.lock().unwrap().as_ref()?.get(&addr)?.clone();
    for _ in 0..200 {
        if let Ok(t) = std::fs::read_to_string(&file)
            && !t.trim().is_empty()
        {
            return Some(t.trim().to_owned());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

/// Status code and body of `GET path`.
pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    get_as(addr, path, None)
}

/// `GET path` with the operator token (`http_read_auth`).
pub fn get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}\r\n"
    )?;
    read_response(s)
}

/// Status code and body of `POST path` with a JSON `body`, as the
/// gateway's operator (its token, if [`remember_token`] knows it).
pub fn post(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let token = token_of(addr);
    post_as(addr, path, body, token.as_deref(), "application/json")
}

/// `POST path` with any credential (`None`: no Authorization header) and
/// content type.
pub fn post_as(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    token: Option<&str>,
    content_type: &str,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{auth}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    read_response(s)
}

/// Reads a whole `Connection: close` response: status and (de-chunked) body.
fn read_response(mut s: TcpStream) -> std::io::Result<(u16, String)> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Opens a server-sent-events stream; `next_data` returns each `data:` line.
#[derive(Debug)]
pub struct EventStream {
    reader: std::io::BufReader<TcpStream>,
}

impl EventStream {
    pub fn open(addr: SocketAddr, path: &str) -> std::io::Result<EventStream> {
        EventStream::open_after(addr, path, None)
    }

    /// As [`EventStream::open`], resuming after `last_event_id` (the
    /// `Last-Event-ID` header a reconnecting browser sends).
    pub fn open_after(
        addr: SocketAddr,
        path: &str,
        last_event_id: Option<&str>,
    ) -> std::io::Result<EventStream> {
        let mut s = TcpStream::connect(addr)?;
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        Ok(EventStream {
            reader: std::io::BufReader::new(s),
        })
    }

    /// The next `data:` payload (chunk framing lines are skipped).
    pub fn next_data(&mut self) -> std::io::Result<String> {
        use std::io::BufRead;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Ok(data.to_owned());
            }
        }
    }
}

/// The gateway's stored chain of `agent` as JSONL, read page by page.
pub fn gateway_chain(http_addr: SocketAddr, agent: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let (status, body) = get(
            http_addr,
            &format!("/api/v1/agents/{agent}/entries?from={from}&limit=10000"),
        )
        .unwrap();
        assert_eq!(status, 200, "{body}");
        let lines = lines(body.as_bytes());
        out.extend_from_slice(body.as_bytes());
        if lines < 10_000 {
            return out;
        }
        from += 10_000;
    }
}

/// Lines in `b`.
pub fn lines(b: &[u8]) -> usize {
    b.iter().filter(|c| **c == b'\n').count()
}

/// `GET path` parsed as JSON; the status must be 200.
pub fn json(addr: SocketAddr, path: &str) -> baton_shared::json::Value {
    let (status, body) = get(addr, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    baton_shared::json::parse(body.as_bytes(), baton_shared::json::Mode::Verify).unwrap()
}

/// `field` of `agent`'s row in `/api/v1/agents`.
pub fn agent_field(
    addr: SocketAddr,
    agent: &str,
    field: &str,
) -> Option<baton_shared::json::Value> {
    use baton_shared::json::Value;
    let Value::Array(rows) = json(addr, "/api/v1/agents") else {
        panic!("agents is not an array")
    };
    rows.iter()
        .filter_map(Value::as_object)
        .find(|r| r.get("id").and_then(Value::as_str) == Some(agent))
        .and_then(|r| r.get(field).cloned())
}

/// `agent`'s liveness state at the gateway (empty if unknown).
pub fn agent_state(addr: SocketAddr, agent: &str) -> String {
    agent_field(addr, agent, "state")
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The value of the Prometheus sample `name` (with its labels) in
/// `/metrics`, or 0.
pub fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, text) = get(addr, "/metrics").unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}
