//! The run lock: one run at a time per state file.
//!
//! The lock is an OS file lock on `<state>.lock`, which holds the holder's
//! pid and start time for the error message. The OS releases it when the
//! holder dies, however it dies (`kill -9` included), so a stale lock never
//! needs cleaning up: the next run simply takes it.
//!
//! The lock file is named after the state file's canonical path, so a
//! symlink to the state file, or another spelling of its path, finds the
//! same lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another live process holds it.
    #[error("state file {} is in use by another keyfan run ({holder}); wait for it to finish or use another --state", state.display())]
    Held {
        /// The state file.
        state: PathBuf,
        /// What the holder wrote: pid and start time.
        holder: String,
    },
    /// The lock file could not be opened or locked.
    #[error("failed to lock {}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A held run lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes the lock of the state file at `state` (by its canonical path).
    pub fn acquire(state: &Path) -> Result<RunLock, LockError> {
        let canonical = crate::paths::canonical(state).map_err(|source| LockError::Io {
            path: state.to_owned(),
            source,
        })?;
        let path = lock_path(&canonical);
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(LockError::Held {
                    state: state.to_owned(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        let me = format!(
            "pid {}, started {}",
            std::process::id(),
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        file.flush().map_err(io)?;
        Ok(RunLock { _file: file })
    }
}

/// `<state>.lock`, for the state file's canonical path.
pub fn lock_path(state: &Path) -> PathBuf {
    crate::paths::with_suffix(state, ".lock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let first = RunLock::acquire(&state).unwrap();
        let message = RunLock::acquire(&state).unwrap_err().to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("state.db"), "{message}");
        drop(first);
        RunLock::acquire(&state).expect("free again once the holder is gone");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_to_the_state_file_finds_the_same_lock() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state.db");
        let link = dir.path().join("link.db");
        // Dangling until a run creates the state file: it must work already.
        std::os::unix::fs::symlink("state.db", &link).unwrap();
        let first = RunLock::acquire(&state).unwrap();
        assert!(matches!(
            RunLock::acquire(&link),
            Err(LockError::Held { .. })
        ));
        drop(first);
        let through_link = RunLock::acquire(&link).unwrap();
        assert!(matches!(
            RunLock::acquire(&state),
            Err(LockError::Held { .. })
        ));
        drop(through_link);
    }
}
