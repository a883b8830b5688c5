//! Session reports (seed 002, "Agent Ledger System"): what an agent did,
//! read from its chain as this gateway holds it — per session (an entry's
//! `context`), a timeline of its key events, its tasks with durations
//! (`task_start` → `task_result` by task id), its errors, the state
//! changes its gateway recorded, the commands it answered and its
//! lessons; and lessons across many agents (`report --lessons`).
//!
//! Markdown is the form; HTML is the same markdown rendered
//! (pulldown-cmark) with any markup in it shown as text. Every text taken
//! from an entry is escaped and cut, so an entry cannot change the
//! report's layout.
//!
//! A `pitr` entry (PROTOCOL §2) is applied: after it, the report is of
//! entries 1..N and the entries after the `pitr` (nothing is deleted; the
//! rollback itself is on the timeline). `--at` takes the chain as it was
//! when that entry was its head.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context as _;
use baton_shared::entry::{format_timestamp, parse_timestamp};
use baton_shared::json::{self, Mode, Value};
use baton_shared::{AgentId, Hash, Seq};

use crate::store::Store;

/// Entries a report reads at most (from its start); more is said, not read.
pub const MAX_ENTRIES: usize = 200_000;
/// Lines a timeline shows at most per session.
const TIMELINE_MAX: usize = 100;
/// Characters of entry text shown at most per cell.
const CELL_MAX: usize = 160;

/// Events a timeline shows.
const KEY_EVENTS: [&str; 12] = [
    "genesis",
    "recovery",
    "gap",
    "pitr",
    "error",
    "alert",
    "lesson",
    "task_start",
    "task_result",
    "command",
    "command_ack",
    "intent",
];

/// Runtime events with no context that belong to the session whose span
/// they fall in.
const RUNTIME_EVENTS: [&str; 6] = [
    "genesis",
    "recovery",
    "gap",
    "pitr",
    "command",
    "command_ack",
];

/// What a report covers.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this session.
    pub context: Option<String>,
    /// Only entries at or after this time (unix ms).
    pub since_ms: Option<i64>,
    /// The chain as it was when this entry was its head.
    pub at: Option<At>,
}

/// A point in a chain: a seq, or an entry's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    Seq(Seq),
    Hash(Hash),
}

impl At {
    /// `N` (a seq) or 64 hex characters (an entry's hash).
    pub fn parse(s: &str) -> Result<At, String> {
        if s.len() == 64 {
            return Hash::from_hex(s)
                .map(At::Hash)
                .map_err(|e| format!("at: {e}"));
        }
        match s.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(At::Seq(Seq(n))),
            _ => Err(format!(
                "at: {s:?} is neither a seq (1, 2, …) nor an entry hash (64 hex)"
            )),
        }
    }

    /// The seq this names in `agent`'s stored chain (a hash is looked up
    /// from the head down), or why not.
    pub fn resolve(self, store: &Store, agent: &AgentId) -> anyhow::Result<Seq> {
        let head = store.head(agent)?.seq;
        match self {
            At::Seq(s) if s <= head && store.entry(agent, s)?.is_some() => Ok(s),
            At::Seq(s) => anyhow::bail!("at: {agent} holds no entry at seq {s} (head {head})"),
            At::Hash(h) => {
                let mut next = head;
                while next.0 >= 1 {
                    let from = Seq(next.0.saturating_sub(4095).max(1));
                    let rows = store.range(agent, from, 4096)?;
                    if let Some((s, _)) = rows.iter().find(|(s, e)| *s <= next && e.hash == h) {
                        return Ok(*s);
                    }
                    if from.0 == 1 {
                        break;
                    }
                    next = Seq(from.0 - 1);
                }
                anyhow::bail!("at: no entry of {agent} has hash {h}")
            }
        }
    }
}

/// One entry as a report reads it.
#[derive(Debug, Clone)]
pub struct Item {
    pub seq: Seq,
    pub ts_ms: i64,
    pub ts: String,
    pub event: String,
    pub context: Option<String>,
    pub data: Value,
}

impl Item {
    /// Reads an entry's content; `None` for content that is not an entry.
    pub fn of(seq: Seq, content: &[u8]) -> Option<Item> {
        let v = json::parse(content, Mode::Verify).ok()?;
        let o = v.as_object()?;
        let ts = o.get("ts")?.as_str()?.to_owned();
        Some(Item {
            seq,
            ts_ms: parse_timestamp(&ts)?,
            ts,
            event: o.get("event")?.as_str()?.to_owned(),
            context: o.get("context").and_then(Value::as_str).map(str::to_owned),
            data: o.get("data").cloned().unwrap_or(Value::Null),
        })
    }

