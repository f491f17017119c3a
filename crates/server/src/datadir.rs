//! The data directory and the lock that gives one server at a time its use.
//!
//! Layout, all private to the user running the server:
//! ```text
//! DIR/lock              flock held while serving; holds the server's pid
//! DIR/tls/              CA, server, admin and front-proxy client certificates and keys;
//!                       ca.crt is what aggregated servers and webhooks trust
//! DIR/token             the admin bearer token
//! DIR/kubeconfig        admin kubeconfig, rewritten at each start
//! DIR/db/state.sqlite   the store
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use crate::files::{self, FileError};

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("another server is using {} ({})", dir.display(), holder(*pid))]
    Locked { dir: PathBuf, pid: Option<u32> },
    #[error("locking {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    File(#[from] FileError),
}

fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("pid {pid}"),
        None => "pid unknown".to_owned(),
    }
}

/// A locked data directory. The lock lasts as long as this value (or the process).
#[derive(Debug)]
pub struct DataDir {
    root: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    /// Creates `root` if needed and takes its lock, without waiting: if another process
    /// holds it, fails with [`DataDirError::Locked`] naming that process.
    pub fn lock(root: &Path) -> Result<Self, DataDirError> {
        if std::fs::metadata(root).is_ok_and(|m| !m.is_dir()) {
            return Err(DataDirError::NotADirectory {
                dir: root.to_owned(),
            });
        }
        files::create_private_dir(root).map_err(|e| FileError {
            action: "creating the data directory",
            ..e
        })?;
        let path = root.join("lock");
        // Not truncated on open: until we hold the lock, the pid in it is the holder's.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(files::PRIVATE)
            .open(&path)
            .map_err(|e| FileError::new("opening", &path, e))?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(DataDirError::Locked {
                    dir: root.to_owned(),
                    pid,
                });
            }
            Err((_, source)) => return Err(DataDirError::Lock { path, source }),
        };
        let record = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.sync_all()
        };
        record(&mut lock).map_err(|e| FileError::new("writing", &path, e))?;
        Ok(Self {
            root: root.to_owned(),
            _lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tls(&self) -> PathBuf {
        self.root.join("tls")
    }

    pub fn token(&self) -> PathBuf {
        self.root.join("token")
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.root.join("kubeconfig")
    }

    /// The store's database file; its directory is created here.
    pub fn database(&self) -> Result<PathBuf, FileError> {
        let dir = self.root.join("db");
        files::create_private_dir(&dir)?;
        Ok(dir.join("state.sqlite"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        let first = DataDir::lock(&root).unwrap();
        let err = DataDir::lock(&root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "another server is using {} (pid {})",
                root.display(),
                std::process::id()
            )
        );
        drop(first);
        DataDir::lock(&root).unwrap();
    }

    #[test]
    fn a_file_is_not_a_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "kept").unwrap();
        let err = DataDir::lock(&file).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{} is not a directory", file.display())
        );
        let below = file.join("data");
        let err = DataDir::lock(&below).unwrap_err();
        assert_eq!(
            format!("{err}: {}", std::error::Error::source(&err).unwrap()),
            format!(
                "creating the data directory {}: Not a directory (os error 20)",
                below.display()
            )
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"kept");
    }

    #[test]
    fn the_lock_file_holds_the_pid_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lock"), "123456789 and more\n").unwrap();
        let _held = DataDir::lock(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join("lock")).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
