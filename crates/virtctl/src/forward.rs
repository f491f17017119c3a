//! `virtctl port-forward` and `virtctl ssh`/`scp`: TCP to a guest's port through
//! virt-api's `portforward` websocket, and the local OpenSSH client over it.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use crate::stream::pipe_halves;
use crate::{Ctx, Error};

/// A VM or VMI named on the command line: `vmi/NAME[.NAMESPACE]`, `vm/NAME[.NAMESPACE]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `virtualmachineinstances` or `virtualmachines`.
    pub plural: &'static str,
    pub name: String,
    pub namespace: Option<String>,
}

impl Target {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let usage = || {
            Error::Usage(format!(
                "{text:?} is not TYPE/NAME[.NAMESPACE] with TYPE vm or vmi"
            ))
        };
        let (kind, rest) = text.split_once('/').ok_or_else(usage)?;
        let plural = match kind {
            "vmi" | "vmis" | "virtualmachineinstance" | "virtualmachineinstances" => {
                "virtualmachineinstances"
            }
            "vm" | "vms" | "virtualmachine" | "virtualmachines" => "virtualmachines",
            _ => return Err(usage()),
        };
        let (name, namespace) = match rest.split_once('.') {
            Some((name, ns)) => (name, Some(ns.to_owned())),
            None => (rest, None),
        };
        if name.is_empty() || namespace.as_deref() == Some("") {
            return Err(usage());
        }
        Ok(Self {
            plural,
            name: name.to_owned(),
            namespace,
        })
    }

    /// The `portforward` subresource for `port`.
    fn path(&self, ctx: &Ctx, port: u16) -> String {
        let namespace = self.namespace.as_deref().unwrap_or(&ctx.namespace);
        format!(
            "{}/namespaces/{namespace}/{}/{}/portforward/{port}/tcp",
            crate::client::SUBRESOURCES,
            self.plural,
            self.name
        )
    }
}

/// `LOCAL:REMOTE`, or one port for both.
pub fn parse_ports(text: &str) -> Result<(u16, u16), Error> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| Error::Usage(format!("{p:?} is not a port number")))
    };
    match text.split_once(':') {
        Some((local, remote)) => Ok((port(local)?, port(remote)?)),
        None => {
            let p = port(text)?;
            Ok((p, p))
        }
    }
}

/// `virtctl port-forward TARGET PORT...`: each local port's connections, or stdin and
/// stdout with `stdio`, piped to the guest's port.
pub async fn port_forward(
    ctx: &Ctx,
    target: &Target,
    ports: &[String],
    address: &str,
    stdio: bool,
) -> Result<(), Error> {
    let ports: Vec<(u16, u16)> = ports
        .iter()
        .map(|p| parse_ports(p))
        .collect::<Result<_, _>>()?;
    if stdio {
        let [(_, remote)] = ports.as_slice() else {
            return Err(Error::Usage("--stdio takes exactly one port".into()));
        };
        let socket = ctx.websocket(&target.path(ctx, *remote)).await?;
        pipe_halves(tokio::io::stdin(), tokio::io::stdout(), socket).await;
        return Ok(());
    }
    let mut listeners = Vec::new();
    for (local, remote) in ports {
        let listener = tokio::net::TcpListener::bind((address, local))
            .await
            .map_err(Error::io(format!("listening on {address}:{local}")))?;
        let bound = listener.local_addr().map_err(Error::io("the local port"))?;
        eprintln!("Forwarding from {bound} -> {remote}");
        listeners.push((listener, remote));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (listener, remote) in listeners {
        let path = target.path(ctx, remote);
        let ctx = ctx.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, peer) = listener
                    .accept()
                    .await
                    .map_err(Error::io("accepting a connection"))?;
                let (ctx, path) = (ctx.clone(), path.clone());
                tokio::spawn(async move {
                    match ctx.websocket(&path).await {
                        Ok(socket) => {
                            let _ = tcp.set_nodelay(true);
                            let (rd, wr) = tcp.into_split();
                            pipe_halves(rd, wr, socket).await;
                        }
                        Err(e) => eprintln!("{peer}: {e}"),
                    }
                });
            }
        });
    }
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(e)) => Err(Error::Usage(format!("port forwarding stopped: {e}"))),
        None => Ok(()),
    }
}

/// What `virtctl ssh` and `scp` pass to the port-forward they run as ssh's
/// ProxyCommand: this binary, the kubeconfig and namespace given.
pub struct Proxy<'a> {
    pub kubeconfig: Option<&'a Path>,
    pub namespace: Option<&'a str>,
}

impl Proxy<'_> {
    /// The ProxyCommand for `target`'s `port`, quoted for ssh's shell.
    fn command(&self, target: &str, port: u16) -> Result<String, Error> {
        let me = std::env::current_exe().map_err(Error::io("finding the virtctl binary"))?;
        let mut words = vec![me.display().to_string()];
        if let Some(k) = self.kubeconfig {
            words.push("--kubeconfig".into());
            words.push(k.display().to_string());
        }
        if let Some(ns) = self.namespace {
            words.push("--namespace".into());
            words.push(ns.to_owned());
        }
        words.extend([
            "port-forward".into(),
            "--stdio=true".into(),
            target.to_owned(),
            port.to_string(),
        ]);
        Ok(words.iter().map(|w| quote(w)).collect::<Vec<_>>().join(" "))
    }
}

