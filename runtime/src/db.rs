//! The reopenable redb handle both daemons keep their data in, with an
//! injectable storage backend.
//!
//! redb refuses every transaction after an I/O error until the file is
//! closed and opened again; a daemon that cannot reopen crash-loops. So
//! each store sits behind a [`Reopenable`]: readers take an `Arc` of the
//! open database for one transaction, and [`Reopenable::reopen`] closes it
//! (waiting a moment for those readers) and opens the file again. How the
//! file is opened is an [`Opener`]: the production one ([`file_opener`]),
//! or one over a fault-injecting backend ([`faults::Flaky`]), so the
//! gateway's store and the agent's ledger are tested against the same
//! injected disk failures.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use redb::{Database, DatabaseError};

/// Opens the database file (again).
pub type Opener = Arc<dyn Fn(&Path) -> Result<Database, DatabaseError> + Send + Sync>;

/// Whether a storage error means the file's contents are damaged (as
/// opposed to a disk failing now, which a retry or reopen may get past).
pub fn storage_damage(e: &redb::StorageError) -> bool {
    match e {
        redb::StorageError::Corrupted(_) => true,
        redb::StorageError::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

/// Whether opening failed because the file is damaged: corruption, a
/// repair that gave up, or a format version that no Baton wrote.
pub fn open_damage(e: &redb::DatabaseError) -> bool {
    match e {
        redb::DatabaseError::Storage(s) => storage_damage(s),
        redb::DatabaseError::RepairAborted | redb::DatabaseError::UpgradeRequired(_) => true,
        _ => false,
    }
}

/// The damage a panic inside redb stands for (caught with
/// `catch_unwind` around opening and checking a store), in words.
pub fn opening_panic(panic: &(dyn std::any::Any + Send)) -> String {
    let what = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic");
    format!("the database code failed reading it: {what}")
}

/// Whether opening a table failed because the file is damaged: our tables'
/// types never change, so a mismatch is a damaged table directory.
pub fn table_damage(e: &redb::TableError) -> bool {
    match e {
        redb::TableError::Storage(s) => storage_damage(s),
        redb::TableError::TableTypeMismatch { .. }
        | redb::TableError::TableIsMultimap(_)
        | redb::TableError::TableIsNotMultimap(_)
        | redb::TableError::TypeDefinitionChanged { .. } => true,
        _ => false,
    }
}

/// The production opener: the file, with a page cache of `cache_bytes`
/// (redb's default grows to 1 GiB; the daemons write and rarely re-read).
pub fn file_opener(cache_bytes: usize) -> Opener {
    Arc::new(move |path: &Path| Database::builder().set_cache_size(cache_bytes).create(path))
}

/// A redb database that can be closed and opened again in place.
pub struct Reopenable {
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    opener: Opener,
}

impl std::fmt::Debug for Reopenable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reopenable")
            .field("path", &self.path)
            .field("open", &self.get().is_some())
            .finish()
    }
}

/// How long [`Reopenable::reopen`] waits for readers still holding the old
/// handle: 200 tries, 10 ms apart.
const REOPEN_TRIES: usize = 200;
const REOPEN_PAUSE: Duration = Duration::from_millis(10);

