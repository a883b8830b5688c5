//! Re-running a command for only the agents it did not reach: the ones
//! that answered CONFLICT, were still in TRANSIT, never answered, or were
//! skipped (the console's `rerun`). The original's outcomes are final
//! first: a command in hand cannot be re-run.
//!
//! An agent child's outcome is in the command's gather. Agents behind a
//! child gateway are read from that gateway's final `command_result`
//! pages in its chain, which this gateway holds, and so on down;
//! a child gateway skipped as a whole stands for every agent routed
//! through it. The re-run is a new command (its own id and hash): the
//! original's verb, payload, priority, weight, quorum and filters, with
//! `select.agents` naming exactly those agents. The original's `sample`
//! is kept: the agents named from a cluster's outcomes are within it, and
//! a child gateway skipped as a whole, named by all its agents, is
//! sampled again by its cluster as the original would have been.

use std::collections::BTreeSet;

use baton_shared::command::Command;
use baton_shared::gather::{Outcome, page_outcomes};
use baton_shared::json::{Object, Value};
use baton_shared::schedule::Plan;
use baton_shared::{AgentId, Seq};

use super::Ingest;
use super::coord::{IssueError, Issued, Order, contains, entry_data};
use crate::store::StoreError;

/// Entries of one child gateway's chain read back at most, looking for a
/// command's results (newest first; a re-run is of a recent command).
pub const SCAN_MAX: u64 = 200_000;
/// How deep below this gateway results are followed.
const DEPTH_MAX: u8 = 6;

/// An operator's re-run: the command, by hash (hex) or id, and the new
/// command's timing (`None`: the original's window and time to live).
#[derive(Debug, Clone)]
pub struct Rerun {
    pub key: String,
    pub target_ms: i64,
    pub window_ms: Option<u64>,
    /// Life after T + window, ms.
    pub ttl_ms: Option<i64>,
    /// When the gateway read the order (the new command's `issued`).
    pub read_ms: i64,
}

/// Why a re-run was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RerunError {
    #[error("no command {0} in hand or recently finished")]
    Unknown(String),
    #[error("command {0} is still in hand; re-run it after its final phase")]
    InHand(String),
    #[error("every agent command {0} selected answered READY: nothing to re-run")]
    Nothing(String),
    #[error(
        "{gateway}'s results for command {key} are not in its chain here yet; try again once its chain has arrived"
    )]
    NotYet { gateway: AgentId, key: String },
    #[error("reading {gateway}'s chain: {source}")]
    Store {
        gateway: AgentId,
        source: std::sync::Arc<StoreError>,
    },
    #[error(transparent)]
    Issue(#[from] IssueError),
}

impl Ingest {
    /// Issues a new command for the agents command `r.key` did not reach;
    /// returns what was planned and the original's hash.
    pub fn rerun(
        &mut self,
        now_ms: i64,
        r: Rerun,
        from: &str,
    ) -> Result<(Issued, baton_shared::Hash), RerunError> {
        let (c, mut agents, gateways) = {
            let coord = self.coordination();
            let coord = coord
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let g = coord.finished(&r.key).map_err(|in_hand| {
                if in_hand {
                    RerunError::InHand(r.key.clone())
                } else {
                    RerunError::Unknown(r.key.clone())
                }
            })?;
            let agents: BTreeSet<AgentId> = g
                .agents()
                .filter(|(_, _, a)| {
                    a.is_none_or(|a| a.state != baton_shared::command::State::Ready)
                })
                .map(|(id, _, _)| id.clone())
                .collect();
            let gateways: Vec<(AgentId, bool)> = g
                .gateways()
                .map(|(id, plan)| (id.clone(), matches!(plan, Plan::Skip { .. })))
                .collect();
            (g.command().clone(), agents, gateways)
        };
        for (gw, skipped) in gateways {
            if skipped {
                agents.extend(
                    self.routes
                        .iter()
                        .filter(|(a, (_, via))| *via == gw && **a != gw)
                        .map(|(a, _)| a.clone()),
                );
            } else {
                self.not_ready_below(&gw, &c, &r.key, 0, &mut agents)?;
            }
        }
        if agents.is_empty() {
            return Err(RerunError::Nothing(r.key));
        }
        let mut select = match c.content.as_object().and_then(|o| o.get("select")) {
            Some(Value::Object(o)) => o.clone(),
            _ => Object::new(),
        };
        select.insert(
            "agents",
            Value::Array(agents.iter().map(|a| Value::from(a.as_str())).collect()),
        );
        let window_ms = r.window_ms.unwrap_or(c.window_ms);
        let ttl_ms = r.ttl_ms.unwrap_or_else(|| {
            c.expires_ms - c.target_ms - i64::try_from(c.window_ms).unwrap_or(0)
        });
        let order = Order {
            id: None,
            verb: c.verb,
            payload: c.payload.clone(),
            target_ms: r.target_ms,
            window_ms,
            expires_ms: r.target_ms + i64::try_from(window_ms).unwrap_or(0) + ttl_ms,
            priority: c.priority,
            weight: c.weight,
            select: Some(Value::Object(select)),
            quorum: c.content.as_object().and_then(|o| o.get("quorum")).cloned(),
            read_ms: r.read_ms,
        };
        Ok((self.issue(now_ms, order, from)?, c.hash))
    }

