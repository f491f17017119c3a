//! The API server benchmark: the real `kubevirt-rs server` process over HTTPS on a fresh
//! data directory, with a single-node etcd on the same disk measured in the same run.
//!
//! What runs, in order:
//! 1. Start-up: spawn to `/readyz` answering 200, on fresh data directories and on one
//!    that already holds its PKI and store ([`server`]).
//! 2. The server under test and etcd start; their idle memory is read (`VmRSS`, `VmHWM`).
//! 3. `--objects` ConfigMaps are created in one namespace (and the same keys put into
//!    etcd); memory again; then LIST of them, whole and in pages of 500 ([`list`]), and
//!    etcd's range over the same keys; memory again.
//! 4. Watch delivery latency with `--watchers` watchers ([`watch`]); memory again.
//! 5. Writes ([`load`]): for each run and each concurrency, `--ops` creates into a new
//!    namespace then `--ops` updates of them, interleaved with as many etcd puts of new
//!    keys and overwrites, so that both stores see the same moment of a noisy disk.
//! 6. Memory at the end; both processes stop (and are killed when anything fails).
//!
//! The client (this process) shares the machine's cores with the server, and its own
//! TLS, JSON and scheduling are part of every figure.

pub mod client;
mod etcd;
mod list;
mod load;
pub mod process;
mod report;
pub mod server;
mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use crate::proc::{self, Resident};
use etcd::{EtcdClient, EtcdProcess};
use server::ServerProcess;

/// Concurrent clients that fill the collections before the measurements.
const FILL_CLIENTS: usize = 32;
/// Pause before memory is read, for the process to settle.
const SETTLE: Duration = Duration::from_secs(1);
/// kubectl's page size.
const PAGE: usize = 500;
const LIST_NS: &str = "bench-list";
const WATCH_NS: &str = "bench-watch";

/// What the API server benchmark takes from the command line.
#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// The kubevirt-rs binary.
    #[arg(long, default_value = "target/release/kubevirt-rs")]
    pub server: PathBuf,
    /// The etcd binary.
    #[arg(long, default_value = "etcd")]
    pub etcd: PathBuf,
    /// Skip the etcd side.
    #[arg(long)]
    pub no_etcd: bool,
    /// Writes per throughput run.
    #[arg(long, default_value_t = 5000)]
    pub ops: usize,
    /// Concurrent clients for the throughput runs.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub concurrency: Vec<usize>,
    /// Throughput runs per concurrency; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub write_runs: usize,
    /// Objects listed, and present when memory is read.
    #[arg(long, default_value_t = 10_000)]
    pub objects: usize,
    /// Concurrent watchers.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Writes each watcher sees.
    #[arg(long, default_value_t = 200)]
    pub watch_writes: usize,
    /// Writes per second during the watch measurement.
    #[arg(long, default_value_t = 50.0)]
    pub watch_rate: f64,
    /// Where the data directories go (default: the system's temporary directory).
    #[arg(long)]
    pub scratch: Option<PathBuf>,
    /// Where the raw results are written, as JSON.
    #[arg(long, default_value = "target/bench/api.json")]
    pub json: PathBuf,
}

/// Everything measured, raw; the tables are made from it.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    pub ops: usize,
    pub objects: usize,
    pub watchers: usize,
    pub watch_writes: usize,
    pub watch_rate: f64,
    pub startup_fresh_ms: Vec<f64>,
    pub startup_existing_ms: Vec<f64>,
    pub idle: Resident,
    pub with_objects: Resident,
    pub after_lists: Resident,
    pub after_watch: Resident,
    pub at_end: Resident,
    pub list_full_ms: Vec<f64>,
    pub list_paged_ms: Vec<f64>,
    pub watch: report::WatchSummary,
    pub writes: Vec<WriteResults>,
    pub etcd: Option<EtcdResults>,
}

/// Throughput runs at one concurrency.
#[derive(Debug, Default, Serialize)]
pub struct WriteResults {
    pub concurrency: usize,
    pub creates: Batches,
    pub updates: Batches,
    pub etcd_new_keys: Batches,
    pub etcd_overwrites: Batches,
}

/// One kind of write batch, a value per run: ops/s, and the CPU time per op that the
/// measured process (server or etcd) and this client spent, all threads together.
#[derive(Debug, Default, Serialize)]
pub struct Batches {
    pub per_s: Vec<f64>,
    pub cpu_us_per_op: Vec<f64>,
    pub client_cpu_us_per_op: Vec<f64>,
}

impl Batches {
    /// Runs `work`, a batch of `ops` writes that returns its wall time, recording its
    /// figures against process `pid`.
    async fn measure(
        &mut self,
        pid: u32,
        ops: usize,
        work: impl Future<Output = anyhow::Result<Duration>>,
    ) -> anyhow::Result<()> {
        self.measure_with(pid, ops, async { Ok((work.await?, ())) })
            .await
    }

