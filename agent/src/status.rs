//! What the agent reports about itself: `status.json` in the data directory
//! (written to a temp file and renamed, so a reader never sees it torn) and
//! `baton-agent status`.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use baton_shared::impedance::{Impedance, Profile};
use baton_shared::json::{Object, Value};
use baton_shared::wire::Receipt;

use crate::ledger::Head;

/// State the daemon's tasks share for reporting.
#[derive(Debug, Default)]
pub struct Shared {
    inner: Mutex<Inner>,
    /// Nothing of the chain survived damage: appends are refused until the
    /// gateway's answer gives the chain back (or begins it).
    pub rebuilding: AtomicBool,
    /// Entries salvaged after damage wait for the gateway's answer.
    pub salvage_pending: AtomicBool,
    /// Clock replies dropped because the gateway's key did not sign them.
    clock_replies_refused: std::sync::atomic::AtomicU64,
    /// Command deliveries refused, by reason (PROTOCOL §9 bad input).
    commands_refused: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    /// Programs serving verbs over the socket.
    pub subscribers: crate::serve::Subscribers,
}

#[derive(Debug, Default)]
struct Inner {
    connected: bool,
    receipt: Option<Receipt>,
    last_error: Option<(i64, String)>,
    /// The link cannot connect (why, and since when); over at the next
    /// ConnAck.
    connection_error: Option<(i64, String)>,
    alert: Option<String>,
    /// Raised by the uplink; gone once the gateway's signed answer to a
    /// current hello arrives (the cause is over).
    uplink_alert: Option<String>,
    last_heartbeat_ms: Option<i64>,
    /// The context of the last append taken (the session a program works in).
    session_id: Option<String>,
    /// The task id of the last `task_start` or `task_result` taken.
    last_task_id: Option<String>,
    /// The last heartbeat's figures.
    last_heartbeat: Option<Value>,
    impedance: Impedance,
    /// Ends of the batches sent and not yet covered by a receipt, for the
    /// reliability figure (a batch sent again is not a new one).
    in_flight: std::collections::VecDeque<u64>,
}

