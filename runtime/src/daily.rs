//! Daily files: a chain's entries as `<dir>/<agent>/YYYY-MM-DD.jsonl`, one
//! file per UTC day of the entries' `ts` (PROTOCOL §5, daily). The agent's
//! and the gateway's `export --format daily` write through this, and so
//! does the gateway's live `--daily-dir`, which appends and finds where it
//! stopped with [`last_written`].

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use baton_shared::{AgentId, Entry, Seq};

/// Writes entries into `<dir>/<agent>/YYYY-MM-DD.jsonl` files by their `ts`
/// day (PROTOCOL §5, daily).
#[derive(Debug)]
pub struct DailyWriter {
    agent_dir: PathBuf,
    files: std::collections::BTreeMap<String, std::io::BufWriter<std::fs::File>>,
    append: bool,
}

impl DailyWriter {
    pub fn new(dir: &Path, agent: &AgentId) -> anyhow::Result<DailyWriter> {
        let agent_dir = dir.join(agent.as_str());
        std::fs::create_dir_all(&agent_dir)
            .with_context(|| format!("creating {}", agent_dir.display()))?;
        Ok(DailyWriter {
            agent_dir,
            files: std::collections::BTreeMap::new(),
            append: false,
        })
    }

    /// As [`DailyWriter::new`], but appending to the day files already
    /// there instead of replacing them (the gateway's live `--daily-dir`).
    pub fn appending(dir: &Path, agent: &AgentId) -> anyhow::Result<DailyWriter> {
        let mut w = DailyWriter::new(dir, agent)?;
        w.append = true;
        Ok(w)
    }

    pub fn push(&mut self, e: &Entry) -> anyhow::Result<()> {
        let ts = e.header()?.ts;
        let day = baton_shared::export::daily_file_stem(&ts).to_owned();
        if !self.files.contains_key(&day) {
            let path = self.agent_dir.join(format!("{day}.jsonl"));
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .append(self.append)
                .truncate(!self.append)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
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

/// The highest seq in `agent`'s day files under `dir` (`None`: no files).
/// Lines are appended in seq order, so each file's last line holds its
/// highest. A last line cut short (a crash mid-write) is cut off, so the
/// next append starts on a line of its own; a last line that is whole but
/// not an entry is an error naming the file (delete it to have it written
/// again).
pub fn last_written(dir: &Path, agent: &AgentId) -> anyhow::Result<Option<Seq>> {
    let agent_dir = dir.join(agent.as_str());
    let listing = match std::fs::read_dir(&agent_dir) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("listing {}", agent_dir.display())),
    };
    let mut highest = None;
    for item in listing {
        let path = item?.path();
        if path.extension().is_some_and(|x| x == "jsonl") {
            let last =
                last_line_seq(&path).with_context(|| format!("reading {}", path.display()))?;
            highest = highest.max(last);
        }
    }
    Ok(highest)
}

/// The longest line an entry makes: its content, the chain fields, slack.
const MAX_LINE_BYTES: u64 = baton_shared::entry::MAX_CONTENT_BYTES as u64 + 1024;

fn last_line_seq(path: &Path) -> anyhow::Result<Option<Seq>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    let start = len.saturating_sub(MAX_LINE_BYTES + 1);
    f.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    if !tail.ends_with(b"\n") {
        // cut short: keep everything up to the last whole line
        let keep = match tail.iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i as u64 + 1,
            None if start == 0 => 0,
            None => anyhow::bail!("no line end in its last {MAX_LINE_BYTES} bytes"),
        };
        f.set_len(keep)?;
        tail.truncate(usize::try_from(keep - start)?);
    }
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let line = match body.iter().rposition(|b| *b == b'\n') {
        Some(i) => &body[i + 1..],
        None if start == 0 => body,
        None => anyhow::bail!("a last line longer than {MAX_LINE_BYTES} bytes"),
    };
    if line.is_empty() {
        return Ok(None);
    }
    let parsed = baton_shared::verify::parse_line(line)
        .map_err(|(_, reason)| anyhow::anyhow!("its last line is not an entry: {reason}"))?;
    Ok(Some(parsed.header.seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` entries, three to a day.
    fn chain(n: u64) -> Vec<Entry> {
        let agent = AgentId::new("pi-1").unwrap();
        let event = baton_shared::EventName::new("note").unwrap();
        let mut prev = baton_shared::Hash::ZERO;
        (1..=n)
            .map(|seq| {
                let stamp = baton_shared::entry::Stamp {
                    agent: &agent,
                    seq: Seq(seq),
                    unix_ms: 1_796_000_000_000 + i64::try_from(seq / 3).unwrap() * 86_400_000,
                    clock: None,
                };
                let data = baton_shared::json::Value::Object(Default::default());
                let content =
                    baton_shared::entry::build_content(&stamp, &event, None, &data).unwrap();
                let e = Entry::seal(content, prev);
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn appending_continues_where_the_files_end_and_cuts_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("pi-1").unwrap();
        let entries = chain(8);
        assert_eq!(last_written(dir.path(), &agent).unwrap(), None);
        let mut w = DailyWriter::appending(dir.path(), &agent).unwrap();
        for e in &entries[..5] {
            w.push(e).unwrap();
        }
        let files = w.finish().unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(last_written(dir.path(), &agent).unwrap(), Some(Seq(5)));

        // a crash mid-line: the torn bytes go, seq 5 is the last again
        let newest = files.last().unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(newest)
            .unwrap();
        std::io::Write::write_all(&mut f, br#"{"seq":6,"ts":"2026"#).unwrap();
        assert_eq!(last_written(dir.path(), &agent).unwrap(), Some(Seq(5)));

        let mut w = DailyWriter::appending(dir.path(), &agent).unwrap();
        for e in &entries[5..] {
            w.push(e).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(last_written(dir.path(), &agent).unwrap(), Some(Seq(8)));

        // the files are exactly what a fresh export writes
        let fresh = tempfile::tempdir().unwrap();
        let mut w = DailyWriter::new(fresh.path(), &agent).unwrap();
        for e in &entries {
            w.push(e).unwrap();
        }
        for path in w.finish().unwrap() {
            let live = dir.path().join("pi-1").join(path.file_name().unwrap());
            assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(live).unwrap());
        }
    }

    #[test]
    fn a_whole_last_line_that_is_not_an_entry_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let agent = AgentId::new("pi-1").unwrap();
        std::fs::create_dir_all(dir.path().join("pi-1")).unwrap();
        std::fs::write(dir.path().join("pi-1/2026-12-01.jsonl"), "not json\n").unwrap();
        let e = last_written(dir.path(), &agent).unwrap_err();
        assert!(format!("{e:#}").contains("2026-12-01.jsonl"), "{e:#}");
    }
}
