//! The API server benchmark's tables: medians side by side with etcd, the targets,
//! and the raw runs.

use serde::Serialize;

use super::watch::WatchOutcome;
use super::{ApiArgs, Batches, PAGE, Results};
use crate::proc::Resident;
use crate::stats::{median, percentile};

const CREATES_TARGET: f64 = 2000.0;
const WATCH_P99_TARGET_MS: f64 = 20.0;
const IDLE_RSS_TARGET_MIB: f64 = 30.0;
const STARTUP_TARGET_MS: f64 = 200.0;

/// Watch latency percentiles, ms.
#[derive(Debug, Default, Clone, Serialize)]
pub struct WatchSummary {
    pub pairs: usize,
    pub from_ack_p50_ms: f64,
    pub from_ack_p99_ms: f64,
    pub from_ack_max_ms: f64,
    pub from_send_p50_ms: f64,
    pub from_send_p99_ms: f64,
    pub from_send_max_ms: f64,
    pub write_p50_ms: f64,
    pub write_p99_ms: f64,
}

impl WatchSummary {
    pub fn of(o: &WatchOutcome) -> Self {
        let last = |v: &[f64]| v.last().copied().unwrap_or(f64::NAN);
        Self {
            pairs: o.from_ack_ms.len(),
            from_ack_p50_ms: percentile(&o.from_ack_ms, 50.0),
            from_ack_p99_ms: percentile(&o.from_ack_ms, 99.0),
            from_ack_max_ms: last(&o.from_ack_ms),
            from_send_p50_ms: percentile(&o.from_send_ms, 50.0),
            from_send_p99_ms: percentile(&o.from_send_ms, 99.0),
            from_send_max_ms: last(&o.from_send_ms),
            write_p50_ms: percentile(&o.write_ms, 50.0),
            write_p99_ms: percentile(&o.write_ms, 99.0),
        }
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// `ours / theirs`, or nothing without a counterpart.
fn ratio(ours: f64, theirs: Option<f64>) -> String {
    match theirs {
        Some(t) if t > 0.0 => format!("{:.2}x", ours / t),
        _ => String::new(),
    }
}

fn row(measure: &str, ours: String, theirs: Option<String>, ratio: String) {
    let theirs = theirs.unwrap_or_else(|| "n/a".to_owned());
    println!("| {measure} | {ours} | {theirs} | {ratio} |");
}

fn memory(r: Resident) -> String {
    format!("{:.1} / {:.1}", mib(r.rss_kib), mib(r.hwm_kib))
}

/// Prints the tables to stdout.
pub fn print(r: &Results, args: &ApiArgs, runs: usize) {
    let e = r.etcd.as_ref();
    println!(
        "API server: kubevirt-rs server over HTTPS (HTTP/2, bearer token, JSON, admission, \
         validation; SQLite WAL, synchronous=FULL) against {} (gRPC-gateway JSON puts over \
         HTTP/1.1: no TLS, no API machinery), data on the same disk.",
        e.map_or("no etcd", |e| e.version.as_str())
    );
    println!(
        "ConfigMaps of ~300 bytes JSON. Writes: medians of {} runs of {} ops; lists and \
         start-up: medians of {runs}. CPU/op: the measured process's CPU time (all \
         threads) over the batch, per op. Ratio: ours / etcd (throughput: higher is \
         better; time and memory: lower is better).\n",
        args.write_runs, r.ops
    );
    println!("| measure | kubevirt-rs server | etcd | ours / etcd |");
    println!("|---|---|---|---|");
    for w in &r.writes {
        let c = w.concurrency;
        let clients = if c == 1 { "client" } else { "clients" };
        let pairs = [
            (
                "creates/s",
                &w.creates,
                "puts of new keys",
                &w.etcd_new_keys,
            ),
            (
                "updates/s (PUT)",
                &w.updates,
                "overwrites",
                &w.etcd_overwrites,
            ),
        ];
        for (what, ours, etcd_what, theirs) in pairs {
            let cell = |b: &Batches| {
                format!(
                    "{:.0} ({:.0} µs CPU/op)",
                    median(b.per_s.clone()),
                    median(b.cpu_us_per_op.clone())
                )
            };
            row(
                &format!("{what}, {c} {clients} (etcd: {etcd_what})"),
                cell(ours),
                e.map(|_| cell(theirs)),
                ratio(
                    median(ours.per_s.clone()),
                    e.map(|_| median(theirs.per_s.clone())),
                ),
            );
        }
    }
    let full = median(r.list_full_ms.clone());
    let range = e.map(|e| median(e.range_ms.clone()));
    row(
        &format!("LIST {} objects, one answer (etcd: range)", r.objects),
        format!("{full:.0} ms"),
        range.map(|t| format!("{t:.0} ms")),
        ratio(full, range),
    );
    row(
        &format!("LIST {} objects, limit={PAGE}", r.objects),
        format!("{:.0} ms", median(r.list_paged_ms.clone())),
        None,
        String::new(),
    );
    let w = &r.watch;
    row(
        &format!(
            "watch latency from write ack, p50 / p99 ({} watchers x {} events)",
            r.watchers, r.watch_writes
        ),
        format!("{:.1} / {:.1} ms", w.from_ack_p50_ms, w.from_ack_p99_ms),
        None,
        String::new(),
    );
    row(
        "watch latency from write send, p50 / p99",
        format!("{:.1} / {:.1} ms", w.from_send_p50_ms, w.from_send_p99_ms),
        None,
        String::new(),
    );
    let mem_rows = [
        ("memory idle, VmRSS / VmHWM MiB", r.idle, e.map(|e| e.idle)),
        (
            "memory with the objects, before listing, VmRSS / VmHWM MiB",
            r.with_objects,
            e.map(|e| e.with_objects),
        ),
        (
            "memory after the LISTs (etcd: ranges), VmRSS / VmHWM MiB",
            r.after_lists,
            e.map(|e| e.after_ranges),
        ),
        (
            "memory after the watch test, VmRSS / VmHWM MiB",
            r.after_watch,
            None,
        ),
        (
            "memory at the end (after all writes), VmRSS / VmHWM MiB",
            r.at_end,
            e.map(|e| e.at_end),
        ),
    ];
    for (what, ours, theirs) in mem_rows {
        row(
            what,
            memory(ours),
            theirs.map(memory),
            ratio(mib(ours.rss_kib), theirs.map(|t| mib(t.rss_kib))),
        );
    }
    let fresh = median(r.startup_fresh_ms.clone());
    let existing = median(r.startup_existing_ms.clone());
    let etcd_start = e.map(|e| e.startup_fresh_ms);
    row(
        "start-up to ready, fresh data dir (etcd: one start, to /health)",
        format!("{fresh:.0} ms"),
        etcd_start.map(|t| format!("{t:.0} ms")),
        ratio(fresh, etcd_start),
    );
    row(
        "start-up to ready, existing data dir",
        format!("{existing:.0} ms"),
        None,
        String::new(),
    );
    print_targets(r);
    print_raw(r);
}

fn print_targets(r: &Results) {
    let best = r
        .writes
        .iter()
        .map(|w| (median(w.creates.per_s.clone()), w.concurrency))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let w = &r.watch;
    let idle = mib(r.idle.rss_kib);
    let fresh = median(r.startup_fresh_ms.clone());
    let existing = median(r.startup_existing_ms.clone());
    println!("\n| target | result |");
    println!("|---|---|");
    match best {
        Some((rate, c)) => println!(
            "| >= 2,000 creates/s | best median {rate:.0}/s, at {c} clients: {} |",
            met(rate >= CREATES_TARGET)
        ),
        None => println!("| >= 2,000 creates/s | not measured |"),
    }
    println!(
        "| watch p99 <= 20 ms | {:.1} ms from the write's ack: {}; {:.1} ms from its send: {} |",
        w.from_ack_p99_ms,
        met(w.from_ack_p99_ms <= WATCH_P99_TARGET_MS),
        w.from_send_p99_ms,
        met(w.from_send_p99_ms <= WATCH_P99_TARGET_MS)
    );
    println!(
        "| idle RSS <= 30 MiB | {idle:.1} MiB: {} |",
        met(idle <= IDLE_RSS_TARGET_MIB)
    );
    println!(
        "| start-up <= 200 ms | existing data dir {existing:.0} ms: {}; fresh {fresh:.0} ms: {} |",
        met(existing <= STARTUP_TARGET_MS),
        met(fresh <= STARTUP_TARGET_MS)
    );
}

fn print_raw(r: &Results) {
    let round = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    println!();
    for w in &r.writes {
        let client = |b: &Batches| median(b.client_cpu_us_per_op.clone());
        println!(
            "client CPU per op, {} clients (µs): creates {:.0}, updates {:.0}, etcd new keys {:.0}, etcd overwrites {:.0}",
            w.concurrency,
            client(&w.creates),
            client(&w.updates),
            client(&w.etcd_new_keys),
            client(&w.etcd_overwrites)
        );
    }
    for w in &r.writes {
        println!(
            "raw ops/s, {} clients: creates {:?}, updates {:?}, etcd new keys {:?}, etcd overwrites {:?}",
            w.concurrency,
            round(&w.creates.per_s),
            round(&w.updates.per_s),
            round(&w.etcd_new_keys.per_s),
            round(&w.etcd_overwrites.per_s)
        );
    }
    println!(
        "raw LIST ms: full {:?}, limit={PAGE} {:?}",
        round(&r.list_full_ms),
        round(&r.list_paged_ms)
    );
    if let Some(e) = &r.etcd {
        println!("raw etcd range ms: {:?}", round(&e.range_ms));
    }
    println!(
        "raw start-up ms: fresh {:?}, existing {:?}",
        round(&r.startup_fresh_ms),
        round(&r.startup_existing_ms)
    );
    let parts = |what: &str, m: Resident| {
        println!(
            "{what} RSS: {:.1} MiB anonymous, {:.1} MiB file-backed (binary, libraries)",
            mib(m.anon_kib),
            mib(m.file_kib)
        );
    };
    parts("server idle", r.idle);
    parts("server with the objects", r.with_objects);
    parts("server after the LISTs", r.after_lists);
    if let Some(e) = &r.etcd {
        parts("etcd idle", e.idle);
    }
    let w = &r.watch;
    println!(
        "watch: {} (watcher, event) pairs; max {:.1} ms from ack, {:.1} ms from send; the \
         writes themselves took p50 {:.1} ms, p99 {:.1} ms",
        w.pairs, w.from_ack_max_ms, w.from_send_max_ms, w.write_p50_ms, w.write_p99_ms
    );
}
