//! Cross-process exclusion for the files that several `idmatch serve` processes may
//! share (the budget state and the sharded runs, README "Several server processes"):
//! an exclusive advisory lock (`flock` on Unix) on a lock file of its own, held while
//! a file is read, changed and replaced, and released when the returned handle drops.
//!
//! Invariant: every read-modify-write of a shared file happens under its lock, so
//! no process acts on a copy another process has already replaced. The lock is
//! advisory: only idmatch processes honour it, and it is only as good as the file
//! system's locking (local disks, and NFS v4 with working lock support).

use std::fs::{File, OpenOptions};
use std::path::Path;

/// Opens (creating it, mode 0600) the lock file `path` and blocks until this
/// handle holds its exclusive lock. Dropping the handle releases it.
pub(crate) fn exclusive(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    file.lock()?;
    Ok(file)
}
