//! An open-loop HTTP/1.1 load generator for the benchmark scripts, and slow-client attackers.
//!
//! ```text
//! cargo run --release --example loadgen -- run --target 127.0.0.1:8080 --rate 6000 \
//!     --duration 20s --warmup 3s --class crit:10:/critical/x --class api:90:/api/x
//! cargo run --release --example loadgen -- attack --target 127.0.0.1:8080 \
//!     --slowloris 5000 --slowpost 500 --duration 30s
//! ```
//!
//! `run` sends requests at a constant rate, on a schedule fixed in advance: request i is due at
//! start + i / rate whatever the answers so far (open loop, so a slow server cannot slow the
//! offered load down, no coordinated omission). A due request takes an idle keep-alive connection,
//! or opens one (up to `--connections`; beyond, it waits for one, the wait counted in its latency).
//! Each request is drawn from weighted classes (path and headers). At the end it prints one JSON
//! document: per class, the count, p50/p99/p99.9/max latency by outcome (the status code, `timeout`
//! or `error`), the generator's own lateness (how far behind its schedule it dispatched: the timer
//! has 1 ms granularity, so up to ~1 ms is normal; more means the generator itself was short of
//! CPU), and with `--timeseries` the count of each outcome per second of the measured run (by the
//! second the request was sent in). Latency runs from the moment a request is dispatched to the
//! end of its response body.
//!
//! `attack` holds slow connections: slowloris ones (a partial request head, then one more byte every
//! `--slowloris-interval`) and slow-POST ones (a complete head with a large `Content-Length`, then
//! one body byte every `--slowpost-interval`). When the server closes one (or answers, e.g. `408`),
//! it reconnects after `--reconnect-delay`. It prints JSON: how many were held on average and at
//! the end, how the server ended them (and after how long), connect errors.
//!
//! One thread (a current-thread runtime): pin it with taskset.

use std::{
    cell::{Cell, RefCell},
    collections::BTreeMap,
    net::SocketAddr,
    rc::Rc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{HeaderName, HeaderValue, Request, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Notify,
    task::LocalSet,
};

type Error = Box<dyn std::error::Error>;

#[derive(Parser)]
#[command(about = "Open-loop HTTP/1.1 load generator and slow-client attacker")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Constant-rate requests (open loop); prints JSON statistics.
    Run(RunArgs),
    /// Slowloris and slow-POST connections; prints JSON statistics.
    Attack(AttackArgs),
}

#[derive(Args)]
struct RunArgs {
    /// The server, host:port.
    #[arg(long)]
    target: SocketAddr,
    /// Requests per second, all classes together.
    #[arg(long)]
    rate: f64,
    /// The measured part of the run.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Sent at the same rate before the measured part, and not counted.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// A request class, NAME:WEIGHT:PATH[:HEADER=VALUE...] (repeatable; default all:1:/).
    #[arg(long = "class")]
    classes: Vec<String>,
    /// Most connections open at once (a request beyond waits for one).
    #[arg(long, default_value_t = 4000)]
    connections: usize,
    /// A request not answered (body included) within this counts as `timeout`.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// The Host header.
    #[arg(long, default_value = "localhost")]
    host: String,
    /// Also print the count of each outcome per second.
    #[arg(long)]
    timeseries: bool,
    /// Seed of the class draws (default: random).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct AttackArgs {
    /// The server, host:port.
    #[arg(long)]
    target: SocketAddr,
    /// How long to attack.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Slowloris connections to hold.
    #[arg(long, default_value_t = 0)]
    slowloris: usize,
    /// One more byte of the request head this often.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    slowloris_interval: Duration,
    /// Slow-POST connections to hold.
    #[arg(long, default_value_t = 0)]
    slowpost: usize,
    /// One more body byte this often.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    slowpost_interval: Duration,
    /// The slow POST's Content-Length.
    #[arg(long, default_value_t = 1_000_000)]
    content_length: u64,
    /// Path of the slowloris requests.
    #[arg(long, default_value = "/")]
    path: String,
    /// Path of the slow POSTs.
    #[arg(long, default_value = "/upload")]
    post_path: String,
    /// Connections are first opened spread over this long.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// Pause before reconnecting a connection the server ended.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    reconnect_delay: Duration,
    /// The Host header.
    #[arg(long, default_value = "localhost")]
    host: String,
}

fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = LocalSet::new();
    let out = match cli.mode {
        Mode::Run(a) => local.block_on(&runtime, run(a))?,
        Mode::Attack(a) => local.block_on(&runtime, attack(a))?,
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Percentiles (nearest rank), max and mean of `samples` (sorted here), in ms: each sample is
/// `unit_ms` ms (0.001 for microseconds).
fn summary(samples: &mut [u32], unit_ms: f64) -> Value {
    samples.sort_unstable();
    let n = samples.len();
    let at = |q: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let rank = (q * n as f64).ceil() as usize;
        f64::from(samples[rank.clamp(1, n) - 1]) * unit_ms
    };
    let mean = if n == 0 {
        0.0
    } else {
        samples.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64 * unit_ms
    };
    json!({
        "count": n,
        "p50_ms": at(0.50),
        "p90_ms": at(0.90),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "max_ms": at(1.0),
        "mean_ms": mean,
    })
}

/// Microseconds, as [`summary`] takes them.
const US: f64 = 0.001;

// ---- run ------------------------------------------------------------------------------------------

struct Class {
    name: String,
    weight: u32,
    path: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

fn parse_class(spec: &str) -> Result<Class, String> {
    let mut parts = spec.split(':');
    let bad = || format!("bad class {spec:?}: want NAME:WEIGHT:PATH[:HEADER=VALUE...]");
    let name = parts.next().filter(|n| !n.is_empty()).ok_or_else(bad)?;
    let weight = parts
        .next()
        .and_then(|w| w.parse::<u32>().ok())
        .filter(|w| *w > 0)
        .ok_or_else(bad)?;
    let path = parts
        .next()
        .filter(|p| p.starts_with('/'))
        .ok_or_else(bad)?;
    let mut headers = Vec::new();
    for h in parts {
        let (k, v) = h.split_once('=').ok_or_else(bad)?;
        let k = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{spec:?}: {e}"))?;
        let v = HeaderValue::from_str(v).map_err(|e| format!("{spec:?}: {e}"))?;
        headers.push((k, v));
    }
    Ok(Class {
        name: name.to_owned(),
        weight,
        path: path.to_owned(),
        headers,
    })
}

/// Results of the measured requests.
#[derive(Default)]
struct ClassStats {
    sent: u64,
    /// Outcome (status code, `timeout`, `error`) -> latencies in µs.
    latencies: BTreeMap<String, Vec<u32>>,
    /// Outcome -> count per second of the measured run.
    series: BTreeMap<String, Vec<u64>>,
}

/// Keep-alive connections to the target.
struct Pool {
    target: SocketAddr,
    idle: RefCell<Vec<SendRequest<Empty<Bytes>>>>,
    open: Cell<usize>,
    max: usize,
    freed: Notify,
    opened: Cell<u64>,
    peak_open: Cell<usize>,
}

/// A connection taken from the pool: back to it with [`Pool::give_back`], or closed when dropped.
struct Conn {
    tx: Option<SendRequest<Empty<Bytes>>>,
    pool: Rc<Pool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.tx.take().is_some() {
            self.pool.open.set(self.pool.open.get().saturating_sub(1));
            self.pool.freed.notify_one();
        }
    }
}

impl Pool {
    async fn take(self: &Rc<Self>) -> Result<Conn, Error> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let idle = self.idle.borrow_mut().pop();
            if let Some(tx) = idle {
                let mut conn = Conn {
                    tx: Some(tx),
                    pool: Rc::clone(self),
                };
                let ok = match conn.tx.as_mut() {
                    Some(tx) => !tx.is_closed() && tx.ready().await.is_ok(),
                    None => false,
                };
                if ok {
                    return Ok(conn);
                }
                continue; // closed by the server: `conn` drops and frees its place
            }
            if self.open.get() < self.max {
                self.open.set(self.open.get() + 1);
                self.peak_open
                    .set(self.peak_open.get().max(self.open.get()));
                self.opened.set(self.opened.get() + 1);
                match connect(self.target).await {
                    Ok(tx) => {
                        return Ok(Conn {
                            tx: Some(tx),
                            pool: Rc::clone(self),
                        });
                    }
                    Err(e) => {
                        self.open.set(self.open.get().saturating_sub(1));
                        self.freed.notify_one();
                        return Err(e);
                    }
                }
            }
            freed.await;
        }
    }

    fn give_back(&self, mut conn: Conn) {
        if let Some(tx) = conn.tx.take() {
            self.idle.borrow_mut().push(tx);
            self.freed.notify_one();
        }
    }
}

