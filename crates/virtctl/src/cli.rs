//! The command line, as upstream's virtctl spells it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::conn::Error;

#[derive(Debug, Parser)]
#[command(
    name = "virtctl",
    version,
    about = "Controls KubeVirt virtual machines"
)]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true, value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// `pause vm NAME` or `pause vmi NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Vm,
    Vmi,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a virtual machine.
    Start {
        name: String,
        /// Start it with its vCPUs paused.
        #[arg(long)]
        paused: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a virtual machine.
    Stop {
        name: String,
        /// Seconds the guest gets to shut down (overrides the VMI's).
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<i64>,
        /// Stop at once; needs --grace-period 0.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Restart a virtual machine.
    Restart {
        name: String,
        #[arg(long, value_name = "SECONDS")]
        grace_period: Option<i64>,
        /// Restart at once; needs --grace-period 0.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Pause a virtual machine (its vCPUs stop; memory and devices stay).
    Pause {
        #[arg(value_enum)]
        kind: Kind,
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Unpause a paused virtual machine.
    Unpause {
        #[arg(value_enum)]
        kind: Kind,
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Reboot the guest from inside (through its guest agent).
    SoftReboot { name: String },
    /// Connect to the serial console; ^] leaves.
    Console {
        name: String,
        /// Minutes to wait for the VMI to run.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Open the VM's screen over VNC through a local port.
    Vnc {
        name: String,
        /// Only listen locally; print the port as JSON and do not start a viewer.
        #[arg(long)]
        proxy_only: bool,
        /// The local port (0 picks one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// The guest's operating system, from its guest agent.
    Guestosinfo { name: String },
    /// Print a manifest to create.
    #[command(subcommand)]
    Create(CreateKind),
    /// Client and server versions.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum CreateKind {
    /// A VirtualMachine.
    Vm(CreateVm),
}

#[derive(Debug, Clone, Args)]
pub struct CreateVm {
    /// The VM's name (default: vm- and a random suffix).
    #[arg(long)]
    pub name: Option<String>,
    /// The run strategy.
    #[arg(long, default_value = "Always")]
    pub run_strategy: String,
    /// Seconds the guest gets to shut down.
    #[arg(long, default_value_t = 180)]
    pub termination_grace_period: i64,
    /// An instancetype: NAME or KIND/NAME (virtualmachineinstancetype or
    /// virtualmachineclusterinstancetype, the default).
    #[arg(long)]
    pub instancetype: Option<String>,
    /// A preference: NAME or KIND/NAME.
    #[arg(long)]
    pub preference: Option<String>,
    /// Guest memory when there is no instancetype.
    #[arg(long)]
    pub memory: Option<String>,
    /// A containerDisk volume: src:IMAGE[,name:NAME][,bootorder:N]. Repeatable.
    #[arg(long = "volume-containerdisk", value_name = "PARAMS")]
    pub container_disks: Vec<String>,
    /// A cloud-init NoCloud user data, as is.
    #[arg(long)]
    pub cloud_init_user_data: Option<String>,
}

/// `--force` is only allowed with `--grace-period 0`, as upstream.
pub fn check_force(force: bool, grace_period: Option<i64>) -> Result<(), Error> {
    if force && grace_period != Some(0) {
        return Err(Error::Usage("--force requires --grace-period 0".into()));
    }
    if grace_period.is_some_and(|g| g < 0) {
        return Err(Error::Usage("--grace-period must not be negative".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from([&["virtctl"], args].concat())
    }

    #[test]
    fn upstream_spellings_parse() {
        let cli = parse(&[
            "-n",
            "prod",
            "stop",
            "web",
            "--grace-period",
            "0",
            "--force",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("prod"));
        assert!(
            matches!(cli.command, Command::Stop { ref name, grace_period: Some(0), force: true, .. } if name == "web")
        );
        let cli = parse(&["pause", "vmi", "web"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Pause {
                kind: Kind::Vmi,
                ..
            }
        ));
        let cli = parse(&["vnc", "web", "--proxy-only", "--port", "5901"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Vnc {
                proxy_only: true,
                port: 5901,
                ..
            }
        ));
        let cli = parse(&[
            "create",
            "vm",
            "--name",
            "a",
            "--volume-containerdisk",
            "src:img",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Create(CreateKind::Vm(ref c)) if c.container_disks == ["src:img"])
        );
        assert!(parse(&["soft-reboot", "web"]).is_ok());
        assert!(parse(&["guestosinfo", "web"]).is_ok());
    }

    #[test]
    fn bad_usage_is_refused() {
        assert!(parse(&["pause", "pod", "web"]).is_err());
        assert!(parse(&["start"]).is_err());
        assert!(parse(&["stop", "web", "--grace-period", "soon"]).is_err());
        assert_eq!(
            check_force(true, None).unwrap_err().to_string(),
            "--force requires --grace-period 0"
        );
        check_force(true, Some(0)).unwrap();
        assert!(check_force(false, Some(-1)).is_err());
    }
}
