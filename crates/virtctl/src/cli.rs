//! The command line, as upstream's virtctl spells it (a subset of its verbs and flags).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "virtctl", version, about = "Control KubeVirt virtual machines")]
pub struct Cli {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

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
        /// Start with the vCPUs paused.
        #[arg(long)]
        paused: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Stop a virtual machine.
    Stop {
        name: String,
        /// Seconds the guest gets to shut down (with --force).
        #[arg(long)]
        grace_period: Option<i64>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Restart a virtual machine.
    Restart {
        name: String,
        /// Only 0, with --force: delete the pod at once.
        #[arg(long)]
        grace_period: Option<i64>,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        dry_run: bool,
    },
    /// Live-migrate a virtual machine to another node.
    Migrate {
        name: String,
        /// Labels the target node must also have (key=value,...).
        #[arg(long = "addedNodeSelector", value_name = "KEY=VALUE,...")]
        added_node_selector: Option<String>,
        #[arg(long)]
        dry_run: bool,
    },
    /// Cancel the live migration of a virtual machine.
    MigrateCancel { name: String },
    /// Expose a vm, vmi or vmirs as a Service (selecting its launcher pods).
    Expose(crate::expose::ExposeArgs),
    /// Pause a virtual machine (vm or vmi NAME).
    Pause {
        kind: Kind,
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Unpause a virtual machine (vm or vmi NAME).
    Unpause {
        kind: Kind,
        name: String,
        #[arg(long)]
        dry_run: bool,
    },
    /// Soft reboot a virtual machine instance (guest agent or ACPI).
    SoftReboot { name: String },
    /// Connect to the serial console of a virtual machine instance (^] leaves).
    Console {
        name: String,
        /// Minutes to wait for the VMI to be reachable.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
    /// Proxy the VNC display of a virtual machine instance to a local port
    /// (`vnc screenshot NAME --file F.png` saves the display instead).
    #[command(args_conflicts_with_subcommands = true)]
    Vnc {
        #[command(subcommand)]
        screenshot: Option<VncCommand>,
        #[arg(required = true)]
        name: Option<String>,
        /// Only listen and print {"port":N}; start no viewer.
        #[arg(long, conflicts_with = "web")]
        proxy_only: bool,
        /// Serve the display to a browser at http://127.0.0.1:PORT/ (no viewer needed).
        #[arg(long)]
        web: bool,
        /// The local port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Print the guest OS information the guest agent reports.
    Guestosinfo { name: String },
    /// Forward local ports to a VM's or VMI's ports (TYPE/NAME[.NAMESPACE], TYPE vm or vmi;
    /// ports as LOCAL:REMOTE or PORT).
    PortForward {
        target: String,
        #[arg(required = true)]
        ports: Vec<String>,
        /// The local address to listen on.
        #[arg(long, default_value = "127.0.0.1")]
        address: String,
        /// Pipe stdin and stdout to the one port instead of listening (for ssh's
        /// ProxyCommand).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set, default_value_t = false)]
        stdio: bool,
    },
    /// Open an SSH session to a VM or VMI ([USER@]TYPE/NAME[.NAMESPACE]) with the local
    /// OpenSSH client, through a port-forward.
    Ssh {
        destination: String,
        #[command(flatten)]
        ssh: SshArgs,
        /// Run this command instead of a shell.
        #[arg(short = 'c', long)]
        command: Option<String>,
    },
    /// Copy files to or from a VM or VMI with the local scp, through a port-forward; one
    /// side is [USER@]TYPE/NAME[.NAMESPACE]:PATH.
    Scp {
        source: String,
        destination: String,
        #[command(flatten)]
        ssh: SshArgs,
        /// Copy directories recursively.
        #[arg(short = 'r', long)]
        recursive: bool,
    },
    /// Print the users logged in on the guest (through the guest agent).
    Userlist { name: String },
    /// Print the filesystems mounted in the guest (through the guest agent).
    Fslist { name: String },
    /// Print a manifest.
    Create {
        #[command(subcommand)]
        what: CreateCommand,
    },
    /// Print the client and server versions.
    Version {
        /// The client version only.
        #[arg(long)]
        client: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Print a VirtualMachine manifest.
    Vm(CreateVm),
}

#[derive(Debug, Clone, Default, Args)]
pub struct CreateVm {
    /// The VM's name (default: vm-<random>).
    #[arg(long)]
    pub name: Option<String>,
    /// [kind/]name of the instancetype.
    #[arg(long)]
    pub instancetype: Option<String>,
    /// [kind/]name of the preference.
    #[arg(long)]
    pub preference: Option<String>,
    /// src:IMAGE[,name:NAME], repeatable.
    #[arg(long = "volume-containerdisk")]
    pub volume_containerdisk: Vec<String>,
    #[arg(long, default_value = "Always")]
    pub run_strategy: String,
    /// Guest memory when no instancetype is given.
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, default_value_t = 180)]
    pub termination_grace_period: i64,
}

/// `virtctl vnc screenshot`.
#[derive(Debug, Subcommand)]
pub enum VncCommand {
    /// Save the display of a virtual machine instance as a PNG image.
    Screenshot {
        name: String,
        /// Where the PNG goes.
        #[arg(long, short)]
        file: std::path::PathBuf,
    },
}

/// What `ssh` and `scp` share, with upstream's flag names.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// The private key to log in with.
    #[arg(short = 'i', long)]
    pub identity_file: Option<PathBuf>,
    /// The user to log in as (also USER@ in the destination).
    #[arg(short = 'l', long)]
    pub username: Option<String>,
    /// The guest's SSH port.
    #[arg(short = 'p', long, default_value_t = 22)]
    pub port: u16,
    /// Where the guests' host keys are kept (default ~/.ssh/kubevirt_known_hosts).
    #[arg(long)]
    pub known_hosts: Option<PathBuf>,
    /// Options for the local ssh/scp, e.g. --local-ssh-opts="-o StrictHostKeyChecking=no".
    #[arg(long = "local-ssh-opts", allow_hyphen_values = true)]
    pub local_ssh_opts: Vec<String>,
}
