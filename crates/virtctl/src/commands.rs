//! The verbs that call the API server.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli::{Command, Kind, VncCommand};
use crate::client::SUBRESOURCES;
use crate::{Ctx, Error, stream};

const VMS: &str = "virtualmachines";
const VMIS: &str = "virtualmachineinstances";

/// Upstream's version information.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct VersionInfo {
    git_version: String,
    git_commit: String,
    git_tree_state: String,
    build_date: String,
    go_version: String,
    compiler: String,
    platform: String,
}

impl std::fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "version.Info{{GitVersion:{:?}, GitCommit:{:?}, GitTreeState:{:?}, BuildDate:{:?}, GoVersion:{:?}, Compiler:{:?}, Platform:{:?}}}",
            self.git_version,
            self.git_commit,
            self.git_tree_state,
            self.build_date,
            self.go_version,
            self.compiler,
            self.platform
        )
    }
}

pub fn client_version() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    VersionInfo {
        git_version: concat!("v", env!("CARGO_PKG_VERSION")).into(),
        build_date: "1970-01-01T00:00:00Z".into(),
        compiler: "rustc".into(),
        platform: format!("{}/{arch}", std::env::consts::OS),
        ..VersionInfo::default()
    }
    .to_string()
}

fn dry_run(on: bool) -> Value {
    if on { json!(["All"]) } else { json!([]) }
}

/// `--force` and `--grace-period` go together, as upstream wants them.
fn forced(grace_period: Option<i64>, force: bool) -> Result<Option<i64>, Error> {
    match (grace_period, force) {
        (Some(g), true) if g >= 0 => Ok(Some(g)),
        (Some(_), true) => Err(Error::Usage("--grace-period must be 0 or more".into())),
        (None, false) => Ok(None),
        (None, true) => Err(Error::Usage(
            "--force needs a grace period (--force --grace-period 0 stops at once)".into(),
        )),
        (Some(_), false) => Err(Error::Usage(
            "--grace-period needs --force (--force --grace-period 0 stops at once)".into(),
        )),
    }
}

pub async fn run(ctx: &Ctx, command: Command) -> Result<(), Error> {
    match command {
        Command::Start {
            name,
            paused,
            dry_run: d,
        } => {
            let body = json!({"paused": paused, "dryRun": dry_run(d)});
            ctx.put(&ctx.path(VMS, &name, "start"), &body).await?;
            println!("VM {name} was scheduled to start");
        }
        Command::Stop {
            name,
            grace_period,
            force,
            dry_run: d,
        } => {
            ending(
                ctx,
                "stop",
                "gracePeriod",
                &name,
                forced(grace_period, force)?,
                d,
            )
            .await?
        }
        Command::Restart {
            name,
            grace_period,
            force,
            dry_run: d,
        } => {
            let grace = forced(grace_period, force)?;
            ending(ctx, "restart", "gracePeriodSeconds", &name, grace, d).await?
        }
        Command::Migrate {
            name,
            added_node_selector,
            dry_run: d,
        } => {
            let selector = node_selector(added_node_selector.as_deref())?;
            let body = json!({"addedNodeSelector": selector, "dryRun": dry_run(d)});
            ctx.put(&ctx.path(VMS, &name, "migrate"), &body).await?;
            println!("VM {name} was scheduled to migrate");
        }
        Command::MigrateCancel { name } => migrate_cancel(ctx, &name).await?,
        Command::Expose(args) => crate::expose::expose(ctx, &args).await?,
        Command::Pause {
            kind,
            name,
            dry_run: d,
        } => pause(ctx, "pause", kind, &name, d).await?,
        Command::Unpause {
            kind,
            name,
            dry_run: d,
        } => pause(ctx, "unpause", kind, &name, d).await?,
        Command::SoftReboot { name } => {
            ctx.put(&ctx.path(VMIS, &name, "softreboot"), &json!({}))
                .await?;
            println!("VMI {name} was scheduled to soft reboot");
        }
        Command::Guestosinfo { name } => agent_query(ctx, &name, "guestosinfo").await?,
        Command::PortForward {
            target,
            ports,
            address,
            stdio,
        } => {
            let target = crate::forward::Target::parse(&target)?;
            crate::forward::port_forward(ctx, &target, &ports, &address, stdio).await?
        }
        Command::Ssh { .. } | Command::Scp { .. } => {
            return Err(Error::Usage("ssh and scp run before connecting".into()));
        }
        Command::Userlist { name } => agent_query(ctx, &name, "userlist").await?,
        Command::Fslist { name } => agent_query(ctx, &name, "filesystemlist").await?,
        Command::Console { name, timeout } => stream::console(ctx, &name, timeout).await?,
        Command::Vnc {
            screenshot: Some(VncCommand::Screenshot { name, file }),
            ..
        } => {
            let png = ctx
                .get_bytes(&ctx.path(VMIS, &name, "vnc/screenshot"))
                .await?;
            std::fs::write(&file, png).map_err(Error::io(format!("writing {}", file.display())))?;
        }
        Command::Vnc {
            name,
            proxy_only,
            web,
            port,
            ..
        } => {
            let name = name.ok_or_else(|| Error::Usage("vnc needs the name of a VMI".into()))?;
            if web {
                crate::web::serve(ctx, &name, port).await?
            } else {
                stream::vnc(ctx, &name, proxy_only, port).await?
            }
        }
        Command::Version { .. } => {
            println!("Client Version: {}", client_version());
            let text = ctx.get(&format!("{SUBRESOURCES}/version")).await?;
            let server: VersionInfo = serde_json::from_str(&text).map_err(|e| Error::Api {
                code: 0,
                message: format!("the server version is not readable: {e}"),
            })?;
            println!("Server Version: {server}");
        }
        Command::Create { .. } => {}
    }
    Ok(())
}