impl Inner {
    fn state(&self, rebuilding: bool, head: &Head, uplink: bool, unix_ms: i64) -> &'static str {
        let receipted = self.receipt.as_ref().map_or(0, |r| r.seq.0);
        let recent_error = self.connection_error.is_some()
            || self
                .last_error
                .as_ref()
                .is_some_and(|(t, _)| unix_ms - t < 60_000);
        if self.alert.is_some() || self.uplink_alert.is_some() || rebuilding {
            "alert"
        } else if recent_error {
            "error"
        } else if uplink && !self.connected {
            "offline"
        } else if head.seq.0 > receipted {
            "busy"
        } else {
            "idle"
        }
    }
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A poisoned lock only means a reporting task panicked mid-update;
        // the data is still the best we have.
        let mut g = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut g)
    }

    pub fn set_connected(&self, c: bool) {
        self.with(|i| i.connected = c);
    }

    /// Sets the connection flag; returns the previous one.
    pub fn set_connected_was(&self, c: bool) -> bool {
        self.with(|i| std::mem::replace(&mut i.connected, c))
    }

    pub fn set_receipt(&self, r: &Receipt) {
        self.with(|i| i.receipt = Some(r.clone()));
    }

    pub fn error(&self, unix_ms: i64, e: impl Into<String>) {
        let e = e.into();
        self.with(|i| i.last_error = Some((unix_ms, e)));
    }

    /// The link's session failed (also the last error). Returns whether
    /// the reason differs from the one already recorded (worth a log line).
    pub fn connection_error(&self, unix_ms: i64, why: String) -> bool {
        self.with(|i| {
            let new = i.connection_error.as_ref().is_none_or(|(_, w)| *w != why);
            i.last_error = Some((unix_ms, why.clone()));
            if new {
                i.connection_error = Some((unix_ms, why));
            }
            new
        })
    }

    /// Connected: whatever kept the link from its broker is over.
    pub fn connected_now(&self) {
        self.with(|i| {
            i.connected = true;
            if let Some((_, why)) = i.connection_error.take()
                && i.last_error.as_ref().is_some_and(|(_, e)| *e == why)
            {
                i.last_error = None;
            }
        });
    }

    pub fn alert(&self, what: impl Into<String>) {
        let a = what.into();
        self.with(|i| i.alert = Some(a));
    }

    /// The cause of the alert is over (a recovery finished).
    pub fn clear_alert(&self) {
        self.with(|i| i.alert = None);
    }

    /// An alert of the uplink's (PROTOCOL §7), shown until `clear_uplink_alert`.
    pub fn uplink_alert(&self, what: impl Into<String>) {
        let a = what.into();
        self.with(|i| i.uplink_alert = Some(a));
    }

    /// The gateway answered a current hello with a verified receipt: what
    /// the uplink raised is over. Returns what was cleared.
    pub fn clear_uplink_alert(&self) -> Option<String> {
        self.with(|i| i.uplink_alert.take())
    }

    /// The heartbeat just measured.
    pub fn set_heartbeat(&self, figures: Value, unix_ms: i64) {
        self.with(|i| {
            i.last_heartbeat_ms = Some(unix_ms);
            i.last_heartbeat = Some(figures);
        });
    }

    /// A local processing time (append → durable), ms.
    pub fn processing(&self, ms: f64) {
        self.with(|i| i.impedance.processing(ms));
    }

    /// A command delivery was refused for `why`.
    pub fn command_refused(&self, why: &'static str) {
        *self
            .commands_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(why)
            .or_default() += 1;
    }

    /// A clock reply not signed by the gateway's key was dropped.
    pub fn clock_reply_refused(&self) {
        self.clock_replies_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// A link round trip, ms.
    pub fn rtt(&self, ms: f64) {
        self.with(|i| i.impedance.rtt(ms));
    }

    /// A batch ending at `to` went out.
    pub fn batch_sent(&self, to: u64) {
        self.with(|i| {
            i.impedance.batch_sent();
            if !i.in_flight.contains(&to) {
                if i.in_flight.len() >= 256 {
                    i.in_flight.pop_front();
                }
                i.in_flight.push_back(to);
            }
        });
    }

    /// A receipt now covers everything up to `seq`.
    pub fn receipt_covers(&self, seq: u64) {
        self.with(|i| {
            while i.in_flight.front().is_some_and(|&to| to <= seq) {
                i.in_flight.pop_front();
                i.impedance.receipt_received();
            }
        });
    }

    /// The impedance profile with the current queue depth.
    pub fn impedance(&self, queue_depth: u64) -> Profile {
        self.with(|i| {
            i.impedance.queue_depth(queue_depth);
            i.impedance.profile()
        })
    }

    pub fn receipted(&self) -> u64 {
        self.with(|i| i.receipt.as_ref().map_or(0, |r| r.seq.0))
    }

    /// The agent's state word (`alert|error|offline|busy|idle`), as
    /// status.json and heartbeats report it.
    pub fn state(&self, head: &Head, uplink: bool, unix_ms: i64) -> &'static str {
        let rebuilding = self.rebuilding.load(Ordering::Relaxed);
        self.with(|i| i.state(rebuilding, head, uplink, unix_ms))
    }

    /// An append request the socket took: its context is the current
    /// session; a `task_start` / `task_result` names the last task (its
    /// data's `task_id`, `task` or `id`).
    pub fn note_append(&self, req: &baton_shared::entry::AppendRequest) {
        let task = matches!(req.event.as_str(), "task_start" | "task_result")
            .then(|| {
                let o = req.data.as_object()?;
                ["task_id", "task", "id"]
                    .iter()
                    .find_map(|k| match o.get(k)? {
                        Value::String(s) => Some(s.clone()),
                        v @ Value::Number(_) => Some(
                            String::from_utf8_lossy(&baton_shared::canonical::to_vec(v))
                                .into_owned(),
                        ),
                        _ => None,
                    })
            })
            .flatten();
        if req.context.is_none() && task.is_none() {
            return;
        }
        self.with(|i| {
            if let Some(c) = &req.context {
                c.clone_into(i.session_id.get_or_insert_with(String::new));
            }
            if task.is_some() {
                i.last_task_id = task;
            }
        });
    }

    /// The status document.
    pub fn document(&self, agent: &str, head: &Head, uplink: bool, unix_ms: i64) -> Value {
        let rebuilding = self.rebuilding.load(Ordering::Relaxed);
        self.with(|i| {
            let receipted = i.receipt.as_ref().map_or(0, |r| r.seq.0);
            let backlog = head.seq.0.saturating_sub(receipted);
            let state = i.state(rebuilding, head, uplink, unix_ms);
            let mut o = Object::new();
            o.insert("agent", Value::from(agent));
            o.insert("state", Value::from(state));
            let mut h = Object::new();
            h.insert("seq", Value::from(head.seq.0));
            h.insert("hash", Value::from(head.hash.to_hex()));
            o.insert("head", Value::Object(h));
            o.insert("oldest_held", Value::from(head.oldest.0));
            o.insert(
                "last_receipt",
                i.receipt.as_ref().map_or(Value::Null, |r| {
                    let mut o = Object::new();
                    o.insert("gateway", Value::from(r.gateway.as_str()));
                    o.insert("seq", Value::from(r.seq.0));
                    o.insert("hash", Value::from(r.hash.to_hex()));
                    Value::Object(o)
                }),
            );
            o.insert("backlog", Value::from(backlog));
            o.insert(
                "session_id",
                i.session_id.as_deref().map_or(Value::Null, Value::from),
            );
            o.insert(
                "last_task_id",
                i.last_task_id.as_deref().map_or(Value::Null, Value::from),
            );
            o.insert("connected", Value::Bool(i.connected));
            o.insert(
                "alert",
                i.alert
                    .as_deref()
                    .or(i.uplink_alert.as_deref())
                    .map_or(Value::Null, Value::from),
            );
            o.insert(
                "last_error",
                i.last_error
                    .as_ref()
                    .map_or(Value::Null, |(_, e)| Value::from(e.as_str())),
            );
            o.insert(
                "last_heartbeat",
                i.last_heartbeat_ms.map_or(Value::Null, |t| {
                    Value::from(baton_shared::entry::format_timestamp(t))
                }),
            );
            o.insert("heartbeat", i.last_heartbeat.clone().unwrap_or(Value::Null));
            o.insert(
                "clock_replies_refused",
                Value::from(self.clock_replies_refused.load(Ordering::Relaxed)),
            );
            let mut refused = baton_shared::json::Object::new();
            for (why, n) in self
                .commands_refused
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
            {
                refused.insert(*why, Value::from(*n));
            }
            o.insert("commands_refused", Value::Object(refused));
            o.insert(
                "updated",
                Value::from(baton_shared::entry::format_timestamp(unix_ms)),
            );
            Value::Object(o)
        })
    }
}