async fn connect(target: SocketAddr) -> Result<SendRequest<Empty<Bytes>>, Error> {
    let stream = TcpStream::connect(target).await?;
    let _ = stream.set_nodelay(true);
    let (tx, driver) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::task::spawn_local(async move {
        let _ = driver.await;
    });
    Ok(tx)
}

/// One exchange: a connection, the request, the whole response body. The status, or an error.
async fn exchange(pool: &Rc<Pool>, req: Request<Empty<Bytes>>) -> Result<u16, Error> {
    let mut conn = pool.take().await?;
    let tx = conn.tx.as_mut().ok_or("no connection")?;
    let rsp = tx.send_request(req).await?;
    let status = rsp.status().as_u16();
    let close = rsp
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    let mut body = rsp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    if !close {
        pool.give_back(conn);
    }
    Ok(status)
}

async fn run(args: RunArgs) -> Result<Value, Error> {
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        return Err("--rate must be above 0".into());
    }
    let specs = if args.classes.is_empty() {
        vec!["all:1:/".to_owned()]
    } else {
        args.classes.clone()
    };
    let classes: Vec<Class> = specs
        .iter()
        .map(|s| parse_class(s))
        .collect::<Result<_, _>>()?;
    let total_weight: u32 = classes.iter().map(|c| c.weight).sum();
    let host = HeaderValue::from_str(&args.host)?;
    let secs = usize::try_from(args.duration.as_secs_f64().ceil() as u64)?.max(1);

    let pool = Rc::new(Pool {
        target: args.target,
        idle: RefCell::new(Vec::new()),
        open: Cell::new(0),
        max: args.connections.max(1),
        freed: Notify::new(),
        opened: Cell::new(0),
        peak_open: Cell::new(0),
    });
    let stats: Rc<RefCell<Vec<ClassStats>>> = Rc::new(RefCell::new(
        classes.iter().map(|_| ClassStats::default()).collect(),
    ));
    let in_flight = Rc::new(Cell::new(0u64));
    let mut rng = args
        .seed
        .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
    let mut late_us: Vec<u32> = Vec::new();

    let interval = 1.0 / args.rate;
    // A little ahead, so that the first requests are not already late.
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let start_unix = unix_now() + 0.020 + args.warmup.as_secs_f64();
    let mut i: u64 = 0;
    let mut sent: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 * interval);
        if due >= end {
            break;
        }
        i += 1;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep_until(due.into()).await;
        }
        let dispatched = Instant::now();
        let measured = due >= measure_from;
        let class = {
            let mut pick = rng.u32(0..total_weight);
            let mut k = 0;
            while pick >= classes[k].weight {
                pick -= classes[k].weight;
                k += 1;
            }
            k
        };
        let sec = if measured {
            let s = usize::try_from(due.duration_since(measure_from).as_secs())?;
            late_us.push(
                u32::try_from(dispatched.duration_since(due).as_micros()).unwrap_or(u32::MAX),
            );
            stats.borrow_mut()[class].sent += 1;
            sent += 1;
            Some(s.min(secs - 1))
        } else {
            None
        };
        let c = &classes[class];
        let mut builder = Request::get(c.path.as_str()).header(header::HOST, host.clone());
        for (k, v) in &c.headers {
            builder = builder.header(k, v.clone());
        }
        let req = builder.body(Empty::<Bytes>::new())?;
        let pool = Rc::clone(&pool);
        let stats = Rc::clone(&stats);
        let in_flight = Rc::clone(&in_flight);
        let timeout = args.timeout;
        in_flight.set(in_flight.get() + 1);
        tokio::task::spawn_local(async move {
            let outcome = tokio::time::timeout(timeout, exchange(&pool, req)).await;
            let took = dispatched.elapsed();
            in_flight.set(in_flight.get().saturating_sub(1));
            let Some(sec) = sec else { return };
            let key = match outcome {
                Ok(Ok(status)) => status.to_string(),
                Ok(Err(_)) => "error".to_owned(),
                Err(_) => "timeout".to_owned(),
            };
            let us = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
            let mut stats = stats.borrow_mut();
            let s = &mut stats[class];
            s.series.entry(key.clone()).or_insert_with(|| vec![0; secs])[sec] += 1;
            s.latencies.entry(key).or_default().push(us);
        });
    }
    let dispatch_end = Instant::now();
    // The stragglers: at most the timeout (and a little).
    let deadline = Instant::now() + args.timeout + Duration::from_millis(500);
    while in_flight.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut out_classes = serde_json::Map::new();
    let mut series = serde_json::Map::new();
    let mut stats = stats.borrow_mut();
    // Every class together.
    let mut all: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for s in stats.iter() {
        for (k, v) in &s.latencies {
            all.entry(k.clone()).or_default().extend_from_slice(v);
        }
    }
    let all: serde_json::Map<String, Value> = all
        .iter_mut()
        .map(|(k, v)| (k.clone(), summary(v, US)))
        .collect();
    for (c, s) in classes.iter().zip(stats.iter_mut()) {
        let done: u64 = s.latencies.values().map(|v| v.len() as u64).sum();
        let mut status = serde_json::Map::new();
        for (k, v) in &mut s.latencies {
            status.insert(k.clone(), summary(v, US));
        }
        out_classes.insert(
            c.name.clone(),
            json!({
                "path": c.path,
                "weight": c.weight,
                "sent": s.sent,
                "unfinished": s.sent.saturating_sub(done),
                "status": status,
            }),
        );
        if args.timeseries {
            series.insert(c.name.clone(), json!(s.series));
        }
    }
    let mut out = json!({
        "target": args.target.to_string(),
        "rate": args.rate,
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": args.duration.as_secs_f64(),
        "start_unix": start_unix,
        "sent": sent,
        "achieved_rate": sent as f64 / dispatch_end.duration_since(measure_from).as_secs_f64().max(1e-9),
        "unfinished": in_flight.get(),
        "connections_opened": pool.opened.get(),
        "connections_peak": pool.peak_open.get(),
        "generator_late": summary(&mut late_us, US),
        "all": all,
        "classes": out_classes,
    });
    if args.timeseries
        && let Some(m) = out.as_object_mut()
    {
        m.insert("timeseries".into(), Value::Object(series));
    }
    Ok(out)
}