/// `word` in single quotes for a POSIX shell.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The host name ssh and scp are given for `target` (`TYPE/NAME[.NS]`):
/// `TYPE.NAME[.NS]`, as upstream's virtctl writes it. scp would take anything with a `/`
/// before its `:` for a local path; the ProxyCommand does the connecting, and the name
/// keys the guest's entry in the known hosts.
fn ssh_host(target: &str) -> String {
    target.replacen('/', ".", 1)
}

/// `USER@TYPE/NAME[.NS]` or `TYPE/NAME[.NS]`: the user, if any, and the target.
pub fn split_user(destination: &str) -> (Option<&str>, &str) {
    match destination.split_once('@') {
        Some((user, target)) => (Some(user), target),
        None => (None, destination),
    }
}

/// Options `virtctl ssh` and `scp` share.
pub struct SshOptions<'a> {
    pub identity: Option<&'a PathBuf>,
    pub port: u16,
    pub known_hosts: Option<&'a PathBuf>,
    pub local_opts: &'a [String],
}

impl SshOptions<'_> {
    /// The arguments before the destination: the proxy, identity, known hosts and the
    /// user's own options (`--local-ssh-opts="-o Foo=bar"`, split on spaces).
    fn args(&self, proxy: &Proxy<'_>, target: &str) -> Result<Vec<String>, Error> {
        let mut args = vec![
            "-o".to_owned(),
            format!("ProxyCommand={}", proxy.command(target, self.port)?),
        ];
        if let Some(identity) = self.identity {
            args.push("-i".into());
            args.push(identity.display().to_string());
        }
        let known_hosts = match self.known_hosts {
            Some(k) => Some(k.clone()),
            None => {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh/kubevirt_known_hosts"))
            }
        };
        if let Some(k) = known_hosts {
            args.push("-o".into());
            args.push(format!("UserKnownHostsFile={}", k.display()));
        }
        for opt in self.local_opts {
            args.extend(opt.split_whitespace().map(str::to_owned));
        }
        Ok(args)
    }
}

fn run_local(program: &str, args: &[String]) -> Result<ExitStatus, Error> {
    std::process::Command::new(program)
        .args(args)
        .status()
        .map_err(Error::io(format!(
            "running {program} (is OpenSSH installed?)"
        )))
}

/// `virtctl ssh [USER@]TYPE/NAME[.NS] [-c COMMAND]`: the local `ssh`, through a
/// port-forward; its exit status is returned.
pub fn ssh(
    proxy: &Proxy<'_>,
    options: &SshOptions<'_>,
    username: Option<&str>,
    destination: &str,
    command: Option<&str>,
) -> Result<ExitStatus, Error> {
    let (user, target) = split_user(destination);
    Target::parse(target)?;
    let mut args = options.args(proxy, target)?;
    if let Some(user) = user.or(username) {
        args.push("-l".into());
        args.push(user.to_owned());
    }
    args.push(ssh_host(target));
    if let Some(command) = command {
        args.push(command.to_owned());
    }
    run_local("ssh", &args)
}

/// `virtctl scp SOURCE DESTINATION`: one side is `[USER@]TYPE/NAME[.NS]:PATH`.
pub fn scp(
    proxy: &Proxy<'_>,
    options: &SshOptions<'_>,
    username: Option<&str>,
    recursive: bool,
    source: &str,
    destination: &str,
) -> Result<ExitStatus, Error> {
    let remote = |s: &str| {
        let (before, _) = s.split_once(':')?;
        let (_, target) = split_user(before);
        Target::parse(target).ok().map(|_| target.to_owned())
    };
    let target = remote(source)
        .or_else(|| remote(destination))
        .ok_or_else(|| {
            Error::Usage("one of SOURCE and DESTINATION must be [USER@]TYPE/NAME[.NS]:PATH".into())
        })?;
    let mut args = options.args(proxy, &target)?;
    if recursive {
        args.push("-r".into());
    }
    // The remote side: `[USER@]TYPE.NAME[.NS]:PATH`, the user from -l when not given.
    let rewrite = |s: &str| {
        if remote(s).is_none() {
            return s.to_owned();
        }
        let (before, path) = s.split_once(':').unwrap_or((s, ""));
        let (user, target) = split_user(before);
        match user.or(username) {
            Some(user) => format!("{user}@{}:{path}", ssh_host(target)),
            None => format!("{}:{path}", ssh_host(target)),
        }
    };
    args.push(rewrite(source));
    args.push(rewrite(destination));
    run_local("scp", &args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_ports_read_as_upstream_writes_them() {
        let t = Target::parse("vmi/testvmi.ns1").unwrap();
        assert_eq!(
            (t.plural, t.name.as_str(), t.namespace.as_deref()),
            ("virtualmachineinstances", "testvmi", Some("ns1"))
        );
        let t = Target::parse("vm/testvm").unwrap();
        assert_eq!((t.plural, t.namespace), ("virtualmachines", None));
        for bad in ["testvm", "pod/x", "vm/", "vm/x."] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_ports("8080:80").unwrap(), (8080, 80));
        assert_eq!(parse_ports("22").unwrap(), (22, 22));
        assert!(parse_ports("http").is_err());
        assert_eq!(split_user("debian@vmi/x"), (Some("debian"), "vmi/x"));
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(ssh_host("vmi/full.default"), "vmi.full.default");
    }
}