    fn field(&self, k: &str) -> Option<&Value> {
        self.data.as_object()?.get(k)
    }

    fn text(&self, k: &str) -> Option<String> {
        match self.field(k)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(canonical_text(self.field(k)?)),
            _ => None,
        }
    }
}

fn canonical_text(v: &Value) -> String {
    String::from_utf8_lossy(&baton_shared::canonical::to_vec(v)).into_owned()
}

/// A state change of the agent, as its gateway recorded it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub ts_ms: i64,
    pub ts: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// Applies the `pitr` entries of `items` (in seq order): after a `pitr`
/// to seq N, what came after N and before the `pitr` is no longer part of
/// the derived view; the `pitr` entry itself stays (it is history).
pub fn apply_pitr(items: Vec<Item>) -> Vec<Item> {
    let mut out: Vec<Item> = Vec::with_capacity(items.len());
    for it in items {
        if it.event == "pitr"
            && let Some(to) = it
                .field("to")
                .and_then(Value::as_object)
                .and_then(|t| t.get("seq"))
                .and_then(Value::as_exact_u64)
            && to < it.seq.0
        {
            out.retain(|i| i.seq.0 <= to);
        }
        out.push(it);
    }
    out
}

/// Reads `agent`'s entries for a report: from `since` (found by its
/// timestamps), through `at` or the head, at most [`MAX_ENTRIES`]; with
/// `pitr` applied. Returns the items, the last seq read and whether the
/// limit cut it.
pub fn read_items(
    store: &Store,
    agent: &AgentId,
    since_ms: Option<i64>,
    through: Seq,
) -> anyhow::Result<(Vec<Item>, bool)> {
    let oldest = store.oldest(agent)?.unwrap_or(Seq(1));
    let mut next = match since_ms {
        Some(t) => first_at_or_after(store, agent, oldest, through, t)?,
        None => oldest,
    };
    let mut items = Vec::new();
    let mut cut = false;
    while next <= through {
        if items.len() >= MAX_ENTRIES {
            cut = true;
            break;
        }
        let want = usize::try_from(through.0 - next.0 + 1).map_or(4096, |n| n.min(4096));
        let rows = store.range(agent, next, want)?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        next = last.next();
        items.extend(
            rows.iter()
                .filter(|(s, _)| *s <= through)
                .filter_map(|(s, e)| Item::of(*s, &e.content))
                .filter(|i| since_ms.is_none_or(|t| i.ts_ms >= t)),
        );
    }
    Ok((apply_pitr(items), cut))
}

