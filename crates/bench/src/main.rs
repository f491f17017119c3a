//! `make bench`: what our stack costs against the one upstream KubeVirt runs on, measured
//! side by side in the same run on the same machine.
//!
//! Four benchmarks, each printed as Markdown tables:
//! 1. `vm` ([`vm`]): how fast a VMI starts and how much memory each VM costs, for our
//!    launcher and for the same guest started through libvirt (`virsh create`), the stack
//!    upstream's virt-launcher uses. Latency runs from spawning the launcher (or calling
//!    `virsh create`) to the guest's vCPUs running, with the image already in the node
//!    cache. Memory comes from `/proc/PID/smaps`: the launcher (or libvirtd plus
//!    virtlogd, which upstream runs once per VM pod), and QEMU without its guest-RAM
//!    mapping, paused and running, each as resident (RSS) and private (pages no other
//!    process shares: what one more VM adds on a node).
//! 2. `api` ([`api`]): the `kubevirt-rs server` process over HTTPS: create and update
//!    throughput, watch delivery latency, LIST of many objects, memory and start-up, with
//!    a single-node etcd (the store Kubernetes relies on) measured beside it.
//! 3. `cp` ([`cp`]): the whole control plane with real launchers and QEMU: VMI creation
//!    to Running one at a time, 100 at 10 per second (upstream's perf-lane method) and
//!    100 at once; API writes per start; the server's memory idle and with 100 VMIs; CPU
//!    in quiet windows.
//!
//! 4. `migrate` ([`migrate`]): live migration between two launchers, its total time and
//!    the guest's pause, for a 128 MiB and a 1 GiB guest.
//!
//! Without an argument all four run; `kubevirt-rs-bench vm`, `... api`, `... cp` or
//! `... migrate` runs one.

mod api;
mod cp;
mod libvirt;
mod migrate;
mod ours;
mod proc;
mod stats;
mod vm;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    about = "Launcher start and per-VM memory against libvirt; API server against etcd; the control plane with real VMs"
)]
struct Cli {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    #[command(flatten)]
    vm: vm::VmArgs,
    #[command(flatten)]
    api: api::ApiArgs,
    #[command(flatten)]
    cp: cp::CpArgs,
    #[command(flatten)]
    migrate: migrate::MigrateArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// All three benchmarks.
    All,
    /// The launcher against libvirt.
    Vm,
    /// The API server against etcd.
    Api,
    /// The control plane with real VMs.
    Cp,
    /// Live migration between two launchers.
    Migrate,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let all = cli.which == Which::All;
    if all || cli.which == Which::Vm {
        vm::run(&cli.vm)?;
    }
    if all || cli.which == Which::Api {
        if all {
            println!();
        }
        api::run(&cli.api, cli.vm.runs)?;
    }
    if all || cli.which == Which::Cp {
        if all {
            println!();
        }
        cp::run(&cli.cp, &cli.api.server, &cli.vm.launcher)?;
    }
    if all || cli.which == Which::Migrate {
        if all {
            println!();
        }
        migrate::run(&cli.migrate, &cli.vm.launcher)?;
    }
    Ok(())
}