impl Reopenable {
    /// Opens (or creates) the database at `path` through `opener`.
    pub fn open(path: &Path, opener: Opener) -> Result<Reopenable, DatabaseError> {
        let db = opener(path)?;
        Ok(Reopenable {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_owned(),
            opener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open database, or `None` while closed (a reopen failed).
    pub fn get(&self) -> Option<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The open database; a handle left closed by a failed reopen is
    /// opened again first.
    pub fn get_or_reopen(&self) -> Result<Arc<Database>, DatabaseError> {
        if let Some(db) = self.get() {
            return Ok(db);
        }
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = slot.as_ref() {
            return Ok(Arc::clone(db));
        }
        let db = Arc::new(self.open_waiting()?);
        *slot = Some(Arc::clone(&db));
        Ok(db)
    }

    /// Closes the database and opens the file again (after an I/O error).
    /// What was committed is there; what failed to commit is not. Readers
    /// still holding the old handle are waited for (about 2 s at most);
    /// on failure the handle stays closed and the next use tries again.
    pub fn reopen(&self) -> Result<(), DatabaseError> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The old handle must be gone before the file can be opened again.
        *slot = None;
        *slot = Some(Arc::new(self.open_waiting()?));
        Ok(())
    }

    fn open_waiting(&self) -> Result<Database, DatabaseError> {
        let mut tries = 0;
        loop {
            match (self.opener)(&self.path) {
                Err(DatabaseError::DatabaseAlreadyOpen) if tries < REOPEN_TRIES => {
                    tries += 1;
                    std::thread::sleep(REOPEN_PAUSE);
                }
                other => return other,
            }
        }
    }
}

/// Storage faults on demand, for tests of what a failing disk does.
pub mod faults {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::backends::FileBackend;
    use redb::{BackendError, Database, StorageBackend};

    use super::Opener;

    /// A redb backend over the real file whose writes, length changes and
    /// syncs fail with an I/O error while its switch is on (reads go on).
    #[derive(Debug)]
    pub struct Flaky {
        inner: FileBackend,
        failing: Arc<AtomicBool>,
    }

    /// An opener over [`Flaky`] backends, and the switch they share: set it
    /// and every write and sync fails until it is cleared.
    pub fn flaky_opener() -> (Opener, Arc<AtomicBool>) {
        let failing = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&failing);
        let opener: Opener = Arc::new(move |path: &std::path::Path| {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map_err(redb::DatabaseError::from)?;
            let inner = FileBackend::new(file)?;
            Database::builder().create_with_backend(Flaky {
                inner,
                failing: Arc::clone(&flag),
            })
        });
        (opener, failing)
    }

    impl Flaky {
        fn check(&self) -> Result<(), std::io::Error> {
            if self.failing.load(Ordering::SeqCst) {
                Err(std::io::Error::other("injected I/O error"))
            } else {
                Ok(())
            }
        }
    }

    impl StorageBackend for Flaky {
        fn len(&self) -> Result<u64, std::io::Error> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
            self.check()?;
            self.inner.write(offset, data)
        }
        fn close(&self) -> Result<(), std::io::Error> {
            self.inner.close()
        }
        fn try_lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_range(start, end)
        }
        fn try_lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(start, end)
        }
        fn lock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), BackendError> {
            self.inner.lock_range(start, end)
        }
        fn lock_shared_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), BackendError> {
            self.inner.lock_shared_range(start, end)
        }
        fn unlock_range(
            &self,
            start: std::ops::Bound<u64>,
            end: std::ops::Bound<u64>,
        ) -> Result<(), BackendError> {
            self.inner.unlock_range(start, end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};
    use std::sync::atomic::Ordering;

    const T: TableDefinition<'_, u64, u64> = TableDefinition::new("t");

    fn put(db: &Database, k: u64) -> Result<(), redb::Error> {
        let txn = db.begin_write()?;
        txn.open_table(T)?.insert(k, k)?;
        txn.commit()?;
        Ok(())
    }

    fn keys(db: &Database) -> Vec<u64> {
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(T).unwrap();
        redb::ReadableTable::iter(&t)
            .unwrap()
            .map(|r| r.unwrap().0.value())
            .collect()
    }

    #[test]
    fn after_an_io_error_a_reopen_serves_what_was_committed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (opener, failing) = faults::flaky_opener();
        let h = Reopenable::open(&dir.path().join("x.redb"), opener).unwrap();
        put(&h.get().unwrap(), 1).unwrap();
        failing.store(true, Ordering::SeqCst);
        assert!(put(&h.get().unwrap(), 2).is_err());
        failing.store(false, Ordering::SeqCst);
        // redb refuses the old handle from here on
        assert!(put(&h.get().unwrap(), 3).is_err());
        h.reopen().unwrap();
        put(&h.get().unwrap(), 4).unwrap();
        assert_eq!(keys(&h.get().unwrap()), [1, 4]);
    }

    #[test]
    fn a_reopen_waits_for_a_reader_of_the_old_handle() {
        let dir = tempfile::tempdir().unwrap();
        let h =
            Arc::new(Reopenable::open(&dir.path().join("y.redb"), file_opener(1 << 20)).unwrap());
        put(&h.get().unwrap(), 7).unwrap();
        let reader = h.get().unwrap();
        let released = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(reader);
        });
        h.reopen().unwrap();
        released.join().unwrap();
        assert_eq!(keys(&h.get_or_reopen().unwrap()), [7]);
    }
}