/// The first seq in `lo..=hi` whose entry's time is at or after `t`, by
/// bisection (an agent's clock moves forward save for corrections: near
/// enough for a report's start).
fn first_at_or_after(
    store: &Store,
    agent: &AgentId,
    lo: Seq,
    hi: Seq,
    t: i64,
) -> anyhow::Result<Seq> {
    let (mut lo, mut hi) = (lo.0, hi.0 + 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let ts = store
            .entry(agent, Seq(mid))?
            .and_then(|e| Item::of(Seq(mid), &e.content))
            .map_or(i64::MIN, |i| i.ts_ms);
        if ts < t {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(Seq(lo))
}

/// The state changes of `agent` its gateway `gateway` recorded (its
/// `agent_state` entries) from `since_ms`, at most [`MAX_ENTRIES`] read.
pub fn state_changes(
    store: &Store,
    gateway: &AgentId,
    agent: &AgentId,
    since_ms: Option<i64>,
) -> anyhow::Result<Vec<StateChange>> {
    let head = store.head(gateway)?.seq;
    let from = match since_ms {
        Some(t) => first_at_or_after(store, gateway, Seq(1), head, t)?,
        // the last MAX_ENTRIES of the gateway's chain
        None => Seq(head.0.saturating_sub(MAX_ENTRIES as u64).max(1)),
    };
    let named = format!("\"agent\":\"{agent}\"");
    let mut out = Vec::new();
    let mut next = from;
    while next <= head {
        let rows = store.range(gateway, next, 4096)?;
        let Some((last, _)) = rows.last() else {
            break;
        };
        next = last.next();
        for (s, e) in &rows {
            let text = String::from_utf8_lossy(&e.content);
            if !text.contains("\"event\":\"agent_state\"") || !text.contains(&named) {
                continue;
            }
            if let Some(i) = Item::of(*s, &e.content)
                && i.text("agent").as_deref() == Some(agent.as_str())
            {
                out.push(StateChange {
                    ts_ms: i.ts_ms,
                    ts: i.ts.clone(),
                    from: i.text("from").unwrap_or_default(),
                    to: i.text("to").unwrap_or_default(),
                    reason: i.text("reason").unwrap_or_default(),
                });
            }
        }
    }
    Ok(out)
}

/// What a report says of one agent.
#[derive(Debug, Clone)]
pub struct Report {
    pub agent: AgentId,
    /// The gateway whose copy of the chain this is.
    pub held_by: AgentId,
    pub head: Seq,
    /// `--at`: the seq the chain is taken at.
    pub at: Option<Seq>,
    pub context: Option<String>,
    pub since_ms: Option<i64>,
    pub items: Vec<Item>,
    pub states: Vec<StateChange>,
    pub cut: bool,
}

/// One session's part of a report.
struct Session<'a> {
    context: Option<&'a str>,
    items: Vec<&'a Item>,
}

impl Report {
    /// The sessions: one per context in order of first appearance (only
    /// `context` when the report is of one), runtime events without a
    /// context going to the session whose span they fall in, the rest to
    /// "no context".
    fn sessions(&self) -> Vec<Session<'_>> {
        let mut order: Vec<Option<&str>> = Vec::new();
        let mut by: BTreeMap<Option<&str>, Vec<&Item>> = BTreeMap::new();
        for i in &self.items {
            let c = i.context.as_deref();
            if c.is_some() && self.context.as_deref().is_some_and(|want| c != Some(want)) {
                continue;
            }
            if !by.contains_key(&c) {
                order.push(c);
            }
            by.entry(c).or_default().push(i);
        }
        // runtime events without a context: into the span they fall in
        let spans: Vec<(Option<&str>, i64, i64)> = by
            .iter()
            .filter(|(c, _)| c.is_some())
            .filter_map(|(c, v)| Some((*c, v.first()?.ts_ms, v.last()?.ts_ms)))
            .collect();
        if let Some(loose) = by.remove(&None) {
            let mut rest = Vec::new();
            for i in loose {
                let home = RUNTIME_EVENTS
                    .contains(&i.event.as_str())
                    .then(|| {
                        spans
                            .iter()
                            .find(|(_, a, b)| (*a..=*b).contains(&i.ts_ms))
                            .map(|(c, ..)| *c)
                    })
                    .flatten();
                match home {
                    Some(c) => by.entry(c).or_default().push(i),
                    None => rest.push(i),
                }
            }
            if !rest.is_empty() && self.context.is_none() {
                by.insert(None, rest);
            } else {
                order.retain(Option::is_some);
            }
        }
        order
            .into_iter()
            .filter_map(|c| {
                let mut items = by.remove(&c)?;
                items.sort_by_key(|i| i.seq);
                Some(Session { context: c, items })
            })
            .collect()
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Session report: {}\n", esc(self.agent.as_str()));
        let _ = writeln!(
            md,
            "Chain as held by gateway {}, verified on ingest through seq {}{}.",
            esc(self.held_by.as_str()),
            self.head,
            self.at
                .map(|s| format!(", taken as of seq {s} (point in time)"))
                .unwrap_or_default()
        );
        if let Some(c) = &self.context {
            let _ = writeln!(md, "Session (context): {}.", esc(c));
        }
        if let Some(t) = self.since_ms {
            let _ = writeln!(md, "Since {}.", format_timestamp(t));
        }
        if self.cut {
            let _ = writeln!(
                md,
                "\n**Only the first {MAX_ENTRIES} entries were read**: narrow it with `--since` or `--context`."
            );
        }
        let sessions = self.sessions();
        if sessions.is_empty() {
            let _ = writeln!(md, "\nNo entries in this range.");
        }
        for s in &sessions {
            self.session_markdown(&mut md, s);
        }
        md
    }

    fn session_markdown(&self, md: &mut String, s: &Session<'_>) {
        let (Some(first), Some(last)) = (s.items.first(), s.items.last()) else {
            return;
        };
        let _ = writeln!(
            md,
            "\n## {}\n",
            s.context.map_or_else(
                || "Outside any session (no context)".to_owned(),
                |c| format!("Session {}", esc(c))
            )
        );
        let _ = writeln!(
            md,
            "{} entries, seq {}–{}, {} → {} ({}).\n",
            s.items.len(),
            first.seq,
            last.seq,
            first.ts,
            last.ts,
            duration(last.ts_ms - first.ts_ms)
        );
        // counts by event
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for i in &s.items {
            *counts.entry(i.event.as_str()).or_default() += 1;
        }
        let _ = writeln!(
            md,
            "Events: {}.",
            counts
                .iter()
                .map(|(e, n)| format!("{} {n}", esc(e)))
                .collect::<Vec<_>>()
                .join(", ")
        );

        // timeline: key events and the gateway's state changes in the span
        let mut lines: Vec<(i64, Seq, String)> = s
            .items
            .iter()
            .filter(|i| KEY_EVENTS.contains(&i.event.as_str()))
            .map(|i| {
                (
                    i.ts_ms,
                    i.seq,
                    format!(
                        "| {} | {} | {} | {} |",
                        i.ts,
                        i.seq,
                        esc(&i.event),
                        cell(&what(i))
                    ),
                )
            })
            .collect();
        lines.extend(
            self.states
                .iter()
                .filter(|c| (first.ts_ms..=last.ts_ms).contains(&c.ts_ms))
                .map(|c| {
                    (
                        c.ts_ms,
                        Seq(0),
                        format!(
                            "| {} | — | state | {} → {}: {} |",
                            c.ts,
                            esc(&c.from),
                            esc(&c.to),
                            cell(&c.reason)
                        ),
                    )
                }),
        );
        lines.sort_by_key(|(t, s, _)| (*t, *s));
        let _ = writeln!(md, "\n### Timeline\n");
        if lines.is_empty() {
            let _ = writeln!(md, "No key events.");
        } else {
            let _ = writeln!(md, "| time | seq | event | what |\n|---|---|---|---|");
            for (_, _, l) in lines.iter().take(TIMELINE_MAX) {
                let _ = writeln!(md, "{l}");
            }
            if lines.len() > TIMELINE_MAX {
                let _ = writeln!(md, "\n… and {} more.", lines.len() - TIMELINE_MAX);
            }
        }

        // tasks
        let tasks = tasks(&s.items);
        if !tasks.is_empty() {
            let _ = writeln!(
                md,
                "\n### Tasks\n\n| task | started | duration | outcome |\n|---|---|---|---|"
            );
            for t in &tasks {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} |",
                    cell(&t.id),
                    t.started,
                    t.ended_ms
                        .map_or_else(|| "still open".to_owned(), |e| duration(e - t.started_ms)),
                    cell(t.outcome.as_deref().unwrap_or("—"))
                );
            }
        }

        // errors
        let errors: Vec<&&Item> = s.items.iter().filter(|i| i.event == "error").collect();
        if !errors.is_empty() {
            let _ = writeln!(md, "\n### Errors ({})\n", errors.len());
            for e in errors.iter().take(TIMELINE_MAX) {
                let _ = writeln!(md, "- {} (seq {}): {}", e.ts, e.seq, cell(&what(e)));
            }
        }

        // commands answered
        let verbs: BTreeMap<String, String> = s
            .items
            .iter()
            .filter(|i| i.event == "command")
            .filter_map(|i| {
                let c = baton_shared::command::Command::from_content(i.field("content")?.clone())
                    .ok()?;
                Some((c.hash.to_hex(), c.verb.as_str().to_owned()))
            })
            .collect();
        let acks: Vec<&&Item> = s
            .items
            .iter()
            .filter(|i| i.event == "command_ack")
            .collect();
        if !acks.is_empty() {
            let _ = writeln!(
                md,
                "\n### Commands answered ({})\n\n| time | command | verb | answer |\n|---|---|---|---|",
                acks.len()
            );
            for a in acks.iter().take(TIMELINE_MAX) {
                let hash = a.text("hash").unwrap_or_default();
                let answer = match a.field("state").and_then(Value::as_f64) {
                    Some(x) if x > 0.0 => "ready",
                    Some(x) if x < 0.0 => "conflict",
                    Some(_) => "transit",
                    None => "—",
                };
                let _ = writeln!(
                    md,
                    "| {} | {}… | {} | {} |",
                    a.ts,
                    esc(&hash.chars().take(12).collect::<String>()),
                    esc(verbs.get(&hash).map_or("?", String::as_str)),
                    answer
                );
            }
        }

        // lessons
        let lessons: Vec<&&Item> = s.items.iter().filter(|i| i.event == "lesson").collect();
        if !lessons.is_empty() {
            let _ = writeln!(md, "\n### Lessons ({})\n", lessons.len());
            for l in lessons {
                lesson_markdown(md, l, None);
            }
        }
    }
}

