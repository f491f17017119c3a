//! The command line of `kubevirt-rs`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    Server(ServerArgs),
}

#[derive(Debug, Clone, PartialEq, Eq, Args)]
pub struct ServerArgs {
    /// Where state, certificates, the admin token and the kubeconfig live.
    #[arg(
        long,
        env = "KUBEVIRT_RS_DATA_DIR",
        default_value = "/var/lib/kubevirt-rs"
    )]
    pub data_dir: PathBuf,
    /// The address to serve HTTPS on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub listen: SocketAddr,
    /// Another name or address clients reach the server by; added to its certificate.
    #[arg(long)]
    pub advertise_host: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_args(argv: &[&str]) -> ServerArgs {
        let cli = Cli::try_parse_from([&["kubevirt-rs", "server"], argv].concat()).unwrap();
        let Command::Server(args) = cli.command;
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
        ]);
        assert_eq!(
            args,
            ServerArgs {
                data_dir: "/tmp/d".into(),
                listen: "[::]:7443".parse().unwrap(),
                advertise_host: Some("vms.example.org".into()),
            }
        );
    }

    #[test]
    fn a_bad_listen_address_is_refused() {
        let err = Cli::try_parse_from(["kubevirt-rs", "server", "--listen", "6443"]).unwrap_err();
        assert!(err.to_string().contains("--listen"), "{err}");
    }
}
