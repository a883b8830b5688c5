//! Daily files: a chain's entries as `<dir>/<agent>/YYYY-MM-DD.jsonl`, one
//! file per UTC day of the entries' `ts` (PROTOCOL §5, daily). The agent's
//! and the gateway's `export --format daily` write through this.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_shared::{AgentId, Entry};

/// Writes entries into `<dir>/<agent>/YYYY-MM-DD.jsonl` files by their `ts`
/// day (PROTOCOL §5, daily).
#[derive(Debug)]
pub struct DailyWriter {
    agent_dir: PathBuf,
    files: std::collections::BTreeMap<String, std::io::BufWriter<std::fs::File>>,
}

impl DailyWriter {
    pub fn new(dir: &Path, agent: &AgentId) -> anyhow::Result<DailyWriter> {
        let agent_dir = dir.join(agent.as_str());
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("creating {}", agent_dir.display()))?;
        Ok(DailyWriter {
            agent_dir,
            files: std::collections::BTreeMap::new(),
        })
    }

    pub fn push(&mut self, e: &Entry) -> anyhow::Result<()> {
        let ts = e.header()?.ts;
        let day = baton_shared::export::daily_file_stem(&ts).to_owned();
        if !self.files.contains_key(&day) {
            let path = self.agent_dir.join(format!("{day}.jsonl"));
            let f = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            self.files.insert(day.clone(), std::io::BufWriter::new(f));
        }
        if let Some(w) = self.files.get_mut(&day) {
            writeln!(w, "{}", e.to_jsonl())?;
        }
        Ok(())
    }

    /// Flushes every file; returns their paths, oldest day first.
    pub fn finish(self) -> anyhow::Result<Vec<PathBuf>> {
        let mut paths = Vec::new();
        for (day, mut w) in self.files {
            w.flush()?;
            paths.push(self.agent_dir.join(format!("{day}.jsonl")));
        }
        Ok(paths)
    }
}
