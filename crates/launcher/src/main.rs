//! `virt-launcher`: runs one VMI. `virt-launcher run --vmi FILE` is the standalone mode.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use launcher::domain::Exit;
use launcher::error_chain;
use launcher::paths::NodePaths;
use launcher::serve::{ServeOptions, serve};
use launcher::standalone::{RunOptions, run};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "virt-launcher",
    version,
    about = "Runs one VirtualMachineInstance as a QEMU process"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VMI in the foreground with its serial console on stdout.
    Run {
        /// The VirtualMachineInstance manifest (YAML or JSON).
        #[arg(long)]
        vmi: PathBuf,
        /// Publish a guest port on a different loopback port: GUEST:HOST.
        #[arg(long, value_parser = parse_publish)]
        publish: Vec<(u16, u16)>,
        /// Do not stream the console to stdout.
        #[arg(long)]
        no_console: bool,
        /// The QEMU binary.
        #[arg(long, env = "KUBEVIRT_RS_QEMU", default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// TCG translation cache size in MiB (software emulation only).
        #[arg(long, default_value_t = 64)]
        tcg_tb_size: u32,
    },
    /// Run in a VMI's pod: wait for the handler on the control socket, then run the VMI.
    Serve {
        /// The VMI's name (for logs).
        #[arg(long)]
        name: String,
        /// The VMI's namespace (for logs).
        #[arg(long)]
        namespace: String,
        /// The VMI's uid: names the control socket.
        #[arg(long)]
        uid: String,
        /// Seconds the guest gets to power off after SIGTERM.
        #[arg(long, default_value_t = 30)]
        grace_period_seconds: u64,
        /// The QEMU binary.
        #[arg(long, env = "KUBEVIRT_RS_QEMU", default_value = "qemu-system-x86_64")]
        qemu: PathBuf,
        /// TCG translation cache size in MiB (software emulation only).
        #[arg(long, default_value_t = 64)]
        tcg_tb_size: u32,
    },
}

fn parse_publish(s: &str) -> Result<(u16, u16), String> {
    let (g, h) = s.split_once(':').ok_or("expected GUEST:HOST")?;
    Ok((
        g.parse().map_err(|_| "bad guest port")?,
        h.parse().map_err(|_| "bad host port")?,
    ))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // What the launcher and QEMU create (run directories, cloud-init ISOs with their
    // passwords and keys, overlays, console logs, sockets) is for their owner alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KUBEVIRT_RS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virt-launcher: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (vmi, publish, no_console, qemu, tcg_tb_size) = match cli.command {
        Command::Run {
            vmi,
            publish,
            no_console,
            qemu,
            tcg_tb_size,
        } => (vmi, publish, no_console, qemu, tcg_tb_size),
        Command::Serve {
            name,
            namespace,
            uid,
            grace_period_seconds,
            qemu,
            tcg_tb_size,
        } => {
            tracing::info!(
                vmi = format!("{namespace}/{name}"),
                uid,
                "virt-launcher serving"
            );
            let opts = ServeOptions {
                uid,
                grace: Duration::from_secs(grace_period_seconds),
                paths: NodePaths::from_process_env(),
                qemu,
                tcg_tb_size_mib: tcg_tb_size,
                accel: None,
            };
            return match runtime.block_on(serve(opts)) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("virt-launcher: {}", error_chain(&e));
                    ExitCode::FAILURE
                }
            };
        }
    };
    let opts = RunOptions {
        vmi_file: vmi,
        paths: NodePaths::from_process_env(),
        qemu,
        published: publish.into_iter().collect::<BTreeMap<_, _>>(),
        console: !no_console,
        tcg_tb_size_mib: tcg_tb_size,
        accel: None,
    };
    match runtime.block_on(run(opts)) {
        Ok(Exit::GuestShutdown | Exit::Stopped { .. }) => ExitCode::SUCCESS,
        Ok(Exit::Crashed { message }) => {
            eprintln!("virt-launcher: guest crashed: {message}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("virt-launcher: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