fn lesson_markdown(md: &mut String, l: &Item, agent: Option<&str>) {
    let f = |k: &str| cell(&l.text(k).unwrap_or_default());
    let _ = writeln!(
        md,
        "- **{}** — {}{} (seq {})\n  - trauma: {}\n  - root cause: {}\n  - correction: {}",
        f("lesson"),
        agent.map(|a| format!("{}, ", esc(a))).unwrap_or_default(),
        l.ts,
        l.seq,
        f("trauma"),
        f("root_cause"),
        f("correction"),
    );
}

/// A task: from its `task_start` to its `task_result`.
struct Task {
    id: String,
    started: String,
    started_ms: i64,
    ended_ms: Option<i64>,
    outcome: Option<String>,
}

/// The task id an entry names: `task_id`, `task` or `id` in its data.
fn task_id(i: &Item) -> Option<String> {
    ["task_id", "task", "id"].iter().find_map(|k| i.text(k))
}

fn tasks(items: &[&Item]) -> Vec<Task> {
    let mut out: Vec<Task> = Vec::new();
    for i in items {
        match i.event.as_str() {
            "task_start" => out.push(Task {
                id: task_id(i).unwrap_or_else(|| format!("(seq {})", i.seq)),
                started: i.ts.clone(),
                started_ms: i.ts_ms,
                ended_ms: None,
                outcome: None,
            }),
            "task_result" => {
                let id = task_id(i);
                let outcome = ["status", "outcome", "result"]
                    .iter()
                    .find_map(|k| i.text(k))
                    .or_else(|| match i.field("ok") {
                        Some(Value::Bool(true)) => Some("ok".into()),
                        Some(Value::Bool(false)) => Some("failed".into()),
                        _ => None,
                    });
                match out
                    .iter_mut()
                    .rev()
                    .find(|t| t.ended_ms.is_none() && id.as_ref().is_none_or(|x| *x == t.id))
                {
                    Some(t) => {
                        t.ended_ms = Some(i.ts_ms);
                        t.outcome = outcome;
                    }
                    // a result without its start (before the report's range)
                    None => out.push(Task {
                        id: id.unwrap_or_else(|| format!("(seq {})", i.seq)),
                        started: "before this range".into(),
                        started_ms: i.ts_ms,
                        ended_ms: Some(i.ts_ms),
                        outcome,
                    }),
                }
            }
            _ => {}
        }
    }
    out
}

