//! virtctl: the KubeVirt verbs kubectl does not have. Every command goes through the API
//! server: the `subresources.kubevirt.io/v1` API (served by virt-api through aggregation)
//! for start, stop, restart, pause, unpause, soft reboot, guest OS info, the serial
//! console and VNC, and the kubevirt.io API to wait for a VMI.
//!
//! Owns: flags and their checks ([`cli`]), the API connection from the kubeconfig, bearer
//! token and client certificate alike, including websockets ([`conn`]), the console and
//! VNC streams ([`stream`]), and `create vm` ([`create`]). Does not own: what the
//! operations do (virt-api, the controllers, the handler).
//!
//! Installed as `kubectl-virt` on the PATH, kubectl runs it as `kubectl virt ...`.
//! Errors are one line on stderr (`virtctl: ...`) and exit status 1; usage errors exit 2.

pub mod cli;
pub mod conn;
pub mod create;
pub mod stream;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command, Kind};
use crate::conn::{Conn, Error};

/// Runs virtctl with the process's arguments.
pub fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().collect();
    let plugin = argv
        .first()
        .is_some_and(|a| a.rsplit('/').next() == Some("kubectl-virt"));
    if plugin && let Some(first) = argv.first_mut() {
        *first = "kubectl virt".into();
    }
    let cli = match Cli::try_parse_from(&argv) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtctl: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A console's stdin reader may still block in its thread: do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("virtctl: {e}");
            ExitCode::FAILURE
        }
    }
}

const SUBRESOURCES: &str = "/apis/subresources.kubevirt.io/v1";

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Create(create) = &cli.command {
        print!("{}", create::vm_yaml(create)?);
        return Ok(());
    }
    let conn = Conn::new(cli.kubeconfig.as_deref(), cli.namespace.as_deref()).await?;
    let vm = |name: &str, op: &str| conn.path(&format!("virtualmachines/{name}/{op}"));
    let vmi = |name: &str, op: &str| conn.path(&format!("virtualmachineinstances/{name}/{op}"));
    match cli.command {
        Command::Start {
            name,
            paused,
            dry_run,
        } => {
            let body = options("StartOptions", &[("paused", paused.into())], dry_run);
            conn.put(&vm(&name, "start"), body).await?;
            println!("VM {name} was scheduled to start");
        }
        Command::Stop {
            name,
            grace_period,
            force,
            dry_run,
        } => {
            let body = grace_options("StopOptions", "gracePeriod", grace_period, force, dry_run)?;
            conn.put(&vm(&name, "stop"), body).await?;
            println!("VM {name} was scheduled to stop");
        }
        Command::Restart {
            name,
            grace_period,
            force,
            dry_run,
        } => {
            let body = grace_options(
                "RestartOptions",
                "gracePeriodSeconds",
                grace_period,
                force,
                dry_run,
            )?;
            conn.put(&vm(&name, "restart"), body).await?;
            println!("VM {name} was scheduled to restart");
        }
        Command::Pause {
            kind,
            name,
            dry_run,
        } => {
            let body = options("PauseOptions", &[], dry_run);
            conn.put(&vmi(&name, "pause"), body).await?;
            println!("{} {name} was scheduled to pause", kind.shown());
        }
        Command::Unpause {
            kind,
            name,
            dry_run,
        } => {
            let body = options("UnpauseOptions", &[], dry_run);
            conn.put(&vmi(&name, "unpause"), body).await?;
            println!("{} {name} was scheduled to unpause", kind.shown());
        }
        Command::SoftReboot { name } => {
            conn.put(&vmi(&name, "softreboot"), serde_json::json!({}))
                .await?;
            println!("VMI {name} was scheduled to soft reboot");
        }
        Command::Guestosinfo { name } => {
            let info = conn.get(&vmi(&name, "guestosinfo")).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&info).unwrap_or_default()
            );
        }
        Command::Console { name, timeout } => {
            conn.wait_running(&name, timeout).await?;
            stream::console(&conn, &vmi(&name, "console"), &name).await?;
        }
        Command::Vnc {
            name,
            proxy_only,
            port,
        } => {
            conn.wait_running(&name, 0).await?;
            stream::vnc_proxy(&conn, &vmi(&name, "vnc"), &name, port, proxy_only).await?;
        }
        Command::Version => {
            println!(
                "Client Version: version.Info{{GitVersion:\"v{}\", Compiler:\"rustc\", Platform:\"{}/{}\"}}",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            );
            let server = conn.get(&format!("{SUBRESOURCES}/version")).await?;
            let field = |k: &str| server[k].as_str().unwrap_or_default().to_owned();
            println!(
                "Server Version: version.Info{{GitVersion:\"{}\", GitCommit:\"{}\", Platform:\"{}\"}}",
                field("gitVersion"),
                field("gitCommit"),
                field("platform")
            );
        }
        Command::Create(_) => {}
    }
    Ok(())
}

/// Stop and restart options: the grace period under upstream's field name, checked
/// against `--force`.
fn grace_options(
    kind: &str,
    field: &str,
    grace_period: Option<i64>,
    force: bool,
    dry_run: bool,
) -> Result<serde_json::Value, Error> {
    cli::check_force(force, grace_period)?;
    let fields = grace_period.map(|g| (field, g.into()));
    Ok(options(kind, fields.as_slice(), dry_run))
}

/// An options body as upstream's virtctl sends it.
fn options(kind: &str, fields: &[(&str, serde_json::Value)], dry_run: bool) -> serde_json::Value {
    let mut body = serde_json::json!({"kind": kind, "apiVersion": "subresources.kubevirt.io/v1"});
    for (k, v) in fields {
        body[*k] = v.clone();
    }
    if dry_run {
        body["dryRun"] = serde_json::json!(["All"]);
    }
    body
}

impl Kind {
    fn shown(self) -> &'static str {
        match self {
            Kind::Vm => "VM",
            Kind::Vmi => "VMI",
        }
    }
}
