//! The operator's console on the command line (PROTOCOL §9): commands
//! named after what an operator does — `status`, `broadcast`, `ask`,
//! `delegate`, `freeze`, `thaw`, `heal`, `rerun`, `commands`, `command` — each a
//! request to a running gateway's HTTP API with the operator token, human
//! text by default and the gateway's JSON with `--json`.
// The doc comments below are the CLI's --help text (clap).
#![allow(rustdoc::invalid_html_tags)]
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_shared::json::{self, Mode, Object, Value};
use clap::{Args, Subcommand};

use crate::cli;

/// Which gateway, and the operator's credential.
#[derive(Debug, Clone, Args)]
pub struct Gateway {
    /// The gateway's HTTP address.
    #[arg(
        long,
        env = "BATON_GATEWAY_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    http: String,
    /// The operator token file (BATON_OPERATOR_TOKEN wins).
    #[arg(
        long,
        env = "BATON_OPERATOR_TOKEN_FILE",
        default_value = "operator.token"
    )]
    token_file: PathBuf,
    /// Print the gateway's JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// When the selected agents act, and for how long the command holds.
#[derive(Debug, Clone, Args)]
pub struct When {
    /// T as a timestamp, e.g. 2026-12-04T10:00:00.000Z (the top's time).
    #[arg(long, conflicts_with = "in_")]
    at: Option<String>,
    /// T as a delay from now, e.g. 2s.
    #[arg(long = "in", id = "in_")]
    in_: Option<String>,
    /// Tolerance after T: READY by T + window is on time.
    #[arg(long, default_value = "50ms")]
    window: String,
    /// How long after T + window the command stays answerable.
    #[arg(long, default_value = "30s")]
    ttl: String,
    /// 0 background … 3 critical (the operating mode's gate reads it).
    #[arg(long, default_value_t = 1)]
    priority: u8,
    /// The command's id (default: made from the time).
    #[arg(long)]
    id: Option<String>,
}

