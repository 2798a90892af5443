//! A sled database whose flush truly reaches the disk.
//!
//! sled 0.34's `flush` on Linux writes its buffers with `sync_file_range`, which neither
//! writes the file's metadata nor asks the device to empty its cache, and syncs the file only
//! every 500 ms from a background thread: an acknowledged write could vanish with the power.
//! [`DurableDb::sync`] follows sled's flush with `fdatasync` of sled's data file (`db` in the
//! database folder), which does both; the folder is synced once at open so that the files sled
//! created are found after a power loss too.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

/// A sled database and a handle on its data file; cheap to clone.
#[derive(Clone, Debug)]
pub struct DurableDb {
    db: sled::Db,
    file: Arc<File>,
}

/// How long [`DurableDb::open`] waits for another handle in this process to release the
/// database folder.
pub const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl DurableDb {
    /// Opens (or creates) the database in `dir`.
    ///
    /// sled locks the folder for as long as its database is open, and its background flusher
    /// may hold a just-dropped database for a moment; a reopen in the same process (a restart
    /// in a test, a node restarted in place) waits up to [`REOPEN_WAIT`] for the lock.
    pub fn open(dir: &Path) -> Result<Self, sled::Error> {
        let started = std::time::Instant::now();
        let db = loop {
            let opened = sled::Config::new()
                .path(dir)
                .mode(sled::Mode::HighThroughput)
                .open();
            match opened {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && started.elapsed() < REOPEN_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        };
        let file = File::open(dir.join("db"))?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            db,
            file: Arc::new(file),
        })
    }

    /// The database, to open trees in it.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Makes everything written to the database so far durable across power loss: sled's
    /// flush, then `fdatasync` of its data file. Blocks for the disk.
    pub fn sync(&self) -> Result<(), sled::Error> {
        self.db.flush()?;
        self.file.sync_data()?;
        Ok(())
    }
}
