//! `make bench`: how fast a VMI starts and how much memory each VM costs, for our launcher
//! and, in the same run, for the same guest started through libvirt (`virsh create`), the
//! stack upstream's virt-launcher uses.
//!
//! Each figure is the median of `--runs` runs. Latency is measured from spawning the
//! launcher (or `virsh create`) to the guest's vCPUs running, with the image already in
//! the node cache. Memory is RSS from `/proc`: the launcher (or libvirtd plus virtlogd,
//! which upstream runs once per VM pod), and QEMU without its guest-RAM mapping, paused
//! (nothing booted yet) and running (after the guest printed its ready marker).

mod libvirt;
mod ours;
mod proc;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Launcher start latency and per-VM memory, ours against libvirt")]
struct Cli {
    /// Runs per measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The virt-launcher binary.
    #[arg(long, default_value = "target/release/virt-launcher")]
    launcher: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mib: u64,
    /// Skip the libvirt side.
    #[arg(long)]
    no_libvirt: bool,
}

/// One run's numbers; `None` where not measured.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub start_ms: f64,
    pub manager_kib: u64,
    pub qemu_overhead_paused_kib: u64,
    pub qemu_overhead_running_kib: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Summary {
    start_ms: f64,
    manager_mib: f64,
    paused_mib: f64,
    running_mib: f64,
}

fn summarize(samples: &[Sample]) -> Summary {
    let mib =
        |f: fn(&Sample) -> u64| median(samples.iter().map(|s| f(s) as f64 / 1024.0).collect());
    Summary {
        start_ms: median(samples.iter().map(|s| s.start_ms).collect()),
        manager_mib: mib(|s| s.manager_kib),
        paused_mib: mib(|s| s.qemu_overhead_paused_kib),
        running_mib: mib(|s| s.qemu_overhead_running_kib),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let ours = ours::measure(&cli.launcher, cli.runs, cli.memory_mib)?;
    let theirs = if cli.no_libvirt {
        None
    } else {
        Some(libvirt::measure(cli.runs, cli.memory_mib)?)
    };
    let o = summarize(&ours);
    println!(
        "guest: tiny test guest, {} MiB, 1 vCPU, TCG; medians of {} runs\n",
        cli.memory_mib, cli.runs
    );
    println!("| measure | kubevirt-rs launcher | libvirt (virsh create) | ratio |");
    println!("|---|---|---|---|");
    let row = |name: &str, ours: f64, theirs: Option<f64>, unit: &str| match theirs {
        Some(t) => println!(
            "| {name} | {ours:.1} {unit} | {t:.1} {unit} | {:.1}x |",
            t / ours
        ),
        None => println!("| {name} | {ours:.1} {unit} | n/a | |"),
    };
    let t = theirs.as_ref().map(|s| summarize(s));
    row(
        "start -> vCPUs running",
        o.start_ms,
        t.as_ref().map(|t| t.start_ms),
        "ms",
    );
    row(
        "manager RSS (launcher / libvirtd+virtlogd)",
        o.manager_mib,
        t.as_ref().map(|t| t.manager_mib),
        "MiB",
    );
    row(
        "QEMU RSS beyond guest RAM, paused",
        o.paused_mib,
        t.as_ref().map(|t| t.paused_mib),
        "MiB",
    );
    row(
        "QEMU RSS beyond guest RAM, running",
        o.running_mib,
        t.as_ref().map(|t| t.running_mib),
        "MiB",
    );
    row(
        "per-VM total, running",
        o.manager_mib + o.running_mib,
        t.as_ref().map(|t| t.manager_mib + t.running_mib),
        "MiB",
    );
    println!(
        "\nraw start latencies (ms): ours {:?}",
        ours.iter().map(|s| s.start_ms.round()).collect::<Vec<_>>()
    );
    if let Some(t) = &theirs {
        println!(
            "raw start latencies (ms): libvirt {:?}",
            t.iter().map(|s| s.start_ms.round()).collect::<Vec<_>>()
        );
    }
    Ok(())
}
