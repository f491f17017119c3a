//! The command line as a user meets it: help, and one line with a non-zero status for
//! every mistake.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{BIN, Scratch};

/// A run that should end at once: its status and its stdout and stderr.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Run {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("KUBEVIRT_RS_DATA_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kubevirt-rs {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child.stdout.unwrap().read_to_string(&mut stdout).unwrap();
    child.stderr.unwrap().read_to_string(&mut stderr).unwrap();
    Run {
        code: status.code(),
        stdout,
        stderr,
    }
}

#[test]
fn help_goes_to_stdout_with_status_0() {
    let top = run(&["--help"]);
    assert_eq!(top.code, Some(0));
    assert!(
        top.stdout.contains("server  Serve the Kubernetes API"),
        "{}",
        top.stdout
    );
    let server = run(&["server", "--help"]);
    assert_eq!(server.code, Some(0));
    for flag in [
        "--data-dir <DIR>",
        "--listen <ADDR:PORT>",
        "--advertise-host <HOST>",
    ] {
        assert!(server.stdout.contains(flag), "{flag}:\n{}", server.stdout);
    }
    assert!(server.stderr.is_empty());
}

#[test]
fn a_bad_flag_is_one_line_and_status_2() {
    for (args, want) in [
        (
            &["server", "--bogus"][..],
            "kubevirt-rs: unexpected argument '--bogus' found (see 'kubevirt-rs server --help')\n",
        ),
        (
            &["serve"],
            "kubevirt-rs: unrecognized subcommand 'serve'; a similar subcommand exists: \
             'server' (see 'kubevirt-rs --help')\n",
        ),
    ] {
        let got = run(args);
        assert_eq!(got.code, Some(2), "{args:?}");
        assert_eq!(got.stderr, want, "{args:?}");
        assert!(got.stdout.is_empty(), "{args:?}");
    }
}

/// `server` on `data_dir`: one line on stderr, status 1, before listening.
fn refused(data_dir: &str) -> String {
    let got = run(&["server", "--data-dir", data_dir, "--listen", "127.0.0.1:0"]);
    assert_eq!(got.code, Some(1), "{data_dir}: {}", got.stderr);
    assert_eq!(got.stderr.lines().count(), 1, "{data_dir}: {}", got.stderr);
    assert!(got.stdout.is_empty());
    got.stderr
}

#[test]
fn a_data_dir_that_is_a_file_or_unwritable_is_one_line_and_status_1() {
    let scratch = Scratch::new();
    let file = scratch.path("file");
    std::fs::write(&file, "kept").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        refused(file),
        format!("kubevirt-rs: {file} is not a directory\n")
    );
    assert_eq!(
        refused(&format!("{file}/data")),
        format!(
            "kubevirt-rs: creating the data directory {file}/data: Not a directory (os error 20)\n"
        )
    );
    assert_eq!(std::fs::read(file).unwrap(), b"kept");
    // Nobody, root included, may make a directory in sysfs's root (EACCES, EPERM or EROFS).
    let unwritable = refused("/sys/kubevirt-rs-test");
    assert!(
        unwritable.starts_with("kubevirt-rs: creating the data directory /sys/kubevirt-rs-test: "),
        "{unwritable}"
    );
}

#[test]
fn a_component_that_cannot_run_stops_the_server_with_one_line() {
    // A node name the API refuses: the pod runner cannot register its node and stops, and
    // the server does not run on without it.
    let scratch = Scratch::new();
    let data = scratch.data();
    let port = crate::support::free_port().to_string();
    let r = run(&[
        "server",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--node-name",
        "Not_A_Name",
    ]);
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    let last = r.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("kubevirt-rs: the component ") && last.contains(" stopped: "),
        "{}",
        r.stderr
    );
    assert!(last.contains("the next start adopts them"), "{last}");
}
