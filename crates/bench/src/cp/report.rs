//! The control-plane benchmark's tables: latency spreads beside the targets and
//! upstream's perf lane, where the time of a start goes, writes per start, memory, and
//! CPU in quiet windows.

use super::Results;
use super::node::{Quiet, Role};
use super::rounds::{Cost, VmiRecord};
use crate::proc::Resident;
use crate::stats::{Spread, median, spread};

const SINGLE_TARGET_MS: f64 = 300.0;
const PACED_P95_TARGET_MS: f64 = 1000.0;
const BURST_P95_TARGET_MS: f64 = 5000.0;
const VMI_WRITES_TARGET: f64 = 3.0;
const RSS_TARGET_MIB: f64 = 60.0;

/// The steps of a start the watches can tell apart, each as (label, from, to).
type Step = (
    &'static str,
    fn(&VmiRecord) -> Option<f64>,
    fn(&VmiRecord) -> Option<f64>,
);

const STEPS: [Step; 7] = [
    (
        "create call (sent -> returned; admission, virt-api webhooks)",
        |r| Some(r.create_sent_ms),
        |r| Some(r.created_ms),
    ),
    (
        "created -> launcher pod created (virt-controller)",
        |r| Some(r.created_ms),
        |r| r.pod_added_ms,
    ),
    (
        "pod created -> bound to the node (pod runner's scheduler)",
        |r| r.pod_added_ms,
        |r| r.pod_bound_ms,
    ),
    (
        "bound -> pod Running (pod runner starts virt-launcher)",
        |r| r.pod_bound_ms,
        |r| r.pod_running_ms,
    ),
    (
        "pod Running -> VMI Scheduled (virt-controller)",
        |r| r.pod_running_ms,
        |r| r.scheduled_ms,
    ),
    (
        "VMI Scheduled -> Running (virt-handler, launcher, QEMU)",
        |r| r.scheduled_ms,
        |r| Some(r.running_ms),
    ),
    (
        "created -> Running (the whole start)",
        |r| Some(r.created_ms),
        |r| Some(r.running_ms),
    ),
];

/// The durations of one step over some starts, ms; starts where the watches missed
/// either end are left out.
pub fn step_ms(records: &[VmiRecord], step: &Step) -> Vec<f64> {
    records
        .iter()
        .filter_map(|r| Some(step.2(r)? - step.1(r)?))
        .collect()
}

