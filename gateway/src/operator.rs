//! What the ingest thread is handed, and the operator commands it carries
//! out: the messages, the commands, their outcomes and their typed errors.
//! HTTP and the CLI send; `server` runs the loop; nobody here binds or
//! serves. An HTTP status comes from an error's variant, never its text.

use std::sync::Arc;
use std::time::Duration;

use baton_runtime::unix_ms;
use baton_shared::json::{Object, Value};
use baton_shared::{AgentId, ClusterId, Entry, Hash, Seq};

use crate::ingest::{
    Ingest, IssueError, Issued, LoadError, Order, Rerun, RerunError, UnenrollError,
};
use crate::store::{AgentRecord, EnrolledBy, StoreError};

/// What the ingest thread is handed.
#[derive(Debug)]
pub enum Inbound {
    Connected,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Tick,
    /// Re-judge liveness (every 500 ms).
    Liveness,
    /// Write the cluster summary into the gateway's chain.
    Summary,
    /// An operator command from HTTP; answered after the durable commit.
    Command(Command, Actor, Reply),
    /// A command delivery from the parent gateway (PROTOCOL §9).
    Relay(Vec<u8>),
}

/// Who asked for an operator action, as the gateway's chain records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `http` (a request, with the operator token unless `http_auth =
    /// "none"`) or `cli` (a command on a stopped gateway's files, whose
    /// file permissions are the authority).
    pub channel: &'static str,
    /// The operator token's fingerprint, when one was presented.
    pub credential: Option<String>,
}

impl Actor {
    pub fn cli() -> Actor {
        Actor {
            channel: "cli",
            credential: None,
        }
    }

    pub fn http(credential: Option<String>) -> Actor {
        Actor {
            channel: "http",
            credential,
        }
    }

    /// Where a command it issues came from, as its `command` entry names
    /// it: `operator/CHANNEL[/CREDENTIAL]`.
    fn from(&self) -> String {
        match &self.credential {
            Some(c) => format!("operator/{}/{c}", self.channel),
            None => format!("operator/{}", self.channel),
        }
    }
}

/// Where a command's outcome goes.
pub type Reply = tokio::sync::oneshot::Sender<Result<Done, CommandError>>;

/// Operator commands a running gateway takes over HTTP.
#[derive(Debug)]
pub enum Command {
    Enroll {
        agent: AgentId,
        record: AgentRecord,
    },
    /// Open a trust-on-first-use window this long from now.
    Window {
        length: Duration,
    },
    /// Store a verified baton's entries (from `first`).
    Load {
        agent: AgentId,
        first: Seq,
        entries: Vec<Entry>,
    },
    /// Withdraw trust in an agent (or child gateway): its record goes, its
    /// broker logins and deliveries are refused; what it sent stays.
    Unenroll {
        agent: AgentId,
    },
    /// Lift a fork or cloned-identity halt after inspecting the evidence.
    Resolve {
        agent: AgentId,
    },
    /// Issue a command to the fleet below (PROTOCOL §9).
    Issue {
        order: Box<Order>,
    },
    /// Close the breakers of these children at once; resend what they
    /// have not answered.
    Heal {
        children: Vec<AgentId>,
    },
    /// Issue a finished command again for only the agents it did not
    /// reach.
    Rerun {
        rerun: Rerun,
    },
}

impl Command {
    /// The action's name in the chain's `operator` entry.
    pub fn action(&self) -> &'static str {
        match self {
            Command::Enroll { .. } => "enroll",
            Command::Window { .. } => "window",
            Command::Load { .. } => "load",
            Command::Unenroll { .. } => "unenroll",
            Command::Resolve { .. } => "resolve",
            Command::Issue { .. } => "command",
            Command::Heal { .. } => "heal",
            Command::Rerun { .. } => "rerun",
        }
    }
}

/// What a command did, once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Enrolled {
        agent: AgentId,
        already: bool,
    },
    WindowOpen {
        until_ms: i64,
    },
    Loaded {
        stored: u64,
        already_held: u64,
    },
    Unenrolled {
        agent: AgentId,
    },
    Resolved {
        agent: AgentId,
        halted_at: Option<Seq>,
    },
    Issued(Issued),
    Healed {
        closed: usize,
        /// Commands in hand sent again at once to a healed child.
        resent: usize,
    },
    /// A re-run of command `of`, issued as a new command.
    Rerun {
        issued: Issued,
        of: Hash,
    },
}

impl std::fmt::Display for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::Enrolled {
                agent,
                already: true,
            } => write!(f, "{agent} was already enrolled with this key"),
            Done::Enrolled { agent, .. } => write!(f, "enrolled {agent}"),
            Done::WindowOpen { until_ms } => write!(
                f,
                "enrollment window open until {}",
                baton_shared::entry::format_timestamp(*until_ms)
            ),
            Done::Loaded {
                stored,
                already_held,
            } => write!(f, "stored {stored}, already held {already_held}"),
            Done::Unenrolled { agent } => write!(f, "unenrolled {agent}"),
            Done::Resolved {
                agent,
                halted_at: Some(seq),
            } => write!(f, "{agent}: fork halt at seq {seq} lifted"),
            Done::Resolved { agent, .. } => write!(f, "{agent} was not halted"),
            Done::Issued(i) => write!(
                f,
                "command {} ({}) for {}: {} selected, {} sent",
                i.id,
                i.hash,
                baton_shared::entry::format_timestamp(i.target_ms),
                i.selected,
                i.sent
            ),
            Done::Healed { closed, resent } => write!(
                f,
                "{closed} breakers closed, {resent} unanswered deliveries sent again"
            ),
            Done::Rerun { issued, of } => write!(
                f,
                "command {of} re-run as {} ({}): {} selected, {} sent",
                issued.id, issued.hash, issued.selected, issued.sent
            ),
        }
    }
}

