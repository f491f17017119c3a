//! `kubevirt-rs`: the all-in-one binary. `kubevirt-rs server` serves the API over HTTPS.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use server::cli::{Cli, Command};
use tokio::signal::unix::{SignalKind, signal};

/// Exit status of a usage error, as clap and most tools use it.
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        // Help and version go to stdout with status 0; no subcommand at all shows the help.
        Err(e)
            if !e.use_stderr()
                || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("kubevirt-rs: {}", server::cli::usage_error(&e, &argv));
            return ExitCode::from(USAGE);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEVIRT_RS_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    // One crypto provider for every TLS user in the process: ring, never a default picked
    // by features.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` prints the error and its sources on one line.
            eprintln!("kubevirt-rs: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let args = match cli.command {
        Command::Server(args) => args,
        Command::Down(args) => {
            drop(runtime);
            let stopped =
                server::down::down(&args.data_dir, Duration::from_secs(args.grace_period))?;
            match stopped.server {
                Some(pid) => println!(
                    "stopped the server (pid {pid}) and {} pods with their VMs",
                    stopped.pods
                ),
                None => println!("stopped {} pods with their VMs", stopped.pods),
            }
            return Ok(());
        }
    };
    let result = runtime.block_on(async {
        // Handlers are installed before anything else, so a signal during startup stops
        // the server cleanly instead of killing it.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let stop = async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "stopping");
        };
        server::run(&args, stop).await?;
        anyhow::Ok(())
    });
    // Connections cut after the drain are abandoned, not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}
