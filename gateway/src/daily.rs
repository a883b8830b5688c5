//! The live daily files (`--daily-dir`): every chain the gateway holds as
//! `<dir>/<agent>/YYYY-MM-DD.jsonl`, the same files `export --format daily`
//! writes (PROTOCOL §5), kept up to date as entries are committed.
//!
//! A derived view, never evidence: written after the commit, off the
//! receipt path, append-only. Where each chain's files end is read from the
//! files themselves ([`baton_runtime::daily::last_written`]), so a directory
//! deleted in part or whole is written again from the store at the next
//! start, and a failed write (a full disk) is retried until it goes through.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_runtime::daily::{DailyWriter, last_written};
use baton_shared::{AgentId, Seq};
use tokio::sync::{broadcast, oneshot};
use tracing::{info, warn};

use crate::ingest::Committed;
use crate::metrics::Metrics;
use crate::store::Store;

/// Entries read from the store at a time.
const PAGE: usize = 4096;
/// How often failed chains are tried again, and the gateway's own chain
/// (committed without a notice) is looked at.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// How far each chain's files are written, as far as the view knows (a
/// chain it has not written yet, or failed to, is absent).
pub type Written = Arc<Mutex<HashMap<AgentId, Seq>>>;

/// The running writer; [`DailyView::stop`] writes what is committed and ends.
#[derive(Debug)]
pub struct DailyView {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    written: Written,
}

impl DailyView {
    /// Starts writing every chain in `store` into `dir`: first whatever the
    /// files lack, then each chain `committed` names. `own` is the
    /// gateway's own chain.
    pub fn spawn(
        dir: PathBuf,
        own: AgentId,
        store: Arc<Store>,
        committed: broadcast::Receiver<Committed>,
        metrics: Arc<Metrics>,
    ) -> DailyView {
        let (stop, stopped) = oneshot::channel();
        let written = Written::default();
        let writer = Writer {
            dir,
            store,
            metrics,
            cursors: HashMap::new(),
            written: Arc::clone(&written),
        };
        let task = tokio::spawn(writer.run(own, committed, stopped));
        DailyView {
            stop,
            task,
            written,
        }
    }

    /// How far the files are written (what pruning must leave alone).
    pub fn written(&self) -> Written {
        Arc::clone(&self.written)
    }

    /// Writes what is committed by now, then ends.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// The last seq written per chain, once known.
    cursors: HashMap<AgentId, Seq>,
    /// The same, for others to read.
    written: Written,
}

impl Writer {
    async fn run(
        mut self,
        own: AgentId,
        mut committed: broadcast::Receiver<Committed>,
        mut stopped: oneshot::Receiver<()>,
    ) {
        let mut dirty: BTreeSet<AgentId> = match self.store.chains() {
            Ok(chains) => chains.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "daily files: listing the chains failed; each is written when it next moves");
                BTreeSet::new()
            }
        };
        info!(dir = %self.dir.display(), chains = dirty.len(), "daily files: catching up");
        let mut failed = BTreeSet::new();
        let mut tick = tokio::time::interval(RETRY_EVERY);
        let mut stopping = false;
        loop {
            if !dirty.is_empty() {
                let batch = std::mem::take(&mut dirty);
                let done = tokio::task::spawn_blocking(move || {
                    let failed = self.write(batch);
                    (self, failed)
                })
                .await;
                match done {
                    Ok((writer, f)) => {
                        self = writer;
                        failed.extend(f);
                    }
                    Err(e) => {
                        warn!(error = %e, "daily files: the writer panicked; stopping them");
                        return;
                    }
                }
            }
            if stopping {
                return;
            }
            tokio::select! {
                c = committed.recv() => match c {
                    Ok(c) => { dirty.insert(c.agent); }
                    Err(broadcast::error::RecvError::Lagged(_)) => self.all_chains(&mut dirty),
                    Err(broadcast::error::RecvError::Closed) => stopping = true,
                },
                _ = tick.tick() => {
                    dirty.append(&mut failed);
                    dirty.insert(own.clone());
                }
                _ = &mut stopped => {
                    stopping = true;
                    dirty.insert(own.clone());
                }
            }
            // what else is waiting joins this batch
            loop {
                match committed.try_recv() {
                    Ok(c) => {
                        dirty.insert(c.agent);
                    }
                    Err(broadcast::error::TryRecvError::Lagged(_)) => self.all_chains(&mut dirty),
                    Err(broadcast::error::TryRecvError::Closed) => {
                        stopping = true;
                        break;
                    }
                    Err(broadcast::error::TryRecvError::Empty) => break,
                }
            }
        }
    }

    /// Notices were lost: every chain is looked at.
    fn all_chains(&self, dirty: &mut BTreeSet<AgentId>) {
        match self.store.chains() {
            Ok(chains) => dirty.extend(chains),
            Err(e) => warn!(error = %e, "daily files: listing the chains failed"),
        }
    }

    /// Brings each chain's files up to its head; returns those that failed.
    fn write(&mut self, chains: BTreeSet<AgentId>) -> Vec<AgentId> {
        let mut failed = Vec::new();
        for agent in chains {
            let result = self.catch_up(&agent);
            let mut written = self
                .written
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(e) = result {
                self.metrics.daily_errors.fetch_add(1, Relaxed);
                warn!(%agent, error = %format!("{e:#}"), "daily files: writing failed; tried again shortly");
                // where the files end is read from them again
                self.cursors.remove(&agent);
                written.remove(&agent);
                failed.push(agent);
            } else if let Some(s) = self.cursors.get(&agent) {
                written.insert(agent, *s);
            }
        }
        failed
    }

    fn catch_up(&mut self, agent: &AgentId) -> anyhow::Result<()> {
        let mut last = match self.cursors.get(agent) {
            Some(s) => Some(*s),
            None => last_written(&self.dir, agent)?,
        };
        loop {
            let from = last.map_or(Seq::ZERO, |s| Seq(s.0 + 1));
            let page = self.store.range(agent, from, PAGE)?;
            let Some((newest, _)) = page.last() else {
                break;
            };
            let newest = *newest;
            let mut w = DailyWriter::appending(&self.dir, agent)?;
            for (_, e) in &page {
                w.push(e)?;
            }
            w.finish()?;
            self.metrics
                .daily_lines
                .fetch_add(page.len() as u64, Relaxed);
            last = Some(newest);
            self.cursors.insert(agent.clone(), newest);
            if page.len() < PAGE {
                break;
            }
        }
        Ok(())
    }
}