// ---- attack ---------------------------------------------------------------------------------------

#[derive(Default)]
struct AttackStats {
    connects: u64,
    connect_errors: u64,
    live: u64,
    peak_live: u64,
    /// How connections ended before the deadline: `closed` (EOF), `reset`, `write_error`, or the
    /// status the server answered with.
    ended: BTreeMap<String, u64>,
    /// How long the server held the connections it ended, in ms.
    held_ms: Vec<u32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Slowloris,
    SlowPost,
}

struct AttackPlan {
    target: SocketAddr,
    head: Bytes,
    interval: Duration,
    kind: Kind,
    deadline: Instant,
    reconnect_delay: Duration,
}

/// The status of an HTTP/1 response's first bytes (`HTTP/1.1 408 ...`), if they hold one.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let line = bytes.split(|b| *b == b'\r').next()?;
    let code = line.split(|b| *b == b' ').nth(1)?;
    std::str::from_utf8(code).ok()?.parse().ok()
}

async fn attacker(plan: Rc<AttackPlan>, stats: Rc<RefCell<[AttackStats; 2]>>, first_at: Instant) {
    let which = usize::from(plan.kind == Kind::SlowPost);
    tokio::time::sleep_until(first_at.into()).await;
    // The slowloris trickle: header lines, one byte at a time.
    let trickle = b"X-a: b\r\n";
    while Instant::now() < plan.deadline {
        let mut pos = 0usize;
        stats.borrow_mut()[which].connects += 1;
        let connected =
            tokio::time::timeout_at(plan.deadline.into(), TcpStream::connect(plan.target)).await;
        let mut stream = match connected {
            Ok(Ok(s)) => s,
            Ok(Err(_)) => {
                stats.borrow_mut()[which].connect_errors += 1;
                tokio::time::sleep(plan.reconnect_delay.max(Duration::from_millis(100))).await;
                continue;
            }
            Err(_) => break,
        };
        let _ = stream.set_nodelay(true);
        let since = Instant::now();
        {
            let mut s = stats.borrow_mut();
            s[which].live += 1;
            s[which].peak_live = s[which].peak_live.max(s[which].live);
        }
        let mut ended: Option<String> = None;
        if stream.write_all(&plan.head).await.is_err() {
            ended = Some("write_error".into());
        }
        let mut buf = [0u8; 512];
        let mut next = Instant::now() + plan.interval;
        while ended.is_none() {
            tokio::select! {
                r = stream.read(&mut buf) => {
                    ended = Some(match r {
                        Ok(0) => "closed".into(),
                        Ok(n) => status_of(&buf[..n]).map_or_else(|| "answered".into(), |s| s.to_string()),
                        Err(_) => "reset".into(),
                    });
                }
                () = tokio::time::sleep_until(next.into()) => {
                    next += plan.interval;
                    let byte = match plan.kind {
                        Kind::Slowloris => {
                            let b = trickle[pos % trickle.len()];
                            pos += 1;
                            b
                        }
                        Kind::SlowPost => b'a',
                    };
                    if stream.write_all(&[byte]).await.is_err() {
                        ended = Some("write_error".into());
                    }
                }
                () = tokio::time::sleep_until(plan.deadline.into()) => break,
            }
        }
        let by_server = ended.is_some();
        {
            let mut s = stats.borrow_mut();
            let s = &mut s[which];
            s.live = s.live.saturating_sub(1);
            if let Some(how) = ended {
                *s.ended.entry(how).or_default() += 1;
                s.held_ms
                    .push(u32::try_from(since.elapsed().as_millis()).unwrap_or(u32::MAX));
            }
        }
        drop(stream);
        if by_server {
            tokio::time::sleep(plan.reconnect_delay).await;
        }
    }
}