/// The status document as a reader should take it: `running` (whether the
/// daemon holds its instance lock now) added, and for a daemon that is not
/// running, state `stopped` and not connected, whatever its last write
/// said (a killed daemon writes nothing on the way out).
pub fn as_seen(doc: Value, running: bool) -> Value {
    let Value::Object(mut o) = doc else {
        return doc;
    };
    o.insert("running", Value::Bool(running));
    if !running {
        o.insert("state", Value::from("stopped"));
        o.insert("connected", Value::Bool(false));
    }
    Value::Object(o)
}

/// Writes `doc` to `path` via a temp file and a rename.
pub fn write(path: &Path, doc: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut bytes = baton_shared::canonical::to_vec(doc);
    bytes.push(b'\n');
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// `status.json` as a table for people.
pub fn table(doc: &Value) -> String {
    if doc.as_object().is_none() {
        return String::new();
    }
    let get = |path: &[&str]| -> String {
        let mut v = Some(doc);
        for k in path {
            v = v.and_then(|v| v.as_object()?.get(k));
        }
        match v {
            None | Some(Value::Null) => "-".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => String::from_utf8_lossy(&baton_shared::canonical::to_vec(v)).into_owned(),
        }
    };
    let rows = [
        ("agent", get(&["agent"])),
        (
            "state",
            if get(&["running"]) == "false" {
                format!("stopped (not running; last written {})", get(&["updated"]))
            } else {
                get(&["state"])
            },
        ),
        (
            "head",
            format!("{} {}", get(&["head", "seq"]), get(&["head", "hash"])),
        ),
        (
            "receipted",
            format!(
                "{} by {}",
                get(&["last_receipt", "seq"]),
                get(&["last_receipt", "gateway"])
            ),
        ),
        ("backlog", get(&["backlog"])),
        ("connected", get(&["connected"])),
        ("alert", get(&["alert"])),
        ("last error", get(&["last_error"])),
        ("last heartbeat", get(&["last_heartbeat"])),
        (
            "impedance",
            format!(
                "{} ms (score {}, rtt p50 {} ms, processing p50 {} ms, reliability {})",
                get(&["heartbeat", "impedance", "impedance_ms"]),
                get(&["heartbeat", "impedance", "score"]),
                get(&["heartbeat", "impedance", "latency_p50_ms"]),
                get(&["heartbeat", "impedance", "processing_p50_ms"]),
                get(&["heartbeat", "impedance", "reliability"]),
            ),
        ),
        (
            "clock",
            format!(
                "offset {} ms, rtt {} ms, synced {}",
                get(&["heartbeat", "clock", "offset_ms"]),
                get(&["heartbeat", "clock", "rtt_ms"]),
                get(&["heartbeat", "clock", "synced"]),
            ),
        ),
        (
            "system",
            format!(
                "cpu {}%, load {}, temp {} °C, {} ({})",
                get(&["heartbeat", "system", "cpu_pct"]),
                get(&["heartbeat", "system", "load1"]),
                get(&["heartbeat", "system", "temp_c"]),
                get(&["heartbeat", "system", "model"]),
                get(&["heartbeat", "system", "class"]),
            ),
        ),
        ("updated", get(&["updated"])),
    ];
    let mut s = String::new();
    for (k, v) in rows {
        s.push_str(&format!("{k:<15} {v}\n"));
    }
    s
}