/// `stop` or `restart` with the grace period under the field upstream's options use.
async fn ending(
    ctx: &Ctx,
    op: &str,
    field: &str,
    name: &str,
    grace: Option<i64>,
    d: bool,
) -> Result<(), Error> {
    let mut body = json!({"dryRun": dry_run(d)});
    if let Some(g) = grace {
        body[field] = json!(g);
    }
    ctx.put(&ctx.path(VMS, name, op), &body).await?;
    println!("VM {name} was scheduled to {op}");
    Ok(())
}

/// `pause`/`unpause` act on the VMI, which has the VM's name.
async fn pause(ctx: &Ctx, op: &str, kind: Kind, name: &str, dry: bool) -> Result<(), Error> {
    if kind == Kind::Vm {
        let path = format!(
            "/apis/kubevirt.io/v1/namespaces/{}/{VMS}/{name}",
            ctx.namespace
        );
        ctx.get(&path).await?;
    }
    ctx.put(&ctx.path(VMIS, name, op), &json!({"dryRun": dry_run(dry)}))
        .await?;
    println!("VMI {name} was scheduled to {op}");
    Ok(())
}

/// Prints a guest agent subresource's answer (`guestosinfo`, `userlist`,
/// `filesystemlist`) as indented JSON, as upstream's virtctl does.
async fn agent_query(ctx: &Ctx, name: &str, what: &str) -> Result<(), Error> {
    let text = ctx.get(&ctx.path(VMIS, name, what)).await?;
    let value: Value = serde_json::from_str(&text).map_err(|e| Error::Api {
        code: 0,
        message: format!("the {what} answer is not JSON: {e}"),
    })?;
    println!("{}", serde_json::to_string_pretty(&value).unwrap_or(text));
    Ok(())
}

/// `key=value,key2=value2`.
fn node_selector(text: Option<&str>) -> Result<std::collections::BTreeMap<String, String>, Error> {
    let mut selector = std::collections::BTreeMap::new();
    for pair in text
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::Usage(format!("--addedNodeSelector: {pair:?} is not key=value"))
        })?;
        selector.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(selector)
}

/// Deletes the VMI's unfinished migration, which makes the controller abort it.
async fn migrate_cancel(ctx: &Ctx, name: &str) -> Result<(), Error> {
    use api::v1::VirtualMachineInstanceMigration;
    let api: kube::Api<VirtualMachineInstanceMigration> =
        kube::Api::namespaced(ctx.client.clone(), &ctx.namespace);
    let list = api
        .list(&Default::default())
        .await
        .map_err(Error::kube("listing migrations"))?;
    let active = list.items.iter().find(|m| {
        m.spec.vmi_name.as_deref() == Some(name)
            && m.metadata.deletion_timestamp.is_none()
            && !api::v1::phase::is_final(m.status.as_ref().and_then(|s| s.phase.as_deref()))
    });
    let Some(migration) = active.and_then(|m| m.metadata.name.clone()) else {
        return Err(Error::Usage(format!(
            "found no migration to cancel for {name}"
        )));
    };
    api.delete(&migration, &Default::default())
        .await
        .map_err(Error::kube(format!("deleting migration {migration}")))?;
    println!("VM {name} was scheduled to migrate-cancel");
    Ok(())
}