/// Which agents (all filters must hold).
#[derive(Debug, Clone, Args, Default)]
pub struct Select {
    /// Only these agents (comma-separated).
    #[arg(long, value_delimiter = ',')]
    agents: Vec<String>,
    /// Only these clusters.
    #[arg(long, value_delimiter = ',')]
    clusters: Vec<String>,
    /// Only agents holding all of these capabilities.
    #[arg(long, value_delimiter = ',')]
    capabilities: Vec<String>,
    /// Only these device classes.
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum Console {
    /// The fleet in a few numbers: agents active/total, mode, open
    /// breakers, commands in hand, recent conflicts, the last command.
    Status {
        #[command(flatten)]
        gw: Gateway,
    },
    /// A message to every selected agent, recorded in each one's ledger
    /// at T (verb `record`); --acks waits for the answers.
    Broadcast {
        /// The message.
        message: String,
        #[command(flatten)]
        when: When,
        #[command(flatten)]
        select: Select,
        /// Wait for the answers (the window phase) and print the tally.
        #[arg(long)]
        acks: bool,
        #[command(flatten)]
        gw: Gateway,
    },
    /// A question to a sample of agents (lowest impedance first, verb
    /// `decide`); waits and prints the answers grouped by result.
    Ask {
        /// The question (the handler's payload).
        question: String,
        /// How many agents per cluster.
        #[arg(long, default_value_t = 5)]
        sample: u64,
        #[command(flatten)]
        when: When,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        gw: Gateway,
    },
    /// A task (JSON payload) to the one best capable agent (lowest
    /// impedance, verb `act`); waits for its result.
    Delegate {
        /// The task, as JSON.
        task: String,
        #[command(flatten)]
        when: When,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Load a baton document (an agent's exported chain) into a running
    /// gateway: verified under the key it trusts for the agent and stored
    /// through the same intake as MQTT, or refused whole with the reason.
    Load {
        /// The baton file (`export --format baton`).
        file: PathBuf,
        /// Only verify a baton of an agent not enrolled here (never stored).
        #[arg(long)]
        unauthenticated: bool,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Freeze the selected agents: every later command but thaw and
    /// observe is answered `frozen` (appends go on) until thawed or the
    /// freeze expires (--ttl).
    Freeze {
        #[command(flatten)]
        when: When,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Lift a freeze, named by its command hash.
    Thaw {
        /// The freeze command's hash.
        freeze: String,
        #[command(flatten)]
        when: When,
        #[command(flatten)]
        select: Select,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Close the breakers of these children at once, and send them again,
    /// at the next tick, every command in hand they have not answered
    /// (while before its T + window).
    Heal {
        /// Child ids (agents or child gateways).
        #[arg(required = true)]
        children: Vec<String>,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Issue a finished command again for only the agents it did not
    /// reach (CONFLICT, TRANSIT, unanswered or skipped): its verb,
    /// payload, priority and filters, a new T, a new id.
    Rerun {
        /// The finished command's hash or id.
        command: String,
        /// T as a timestamp (the top's time).
        #[arg(long, conflicts_with = "in_")]
        at: Option<String>,
        /// T as a delay from now (default 2s).
        #[arg(long = "in", id = "in_")]
        in_: Option<String>,
        /// Tolerance after T (default: the original's).
        #[arg(long)]
        window: Option<String>,
        /// How long after T + window it stays answerable (default: the
        /// original's).
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        gw: Gateway,
    },
    /// Every command in hand and recently finished, newest first.
    Commands {
        #[command(flatten)]
        gw: Gateway,
    },
    /// One command's live tally, skips, conflicts and per-agent answers.
    #[command(name = "command")]
    Show {
        /// The command's hash or id.
        command: String,
        #[command(flatten)]
        gw: Gateway,
    },
}

/// Builds an order body for `POST /api/v1/command`.
fn order(
    verb: &str,
    payload: Value,
    when: &When,
    select: &Select,
    sample: Option<u64>,
) -> anyhow::Result<String> {
    let mut o = Object::new();
    o.insert("verb", Value::from(verb));
    o.insert("payload", payload);
    if let Some(at) = &when.at {
        o.insert("at", Value::from(at.as_str()));
    }
    if let Some(d) = &when.in_ {
        o.insert("in", Value::from(d.as_str()));
    }
    o.insert("window", Value::from(when.window.as_str()));
    o.insert("ttl", Value::from(when.ttl.as_str()));
    o.insert("priority", Value::from(u64::from(when.priority)));
    if let Some(id) = &when.id {
        o.insert("id", Value::from(id.as_str()));
    }
    let mut s = Object::new();
    let list = |l: &[String]| Value::Array(l.iter().map(|x| Value::from(x.as_str())).collect());
    for (k, l) in [
        ("agents", &select.agents),
        ("clusters", &select.clusters),
        ("capabilities", &select.capabilities),
        ("classes", &select.classes),
    ] {
        if !l.is_empty() {
            s.insert(k, list(l));
        }
    }
    if let Some(n) = sample {
        s.insert("sample", Value::from(n));
    }
    if !s.is_empty() {
        o.insert("select", Value::Object(s));
    }
    Ok(String::from_utf8(baton_shared::canonical::to_vec(
        &Value::Object(o),
    ))?)
}

fn parse(body: &str) -> anyhow::Result<Value> {
    json::parse(body.as_bytes(), Mode::Verify).context("the gateway's answer is not JSON")
}

fn field<'a>(v: &'a Value, k: &str) -> Option<&'a Value> {
    v.as_object()?.get(k)
}

fn num(v: &Value, k: &str) -> u64 {
    field(v, k).and_then(Value::as_exact_u64).unwrap_or(0)
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    field(v, k).and_then(Value::as_str).unwrap_or("-")
}

impl Gateway {
    fn post(&self, path: &str, body: &str) -> anyhow::Result<String> {
        let token = cli::operator_token(&self.token_file)?;
        cli::http_post(&self.http, path, body, &token)
    }

    fn get(&self, path: &str) -> anyhow::Result<String> {
        cli::http_get(&self.http, path)
    }

    /// Issues an order; prints what was planned; returns the hash.
    fn issue(&self, body: &str) -> anyhow::Result<String> {
        self.issue_at("/api/v1/command", body)
    }

    /// Posts an order to `path` (an issue or a re-run) and prints what
    /// was planned; returns the new command's hash.
    fn issue_at(&self, path: &str, body: &str) -> anyhow::Result<String> {
        let answer = self.post(path, body)?;
        let v = parse(&answer)?;
        if self.json {
            println!("{}", answer.trim());
        } else {
            let mut skipped = String::new();
            if let Some(Value::Object(s)) = field(&v, "skipped") {
                for (r, n) in s.iter() {
                    let _ = write!(skipped, " {r}={}", n.as_exact_u64().unwrap_or(0));
                }
            }
            println!(
                "command {} ({}) at {}: {} selected, {} sent{}",
                text(&v, "id"),
                text(&v, "hash"),
                text(&v, "target"),
                num(&v, "selected"),
                num(&v, "sent"),
                if skipped.is_empty() {
                    String::new()
                } else {
                    format!(", skipped:{skipped}")
                }
            );
        }
        Ok(text(&v, "hash").to_owned())
    }

    /// Waits until the command's window phase is recorded (its answers
    /// are in) and returns its full view.
    fn wait(&self, hash: &str, when: &When) -> anyhow::Result<Value> {
        let ttl = humantime::parse_duration(&when.ttl).unwrap_or(Duration::from_secs(30));
        let started = Instant::now();
        loop {
            let v = parse(&self.get(&format!("/api/v1/commands/{hash}"))?)?;
            if text(&v, "stage") != "open" || started.elapsed() > ttl + Duration::from_secs(120) {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// The tally of a command's view, one line.
fn tally_line(v: &Value) -> String {
    format!(
        "{}: {} selected, {} sent, {} ready ({} on time), {} transit, {} conflict, {} unanswered → {}",
        text(v, "id"),
        num(v, "selected"),
        num(v, "sent"),
        num(v, "ready"),
        num(v, "on_time"),
        num(v, "transit"),
        num(v, "conflict"),
        num(v, "unanswered"),
        text(v, "decision"),
    )
}

fn agent_rows(v: &Value) -> Vec<&Value> {
    match field(v, "agents") {
        Some(Value::Array(rows)) => rows.iter().collect(),
        _ => Vec::new(),
    }
}

/// Prints a command's full view: the tally, then one line per agent.
fn print_command(v: &Value) {
    println!("{}", tally_line(v));
    println!(
        "{:<28} {:>6} {:>9} {:>10}  RESULT",
        "AGENT", "STATE", "LEAD ms", "ERROR ms"
    );
    for a in agent_rows(v) {
        let state = match field(a, "state").and_then(Value::as_f64) {
            Some(s) if s > 0.0 => "ready".to_owned(),
            Some(s) if s < 0.0 => text(a, "conflict").to_owned(),
            Some(_) => "transit".to_owned(),
            None => field(a, "skipped")
                .and_then(Value::as_str)
                .map_or("-".to_owned(), |r| format!("skip:{r}")),
        };
        let n = |k: &str| {
            field(a, k)
                .and_then(Value::as_f64)
                .map_or("-".to_owned(), |x| format!("{x}"))
        };
        let result = field(a, "result")
            .filter(|r| **r != Value::Null)
            .map(|r| String::from_utf8_lossy(&baton_shared::canonical::to_vec(r)).into_owned())
            .unwrap_or_default();
        println!(
            "{:<28} {:>6} {:>9} {:>10}  {result}",
            text(a, "agent"),
            state,
            n("lead_ms"),
            n("prediction_error_ms")
        );
    }
}

/// Runs one console command.
pub fn run(c: Console) -> anyhow::Result<()> {
    match c {
        Console::Status { gw } => {
            let body = gw.get("/api/v1/status")?;
            if gw.json {
                println!("{}", body.trim());
                return Ok(());
            }
            let v = parse(&body)?;
            println!("gateway   {}", text(&v, "gateway"));
            println!(
                "agents    {} active of {}",
                num(&v, "active"),
                num(&v, "agents")
            );
            println!("clusters  {}", num(&v, "clusters"));
            println!("mode      {}", text(&v, "mode"));
            if let Some(f @ Value::Object(_)) = field(&v, "frozen") {
                println!(
                    "frozen    by {} until {} (relays only thaw and observe)",
                    text(f, "by"),
                    text(f, "until")
                );
            }
            let z = field(&v, "impedance_mean_ms").and_then(Value::as_f64);
            println!(
                "impedance {}",
                z.map_or("-".into(), |z| format!("{z:.1} ms mean"))
            );
            let open = match field(&v, "breakers_not_closed") {
                Some(Value::Array(b)) => b
                    .iter()
                    .map(|b| format!("{} ({})", text(b, "child"), text(b, "position")))
                    .collect::<Vec<_>>(),
                _ => Vec::new(),
            };
            println!(
                "breakers  {}",
                if open.is_empty() {
                    "all closed".to_owned()
                } else {
                    open.join(", ")
                }
            );
            println!(
                "commands  {} in hand, {} conflicts in recent ones",
                num(&v, "commands_in_hand"),
                num(&v, "conflicts_recent")
            );
            match field(&v, "last_command") {
                Some(last) if *last != Value::Null => println!("last      {}", tally_line(last)),
                _ => println!("last      none"),
            }
        }
        Console::Broadcast {
            message,
            when,
            select,
            acks,
            gw,
        } => {
            let mut p = Object::new();
            p.insert("message", Value::from(message.as_str()));
            let hash = gw.issue(&order("record", Value::Object(p), &when, &select, None)?)?;
            if acks {
                let v = gw.wait(&hash, &when)?;
                if gw.json {
                    println!(
                        "{}",
                        String::from_utf8_lossy(&baton_shared::canonical::to_vec(&v))
                    );
                } else {
                    println!("{}", tally_line(&v));
                }
            }
        }
        Console::Ask {
            question,
            sample,
            when,
            select,
            gw,
        } => {
            let hash = gw.issue(&order(
                "decide",
                Value::from(question.as_str()),
                &when,
                &select,
                Some(sample),
            )?)?;
            let v = gw.wait(&hash, &when)?;
            if gw.json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&baton_shared::canonical::to_vec(&v))
                );
                return Ok(());
            }
            println!("{}", tally_line(&v));
            // answers grouped by result
            let mut groups: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for a in agent_rows(&v) {
                let key = match field(a, "result") {
                    Some(r) if *r != Value::Null => {
                        String::from_utf8_lossy(&baton_shared::canonical::to_vec(r)).into_owned()
                    }
                    _ if field(a, "conflict").is_some() => {
                        format!("conflict: {}", text(a, "conflict"))
                    }
                    _ => "no answer".to_owned(),
                };
                groups
                    .entry(key)
                    .or_default()
                    .push(text(a, "agent").to_owned());
            }
            for (result, agents) in groups {
                println!("{:>4} × {result}: {}", agents.len(), agents.join(", "));
            }
        }
        Console::Delegate {
            task,
            when,
            select,
            gw,
        } => {
            let payload =
                json::parse(task.as_bytes(), Mode::Verify).context("the task is not JSON")?;
            let hash = gw.issue(&order("act", payload, &when, &select, Some(1))?)?;
            let v = gw.wait(&hash, &when)?;
            if gw.json {
                println!(
                    "{}",
                    String::from_utf8_lossy(&baton_shared::canonical::to_vec(&v))
                );
            } else {
                print_command(&v);
            }
        }
        Console::Load {
            file,
            unauthenticated,
            gw,
        } => {
            let body = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let path = if unauthenticated {
                "/api/v1/load?unauthenticated=true"
            } else {
                "/api/v1/load"
            };
            let waiting = baton_runtime::progress::Progress::spinning(&format!(
                "loading {} ({} bytes) into {}",
                file.display(),
                body.len(),
                gw.http
            ));
            let answer = gw.post(path, &body);
            drop(waiting);
            println!("{}", answer?.trim());
        }
        Console::Freeze { when, select, gw } => {
            gw.issue(&order(
                "freeze",
                Value::Object(Object::new()),
                &when,
                &select,
                None,
            )?)?;
        }
        Console::Thaw {
            freeze,
            when,
            select,
            gw,
        } => {
            let mut p = Object::new();
            p.insert("freeze", Value::from(freeze.as_str()));
            gw.issue(&order("thaw", Value::Object(p), &when, &select, None)?)?;
        }
        Console::Heal { children, gw } => {
            let list: Vec<Value> = children.iter().map(|c| Value::from(c.as_str())).collect();
            let mut o = Object::new();
            o.insert("agents", Value::Array(list));
            let body = String::from_utf8(baton_shared::canonical::to_vec(&Value::Object(o)))?;
            println!("{}", gw.post("/api/v1/heal", &body)?.trim());
        }
        Console::Rerun {
            command,
            at,
            in_,
            window,
            ttl,
            gw,
        } => {
            let mut o = Object::new();
            for (k, v) in [("at", at), ("in", in_), ("window", window), ("ttl", ttl)] {
                if let Some(v) = v {
                    o.insert(k, Value::from(v.as_str()));
                }
            }
            let body = String::from_utf8(baton_shared::canonical::to_vec(&Value::Object(o)))?;
            gw.issue_at(&format!("/api/v1/commands/{command}/rerun"), &body)?;
        }
        Console::Commands { gw } => {
            let body = gw.get("/api/v1/commands")?;
            if gw.json {
                println!("{}", body.trim());
                return Ok(());
            }
            if let Value::Array(list) = parse(&body)? {
                for c in &list {
                    println!(
                        "{:<7} {:<7} {}",
                        text(c, "stage"),
                        text(c, "verb"),
                        tally_line(c)
                    );
                }
            }
        }
        Console::Show { command, gw } => {
            let body = gw.get(&format!("/api/v1/commands/{command}"))?;
            if gw.json {
                println!("{}", body.trim());
            } else {
                print_command(&parse(&body)?);
            }
        }
    }
    Ok(())
}