/// Why a command was refused or not stored.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{agent} is enrolled with another key; a key change is a new agent id")]
    KeyConflict { agent: AgentId },
    #[error("{agent} is not enrolled")]
    NotEnrolled { agent: AgentId },
    #[error("{agent} is this gateway itself")]
    OwnChain { agent: AgentId },
    #[error("a window of {asked} is longer than enroll_window_max ({max})")]
    WindowTooLong { asked: String, max: String },
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error(transparent)]
    Rerun(#[from] RerunError),
    #[error("reading the store: {0}")]
    Store(#[from] StoreError),
    /// The group commit that carried the command failed.
    #[error("{}not stored: {source}", refused.as_ref().map(|r| format!("{r}; ")).unwrap_or_default())]
    NotStored {
        /// The command's own refusal, when it was refused too.
        refused: Option<Box<CommandError>>,
        source: Arc<StoreError>,
    },
}

/// Carries out an operator command for `by`; the caller answers after
/// the commit (refusals too: a refusal may have staged something, a loaded
/// fork's evidence). What was done is an `operator` entry in the gateway's
/// chain, committed with it: the action, the channel, the credential.
pub fn run_command(
    ingest: &mut Ingest,
    now: Duration,
    cmd: Command,
    by: &Actor,
) -> Result<Done, CommandError> {
    let action = cmd.action();
    let loaded = match &cmd {
        Command::Load { agent, first, .. } => Some((agent.clone(), *first)),
        _ => None,
    };
    let done = carry_out(ingest, now, cmd, by)?;
    let mut d = Object::new();
    d.insert("action", Value::from(action));
    d.insert("channel", Value::from(by.channel));
    if let Some(c) = &by.credential {
        d.insert("credential", Value::from(c.as_str()));
    }
    if let Done::Enrolled { agent, .. }
    | Done::Unenrolled { agent }
    | Done::Resolved { agent, .. } = &done
    {
        d.insert("agent", Value::from(agent.as_str()));
    }
    if let Some((agent, first)) = loaded {
        d.insert("agent", Value::from(agent.as_str()));
        d.insert("first_seq", Value::from(first.0));
    }
    if let Done::Rerun { of, .. } = &done {
        d.insert("rerun_of", Value::from(of.to_hex()));
    }
    d.insert("outcome", Value::from(done.to_string()));
    ingest.stage_operator(unix_ms(), Value::Object(d));
    Ok(done)
}

fn carry_out(
    ingest: &mut Ingest,
    now: Duration,
    cmd: Command,
    by: &Actor,
) -> Result<Done, CommandError> {
    match cmd {
        Command::Enroll { agent, record } => {
            if let Some(existing) = ingest.store().agent(&agent)? {
                if existing.public_key != record.public_key {
                    return Err(CommandError::KeyConflict { agent });
                }
                return Ok(Done::Enrolled {
                    agent,
                    already: true,
                });
            }
            ingest.stage_enrollment(unix_ms(), &agent, record);
            Ok(Done::Enrolled {
                agent,
                already: false,
            })
        }
        Command::Load {
            agent,
            first,
            entries,
        } => {
            let (stored, already_held) = ingest.load(now, unix_ms(), &agent, first, entries)?;
            Ok(Done::Loaded {
                stored,
                already_held,
            })
        }
        Command::Window { length } => {
            let max = ingest.first_use_limits().max_window;
            if length > max {
                return Err(CommandError::WindowTooLong {
                    asked: humantime::format_duration(length).to_string(),
                    max: humantime::format_duration(max).to_string(),
                });
            }
            let until_ms = ingest.open_window(unix_ms(), length)?;
            Ok(Done::WindowOpen { until_ms })
        }
        Command::Unenroll { agent } => match ingest.unenroll(&agent) {
            Ok(()) => Ok(Done::Unenrolled { agent }),
            Err(UnenrollError::NotEnrolled) => Err(CommandError::NotEnrolled { agent }),
            Err(UnenrollError::OwnChain) => Err(CommandError::OwnChain { agent }),
            Err(UnenrollError::Store(e)) => Err(e.into()),
        },
        Command::Resolve { agent } => {
            let halted_at = ingest.resolve(&agent)?;
            Ok(Done::Resolved { agent, halted_at })
        }
        Command::Issue { order } => {
            let now_ms = ingest.parent_clock().now_ms();
            Ok(Done::Issued(ingest.issue(now_ms, *order, &by.from())?))
        }
        Command::Rerun { rerun } => {
            let now_ms = ingest.parent_clock().now_ms();
            let (issued, of) = ingest.rerun(now_ms, rerun, &by.from())?;
            Ok(Done::Rerun { issued, of })
        }
        Command::Heal { children } => {
            let (closed, resent) = ingest
                .coordination()
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .heal(&children);
            Ok(Done::Healed { closed, resent })
        }
    }
}

/// An operator asked to enroll a child gateway for this gateway's own
/// cluster: a child forwards another cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("child cluster {0} is this gateway's own cluster; a child forwards another cluster")]
pub struct OwnClusterChild(pub ClusterId);

/// How an operator enrollment is recorded: a child gateway (whose chains
/// arrive on `child_cluster`'s topics) or an agent of this cluster.
pub fn operator_enrollment(
    own: &ClusterId,
    child_cluster: Option<ClusterId>,
) -> Result<EnrolledBy, OwnClusterChild> {
    match child_cluster {
        None => Ok(EnrolledBy::Operator),
        Some(c) if c == *own => Err(OwnClusterChild(c)),
        Some(cluster) => Ok(EnrolledBy::ChildGateway { cluster }),
    }
}
