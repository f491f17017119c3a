//! Shared helpers for the launcher's integration tests: real QEMU under TCG, the tiny test
//! guest served by the loopback registry (`make guest registry`).

#![allow(dead_code, clippy::unwrap_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const READY: &str = "KUBEVIRT-RS-GUEST-READY";

/// Launch settings for library-level tests: TCG, runtime directories under `run`.
pub fn launch_config(run: &Path) -> launcher::standalone::LaunchConfig {
    let mut paths = launcher::paths::NodePaths::from_process_env();
    paths.run = run.to_path_buf();
    launcher::standalone::LaunchConfig {
        forward_ports: true,
        paths,
        qemu: "qemu-system-x86_64".into(),
        published: Default::default(),
        port_address: "127.0.0.1".into(),
        tcg_tb_size_mib: 64,
        accel: launcher::accel::Accel::Tcg {
            reason: "test".into(),
        },
    }
}

/// Fails with a hint when the registry with the test guests is not there.
pub fn require_registry() {
    let ok = std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5000".parse().unwrap(),
        Duration::from_secs(1),
    )
    .is_ok();
    assert!(
        ok,
        "no registry on 127.0.0.1:5000: run `make guest registry` first (make test does)"
    );
}

pub fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples")
        .join(name)
}

/// Writes `yaml` to a file in `dir` and returns its path.
pub fn manifest(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A `virt-launcher run` child with its own runtime directory and captured output.
pub struct Launcher {
    pub child: Child,
    pub run_dir: tempfile::TempDir,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Launcher {
    pub fn start(vmi: &Path) -> Self {
        Self::start_with(vmi, &[])
    }

    pub fn start_with(vmi: &Path, extra: &[&str]) -> Self {
        require_registry();
        let run_dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_virt-launcher"))
            .args(["run", "--vmi"])
            .arg(vmi)
            .args(extra)
            .env("KUBEVIRT_RS_RUN_DIR", run_dir.path())
            .env("KUBEVIRT_RS_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Self {
            child,
            run_dir,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stdout contains `needle`.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.stdout().contains(needle) {
                return;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "launcher exited ({status}) before {needle:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "no {needle:?} within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// Waits for the launcher to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers finish
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!(
            "launcher still running after {timeout:?}\nstderr:\n{}",
            self.stderr()
        );
    }

    /// Asserts that the launcher left nothing behind: no files, no QEMU.
    pub fn assert_nothing_left(&self) {
        let left: Vec<_> = std::fs::read_dir(self.run_dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "runtime files left behind: {left:?}");
        let marker = self.run_dir.path().display().to_string();
        let qemus = Command::new("pgrep")
            .args(["-f", &marker])
            .output()
            .unwrap();
        assert!(
            qemus.stdout.is_empty(),
            "processes left behind: {}",
            String::from_utf8_lossy(&qemus.stdout)
        );
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(mut r: impl Read + Send + 'static) -> std::sync::Arc<std::sync::Mutex<String>> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}