pub fn latencies(records: &[VmiRecord]) -> Vec<f64> {
    records.iter().map(VmiRecord::latency_ms).collect()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

fn ms(v: f64) -> String {
    if v.is_nan() {
        "-".to_owned()
    } else {
        format!("{v:.0} ms")
    }
}

fn memory(r: Resident) -> String {
    format!("{:.1} / {:.1}", mib(r.rss_kib), mib(r.hwm_kib))
}

/// Prints the tables to stdout.
pub fn print(r: &Results) {
    let n = r.vmis;
    println!(
        "Control plane: kubevirt-rs server (API server, virt-api, virt-controller, \
         virt-handler, pod runner) as one node, real virt-launcher and QEMU under TCG. \
         Guest: {}, {} of RAM, no NIC, no graphics, a boot sector that halts the CPU{}. \
         Latency: the create call returned -> the watch event that first says Running, \
         on the client's clock.\n",
        r.image,
        r.guest_memory,
        if r.paused {
            ", started Paused (QEMU never runs the firmware)"
        } else {
            ""
        }
    );
    let single = spread(&latencies(&r.single));
    let paced = spread(&latencies(&r.paced));
    let burst = spread(&latencies(&r.burst));
    println!("| VMI creation -> Running | P50 | P95 | max | target | upstream (perf lane) |");
    println!("|---|---|---|---|---|---|");
    let row = |what: String, s: Spread, target: &str, upstream: &str| {
        println!(
            "| {what} | {} | {} | {} | {target} | {upstream} |",
            ms(s.p50),
            ms(s.p95),
            ms(s.max)
        );
    };
    row(
        format!("1 VMI ({} in turn)", r.single.len()),
        single,
        "<= 300 ms",
        "-",
    );
    row(
        format!("{n} VMIs at {}/s", r.rate),
        paced,
        "P95 <= 1 s",
        "P50 15-25 s, P95 20-30 s",
    );
    row(format!("{n} VMIs at once"), burst, "P95 <= 5 s", "-");

    println!(
        "\nWhere a start's time goes, medians in ms (each step's own median: they need not add up):\n"
    );
    println!("| step | 1 VMI | {n} at {}/s | {n} at once |", r.rate);
    println!("|---|---|---|---|");
    for step in &STEPS {
        let cell = |records: &[VmiRecord]| ms(median(step_ms(records, step)));
        println!(
            "| {} | {} | {} | {} |",
            step.0,
            cell(&r.single),
            cell(&r.paced),
            cell(&r.burst)
        );
    }

    println!(
        "\nCPU per start, ms: the round's CPU time over its VMs, first create to last Running:\n"
    );
    println!(
        "| CPU per start | 1 VMI | {n} at {}/s | {n} at once |",
        r.rate
    );
    println!("|---|---|---|---|");
    let costs = [&r.single_cost, &r.paced_cost, &r.burst_cost];
    let per_vm = |f: fn(&Cost) -> f64| -> Vec<String> {
        costs
            .iter()
            .map(|c| ms(f(c) / c.vms.max(1) as f64))
            .collect()
    };
    for (what, f) in [
        (
            "kubevirt-rs server",
            (|c: &Cost| c.server_cpu_ms) as fn(&Cost) -> f64,
        ),
        ("virt-launcher, with its qemu-img runs", |c| {
            c.launcher_cpu_ms
        }),
        ("QEMU (start, firmware, the boot sector)", |c| c.qemu_cpu_ms),
        ("the whole machine (all processes)", |c| c.machine_cpu_ms),
    ] {
        let cells = per_vm(f);
        println!("| {what} | {} | {} | {} |", cells[0], cells[1], cells[2]);
    }
    println!(
        "| round wall time (first create sent -> last Running) | {} | {} | {} |",
        ms(r.single_cost.wall_ms),
        ms(r.paced_cost.wall_ms),
        ms(r.burst_cost.wall_ms)
    );

    let all: Vec<&VmiRecord> = r.single.iter().chain(&r.paced).chain(&r.burst).collect();
    let vmi_writes: Vec<f64> = all.iter().map(|v| f64::from(v.vmi_writes)).collect();
    let pod_writes: Vec<f64> = all.iter().map(|v| f64::from(v.pod_writes)).collect();
    let (vw, pw) = (spread(&vmi_writes), spread(&pod_writes));
    println!("\nAPI writes per start ({} starts):\n", all.len());
    println!("| writes per start | median | max | target | upstream |");
    println!("|---|---|---|---|---|");
    println!(
        "| VMI updates (MODIFIED events up to Running; the create not counted) | {} | {} | <= 3 | about 6 |",
        vw.p50, vw.max
    );
    println!(
        "| launcher pod writes (create, binding, status, up to the VMI's Running) | {} | {} | - | create, binding, kubelet status, 2 virt-controller patches |",
        pw.p50, pw.max
    );

    let role = |m: &std::collections::BTreeMap<Role, super::node::Memory>, role| {
        m.get(&role).copied().unwrap_or_default()
    };
    let (launchers, qemus, others) = (
        role(&r.node_memory, Role::Launcher),
        role(&r.node_memory, Role::Qemu),
        role(&r.node_memory, Role::Other),
    );
    let per_vm = |kib: u64| mib(kib) / launchers.processes.max(1) as f64;
    println!("\nMemory, MiB:\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| server idle, VmRSS / VmHWM | {} |", memory(r.idle));
    println!(
        "| server with {n} VMIs Running, VmRSS / VmHWM | {} |",
        memory(r.with_vmis)
    );
    println!(
        "| server after the burst, VmRSS / VmHWM | {} |",
        memory(r.after_burst)
    );
    println!(
        "| node, per VM ({} launchers, {} QEMUs, {} wrappers), private: launcher / QEMU / pod wrapper / sum | {:.1} / {:.1} / {:.1} / {:.1} |",
        launchers.processes,
        qemus.processes,
        others.processes,
        per_vm(launchers.private_kib),
        per_vm(qemus.private_kib),
        per_vm(others.private_kib),
        per_vm(launchers.private_kib + qemus.private_kib + others.private_kib)
    );
    println!(
        "| node, per VM, RSS: launcher / QEMU / pod wrapper | {:.1} / {:.1} / {:.1} |",
        per_vm(launchers.rss_kib),
        per_vm(qemus.rss_kib),
        per_vm(others.rss_kib)
    );

    println!("\nCPU time over quiet windows (nothing asked of the system):\n");
    println!("| quiet window | no VMI | {n} VMIs Running |");
    println!("|---|---|---|");
    let cpu = |q: &Quiet, role: Option<Role>| match role {
        None => format!(
            "{:.0} ms ({:.1}% of a CPU)",
            q.server_cpu_ms,
            pct(q.server_cpu_ms, q)
        ),
        Some(role) => match (q.cpu_ms.get(&role), q.processes.get(&role)) {
            (Some(c), Some(p)) => format!("{c:.0} ms over {p} ({:.1}% of a CPU)", pct(*c, q)),
            _ => "-".to_owned(),
        },
    };
    let (idle, loaded) = (&r.idle_quiet, &r.loaded_quiet);
    println!(
        "| window | {:.1} s | {:.1} s |",
        idle.window_s, loaded.window_s
    );
    println!(
        "| kubevirt-rs server | {} | {} |",
        cpu(idle, None),
        cpu(loaded, None)
    );
    for (what, role) in [("virt-launchers", Role::Launcher), ("QEMUs", Role::Qemu)] {
        println!(
            "| {what}, all | {} | {} |",
            cpu(idle, Some(role)),
            cpu(loaded, Some(role))
        );
    }
    println!(
        "| API writes seen: VMIs, launcher pods | - | {}, {} |",
        r.loaded_quiet_writes.vmis, r.loaded_quiet_writes.pods
    );
    println!(
        "| machine busy (all CPUs), load average 1 min | {:.1}%, {:.2} | {:.1}%, {:.2} |",
        idle.machine_busy_pct, idle.load_avg_1m, loaded.machine_busy_pct, loaded.load_avg_1m
    );

    println!("\n| target | result |");
    println!("|---|---|");
    println!(
        "| 1 VMI: creation -> Running <= 300 ms | P50 {}, P95 {}: {} |",
        ms(single.p50),
        ms(single.p95),
        met(single.p50 <= SINGLE_TARGET_MS)
    );
    println!(
        "| {n} VMIs at {}/s: P95 <= 1 s | {}: {} |",
        r.rate,
        ms(paced.p95),
        met(paced.p95 <= PACED_P95_TARGET_MS)
    );
    println!(
        "| {n} VMIs at once: P95 <= 5 s | {}: {} |",
        ms(burst.p95),
        met(burst.p95 <= BURST_P95_TARGET_MS)
    );
    println!(
        "| <= 3 VMI writes per start | median {}, max {}: {} |",
        vw.p50,
        vw.max,
        met(vw.max <= VMI_WRITES_TARGET)
    );
    let loaded_rss = mib(r.with_vmis.rss_kib);
    println!(
        "| control-plane RSS <= 60 MiB with {n} VMIs | {loaded_rss:.1} MiB: {} |",
        met(loaded_rss <= RSS_TARGET_MIB)
    );

    let raw = |rs: &[VmiRecord]| {
        let mut v = latencies(rs);
        v.sort_by(|a, b| a.total_cmp(b));
        v.iter().map(|x| x.round()).collect::<Vec<_>>()
    };
    println!();
    println!(
        "raw creation -> Running, sorted (ms): warm-up {:?}",
        raw(&r.warmup)
    );
    println!(
        "raw creation -> Running, sorted (ms): single {:?}",
        raw(&r.single)
    );
    println!(
        "raw creation -> Running, sorted (ms): paced {:?}",
        raw(&r.paced)
    );
    println!(
        "raw creation -> Running, sorted (ms): burst {:?}",
        raw(&r.burst)
    );
}

/// `cpu_ms` as a share of one CPU over the window, percent.
fn pct(cpu_ms: f64, q: &Quiet) -> f64 {
    cpu_ms / (q.window_s * 1000.0) * 100.0
}

/// What the sandbox costs: the same benchmark with launchers as host processes and in
/// runc, side by side, with the difference.
pub fn compare(process: &Results, runc: &Results) {
    let n = runc.vmis;
    println!(
        "\nThe sandbox's cost: the same run with launcher pods as host processes \
         (`--pod-runtime process`) and in runc (the default):\n"
    );
    println!("| measure | host processes | runc | difference | target (runc) |");
    println!("|---|---|---|---|---|");
    let row = |what: String, a: f64, b: f64, unit: &str, target: &str| {
        println!(
            "| {what} | {a:.1} {unit} | {b:.1} {unit} | {:+.1} {unit} | {target} |",
            b - a
        );
    };
    let s = |records: &[VmiRecord]| spread(&latencies(records));
    row(
        "1 VMI, P50".into(),
        s(&process.single).p50,
        s(&runc.single).p50,
        "ms",
        "<= 300 ms",
    );
    row(
        format!("{n} VMIs at {}/s, P95", runc.rate),
        s(&process.paced).p95,
        s(&runc.paced).p95,
        "ms",
        "<= 500 ms",
    );
    row(
        format!("{n} VMIs at once, P95"),
        s(&process.burst).p95,
        s(&runc.burst).p95,
        "ms",
        "-",
    );
    let cpu = |r: &Results| r.single_cost.machine_cpu_ms / r.single_cost.vms.max(1) as f64;
    row(
        "CPU per start, the whole machine (1 VMI)".into(),
        cpu(process),
        cpu(runc),
        "ms",
        "-",
    );
    let per_vm = |r: &Results| {
        let launchers = r
            .node_memory
            .get(&Role::Launcher)
            .map_or(1, |m| m.processes.max(1));
        let private: u64 = r.node_memory.values().map(|m| m.private_kib).sum();
        mib(private) / launchers as f64
    };
    row(
        format!("private memory per VM ({n} running)"),
        per_vm(process),
        per_vm(runc),
        "MiB",
        "<= +2 MiB",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(created: f64, pod_added: Option<f64>, running: f64) -> VmiRecord {
        VmiRecord {
            name: "v".into(),
            create_sent_ms: created - 5.0,
            created_ms: created,
            scheduling_ms: pod_added,
            scheduled_ms: Some(running - 100.0),
            running_ms: running,
            pod_added_ms: pod_added,
            pod_bound_ms: pod_added.map(|p| p + 2.0),
            pod_running_ms: pod_added.map(|p| p + 20.0),
            vmi_writes: 3,
            pod_writes: 3,
        }
    }

    #[test]
    fn steps_skip_starts_missing_an_end() {
        let records = [
            record(100.0, Some(110.0), 400.0),
            record(200.0, None, 450.0),
        ];
        let controller = &STEPS[1];
        assert_eq!(step_ms(&records, controller), vec![10.0]);
        let total = &STEPS[6];
        assert_eq!(step_ms(&records, total), vec![300.0, 250.0]);
        assert_eq!(step_ms(&records, &STEPS[0]), vec![5.0, 5.0]);
        assert_eq!(latencies(&records), vec![300.0, 250.0]);
    }
}
