//! One daemon per data directory: a lock file held for the process's life.
//!
//! The lock (`flock`, through `File::try_lock`) goes with the process,
//! however it ends, so tools can ask whether a daemon is running on a
//! directory without trusting a status file it may have left behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

/// Held while the daemon runs; dropping it releases the lock.
#[derive(Debug)]
pub struct InstanceLock {
    _file: File,
    path: PathBuf,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another {daemon} is running on this data directory (it holds {})", .path.display())]
    Held { daemon: &'static str, path: PathBuf },
    #[error("locking {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn lock_path(data_dir: &Path, daemon: &str) -> PathBuf {
    data_dir.join(format!("{daemon}.lock"))
}

fn open(path: &Path) -> Result<File, LockError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| LockError::Io {
            path: path.to_owned(),
            source,
        })
}

/// Takes `<data_dir>/<daemon>.lock`, or says who holds it.
pub fn acquire(data_dir: &Path, daemon: &'static str) -> Result<InstanceLock, LockError> {
    let path = lock_path(data_dir, daemon);
    let file = open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(InstanceLock { _file: file, path }),
        Err(TryLockError::WouldBlock) => Err(LockError::Held { daemon, path }),
        Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

/// Whether a daemon holds the lock of `data_dir` now (`false` when the
/// directory has none: nothing ever ran there).
pub fn running(data_dir: &Path, daemon: &'static str) -> bool {
    let path = lock_path(data_dir, daemon);
    let Ok(file) = File::open(&path) else {
        return false;
    };
    matches!(file.try_lock_shared(), Err(TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_holder_at_a_time_and_running_tells() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!running(dir.path(), "baton-test"));
        let held = acquire(dir.path(), "baton-test").unwrap();
        assert!(running(dir.path(), "baton-test"));
        let second = acquire(dir.path(), "baton-test").unwrap_err();
        assert!(
            second.to_string().contains("another baton-test is running"),
            "{second}"
        );
        drop(held);
        assert!(!running(dir.path(), "baton-test"));
        acquire(dir.path(), "baton-test").unwrap();
    }
}
