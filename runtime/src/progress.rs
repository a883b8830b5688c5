//! Progress of long work (exports, verification, ingest, a simulator's
//! start-up) on a terminal: a bar on stderr while it runs, cleared when it
//! ends. When stderr is not a terminal (a pipe, a log, systemd) nothing is
//! drawn at all, so scripts and journals see only the commands' output.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressFinish, ProgressStyle};

/// One piece of long work's progress; cheap to advance (atomic counters,
/// drawn at most 10 times a second).
#[derive(Debug)]
pub struct Progress(ProgressBar);

impl Progress {
    /// Work of `total` steps (`None`: not known beforehand, so a count and
    /// a rate), described by `what` ("verifying pi-017", "entries").
    pub fn new(what: &str, total: Option<u64>) -> Progress {
        // cleared however it ends, an early return with an error too
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(10))
            .with_finish(ProgressFinish::AndClear);
        let template = if total.is_some() {
            "{msg} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}"
        } else {
            "{spinner} {msg} {human_pos} {per_sec} {elapsed}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        Progress(bar)
    }

    /// Work through `total` bytes (a file read), described by `what`.
    pub fn bytes(what: &str, total: u64) -> Progress {
        let p = Progress::new(what, Some(total));
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            p.0.set_style(style.progress_chars("=> "));
        }
        p
    }

    /// Waiting on something that says nothing until it is done (a request
    /// to a gateway): a spinner and the time taken so far.
    pub fn spinning(what: &str) -> Progress {
        let p = Progress::new(what, None);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
            p.0.set_style(style);
        }
        p.0.enable_steady_tick(std::time::Duration::from_millis(100));
        p
    }

    /// Progress nobody sees (work done for HTTP, say).
    pub fn hidden() -> Progress {
        Progress(ProgressBar::hidden())
    }

    /// The work turned out to have `total` steps.
    pub fn set_total(&self, total: u64) {
        self.0.set_length(total);
    }

    /// Whether anything is drawn (stderr is a terminal).
    pub fn shown(&self) -> bool {
        !self.0.is_hidden()
    }

    pub fn inc(&self, steps: u64) {
        self.0.inc(steps);
    }

    pub fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    /// Runs `f` (which prints) with the bar out of the way.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }

    /// A new description of the work now under way.
    pub fn describe(&self, what: &str) {
        self.0.set_message(what.to_owned());
    }
}
