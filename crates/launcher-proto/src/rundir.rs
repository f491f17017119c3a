//! A launcher's run directory as the node's components reach it.
//!
//! The launcher writes anything it likes there, links included, and a launcher is only
//! as trusted as the guest it runs. So a component never follows a path below the run
//! directory as the kernel would: each is opened beneath the directory with `openat2`,
//! refusing links (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`), and
//! a socket is then connected through `/proc/self/fd/N` of that open file, so no link
//! planted between the check and the connect can lead elsewhere. That also lifts the
//! 108-byte limit of a socket's path: a pod's directory on the node is a long one.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, SFlag};
use tokio::net::UnixStream;

/// A launcher's run directory: where it is on the node, and where the launcher itself
/// sees it (the same path for a launcher that runs as a host process).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunDir {
    node: PathBuf,
    launcher: PathBuf,
}

impl RunDir {
    /// A run directory the launcher sees at the same path (a host process).
    pub fn shared(dir: &Path) -> Self {
        Self {
            node: dir.to_owned(),
            launcher: dir.to_owned(),
        }
    }

    /// A run directory at `node` on the node that the launcher's pod mounts at `launcher`.
    pub fn mounted(node: PathBuf, launcher: PathBuf) -> Self {
        Self { node, launcher }
    }

    /// The control socket of the launcher of VMI `uid`.
    pub fn socket(&self, uid: &str) -> RunPath {
        RunPath {
            root: self.node.clone(),
            relative: Path::new("sockets").join(format!("{uid}.sock")),
        }
    }

    /// A path the launcher reported (as it sees it), reached from the node; `None` when
    /// it is not plainly below the run directory.
    pub fn reported(&self, path: &Path) -> Option<RunPath> {
        let relative = path.strip_prefix(&self.launcher).ok()?;
        let plain = relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        (plain && !relative.as_os_str().is_empty()).then(|| RunPath {
            root: self.node.clone(),
            relative: relative.to_owned(),
        })
    }
}

/// A file below a launcher's run directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunPath {
    root: PathBuf,
    relative: PathBuf,
}

impl std::fmt::Display for RunPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.root.join(&self.relative).display())
    }
}

impl RunPath {
    /// The same name with another extension (`<uid>.sock` -> `<uid>.exit`).
    pub fn with_extension(&self, extension: &str) -> Self {
        Self {
            root: self.root.clone(),
            relative: self.relative.with_extension(extension),
        }
    }

    fn root(&self) -> std::io::Result<OwnedFd> {
        let fd = nix::fcntl::open(
            &self.root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(fd)
    }

    /// Opens the file beneath the root, no link followed.
    fn open(&self, flags: OFlag) -> std::io::Result<OwnedFd> {
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        Ok(openat2(self.root()?, &self.relative, how)?)
    }

    /// Connects to the socket (only a socket: nothing else is opened through it).
    pub async fn connect(&self) -> std::io::Result<UnixStream> {
        let fd = self.open(OFlag::O_PATH)?;
        expect_kind(&fd, SFlag::S_IFSOCK, "a socket")?;
        let stream = UnixStream::connect(format!("/proc/self/fd/{}", fd.as_raw_fd())).await;
        drop(fd);
        stream
    }

    /// Reads the file, at most `limit` bytes: a regular file only (a FIFO would block the
    /// reader, a device node would be the node's device), opened without blocking.
    pub fn read(&self, limit: u64) -> std::io::Result<Vec<u8>> {
        let fd = self.open(OFlag::O_RDONLY | OFlag::O_NONBLOCK)?;
        expect_kind(&fd, SFlag::S_IFREG, "a regular file")?;
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(limit)
            .read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// Removes the file (never what a link in its place points to).
    pub fn remove(&self) -> std::io::Result<()> {
        let (Some(parent), Some(name)) = (self.relative.parent(), self.relative.file_name()) else {
            return Ok(());
        };
        let dir = RunPath {
            root: self.root.clone(),
            relative: parent.to_owned(),
        }
        .open(OFlag::O_PATH | OFlag::O_DIRECTORY)?;
        nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir)?;
        Ok(())
    }
}

/// Fails unless the open file is of `kind`.
fn expect_kind(fd: &OwnedFd, kind: SFlag, what: &str) -> std::io::Result<()> {
    let stat = nix::sys::stat::fstat(fd)?;
    if SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == kind {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not {what}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn a_socket_is_reached_beneath_its_directory_and_never_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join(
            "pods/0123456789abcdef0123456789abcdef0123/volumes/kubernetes.io~empty-dir/private",
        );
        std::fs::create_dir_all(node.join("sockets")).unwrap();
        let run = RunDir::mounted(node.clone(), "/var/run/kubevirt-private".into());
        // Bound at a short path and moved in: the launcher binds its own, shorter, path.
        let listener = tokio::net::UnixListener::bind(dir.path().join("u.sock")).unwrap();
        std::fs::rename(dir.path().join("u.sock"), node.join("sockets/u.sock")).unwrap();
        assert!(
            node.join("sockets/u.sock").as_os_str().len() > 108,
            "a path longer than sun_path"
        );
        let socket = run.socket("u");
        let (connected, accepted) = tokio::join!(socket.connect(), listener.accept());
        connected.unwrap();
        accepted.unwrap();

        // A socket elsewhere on the node, and links to it in the run directory.
        let outside = dir.path().join("node.sock");
        let _node_listener = tokio::net::UnixListener::bind(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, node.join("sockets/v.sock")).unwrap();
        std::os::unix::fs::symlink("../../../../../../node.sock", node.join("sockets/w.sock"))
            .unwrap();
        std::os::unix::fs::symlink(dir.path(), node.join("up")).unwrap();
        for planted in ["v", "w"] {
            assert!(run.socket(planted).connect().await.is_err(), "{planted}");
        }
        let through_dir = run
            .reported(Path::new("/var/run/kubevirt-private/up/node.sock"))
            .unwrap();
        assert!(through_dir.connect().await.is_err());
        assert!(
            run.reported(Path::new("/var/run/kubevirt-private/../x"))
                .is_none()
        );
        assert!(run.reported(Path::new("/elsewhere/serial.sock")).is_none());

        // Reading and removing do not follow links either.
        std::fs::write(dir.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), node.join("sockets/x.exit")).unwrap();
        assert!(run.socket("x").with_extension("exit").read(1024).is_err());
        run.socket("x").with_extension("exit").remove().unwrap();
        assert!(
            dir.path().join("secret").exists(),
            "the link went, not its target"
        );
        std::fs::write(node.join("sockets/y.exit"), "{}").unwrap();
        assert_eq!(
            run.socket("y").with_extension("exit").read(1024).unwrap(),
            b"{}"
        );
    }
}