    /// [`Batches::measure`] for work that also returns something.
    async fn measure_with<T>(
        &mut self,
        pid: u32,
        ops: usize,
        work: impl Future<Output = anyhow::Result<(Duration, T)>>,
    ) -> anyhow::Result<T> {
        let me = std::process::id();
        let (cpu_before, client_before) = (proc::cpu_time(pid), proc::cpu_time(me));
        let (took, out) = work.await?;
        let cpu = proc::cpu_time(pid).saturating_sub(cpu_before);
        let client = proc::cpu_time(me).saturating_sub(client_before);
        let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops as f64;
        self.per_s.push(ops as f64 / took.as_secs_f64());
        self.cpu_us_per_op.push(per_op(cpu));
        self.client_cpu_us_per_op.push(per_op(client));
        Ok(out)
    }
}

#[derive(Debug, Default, Serialize)]
pub struct EtcdResults {
    pub version: String,
    pub startup_fresh_ms: f64,
    pub idle: Resident,
    pub with_objects: Resident,
    pub after_ranges: Resident,
    pub at_end: Resident,
    pub range_ms: Vec<f64>,
}

/// Runs the benchmark (see the module docs), prints its tables and writes the JSON.
pub fn run(args: &ApiArgs, runs: usize) -> anyhow::Result<()> {
    anyhow::ensure!(runs > 0 && args.write_runs > 0, "runs must be at least 1");
    anyhow::ensure!(
        args.ops > 0 && args.objects > 0 && args.watchers > 0 && args.watch_writes > 0,
        "--ops, --objects, --watchers and --watch-writes must be at least 1"
    );
    anyhow::ensure!(
        args.concurrency.iter().all(|&c| c > 0),
        "every --concurrency must be at least 1"
    );
    anyhow::ensure!(
        args.watch_rate.is_finite() && args.watch_rate > 0.0,
        "--watch-rate must be positive"
    );
    // reqwest's plain-HTTP clients (etcd) build a TLS configuration too, from the
    // process-wide provider; the HTTPS ones bring their own, also ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(measure(args, runs))?;
    report::print(&results, args, runs);
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&results)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("api: raw results in {}", args.json.display());
    Ok(())
}

fn progress(what: &str) {
    eprintln!("api: {what}");
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn collection(ns: &str) -> String {
    format!("/api/v1/namespaces/{ns}/configmaps")
}

fn etcd_prefix(ns: &str) -> String {
    format!("/registry/configmaps/{ns}/")
}

async fn etcd_clients(etcd: &EtcdProcess, n: usize) -> anyhow::Result<Vec<EtcdClient>> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let client = etcd.client()?;
        anyhow::ensure!(client.healthy().await, "etcd is not healthy");
        clients.push(client);
    }
    Ok(clients)
}

async fn measure(args: &ApiArgs, runs: usize) -> anyhow::Result<Results> {
    let mut builder = tempfile::Builder::new();
    let scratch = builder.prefix("kubevirt-rs-bench-");
    let scratch = match &args.scratch {
        Some(dir) => scratch.tempdir_in(dir),
        None => scratch.tempdir(),
    }
    .context("creating a scratch directory")?;
    let dir = scratch.path();
    let mut results = Results {
        ops: args.ops,
        objects: args.objects,
        watchers: args.watchers,
        watch_writes: args.watch_writes,
        watch_rate: args.watch_rate,
        ..Results::default()
    };

    progress(&format!(
        "start-up, {runs} fresh and {runs} existing data directories"
    ));
    (results.startup_fresh_ms, results.startup_existing_ms) =
        server::startup_times(&args.server, dir, runs).await?;

    progress("starting the server and etcd");
    let (server, _) =
        ServerProcess::start(&args.server, &dir.join("data"), &dir.join("server.log")).await?;
    let mut etcd = None;
    let mut etcd_results = None;
    if !args.no_etcd {
        let (e, took) =
            EtcdProcess::start(&args.etcd, &dir.join("etcd"), &dir.join("etcd.log")).await?;
        etcd_results = Some(EtcdResults {
            version: etcd::version(&args.etcd),
            startup_fresh_ms: ms(took),
            ..EtcdResults::default()
        });
        etcd = Some(e);
    }
    tokio::time::sleep(SETTLE).await;
    results.idle = proc::resident(server.process.pid());
    if let (Some(e), Some(r)) = (&etcd, &mut etcd_results) {
        r.idle = proc::resident(e.process.pid());
    }

    measure_objects(
        args,
        runs,
        &server,
        etcd.as_ref(),
        &mut results,
        etcd_results.as_mut(),
    )
    .await?;

    progress(&format!(
        "watch latency, {} watchers, {} writes at {}/s",
        args.watchers, args.watch_writes, args.watch_rate
    ));
    let outcome = watch::measure(
        &server.endpoint,
        WATCH_NS,
        args.watchers,
        args.watch_writes,
        args.watch_rate,
    )
    .await?;
    results.watch = report::WatchSummary::of(&outcome);
    results.after_watch = proc::resident(server.process.pid());

    results.writes = measure_writes(args, &server, etcd.as_ref()).await?;

    results.at_end = proc::resident(server.process.pid());
    server.process.stop().await.context("stopping the server")?;
    if let (Some(e), Some(r)) = (etcd, etcd_results.as_mut()) {
        r.at_end = proc::resident(e.process.pid());
        e.process.stop().await.context("stopping etcd")?;
    }
    results.etcd = etcd_results;
    Ok(results)
}