/// A line's "what": the fields that say most of an entry.
fn what(i: &Item) -> String {
    for k in [
        "message", "error", "detail", "reason", "lesson", "summary", "status",
    ] {
        if let Some(t) = i.text(k) {
            return t;
        }
    }
    if let Some(t) = task_id(i) {
        return format!("task {t}");
    }
    canonical_text(&i.data)
}

/// Escapes text for markdown (and so for its HTML): no markup, links,
/// table breaks or line breaks can come from an entry.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#' | '!' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// [`esc`], cut to [`CELL_MAX`] characters.
fn cell(s: &str) -> String {
    if s.chars().count() > CELL_MAX {
        let cut: String = s.chars().take(CELL_MAX).collect();
        format!("{}…", esc(&cut))
    } else {
        esc(s)
    }
}

fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..120_000 => format!("{:.1} s", ms as f64 / 1000.0),
        120_000..7_200_000 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

/// Markdown as an HTML page: any HTML inside it is shown as text.
pub fn html_page(title: &str, md: &str) -> String {
    use pulldown_cmark::{Event, Options as MdOptions, Parser, html};
    let parser = Parser::new_ext(md, MdOptions::ENABLE_TABLES).map(|e| match e {
        Event::Html(t) | Event::InlineHtml(t) => Event::Text(t),
        e => e,
    });
    let mut body = String::new();
    html::push_html(&mut body, parser);
    let t = title
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{t}</title>\n<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:60rem;margin:1rem auto;padding:0 1rem}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2rem .4rem;text-align:left;vertical-align:top}}</style></head><body>\n{body}</body></html>\n"
    )
}

