//! The pod runner's shim for one OCI container: what stays behind while the container runs,
//! so that its exit code is known even when the runner is gone.
//!
//! `kubevirt-rs-shim INIT_FILE RUNTIME ARGS...`:
//! 1. becomes a child subreaper and ignores SIGTERM (the runner signals the container, not
//!    the shim);
//! 2. runs `RUNTIME ARGS...`, which must be `runc ... run --detach --pid-file FILE ID`
//!    (the runtime creates the container and exits; the container's first process is then
//!    re-parented to this shim);
//! 3. writes `INIT_FILE`: that process's pid and its start time in clock ticks after boot,
//!    which the runner signals;
//! 4. waits for it and exits with its status (128 + signal when it was killed), which the
//!    runner's wrapper records; then asks the runtime to delete the container.
//!
//! The shim uses std and libc only: one small process per container.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(init_file), Some(runtime)) = (args.first(), args.get(1)) else {
        eprintln!("usage: kubevirt-rs-shim INIT_FILE RUNTIME ARGS...");
        return ExitCode::from(2);
    };
    let runtime_args = &args[2..];
    let Some(pid_file) = value_after(runtime_args, "--pid-file") else {
        eprintln!("kubevirt-rs-shim: the runtime's arguments name no --pid-file");
        return ExitCode::from(2);
    };
    let Some(id) = runtime_args.last() else {
        return ExitCode::from(2);
    };
    // SAFETY: plain system calls with constant arguments.
    #[allow(unsafe_code)]
    unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let created = Command::new(runtime).args(runtime_args).status();
    match created {
        Ok(status) if status.success() => {}
        Ok(status) => {
            eprintln!("kubevirt-rs-shim: {runtime} run failed: {status}");
            return ExitCode::from(128);
        }
        Err(e) => {
            eprintln!("kubevirt-rs-shim: starting {runtime}: {e}");
            return ExitCode::from(128);
        }
    }
    let pid: Option<i32> = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    let Some(pid) = pid else {
        eprintln!("kubevirt-rs-shim: {pid_file} names no process");
        delete(runtime, runtime_args, id);
        return ExitCode::from(128);
    };
    let ticks = start_ticks(pid).unwrap_or_default();
    let tmp = format!("{init_file}.tmp");
    if std::fs::write(&tmp, format!("{pid} {ticks}\n"))
        .and_then(|()| std::fs::rename(&tmp, init_file))
        .is_err()
    {
        eprintln!("kubevirt-rs-shim: cannot write {init_file}");
    }
    let code = wait_for(pid);
    delete(runtime, runtime_args, id);
    ExitCode::from(code)
}

/// Reaps children (the container's first process and anything re-parented here) until
/// `pid` ends; its exit code, 128 + signal when killed.
fn wait_for(pid: i32) -> u8 {
    loop {
        let mut status = 0;
        // SAFETY: `status` is a valid pointer for the call's duration.
        #[allow(unsafe_code)]
        let reaped = unsafe { libc::waitpid(-1, &mut status, 0) };
        if reaped < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            // No children left: the container ended unseen (it cannot; say so).
            return 255;
        }
        if reaped != pid {
            continue;
        }
        if libc::WIFEXITED(status) {
            return u8::try_from(libc::WEXITSTATUS(status)).unwrap_or(255);
        }
        if libc::WIFSIGNALED(status) {
            return u8::try_from(128 + libc::WTERMSIG(status)).unwrap_or(255);
        }
    }
}

/// `runc [global options] delete ID`: the global options are those before `run`.
fn delete(runtime: &str, args: &[String], id: &str) {
    let globals = args.iter().take_while(|a| *a != "run");
    let _ = Command::new(runtime)
        .args(globals)
        .args(["delete", "--force", id])
        .status();
}

fn value_after<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// Field 22 of `/proc/<pid>/stat`.
fn start_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}
