//! File identity: which paths name the same file, whatever way they are
//! written (`job.jsonl`, `./job.jsonl`, an absolute path, a symlink, or on
//! unix a hard link).
//!
//! Owns: canonical paths, derived file names and file identity. Never:
//! creating, writing or removing a file.

use std::io;
use std::path::{Path, PathBuf};

/// Symlinks followed at most while resolving a path that does not exist
/// yet, as the kernel's own limit does (a loop must end).
const MAX_LINKS: usize = 40;

/// The absolute path of `path` with every symlink resolved, also when the
/// file itself does not exist yet (its directory must): a dangling symlink
/// resolves to where it points, so the file it will create is named.
pub fn canonical(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_owned();
    for _ in 0..MAX_LINKS {
        match std::fs::canonicalize(&path) {
            Ok(resolved) => return Ok(resolved),
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            Err(_) => {}
        }
        let name = path
            .file_name()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "a path without a file name")
            })?
            .to_owned();
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        match std::fs::read_link(&path) {
            // A dangling symlink: resolve its target, relative to its directory.
            Ok(target) => path = parent.join(target),
            Err(_) => return Ok(std::fs::canonicalize(&parent)?.join(name)),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

/// `path` with `suffix` appended to its file name: `s.db` + `-wal` →
/// `s.db-wal` (how SQLite and the run lock name their side files).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether `a` and `b` name the same file: the same canonical path, or (on
/// unix, when both exist) the same device and inode, which also catches a
/// hard link. A path that cannot be resolved is compared as written.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return (x.dev(), x.ino()) == (y.dev(), y.ino());
        }
    }
    match (canonical(a), canonical(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_links_and_missing_files_resolve_to_one_path() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("state.db");
        let expected = std::fs::canonicalize(dir.path()).unwrap().join("state.db");
        // Not created yet: resolved through its directory.
        assert_eq!(canonical(&real).unwrap(), expected);
        assert_eq!(
            canonical(&dir.path().join(".").join("state.db")).unwrap(),
            expected
        );
        #[cfg(unix)]
        {
            let link = dir.path().join("link.db");
            std::os::unix::fs::symlink("state.db", &link).unwrap();
            // Dangling, then live.
            assert_eq!(canonical(&link).unwrap(), expected);
            std::fs::write(&real, "x").unwrap();
            assert_eq!(canonical(&link).unwrap(), expected);
            assert!(same_file(&link, &real));
            let hard = dir.path().join("hard.db");
            std::fs::hard_link(&real, &hard).unwrap();
            assert!(same_file(&hard, &real));
            assert!(!same_file(&hard, &dir.path().join("other.db")));
            let looped = dir.path().join("loop");
            std::os::unix::fs::symlink("loop", &looped).unwrap();
            assert!(canonical(&looped).is_err());
        }
    }

    #[test]
    fn suffixes_go_on_the_file_name() {
        assert_eq!(
            with_suffix(Path::new("a/s.db"), "-wal"),
            PathBuf::from("a/s.db-wal")
        );
    }
}
