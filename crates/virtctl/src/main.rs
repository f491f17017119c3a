//! `virtctl` (also installed as `kubectl-virt`, which kubectl runs for `kubectl virt`).

use std::time::Duration;

use clap::{CommandFactory, FromArgMatches};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let invoked = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("virtctl");
    let display = if invoked.starts_with("kubectl-virt") {
        "kubectl virt"
    } else {
        "virtctl"
    };
    let matches = match virtctl::Cli::command()
        .bin_name(display)
        .try_get_matches_from(&args)
    {
        Ok(m) => m,
        Err(e) => e.exit(),
    };
    let cli = match virtctl::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // One crypto provider for every TLS client in the process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("virtctl: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(virtctl::run(cli));
    // A console's stdin reader may still be blocked in read(2): do not wait for it.
    runtime.shutdown_timeout(Duration::from_millis(100));
    if let Err(virtctl::Error::Exit(code)) = result {
        // ssh or scp failed and has said why: pass its status on.
        std::process::exit(code);
    }
    if let Err(e) = result {
        let mut line = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !line.contains(&text) {
                line = format!("{line}: {text}");
            }
            source = s.source();
        }
        eprintln!("virtctl: {}", line.replace('\n', " "));
        std::process::exit(1);
    }
}