/// The report of `agent` with `opts`, read from `store` (held by gateway
/// `held_by`); the state changes from `gateway`'s chain when given.
pub fn report(
    store: &Store,
    held_by: &AgentId,
    agent: &AgentId,
    gateway: Option<&AgentId>,
    opts: &Options,
) -> anyhow::Result<Report> {
    if store.agent(agent)?.is_none() && store.head(agent)?.seq == Seq::ZERO {
        anyhow::bail!("unknown agent {agent}");
    }
    let head = store.head(agent)?.seq;
    let at = opts.at.map(|a| a.resolve(store, agent)).transpose()?;
    let (items, cut) = read_items(store, agent, opts.since_ms, at.unwrap_or(head))
        .with_context(|| format!("reading {agent}'s chain"))?;
    let states = match gateway {
        // from the report's first entry: earlier changes are outside it,
        // and the gateway's chain is not read further back than that
        Some(g) => state_changes(
            store,
            g,
            agent,
            opts.since_ms.or(items.first().map(|i| i.ts_ms)),
        )?,
        None => Vec::new(),
    };
    Ok(Report {
        agent: agent.clone(),
        held_by: held_by.clone(),
        head,
        at,
        context: opts.context.clone(),
        since_ms: opts.since_ms,
        items,
        states,
        cut,
    })
}

/// `report --lessons`: every `lesson` of `agents` since `since_ms`,
/// grouped by what was learned (the same `lesson` text), most often first.
pub fn lessons(
    store: &Store,
    agents: &[AgentId],
    since_ms: Option<i64>,
    scope: &str,
) -> anyhow::Result<String> {
    let mut all: Vec<(AgentId, Item)> = Vec::new();
    for a in agents {
        let head = store.head(a)?.seq;
        if head == Seq::ZERO {
            continue;
        }
        let (items, _) = read_items(store, a, since_ms, head)?;
        all.extend(
            items
                .into_iter()
                .filter(|i| i.event == "lesson")
                .map(|i| (a.clone(), i)),
        );
    }
    let mut groups: BTreeMap<String, Vec<&(AgentId, Item)>> = BTreeMap::new();
    for l in &all {
        let key = l.1.text("lesson").unwrap_or_default().trim().to_lowercase();
        groups.entry(key).or_default().push(l);
    }
    let mut groups: Vec<_> = groups.into_values().collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Lessons: {}\n\n{} lessons from {} agents, {} distinct.",
        esc(scope),
        all.len(),
        agents.len(),
        groups.len()
    );
    for g in groups {
        let Some(first) = g.first() else { continue };
        let mut who: Vec<&str> = g.iter().map(|(a, _)| a.as_str()).collect();
        who.sort_unstable();
        who.dedup();
        let _ = writeln!(
            md,
            "\n## {} ({} times, {} agents)\n",
            cell(&first.1.text("lesson").unwrap_or_default()),
            g.len(),
            who.len()
        );
        for (a, l) in g {
            lesson_markdown(&mut md, l, Some(a.as_str()));
        }
    }
    Ok(md)
}

/// `--since`: a duration back from `now_ms` ("2h", "30m") or a timestamp
/// (`2026-12-05T08:00:00.000Z`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, String> {
    if let Some(t) = parse_timestamp(s) {
        return Ok(t);
    }
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
        .map(|d| now_ms - d)
        .ok_or_else(|| {
            format!("since: {s:?} is neither a duration (\"2h\") nor a timestamp (2026-12-05T08:00:00.000Z)")
        })
}

/// The gateway whose chain records `agent`'s state changes: its own
/// cluster's gateway in the fleet view the store keeps.
pub fn state_gateway(store: &Store, agent: &AgentId) -> anyhow::Result<Option<AgentId>> {
    let (clusters, agents) = store.fleet()?;
    let Some((_, node)) = agents.iter().find(|(a, _)| a == agent) else {
        return Ok(None);
    };
    Ok(clusters
        .into_iter()
        .find(|(c, _)| *c == node.cluster)
        .and_then(|(_, n)| AgentId::new(n.gateway).ok()))
}