async fn attack(args: AttackArgs) -> Result<Value, Error> {
    let start = Instant::now();
    let deadline = start + args.duration;
    let loris_head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadgen-slowloris\r\n",
        args.path, args.host
    );
    let post_head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: loadgen-slowpost\r\nContent-Type: \
         application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        args.post_path, args.host, args.content_length
    );
    let plans = [
        Rc::new(AttackPlan {
            target: args.target,
            head: Bytes::from(loris_head),
            interval: args.slowloris_interval,
            kind: Kind::Slowloris,
            deadline,
            reconnect_delay: args.reconnect_delay,
        }),
        Rc::new(AttackPlan {
            target: args.target,
            head: Bytes::from(post_head),
            interval: args.slowpost_interval,
            kind: Kind::SlowPost,
            deadline,
            reconnect_delay: args.reconnect_delay,
        }),
    ];
    let stats: Rc<RefCell<[AttackStats; 2]>> = Rc::default();
    let total = args.slowloris + args.slowpost;
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let plan = if n < args.slowloris {
            &plans[0]
        } else {
            &plans[1]
        };
        // Spread over the ramp, the two kinds interleaved.
        let at = start + args.ramp.mul_f64(n as f64 / total.max(1) as f64);
        tasks.push(tokio::task::spawn_local(attacker(
            Rc::clone(plan),
            Rc::clone(&stats),
            at,
        )));
    }
    // The number held, sampled each second after the ramp.
    let mut samples: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    let mut tick = start + args.ramp + Duration::from_secs(1);
    while tick < deadline {
        tokio::time::sleep_until(tick.into()).await;
        let s = stats.borrow();
        samples[0].push(s[0].live);
        samples[1].push(s[1].live);
        tick += Duration::from_secs(1);
    }
    let live_at_end = {
        let s = stats.borrow();
        [s[0].live, s[1].live]
    };
    for t in tasks {
        let _ = t.await;
    }
    let mut stats = stats.borrow_mut();
    let mut out = serde_json::Map::new();
    for (k, (name, wanted)) in [("slowloris", args.slowloris), ("slowpost", args.slowpost)]
        .into_iter()
        .enumerate()
    {
        let s = &mut stats[k];
        let sampled = &samples[k];
        let avg = if sampled.is_empty() {
            0.0
        } else {
            sampled.iter().sum::<u64>() as f64 / sampled.len() as f64
        };
        let held = summary(&mut s.held_ms, 1.0);
        out.insert(
            name.to_owned(),
            json!({
                "wanted": wanted,
                "connects": s.connects,
                "connect_errors": s.connect_errors,
                "held_avg": avg,
                "held_min": sampled.iter().min().copied().unwrap_or(0),
                "held_at_end": live_at_end[k],
                "held_peak": s.peak_live,
                "ended_by_server": s.ended,
                "held_before_end_ms": held,
            }),
        );
    }
    Ok(Value::Object(out))
}
