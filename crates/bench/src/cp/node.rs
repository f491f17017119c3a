//! What the VMs cost on the node, from `/proc`: the server's descendants (per launcher
//! pod: the pod runner's `/bin/sh` wrapper, `virt-launcher`, QEMU and any `qemu-img` it
//! runs), their private memory and CPU time, and the whole machine's busy time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::proc;

/// What a descendant of the server is, by its `comm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Role {
    Launcher,
    Qemu,
    /// The pod runner's `/bin/sh` wrapper, and anything else.
    Other,
}

pub fn role(comm: &str) -> Role {
    let comm = comm.trim();
    if comm.starts_with("qemu-system") {
        Role::Qemu
    } else if comm == "virt-launcher" {
        Role::Launcher
    } else {
        Role::Other
    }
}

/// Every descendant of `pid`, with its role.
pub fn descendants(pid: u32) -> Vec<(u32, Role)> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(parent) = queue.pop() {
        for child in children(parent) {
            let comm = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            found.push((child, role(&comm)));
            queue.push(child);
        }
    }
    found
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

/// Memory of one kind of process, summed over all of them, KiB.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Memory {
    pub processes: usize,
    pub rss_kib: u64,
    pub private_kib: u64,
}

/// Sums of `/proc/PID/smaps_rollup` over the server's descendants, by role.
pub fn memory(server: u32) -> BTreeMap<Role, Memory> {
    let mut by_role: BTreeMap<Role, Memory> = BTreeMap::new();
    for (pid, role) in descendants(server) {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        let (rss, private) = rollup(&text);
        let m = by_role.entry(role).or_default();
        m.processes += 1;
        m.rss_kib += rss;
        m.private_kib += private;
    }
    by_role
}

/// `Rss` and `Private_Clean + Private_Dirty` of a `smaps_rollup`, KiB.
pub fn rollup(text: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    };
    (
        field("Rss"),
        field("Private_Clean") + field("Private_Dirty"),
    )
}

/// CPU time of the server, of its descendants by role, and of the whole machine, over a
/// window in which nothing is asked of the system.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Quiet {
    pub window_s: f64,
    pub server_cpu_ms: f64,
    /// Summed over the processes that lived through the whole window.
    pub cpu_ms: BTreeMap<Role, f64>,
    pub processes: BTreeMap<Role, usize>,
    /// The machine's busy share of all its CPUs over the window, percent.
    pub machine_busy_pct: f64,
    pub load_avg_1m: f64,
}

/// Measures a quiet window of `window` (see [`Quiet`]).
pub async fn quiet(server: u32, window: Duration) -> Quiet {
    let before_procs = descendants(server);
    let before: Vec<(u32, Role, Duration)> = before_procs
        .iter()
        .map(|&(pid, role)| (pid, role, proc::cpu_time(pid)))
        .collect();
    let server_before = proc::cpu_time(server);
    let machine_before = machine_ticks();
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed();
    let server_cpu = proc::cpu_time(server).saturating_sub(server_before);
    let machine_after = machine_ticks();
    let after: std::collections::HashSet<u32> =
        descendants(server).into_iter().map(|(p, _)| p).collect();
    let mut q = Quiet {
        window_s: elapsed.as_secs_f64(),
        server_cpu_ms: server_cpu.as_secs_f64() * 1000.0,
        ..Quiet::default()
    };
    for (pid, role, cpu) in before {
        if !after.contains(&pid) {
            continue;
        }
        let used = proc::cpu_time(pid).saturating_sub(cpu);
        *q.cpu_ms.entry(role).or_default() += used.as_secs_f64() * 1000.0;
        *q.processes.entry(role).or_default() += 1;
    }
    if let (Some(b), Some(a)) = (machine_before, machine_after) {
        q.machine_busy_pct = busy_pct(b, a);
    }
    q.load_avg_1m = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN);
    q
}

/// CPU time of each kind of descendant of the server since it started, with what its
/// children that it waited for used (a launcher's `qemu-img` runs), ms.
pub fn descendants_cpu(server: u32) -> BTreeMap<Role, f64> {
    let mut by_role = BTreeMap::new();
    for (pid, role) in descendants(server) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let ticks: u64 = stat_ticks(&stat).iter().sum();
        *by_role.entry(role).or_default() += ticks as f64 * MS_PER_TICK;
    }
    by_role
}

