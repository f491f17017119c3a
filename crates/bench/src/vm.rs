//! The launcher benchmark: our `virt-launcher` against `virsh create` on a private
//! libvirtd, the same tiny guest, medians of `--runs` runs (see the crate docs).

use std::path::PathBuf;

use crate::proc;
use crate::stats::median;
use crate::{libvirt, ours};

/// What the launcher benchmark takes from the command line.
#[derive(Debug, clap::Args)]
pub struct VmArgs {
    /// Runs per measurement; medians are reported (also used by the API server's list and
    /// start-up measurements).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// The virt-launcher binary.
    #[arg(long, default_value = "target/release/virt-launcher")]
    pub launcher: PathBuf,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u64,
    /// Skip the libvirt side.
    #[arg(long)]
    pub no_libvirt: bool,
}

/// One run's numbers.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    pub start_ms: f64,
    pub manager: proc::Beyond,
    pub paused: proc::Beyond,
    pub running: proc::Beyond,
}

/// Medians: latency in ms, memory as (RSS, anonymous) MiB.
struct Summary {
    start_ms: f64,
    manager: (f64, f64),
    paused: (f64, f64),
    running: (f64, f64),
}

fn summarize(samples: &[Sample]) -> Summary {
    let mib = |f: fn(&Sample) -> proc::Beyond| {
        (
            median(samples.iter().map(|s| f(s).rss as f64 / 1024.0).collect()),
            median(samples.iter().map(|s| f(s).anon as f64 / 1024.0).collect()),
        )
    };
    Summary {
        start_ms: median(samples.iter().map(|s| s.start_ms).collect()),
        manager: mib(|s| s.manager),
        paused: mib(|s| s.paused),
        running: mib(|s| s.running),
    }
}

pub fn run(cli: &VmArgs) -> anyhow::Result<()> {
    let ours = ours::measure(&cli.launcher, cli.runs, cli.memory_mib)?;
    let theirs = if cli.no_libvirt {
        None
    } else {
        Some(libvirt::measure(cli.runs, cli.memory_mib)?)
    };
    let o = summarize(&ours);
    let t = theirs.as_ref().map(|s| summarize(s));
    println!(
        "guest: tiny test guest, {} MiB, 1 vCPU, TCG; medians of {} runs",
        cli.memory_mib, cli.runs
    );
    println!("memory in MiB as resident (RSS) / anonymous (what one more VM adds)\n");
    println!("| measure | kubevirt-rs launcher | libvirt (virsh create) | libvirt / ours |");
    println!("|---|---|---|---|");
    let ms = |name: &str, ours: f64, theirs: Option<f64>| match theirs {
        Some(t) => println!("| {name} | {ours:.0} ms | {t:.0} ms | {:.1}x |", t / ours),
        None => println!("| {name} | {ours:.0} ms | n/a | |"),
    };
    let mem = |name: &str, ours: (f64, f64), theirs: Option<(f64, f64)>| match theirs {
        Some(t) => println!(
            "| {name} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1}x / {:.1}x |",
            ours.0,
            ours.1,
            t.0,
            t.1,
            t.0 / ours.0,
            t.1 / ours.1
        ),
        None => println!("| {name} | {:.1} / {:.1} | n/a | |", ours.0, ours.1),
    };
    let add = |a: (f64, f64), b: (f64, f64)| (a.0 + b.0, a.1 + b.1);
    ms(
        "start -> vCPUs running",
        o.start_ms,
        t.as_ref().map(|t| t.start_ms),
    );
    mem(
        "manager (launcher; libvirtd + virtlogd)",
        o.manager,
        t.as_ref().map(|t| t.manager),
    );
    mem(
        "QEMU beyond guest RAM, paused",
        o.paused,
        t.as_ref().map(|t| t.paused),
    );
    mem(
        "QEMU beyond guest RAM, running",
        o.running,
        t.as_ref().map(|t| t.running),
    );
    mem(
        "per VM, paused (manager + QEMU)",
        add(o.manager, o.paused),
        t.as_ref().map(|t| add(t.manager, t.paused)),
    );
    mem(
        "per VM, running (manager + QEMU)",
        add(o.manager, o.running),
        t.as_ref().map(|t| add(t.manager, t.running)),
    );
    let raw = |s: &[Sample]| s.iter().map(|s| s.start_ms.round()).collect::<Vec<_>>();
    println!("\nraw start latencies (ms): ours {:?}", raw(&ours));
    if let Some(t) = &theirs {
        println!("raw start latencies (ms): libvirt {:?}", raw(t));
    }
    Ok(())
}
