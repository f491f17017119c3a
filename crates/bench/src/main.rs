//! `make bench`: what our stack costs against the one upstream KubeVirt runs on, measured
//! side by side in the same run on the same machine.
//!
//! Two benchmarks, each printed as a Markdown table:
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
//!
//! Without an argument both run; `kubevirt-rs-bench api` or `... vm` runs one.

mod api;
mod libvirt;
mod ours;
mod proc;
mod stats;
mod vm;

use clap::{Parser, ValueEnum};

#[derive(Debug, Parser)]
#[command(about = "Launcher start and per-VM memory against libvirt; API server against etcd")]
struct Cli {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = Which::All)]
    which: Which,
    #[command(flatten)]
    vm: vm::VmArgs,
    #[command(flatten)]
    api: api::ApiArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    /// Both benchmarks.
    All,
    /// The launcher against libvirt.
    Vm,
    /// The API server against etcd.
    Api,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if cli.which != Which::Api {
        vm::run(&cli.vm)?;
    }
    if cli.which == Which::All {
        println!();
    }
    if cli.which != Which::Vm {
        api::run(&cli.api, cli.vm.runs)?;
    }
    Ok(())
}