/// The agents of `cluster` in the fleet view the store keeps (every agent
/// it knows when `None`), sorted.
pub fn agents_of(store: &Store, cluster: Option<&str>) -> anyhow::Result<Vec<AgentId>> {
    let (_, agents) = store.fleet()?;
    let mut out: Vec<AgentId> = agents
        .into_iter()
        .filter(|(_, n)| cluster.is_none_or(|c| n.cluster == c))
        .map(|(a, _)| a)
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn item(seq: u64, ts_ms: i64, event: &str, context: Option<&str>, data: &str) -> Item {
        Item {
            seq: Seq(seq),
            ts_ms,
            ts: format_timestamp(ts_ms),
            event: event.into(),
            context: context.map(str::to_owned),
            data: json::parse(data.as_bytes(), Mode::Verify).unwrap(),
        }
    }

    fn report_of(items: Vec<Item>, context: Option<&str>) -> Report {
        Report {
            agent: AgentId::new("pi-1").unwrap(),
            held_by: AgentId::new("gw").unwrap(),
            head: Seq(items.len() as u64),
            at: None,
            context: context.map(str::to_owned),
            since_ms: None,
            items: apply_pitr(items),
            states: vec![StateChange {
                ts_ms: 1_500,
                ts: format_timestamp(1_500),
                from: "active".into(),
                to: "degraded".into(),
                reason: "impedance 3× baseline".into(),
            }],
            cut: false,
        }
    }

    #[test]
    fn a_session_has_its_tasks_with_durations_errors_commands_and_lessons() {
        let t = 1_000;
        let r = report_of(
            vec![
                item(1, t, "genesis", None, "{}"),
                item(
                    2,
                    t + 100,
                    "task_start",
                    Some("s1"),
                    r#"{"task_id":"calibrate"}"#,
                ),
                item(
                    3,
                    t + 200,
                    "error",
                    Some("s1"),
                    r#"{"message":"lens | fogged <b>x</b>"}"#,
                ),
                item(
                    4,
                    t + 2_600,
                    "task_result",
                    Some("s1"),
                    r#"{"task_id":"calibrate","status":"ok"}"#,
                ),
                item(
                    5,
                    t + 2_700,
                    "command_ack",
                    None,
                    r#"{"hash":"abcdef0123456789","state":1}"#,
                ),
                item(
                    6,
                    t + 2_800,
                    "lesson",
                    Some("s1"),
                    r#"{"trauma":"t","root_cause":"r","correction":"c","lesson":"wipe the lens"}"#,
                ),
                item(7, t + 9_000, "info", Some("s2"), "{}"),
            ],
            Some("s1"),
        );
        let md = r.markdown();
        assert!(md.contains("## Session s1"), "{md}");
        assert!(!md.contains("Session s2"), "{md}");
        assert!(
            md.contains("| calibrate | 1970-01-01T00:00:01.100Z | 2.5 s | ok |"),
            "{md}"
        );
        // entry text cannot break the table or add markup
        assert!(md.contains(r"lens \| fogged \<b\>x\</b\>"), "{md}");
        assert!(md.contains("### Commands answered (1)"), "{md}");
        assert!(md.contains("ready"), "{md}");
        assert!(md.contains("**wipe the lens**"), "{md}");
        assert!(md.contains("active → degraded"), "{md}");
        let html = html_page("r", &md);
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("<table>"), "{html}");
    }

    #[test]
    fn a_pitr_leaves_what_it_rolled_back_out_of_the_view_but_on_record() {
        let items = vec![
            item(1, 1, "genesis", None, "{}"),
            item(2, 2, "info", Some("s"), r#"{"message":"good"}"#),
            item(3, 3, "info", Some("s"), r#"{"message":"bad-1"}"#),
            item(4, 4, "info", Some("s"), r#"{"message":"bad-2"}"#),
            item(
                5,
                5,
                "pitr",
                None,
                r#"{"to":{"seq":2,"hash":"00"},"by":"op","reason":"bad deploy"}"#,
            ),
            item(6, 6, "info", Some("s"), r#"{"message":"after"}"#),
        ];
        let seqs: Vec<u64> = apply_pitr(items).iter().map(|i| i.seq.0).collect();
        assert_eq!(seqs, [1, 2, 5, 6]);
    }

    #[test]
    fn at_is_a_seq_or_a_hash() {
        assert_eq!(At::parse("7").unwrap(), At::Seq(Seq(7)));
        assert!(matches!(At::parse(&"ab".repeat(32)).unwrap(), At::Hash(_)));
        assert!(At::parse("0").unwrap_err().starts_with("at:"));
        assert!(At::parse("seven").unwrap_err().starts_with("at:"));
    }
}