    /// Adds the agents below child gateway `gw` that did not end READY
    /// for `c`, from `gw`'s latest `command_result` pages (and, for each
    /// gateway those pages list as answered, from its pages).
    fn not_ready_below(
        &self,
        gw: &AgentId,
        c: &Command,
        key: &str,
        depth: u8,
        out: &mut BTreeSet<AgentId>,
    ) -> Result<(), RerunError> {
        if depth >= DEPTH_MAX {
            return Ok(());
        }
        let pages = self.result_pages(gw, c).map_err(|e| RerunError::Store {
            gateway: gw.clone(),
            source: std::sync::Arc::new(e),
        })?;
        if pages.is_empty() {
            return Err(RerunError::NotYet {
                gateway: gw.clone(),
                key: key.to_owned(),
            });
        }
        for (id, outcome) in pages.iter().filter_map(page_outcomes).flatten() {
            match outcome {
                Outcome::Ready => {}
                Outcome::Answered => self.not_ready_below(&id, c, key, depth + 1, out)?,
                Outcome::NotReady(_) => {
                    out.insert(id);
                }
            }
        }
        Ok(())
    }

    /// The data of `gw`'s final `command_result` pages for `c` (none while
    /// its final phase is not in its chain here), reading its chain back
    /// from the head (at most [`SCAN_MAX`] entries, and not past entries
    /// stamped before `c` was issued).
    fn result_pages(&self, gw: &AgentId, c: &Command) -> Result<Vec<Value>, StoreError> {
        const CHUNK: u64 = 256;
        let needle = format!("\"hash\":\"{}\"", c.hash.to_hex());
        let mut pages = Vec::new();
        let mut next = self.store.head(gw)?.seq.0;
        let mut scanned = 0;
        while next >= 1 && scanned < SCAN_MAX {
            let from = next.saturating_sub(CHUNK - 1).max(1);
            let n = usize::try_from(next - from + 1).unwrap_or(usize::MAX);
            let chunk = self.store.range(gw, Seq(from), n)?;
            for (_, e) in chunk.iter().rev() {
                scanned += 1;
                if !contains(&e.content, br#""event":"command_result""#)
                    || !contains(&e.content, needle.as_bytes())
                {
                    continue;
                }
                let Some((_, _, data)) = entry_data(e) else {
                    continue;
                };
                let p = data
                    .as_object()
                    .and_then(|o| o.get("phase"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                if p != "final" {
                    // the window phase: the final one, if any, is complete
                    // (none yet: its outcomes are not final)
                    return Ok(pages);
                }
                pages.push(data);
            }
            let oldest = chunk.first().and_then(|(_, e)| entry_data(e));
            if oldest.is_some_and(|(_, ts, _)| ts < c.issued_ms) {
                break;
            }
            next = from - 1;
        }
        Ok(pages)
    }
}
