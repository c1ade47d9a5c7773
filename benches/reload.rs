//! Reload cost micro-benchmarks: what it takes to turn a config text into the serving snapshot, for
//! 10 routes / 3 clusters and for 1,000 routes / 200 clusters (the target: the large one
//! validates, compiles and swaps in under 200 ms).
//!
//! This file owns only measurement. It times each stage on its own — `config::parse` (text →
//! `Source`), `config::validate`, `snapshot::compile` fresh and with a previous snapshot (a reload,
//! endpoints carried over), `Shared::swap` — and the pipeline as a reload runs it. Per-request
//! routing cost is `benches/routing.rs`.
//!
//! The generated config mixes what real ones hold: exact, multi-name and wildcard hosts, host-less
//! routes, prefixes, a few regexes, method and header conditions, header rewrites, splits, retry and
//! hedge tables, clusters with every balancer, weighted and backup endpoints and fallbacks. Every
//! endpoint is a literal `127.0.0.1` address so nothing resolves, and no cluster has active health
//! checks so no background task opens a connection while others are being timed.
//!
//! The metrics recorder and the allocator are the binary's (`compile` pays for registering its
//! per-route metric handles; validation and compilation allocate a lot, and mimalloc is what they
//! get in the proxy). Snapshots a benchmark produces are returned to divan, which drops them
//! after the timed sample: the old snapshot's drop happens after the swap in a reload too, and does
//! not delay the new config.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{fmt::Write as _, path::PathBuf, sync::LazyLock};

use divan::{Bencher, black_box};
use palisade::{
    access_log::AccessLog,
    config::{self, Source},
    snapshot::{self, Shared, Snapshot},
};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // As `server` does at start: handle registration in `compile` goes to a real recorder.
    palisade::metrics::init();
    divan::main();
}

/// Route counts; the cluster count follows (`clusters_for`).
const SIZES: [usize; 2] = [10, 1000];

/// 10 routes → 3 clusters, 1,000 routes → 200 clusters.
fn clusters_for(routes: usize) -> usize {
    (routes / 5).max(3)
}

/// One runtime for every benchmark: `compile` spawns each cluster's health task, which needs a
/// runtime, and a single worker keeps those tasks off the timed thread's core as far as 2 cores
/// allow (`block_on` runs the compile itself on the calling thread).
static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime")
});

fn cluster_name(j: usize) -> String {
    format!("c{j:03}")
}

/// The TOML text of a config with `routes` routes and `clusters_for(routes)` clusters. `variant`
/// changes one route's timeout and one endpoint's port, so two variants are two versions that differ
/// the way a small edit does.
fn config_text(routes: usize, variant: u8) -> String {
    let clusters = clusters_for(routes);
    let mut t = String::with_capacity(routes * 300 + clusters * 250);
    t.push_str("[listeners.web]\nlisten = \"127.0.0.1:0\"\n\n[access_log]\nenabled = false\n\n");
    t.push_str("[reload]\nstate_dir = \"\"\n\n");
    for i in 0..routes {
        write_route(&mut t, i, routes, variant);
    }
    for j in 0..clusters {
        write_cluster(&mut t, j, clusters, variant);
    }
    t
}