/// Fills one namespace with `--objects` ConfigMaps (and etcd with the same keys), reads
/// memory, then times LIST (and etcd's range).
async fn measure_objects(
    args: &ApiArgs,
    runs: usize,
    server: &ServerProcess,
    etcd: Option<&EtcdProcess>,
    results: &mut Results,
    etcd_results: Option<&mut EtcdResults>,
) -> anyhow::Result<()> {
    progress(&format!("creating {} objects", args.objects));
    let path = collection(LIST_NS);
    let admin = server.endpoint.client()?;
    admin.create_namespace(LIST_NS).await?;
    let fill = client::connected(&server.endpoint, FILL_CLIENTS, &path).await?;
    load::create_configmaps(&fill, LIST_NS, args.objects).await?;
    drop(fill);
    let etcd_admin = match etcd {
        Some(e) => {
            let fill = etcd_clients(e, FILL_CLIENTS).await?;
            load::etcd_puts(&fill, &etcd_prefix(LIST_NS), args.objects, 0).await?;
            Some(e.client()?)
        }
        None => None,
    };
    tokio::time::sleep(SETTLE).await;
    results.with_objects = proc::resident(server.process.pid());

    progress(&format!("LIST of {} objects, {runs} runs", args.objects));
    for _ in 0..runs {
        for (limit, out) in [
            (None, &mut results.list_full_ms),
            (Some(PAGE), &mut results.list_paged_ms),
        ] {
            let (took, items) = list::list(&admin, &path, limit).await?;
            anyhow::ensure!(
                items == args.objects,
                "LIST {path} (limit {limit:?}) gave {items} items, not {}",
                args.objects
            );
            out.push(ms(took));
        }
    }
    results.after_lists = proc::resident(server.process.pid());
    if let (Some(e), Some(client), Some(r)) = (etcd, etcd_admin, etcd_results) {
        r.with_objects = proc::resident(e.process.pid());
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let items = client.range_prefix(&etcd_prefix(LIST_NS)).await?;
            r.range_ms.push(ms(started.elapsed()));
            anyhow::ensure!(items == args.objects, "etcd range gave {items} keys");
        }
        r.after_ranges = proc::resident(e.process.pid());
    }
    Ok(())
}

/// For each run and concurrency: creates, etcd puts of new keys, updates, etcd
/// overwrites, each `--ops` long, in a namespace of their own.
async fn measure_writes(
    args: &ApiArgs,
    server: &ServerProcess,
    etcd: Option<&EtcdProcess>,
) -> anyhow::Result<Vec<WriteResults>> {
    let mut all: Vec<WriteResults> = args
        .concurrency
        .iter()
        .map(|&concurrency| WriteResults {
            concurrency,
            ..WriteResults::default()
        })
        .collect();
    let admin = server.endpoint.client()?;
    for run in 0..args.write_runs {
        for results in &mut all {
            let c = results.concurrency;
            progress(&format!(
                "writes, run {}/{}, {c} clients, {} ops each",
                run + 1,
                args.write_runs,
                args.ops
            ));
            let ns = format!("bench-c{c}-r{run}");
            admin.create_namespace(&ns).await?;
            let clients = client::connected(&server.endpoint, c, &collection(&ns)).await?;
            let etcd_clients = match etcd {
                Some(e) => Some(etcd_clients(e, c).await?),
                None => None,
            };
            let ours = server.process.pid();
            let prefix = etcd_prefix(&ns);
            let versions = results
                .creates
                .measure_with(
                    ours,
                    args.ops,
                    load::create_configmaps(&clients, &ns, args.ops),
                )
                .await?;
            if let (Some(e), Some(ec)) = (etcd, &etcd_clients) {
                let puts = load::etcd_puts(ec, &prefix, args.ops, 0);
                results
                    .etcd_new_keys
                    .measure(e.process.pid(), args.ops, puts)
                    .await?;
            }
            let updates = load::update_configmaps(&clients, &ns, versions);
            results.updates.measure(ours, args.ops, updates).await?;
            if let (Some(e), Some(ec)) = (etcd, &etcd_clients) {
                let puts = load::etcd_puts(ec, &prefix, args.ops, 1);
                results
                    .etcd_overwrites
                    .measure(e.process.pid(), args.ops, puts)
                    .await?;
            }
        }
    }
    Ok(all)
}