/// The kernel counts CPU time in USER_HZ, which is 100 on every Linux ABI.
const MS_PER_TICK: f64 = 10.0;

/// utime, stime, cutime and cstime from a `/proc/PID/stat` line, in ticks; zeros when
/// it does not parse.
pub fn stat_ticks(stat: &str) -> [u64; 4] {
    // The command name, which may hold spaces, ends in ')'; utime is field 14.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse().ok()).unwrap_or(0);
    [tick(11), tick(12), tick(13), tick(14)]
}

/// Busy time of all the machine's CPUs since boot, ms; None without `/proc/stat`.
pub fn machine_busy_ms() -> Option<f64> {
    machine_ticks().map(|(busy, _)| busy as f64 * MS_PER_TICK)
}

/// The aggregate `cpu` line of `/proc/stat`: (busy, total) ticks.
fn machine_ticks() -> Option<(u64, u64)> {
    cpu_line(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// (busy, total) ticks from `/proc/stat`'s first line: idle and iowait are not busy;
/// guest time is already inside user time and is not added again.
pub fn cpu_line(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

fn busy_pct(before: (u64, u64), after: (u64, u64)) -> f64 {
    let total = after.1.saturating_sub(before.1);
    if total == 0 {
        return f64::NAN;
    }
    after.0.saturating_sub(before.0) as f64 * 100.0 / total as f64
}

/// Kills every process whose command line or environment mentions `dir` (launchers carry
/// their run directory in `KUBEVIRT_RS_RUN_DIR`, QEMU in its socket paths); returns how
/// many. For what a failed run leaves behind.
pub fn kill_mentioning(dir: &Path) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;

    let needle = dir.as_os_str().as_encoded_bytes();
    let me = std::process::id();
    let mut killed = 0;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let mentions = ["cmdline", "environ"].iter().any(|f| {
            std::fs::read(entry.path().join(f))
                .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        });
        if mentions && kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    // Containers in runc mention nothing of the directory: the runtime removes them.
    let state = dir.join("data/runc");
    let runc = |args: &[&str]| {
        std::process::Command::new("runc")
            .arg("--root")
            .arg(&state)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for id in runc(&["list", "-q"]).lines() {
        runc(&["delete", "--force", id]);
        killed += 1;
    }
    // And their root filesystems' mounts, which the scratch directory cannot go without.
    let root = dir.to_string_lossy().into_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for point in mounts.lines().filter_map(|l| l.split_whitespace().nth(4)) {
        if point.starts_with(&root) {
            let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_by_comm() {
        assert_eq!(role("qemu-system-x86\n"), Role::Qemu);
        assert_eq!(role("virt-launcher\n"), Role::Launcher);
        assert_eq!(role("sh\n"), Role::Other);
        assert_eq!(role("qemu-img\n"), Role::Other);
    }

    #[test]
    fn smaps_rollup_sums() {
        let text = "00400000-7ffd [rollup]\nRss:               46112 kB\nPss:  30000 kB\n\
                    Shared_Clean:  20000 kB\nPrivate_Clean:      100 kB\n\
                    Private_Dirty:    22000 kB\nSwap: 0 kB\n";
        assert_eq!(rollup(text), (46112, 22100));
        assert_eq!(rollup(""), (0, 0));
    }

    #[test]
    fn stat_fields_after_a_command_with_spaces() {
        let stat = "4242 (virt launcher) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    17 5 30 8 20 0 4 0 123456 1000 200";
        assert_eq!(stat_ticks(stat), [17, 5, 30, 8]);
        assert_eq!(stat_ticks(""), [0, 0, 0, 0]);
    }

    #[test]
    fn proc_stat_busy_and_total() {
        let stat = "cpu  100 5 50 800 20 3 2 0 7 0\ncpu0 50 2 25 400 10 1 1 0 0 0\n";
        // user nice system idle iowait irq softirq steal: total 980, idle 820.
        assert_eq!(cpu_line(stat), Some((160, 980)));
        assert_eq!(cpu_line("intr 1 2 3\n"), None);
        assert_eq!(busy_pct((160, 980), (260, 1980)), 10.0);
    }
}