fn write_route(t: &mut String, i: usize, routes: usize, variant: u8) {
    let clusters = clusters_for(routes);
    let c = cluster_name(i % clusters);
    writeln!(t, "[[routes]]\nname = \"route-{i}\"").unwrap();
    if i % 40 == 9 {
        // A canary: 90/10 between this route's cluster and the next one.
        let other = cluster_name((i + 1) % clusters);
        writeln!(
            t,
            "split = [{{ cluster = \"{c}\", weight = 90 }}, {{ cluster = \"{other}\", weight = 10 }}]"
        )
        .unwrap();
    } else {
        writeln!(t, "cluster = \"{c}\"").unwrap();
    }
    if variant == 1 && i == routes / 2 {
        t.push_str("timeout = \"20s\"\n");
    } else if i % 9 == 4 {
        t.push_str("timeout = \"30s\"\n");
    }
    let svc = format!("svc{i}.example.com");
    let shape = if i % 50 == 5 { 6 } else { i % 6 };
    if shape == 5 {
        t.push_str("strip_prefix = \"/static\"\n");
    }
    t.push_str("[routes.match]\n");
    match shape {
        0 => writeln!(
            t,
            "host = [\"{svc}\", \"svc{i}.example.net\"]\npath_prefix = \"/\""
        ),
        1 => writeln!(t, "path = \"/internal/{i}/health\""),
        2 => writeln!(t, "host = \"*.tenant{i}.example.com\"\npath_prefix = \"/api/\""),
        3 => writeln!(
            t,
            "host = \"{svc}\"\npath_prefix = \"/write/\"\nmethods = [\"POST\", \"PUT\"]"
        ),
        4 => writeln!(
            t,
            "host = \"{svc}\"\nheaders = [{{ name = \"x-canary\", value = \"on\" }}]"
        ),
        5 => writeln!(
            t,
            "host = \"{svc}\"\npath_prefix = \"/static/\"\nheaders = [{{ name = \"x-debug\", present = false }}]"
        ),
        _ => writeln!(
            t,
            "host = \"{svc}\"\npath_regex = \"/users/[0-9]+/orders(/[a-z0-9-]+)?\""
        ),
    }
    .unwrap();
    if i % 8 == 2 {
        writeln!(
            t,
            "[routes.request_headers]\nset = {{ \"x-route\" = \"route-{i}\" }}\nremove = [\"x-internal\"]\n[routes.response_headers]\nremove = [\"server\"]"
        )
        .unwrap();
    }
    if i % 10 == 7 {
        t.push_str(
            "[routes.retry]\nattempts = 2\non = [\"connect_failure\", \"reset\", \"5xx\"]\nstatuses = [429]\nper_try_timeout = \"2s\"\nbackoff_base = \"10ms\"\n",
        );
    }
    if i % 25 == 3 {
        let delay = if i % 50 == 3 { "p95" } else { "50ms" };
        writeln!(t, "[routes.hedge]\ndelay = \"{delay}\"").unwrap();
    }
    if i % 100 == 42 {
        t.push_str("[routes.last_resort]\nstatus = 503\nbody = \"down for maintenance\"\n");
    }
    t.push('\n');
}

fn write_cluster(t: &mut String, j: usize, clusters: usize, variant: u8) {
    let name = cluster_name(j);
    writeln!(t, "[clusters.{name}]").unwrap();
    match j % 4 {
        0 => t.push_str("balance = \"round_robin\"\n"),
        1 => t.push_str("balance = \"least_request\"\n"),
        2 => {} // peak_ewma, the default
        _ => t.push_str("balance = \"hash\"\nhash_key = \"header:x-user\"\n"),
    }
    let port = |k: usize| {
        // Slot 3 of each cluster's four ports is free, so the moved endpoint collides with none.
        let moved = variant == 1 && j == clusters / 2 && k == 0;
        20_000 + j * 4 + if moved { 3 } else { k }
    };
    if j.is_multiple_of(3) {
        // Three endpoints: one weighted, and on every third such cluster one backup tier.
        let priority = if j.is_multiple_of(9) {
            ", priority = 1"
        } else {
            ""
        };
        writeln!(
            t,
            "endpoints = [\"127.0.0.1:{}\", {{ address = \"127.0.0.1:{}\", weight = 2 }}, {{ address = \"127.0.0.1:{}\"{priority} }}]",
            port(0),
            port(1),
            port(2)
        )
        .unwrap();
    } else {
        writeln!(
            t,
            "endpoints = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
            port(0),
            port(1)
        )
        .unwrap();
    }
    if j % 10 == 1 {
        writeln!(t, "fallback = \"{}\"", cluster_name(j - 1)).unwrap();
    }
    if j % 5 == 2 {
        t.push_str("connect_timeout = \"500ms\"\n[clusters.");
        t.push_str(&name);
        t.push_str(".pool]\nmax_idle_per_endpoint = 32\n");
    }
    if j % 7 == 3 {
        writeln!(
            t,
            "[clusters.{name}.limits]\nmax_requests = 2000\n[clusters.{name}.outlier_detection]\nconsecutive_5xx = 7"
        )
        .unwrap();
    }
    t.push('\n');
}

fn base_dir() -> PathBuf {
    PathBuf::from(".")
}

