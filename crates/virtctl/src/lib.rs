//! virtctl: the KubeVirt command line, also run by kubectl as `kubectl virt`
//! (kubectl runs `kubectl-virt` from PATH with the remaining arguments).
//!
//! Owns: the verbs and their flags ([`cli`]), reading the kubeconfig and namespace, the
//! calls to `subresources.kubevirt.io/v1` (lifecycle PUTs, `guestosinfo`, `version`), the
//! console and VNC websockets (subprotocol `plain.kubevirt.io`), the terminal's raw
//! mode, and `create vm`'s manifest.
//!
//! Does not own: what a subresource does (virt-api decides; this only asks), the API
//! types (crate `api`).
//!
//! A console session, step by step:
//! 1. Open the websocket through the API server, retrying a VMI that is not there or
//!    not running yet until `--timeout` (minutes) passes.
//! 2. Put the terminal in raw mode when stdin is one (restored on every exit path).
//! 3. Pipe stdin to binary messages and binary messages to stdout; `^]` leaves; a ping
//!    every 10 s keeps idle sessions (and the proxies between) from dropping it.

pub mod cli;
mod client;
mod commands;
mod create;
pub mod expose;
mod forward;
mod stream;
mod web;

pub use cli::Cli;
pub use client::Ctx;

/// Why a command failed; printed as one line, `virtctl: ...`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("kubeconfig: {0}")]
    Config(String),
    /// The server's answer (a `Status` message).
    #[error("{message}")]
    Api { code: u16, message: String },
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("websocket: {0}")]
    WebSocket(String),
    /// The local ssh or scp ended with this status (it has said why).
    #[error("exit status {0}")]
    Exit(i32),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    pub(crate) fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |e| match e {
            kube::Error::Api(s) => Self::Api {
                code: s.code,
                message: if s.message.is_empty() {
                    format!("{what}: the server answered {}", s.code)
                } else {
                    s.message.clone()
                },
            },
            source => Self::Request { what, source },
        }
    }
}

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<(), Error> {
    if let cli::Command::Create {
        what: cli::CreateCommand::Vm(args),
    } = &cli.command
    {
        // Client-side only: no kubeconfig needed.
        print!("{}", create::vm_yaml(args)?);
        return Ok(());
    }
    if let cli::Command::Version { client: true } = &cli.command {
        println!("Client Version: {}", commands::client_version());
        return Ok(());
    }
    // ssh and scp run the local client, whose ProxyCommand is this binary again.
    let proxy = forward::Proxy {
        kubeconfig: cli.kubeconfig.as_deref(),
        namespace: cli.namespace.as_deref(),
    };
    fn ssh_options(a: &cli::SshArgs) -> forward::SshOptions<'_> {
        forward::SshOptions {
            identity: a.identity_file.as_ref(),
            port: a.port,
            known_hosts: a.known_hosts.as_ref(),
            local_opts: &a.local_ssh_opts,
        }
    }
    let status = match &cli.command {
        cli::Command::Ssh {
            destination,
            ssh,
            command,
        } => Some(forward::ssh(
            &proxy,
            &ssh_options(ssh),
            ssh.username.as_deref(),
            destination,
            command.as_deref(),
        )?),
        cli::Command::Scp {
            source,
            destination,
            ssh,
            recursive,
        } => Some(forward::scp(
            &proxy,
            &ssh_options(ssh),
            ssh.username.as_deref(),
            *recursive,
            source,
            destination,
        )?),
        _ => None,
    };
    if let Some(status) = status {
        return if status.success() {
            Ok(())
        } else {
            Err(Error::Exit(status.code().unwrap_or(1)))
        };
    }
    let ctx = Ctx::new(cli.kubeconfig.as_deref(), cli.namespace.clone()).await?;
    commands::run(&ctx, cli.command).await
}
