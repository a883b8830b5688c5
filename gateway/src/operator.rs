//! What the ingest thread is handed, and the operator commands it carries
//! out: the messages, the commands, their outcomes and their typed errors.
//! HTTP and the CLI send; `server` runs the loop; nobody here binds or
//! serves. An HTTP status comes from an error's variant, never its text.

use std::sync::Arc;
use std::time::Duration;

use baton_runtime::unix_ms;
use baton_shared::{AgentId, ClusterId, Entry, Seq};

use crate::ingest::{Ingest, LoadError};
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
    Command(Command, Reply),
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
    Window {
        until_ms: i64,
    },
    /// Store a verified baton's entries (from `first`).
    Load {
        agent: AgentId,
        first: Seq,
        entries: Vec<Entry>,
    },
}

/// What a command did, once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    Enrolled { agent: AgentId, already: bool },
    WindowOpen { until_ms: i64 },
    Loaded { stored: u64, already_held: u64 },
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
        }
    }
}

/// Why a command was refused or not stored.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{agent} is enrolled with another key; a key change is a new agent id")]
    KeyConflict { agent: AgentId },
    #[error(transparent)]
    Load(#[from] LoadError),
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

/// Carries out an operator command; the caller answers after the commit
/// (refusals too: a refusal may have staged something, a loaded fork's
/// evidence).
pub fn run_command(ingest: &mut Ingest, now: Duration, cmd: Command) -> Result<Done, CommandError> {
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
        Command::Window { until_ms } => {
            ingest.set_window(Some(until_ms))?;
            Ok(Done::WindowOpen { until_ms })
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