/// Parses and checks a generated config: it must be valid and free of warnings, or the benchmark
/// would time an error path.
fn source(routes: usize, variant: u8) -> Source {
    let text = config_text(routes, variant);
    let source = config::parse(&text, base_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(source.config.routes.len(), routes);
    assert_eq!(source.config.clusters.len(), clusters_for(routes));
    let d = config::validate(&source.config, &source.base_dir);
    assert!(
        d.is_ok() && d.warnings.is_empty(),
        "generated config: {:?} {:?}",
        d.errors,
        d.warnings
    );
    source
}

fn compile(source: &Source, previous: Option<&Snapshot>) -> Snapshot {
    RT.block_on(snapshot::compile(source, previous))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// (a) text → `Source`.
#[divan::bench(args = SIZES)]
fn parse(bencher: Bencher<'_, '_>, routes: usize) {
    let text = source(routes, 0).text;
    bencher.bench_local(|| config::parse(black_box(&text), base_dir()).unwrap());
}

/// (b) every check on the parsed model (addresses, regexes, names, shadowing).
#[divan::bench(args = SIZES)]
fn validate(bencher: Bencher<'_, '_>, routes: usize) {
    let source = source(routes, 0);
    bencher.bench_local(|| config::validate(black_box(&source.config), &source.base_dir));
}

/// (c) the first snapshot (start-up): validate again, the router, fresh endpoints, one health task
/// per cluster, the metric handles.
#[divan::bench(args = SIZES)]
fn compile_fresh(bencher: Bencher<'_, '_>, routes: usize) {
    let source = source(routes, 0);
    bencher.bench_local(|| compile(black_box(&source), None));
}

/// (d) a reload: the same, with the previous snapshot lending its endpoints (pools, stats).
#[divan::bench(args = SIZES)]
fn compile_reload(bencher: Bencher<'_, '_>, routes: usize) {
    let previous = compile(&source(routes, 0), None);
    // The new snapshots take the carried endpoints over; the old one's tasks would only add noise.
    previous.retire();
    let source = source(routes, 1);
    bencher.bench_local(|| compile(black_box(&source), Some(&previous)));
}

/// (e) the swap itself: install the new snapshot, retire the old one's background tasks. Each
/// iteration needs a fresh snapshot (compiled outside the timing), hence one iteration per sample.
#[divan::bench(args = SIZES, sample_size = 1, sample_count = 100)]
fn swap(bencher: Bencher<'_, '_>, routes: usize) {
    let sources = [source(routes, 0), source(routes, 1)];
    let shared = Shared::new(compile(&sources[0], None), AccessLog::disabled());
    let mut n = 0usize;
    bencher
        .with_inputs(|| {
            n += 1;
            compile(&sources[n % 2], Some(&shared.load()))
        })
        .bench_local_values(|next| {
            let old = shared.swap(next);
            old.retire();
            old
        });
}

/// (e') the pointer swap alone, to tell it from `retire` (which wakes one health task per cluster
/// so it can stop); the old snapshot's tasks are stopped when divan drops it, after the timing.
#[divan::bench(args = SIZES, sample_size = 1, sample_count = 100)]
fn swap_only(bencher: Bencher<'_, '_>, routes: usize) {
    let sources = [source(routes, 0), source(routes, 1)];
    let shared = Shared::new(compile(&sources[0], None), AccessLog::disabled());
    let mut n = 0usize;
    bencher
        .with_inputs(|| {
            n += 1;
            compile(&sources[n % 2], Some(&shared.load()))
        })
        .bench_local_values(|next| shared.swap(next));
}

/// (f) the pipeline a reload runs up to the point where the new config serves: parse, compile
/// (which validates; it is the only validation on the reload path) with the current snapshot as
/// `previous`, swap, retire the old snapshot. Alternates two versions, so each iteration is a
/// change.
#[divan::bench(args = SIZES)]
fn pipeline(bencher: Bencher<'_, '_>, routes: usize) {
    let texts = [source(routes, 0).text, source(routes, 1).text];
    let shared = Shared::new(compile(&source(routes, 0), None), AccessLog::disabled());
    let mut n = 0usize;
    bencher.bench_local(|| {
        n += 1;
        let source = config::parse(black_box(&texts[n % 2]), base_dir()).unwrap();
        let next = compile(&source, Some(&shared.load()));
        let old = shared.swap(next);
        old.retire();
        (old, source)
    });
}

/// (f') the same plus what `reload::apply` also computes before the swap: the version hash and the
/// diff against the running config (for the history and the log line).
#[divan::bench(args = SIZES)]
fn pipeline_with_diff(bencher: Bencher<'_, '_>, routes: usize) {
    let texts = [source(routes, 0).text, source(routes, 1).text];
    let shared = Shared::new(compile(&source(routes, 0), None), AccessLog::disabled());
    let mut n = 0usize;
    bencher.bench_local(|| {
        n += 1;
        let source = config::parse(black_box(&texts[n % 2]), base_dir()).unwrap();
        let current = shared.load();
        let version = config::version_of(&source.config);
        assert_ne!(version, current.version);
        let next = compile(&source, Some(&current));
        let change = palisade::reload::diff::diff(&current.config, &source.config);
        let old = shared.swap(next);
        old.retire();
        (old, source, change)
    });
}
