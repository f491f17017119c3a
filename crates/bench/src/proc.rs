//! Reading memory figures from `/proc`.

use std::time::{Duration, Instant};

/// `VmRSS` of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS").unwrap_or(0)
}

/// Resident memory of a process now and at its peak, KiB (`VmRSS`, `VmHWM`), and what
/// the RSS is made of: anonymous pages (heap, stacks) and file pages (mostly the binary,
/// shared with every process running it).
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Resident {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
    pub file_kib: u64,
}

pub fn resident(pid: u32) -> Resident {
    let kib = |field| status_kib(pid, field).unwrap_or(0);
    Resident {
        rss_kib: kib("VmRSS"),
        hwm_kib: kib("VmHWM"),
        anon_kib: kib("RssAnon"),
        file_kib: kib("RssFile"),
    }
}

/// CPU time a process has used so far (user + system), from `/proc/PID/stat`; zero when
/// it is gone. The kernel counts in USER_HZ, which is 100 on every Linux ABI.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces, end in ')': state is
    // field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// A KiB field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...); None when the process or
/// the field is gone.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Memory of a process outside its guest-RAM mapping (the one mapping of exactly
/// `guest_bytes`), in KiB: resident, and anonymous (heap, stacks, written data: pages no
/// other process can share, so what each further VM adds on a node where the binary and
/// its libraries are already in memory). Unlike `Private_*`, which counts a file page as
/// private while no other process maps it, the anonymous figure does not depend on what
/// else runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct Beyond {
    pub rss: u64,
    pub anon: u64,
}

pub fn beyond_guest(pid: u32, guest_bytes: u64) -> Beyond {
    Beyond {
        rss: sum_beyond(pid, guest_bytes, &["Rss:"]),
        anon: sum_beyond(pid, guest_bytes, &["Anonymous:"]),
    }
}

/// `VmRSS` and anonymous KiB of a whole process.
pub fn whole(pid: u32) -> Beyond {
    Beyond {
        rss: rss_kib(pid),
        anon: sum_beyond(pid, u64::MAX, &["Anonymous:"]),
    }
}

fn sum_beyond(pid: u32, guest_bytes: u64, fields: &[&str]) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            skip = e - s == guest_bytes;
            continue;
        }
        let value = fields.iter().find_map(|f| line.strip_prefix(f));
        if let (Some(v), false) = (value, skip) {
            total += v
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The first child process of `pid`.
pub fn child_of(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        if let Some(c) = children
            .split_whitespace()
            .next()
            .and_then(|c| c.parse().ok())
        {
            return Some(c);
        }
    }
    None
}

/// Waits until `file` contains `needle`.
pub fn wait_for_text(
    file: &std::path::Path,
    needle: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::fs::read_to_string(file)
            .unwrap_or_default()
            .contains(needle)
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!(
        "{needle:?} did not appear in {} within {timeout:?}",
        file.display()
    )
}

/// The process whose command line contains `needle`.
pub fn pid_with_cmdline(needle: &str) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            return Some(pid);
        }
    }
    None
}
