//! The command line of `kubevirt-rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kubevirt-rs",
    version,
    about = "KubeVirt in Rust: virtual machines as Kubernetes resources"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the Kubernetes API over HTTPS, keeping its state in the data directory.
    #[command(
        after_help = "The admin kubeconfig is DIR/kubeconfig, rewritten at each start. \
                      SIGTERM or Ctrl-C stops the server cleanly."
    )]
    Server(ServerArgs),
    /// Stop the server on the data directory and every VM it started, for good.
    #[command(
        after_help = "Launchers outlive a stopped server on purpose (the next start adopts \
                      them); this stops them too. The objects stay in the data directory: \
                      at the next start the VMIs fail and VMs that should run start again."
    )]
    Down(DownArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct DownArgs {
    /// The server's data directory.
    #[arg(
        long,
        env = "KUBEVIRT_RS_DATA_DIR",
        hide_env_values = true,
        value_name = "DIR",
        default_value = "/var/lib/kubevirt-rs"
    )]
    pub data_dir: PathBuf,
    /// Seconds each guest gets to shut down before its launcher is killed.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub grace_period: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServerArgs {
    /// Where state, certificates, the admin token and the kubeconfig live.
    #[arg(
        long,
        env = "KUBEVIRT_RS_DATA_DIR",
        hide_env_values = true,
        value_name = "DIR",
        default_value = "/var/lib/kubevirt-rs"
    )]
    pub data_dir: PathBuf,
    /// The address to serve HTTPS on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Another name or address clients reach the server by; added to its certificate.
    #[arg(long, value_name = "HOST")]
    pub advertise_host: Option<String>,
    /// This machine's name as a node (default: the host name).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// How many nodes this machine acts as (each with its own pod runner and handler),
    /// for live migration on one machine.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub nodes: u8,
    /// The virt-launcher binary launcher pods run (default: beside this binary).
    #[arg(long, value_name = "PATH")]
    pub launcher: Option<PathBuf>,
    /// Serve only the API: no controllers, node agent or pod runner.
    #[arg(long)]
    pub api_only: bool,
    /// A node directory `hostDisk` volumes may use, each namespace in its own
    /// subdirectory, when the KubeVirt CR enables the `HostDisk` feature gate;
    /// repeatable (default: host-disks under the data directory). Paths elsewhere are
    /// refused.
    #[arg(
        long,
        value_name = "DIR",
        env = "KUBEVIRT_RS_HOST_DISK_DIRS",
        value_delimiter = ':'
    )]
    pub host_disk_dir: Vec<PathBuf>,
    /// How pods run: `runc`, each in its own namespaces from its image, as the user its
    /// securityContext names (launchers as qemu, 107); or `process`, as root processes
    /// of this machine (no isolation; for comparison in `make bench`).
    #[arg(
        long,
        value_name = "RUNTIME",
        env = "KUBEVIRT_RS_POD_RUNTIME",
        default_value = "runc"
    )]
    pub pod_runtime: PodRuntime,
}

/// How the pod runner runs pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PodRuntime {
    Runc,
    Process,
}

/// A usage error on one line, as every other error of the binary is: clap's message, its
/// tips (`a similar subcommand exists: 'server'`), and the command whose `--help` to read,
/// found in `argv` (clap names it only for some errors).
pub fn usage_error(err: &clap::Error, argv: &[String]) -> String {
    let text = err.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let mut message = first.strip_prefix("error: ").unwrap_or(first).to_owned();
    for tip in lines.filter_map(|l| l.strip_prefix("tip: ")) {
        message.push_str("; ");
        message.push_str(tip);
    }
    // Only subcommands take flags, so the first word that is not one names the subcommand.
    let subcommand = argv
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .filter(|a| Cli::command().find_subcommand(a.as_str()).is_some());
    match subcommand {
        Some(sub) => format!("{message} (see 'kubevirt-rs {sub} --help')"),
        None => format!("{message} (see 'kubevirt-rs --help')"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_args(argv: &[&str]) -> ServerArgs {
        let cli = Cli::try_parse_from([&["kubevirt-rs", "server"], argv].concat()).unwrap();
        let Command::Server(args) = cli.command else {
            panic!("not the server command")
        };
        args
    }

    #[test]
    fn flags_parse() {
        let args = server_args(&[
            "--data-dir",
            "/tmp/d",
            "--listen",
            "[::]:7443",
            "--advertise-host",
            "vms.example.org",
            "--node-name",
            "node7",
            "--launcher",
            "/opt/virt-launcher",
        ]);
        assert_eq!(
            args,
            ServerArgs {
                data_dir: "/tmp/d".into(),
                listen: "[::]:7443".parse().unwrap(),
                advertise_host: Some("vms.example.org".into()),
                node_name: Some("node7".into()),
                nodes: 1,
                launcher: Some("/opt/virt-launcher".into()),
                api_only: false,
                host_disk_dir: Vec::new(),
                pod_runtime: PodRuntime::Runc,
            }
        );
    }

    #[test]
    fn a_bad_listen_address_is_refused() {
        let err = Cli::try_parse_from(["kubevirt-rs", "server", "--listen", "6443"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }

    fn usage_error_of(argv: &[&str]) -> String {
        let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
        usage_error(&Cli::try_parse_from(&argv).unwrap_err(), &argv)
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_help_to_read() {
        for (argv, want) in [
            (
                &["kubevirt-rs", "server", "--bogus"][..],
                "unexpected argument '--bogus' found (see 'kubevirt-rs server --help')",
            ),
            (
                &["kubevirt-rs", "server", "--listen", "6443"],
                "invalid value '6443' for '--listen <ADDR:PORT>': invalid socket address syntax \
                 (see 'kubevirt-rs server --help')",
            ),
            (
                &["kubevirt-rs", "serve"],
                "unrecognized subcommand 'serve'; a similar subcommand exists: 'server' \
                 (see 'kubevirt-rs --help')",
            ),
            (
                &["kubevirt-rs", "server", "--data-dir"],
                "a value is required for '--data-dir <DIR>' but none was supplied \
                 (see 'kubevirt-rs server --help')",
            ),
        ] {
            let got = usage_error_of(argv);
            assert_eq!(got, want, "{argv:?}");
        }
    }
}
