//! Hot reload and binary upgrade end to end: the real `palisade` binary as a child process, real
//! HTTP upstreams in the test, and the ways an operator changes a running proxy: SIGHUP, the file
//! watch (atomic rename, Kubernetes-style symlink swap), `--fallback-last-good`, SIGUSR2 and
//! `palisade upgrade`.
//!
//! Not here: the reload pipeline's rules (unit tests in `src/reload/`) and the admin API against an
//! in-process proxy (`tests/admin.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde_json::Value;
use support::{
    EchoServer, STEP, client, get,
    process::{Palisade, Stream, run},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The ports a process listens on. They must be known before it starts: `palisade upgrade` reads
/// the admin address from the file, and a reload re-binds a listener configured with port 0.
struct Ports {
    web: SocketAddr,
    admin: SocketAddr,
}

impl Ports {
    /// Two free ports (bound, then closed), as `support::refused_addr` finds them.
    fn free() -> Ports {
        let web = support::refused_addr();
        loop {
            let admin = support::refused_addr();
            if admin != web {
                return Ports { web, admin };
            }
        }
    }
}

/// A config with clusters `a` and `b`, everything routed to `cluster`; `reload` is the body of the
/// `[reload]` table.
fn config(ports: &Ports, a: SocketAddr, b: SocketAddr, cluster: &str, reload: &str) -> String {
    format!(
        r#"
[admin]
listen = "{admin}"

[access_log]
enabled = false

[shutdown]
drain_delay = "0s"

[reload]
{reload}

[listeners.web]
listen = "{web}"

[[routes]]
name = "all"
cluster = "{cluster}"
[routes.match]
path_prefix = "/"

[clusters.a]
endpoints = ["{a}"]

[clusters.b]
endpoints = ["{b}"]
"#,
        admin = ports.admin,
        web = ports.web,
    )
}

/// Two upstreams answering "A" and "B", a temp dir for `palisade.toml`, and free ports: what each
/// test here starts from (the dir lives as long as the binding).
struct Setup {
    a: EchoServer,
    b: EchoServer,
    dir: tempfile::TempDir,
    path: std::path::PathBuf,
    ports: Ports,
}

impl Setup {
    async fn new() -> Setup {
        let (a, b) = (EchoServer::start("A").await, EchoServer::start("B").await);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("palisade.toml");
        Setup {
            a,
            b,
            dir,
            path,
            ports: Ports::free(),
        }
    }
}

/// Without the watch, so that only the signal under test reloads.
const NO_WATCH: &str = "watch = false";

fn version_of(text: &str) -> String {
    let source = palisade::config::parse(text, ".".into()).unwrap();
    palisade::config::version_of(&source.config)
}

/// Starts `palisade run -c PATH EXTRA…` in the file's directory and waits until it is live.
fn start(path: &Path, extra: &[&str]) -> Palisade {
    let mut args = vec!["run", "-c", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    let mut p = Palisade::spawn(&args, path.parent().unwrap());
    tokio::task::block_in_place(|| {
        p.wait_for(STEP, |_, l| l.contains("Palisade is live").then_some(()));
    });
    p
}

fn signal(pid: u32, sig: Signal) {
    nix::sys::signal::kill(Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// Which upstream answered a request through the proxy.
async fn served_by(web: SocketAddr) -> String {
    let r = get(&format!("http://{web}/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.upstream().to_owned()
}

async fn admin_json(admin: SocketAddr, path: &str) -> Value {
    let r = get(&format!("http://{admin}{path}")).await;
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// Like [`admin_json`], `None` on any failure (the admin port changes hands during an upgrade).
async fn try_admin_json(admin: SocketAddr, path: &str) -> Option<Value> {
    let rsp = client()
        .get(format!("http://{admin}{path}"))
        .send()
        .await
        .ok()?;
    if !rsp.status().is_success() {
        return None;
    }
    serde_json::from_slice(&rsp.bytes().await.ok()?).ok()
}

/// The history entries with this trigger and outcome.
fn entries<'h>(history: &'h Value, trigger: &str, outcome: &str) -> Vec<&'h Value> {
    history["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("no entries in {history}"))
        .iter()
        .filter(|e| e["trigger"] == trigger && e["outcome"] == outcome)
        .collect()
}

/// Polls the history until it has an entry with this trigger and outcome, and returns it.
async fn wait_for_entry(admin: SocketAddr, trigger: &str, outcome: &str) -> Value {
    let deadline = Instant::now() + STEP;
    loop {
        let h = admin_json(admin, "/config/history").await;
        if let Some(e) = entries(&h, trigger, outcome).first() {
            return (*e).clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {trigger}/{outcome} entry in the history: {h}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_served_by(web: SocketAddr, name: &str) {
    support::eventually(&format!("requests answered by {name}"), STEP, || async {
        served_by(web).await == name
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_file() {
    let Setup {
        a,
        b,
        dir: _dir,
        path,
        ports,
    } = Setup::new().await;
    std::fs::write(&path, config(&ports, a.addr(), b.addr(), "a", NO_WATCH)).unwrap();
    let p = start(&path, &[]);
    assert_eq!(served_by(ports.web).await, "A");
    let to_b = config(&ports, a.addr(), b.addr(), "b", NO_WATCH);
    std::fs::write(&path, &to_b).unwrap();

    signal(p.pid(), Signal::SIGHUP);
    wait_served_by(ports.web, "B").await;
    let entry = wait_for_entry(ports.admin, "signal", "applied").await;
    let info = admin_json(ports.admin, "/server_info").await;

    assert_eq!(entry["version"], version_of(&to_b));
    assert_eq!(info["config_version"], version_of(&to_b));
    assert_eq!(info["pid"], p.pid(), "reloaded in place, not restarted");
    assert!(a.hits() >= 1 && b.hits() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_on_sighup_keeps_the_running_config() {
    let Setup {
        a,
        b,
        dir: _dir,
        path,
        ports,
    } = Setup::new().await;
    let good = config(&ports, a.addr(), b.addr(), "a", NO_WATCH);
    std::fs::write(&path, &good).unwrap();
    let p = start(&path, &[]);
    let before = admin_json(ports.admin, "/server_info").await;
    std::fs::write(
        &path,
        config(&ports, a.addr(), b.addr(), "nowhere", NO_WATCH),
    )
    .unwrap();

    signal(p.pid(), Signal::SIGHUP);
    let entry = wait_for_entry(ports.admin, "signal", "rejected").await;
    let after = admin_json(ports.admin, "/server_info").await;
    let metrics = get(&format!("http://{}/metrics", ports.admin)).await.text();

    assert_eq!(before["config_version"], version_of(&good));
    assert_eq!(after["config_version"], before["config_version"]);
    assert_eq!(served_by(ports.web).await, "A");
    assert_eq!(entry["previous"], version_of(&good));
    let problems = entry["problems"].as_array().unwrap();
    assert!(
        problems.iter().any(|p| p
            .as_str()
            .is_some_and(|p| p.starts_with("routes[0].cluster: "))),
        "{entry}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l == r#"palisade_config_reloads_total{result="failure"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_applies_an_atomic_rename() {
    let Setup {
        a,
        b,
        dir,
        path,
        ports,
    } = Setup::new().await;
    let watch = "watch = true\nwatch_debounce = \"100ms\"";
    std::fs::write(&path, config(&ports, a.addr(), b.addr(), "a", watch)).unwrap();
    let _p = start(&path, &[]);
    assert_eq!(served_by(ports.web).await, "A");
    let to_b = config(&ports, a.addr(), b.addr(), "b", watch);

    let tmp = dir.path().join(".palisade.toml.tmp");
    std::fs::write(&tmp, &to_b).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    wait_served_by(ports.web, "B").await;
    let entry = wait_for_entry(ports.admin, "file", "applied").await;

    assert_eq!(entry["version"], version_of(&to_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_watch_follows_a_symlink_swap() {
    let (a, b) = (EchoServer::start("A").await, EchoServer::start("B").await);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ports = Ports::free();
    let watch = "watch = true\nwatch_debounce = \"100ms\"";
    // A ConfigMap volume: config.toml -> ..data/config.toml, ..data -> ..<timestamp>.
    std::fs::create_dir(d.join("..2026_a")).unwrap();
    std::fs::write(
        d.join("..2026_a/config.toml"),
        config(&ports, a.addr(), b.addr(), "a", watch),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_a", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.toml", d.join("config.toml")).unwrap();
    let _p = start(&d.join("config.toml"), &[]);
    assert_eq!(served_by(ports.web).await, "A");

    let to_b = config(&ports, a.addr(), b.addr(), "b", watch);
    std::fs::create_dir(d.join("..2026_b")).unwrap();
    std::fs::write(d.join("..2026_b/config.toml"), &to_b).unwrap();
    std::os::unix::fs::symlink("..2026_b", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    wait_served_by(ports.web, "B").await;
    let entry = wait_for_entry(ports.admin, "file", "applied").await;

    assert_eq!(entry["version"], version_of(&to_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_last_good_starts_from_the_last_applied_config() {
    let Setup {
        a,
        b,
        dir,
        path,
        ports,
    } = Setup::new().await;
    let good = config(&ports, a.addr(), b.addr(), "a", NO_WATCH);
    std::fs::write(&path, &good).unwrap();
    let mut first = start(&path, &[]);
    assert_eq!(served_by(ports.web).await, "A");
    first.terminate();
    let status = tokio::task::block_in_place(|| first.wait_exit(STEP));
    assert_eq!(status.code(), Some(0), "{:?}", first.seen);
    std::fs::write(
        &path,
        config(&ports, a.addr(), b.addr(), "nowhere", NO_WATCH),
    )
    .unwrap();

    let (code, stdout, stderr) =
        tokio::task::block_in_place(|| run(&["run", "-c", path.to_str().unwrap()], dir.path()));
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(!stderr.contains("LAST KNOWN GOOD"), "{stderr}");

    let mut p = start(&path, &["--fallback-last-good"]);
    tokio::task::block_in_place(|| {
        p.wait_for(STEP, |s, l| {
            (s == Stream::Stderr && l.contains("LAST KNOWN GOOD")).then_some(())
        });
    });
    let info = admin_json(ports.admin, "/server_info").await;
    let entry = wait_for_entry(ports.admin, "last_good", "applied").await;

    assert_eq!(served_by(ports.web).await, "A");
    assert_eq!(info["config_version"], version_of(&good));
    assert_eq!(entry["version"], version_of(&good));
}

/// Kills, at the end of a test, the processes an upgrade started: they are children of the old
/// `palisade`, not of the test, so nothing else would. Only processes whose command line names this
/// test's own config file are touched.
struct Successors {
    config: String,
    pids: Mutex<Vec<i32>>,
}

impl Successors {
    fn new(config: &Path) -> Successors {
        Successors {
            config: config.to_str().unwrap().to_owned(),
            pids: Mutex::new(Vec::new()),
        }
    }

    fn record(&self, pid: u32) {
        self.pids.lock().unwrap().push(i32::try_from(pid).unwrap());
    }

    /// Whether `pid` runs Palisade with this config (so a reused pid is never killed).
    fn ours(&self, pid: i32) -> bool {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0)
                .any(|arg| arg == self.config.as_bytes())
        })
    }

    /// Upgraded processes with this config that were never recorded (a test failed early).
    fn unrecorded(&self) -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"--upgrade-from"))
            })
            .collect()
    }
}

impl Drop for Successors {
    fn drop(&mut self) {
        let mut pids = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        pids.extend(self.unrecorded());
        for pid in pids {
            if self.ours(pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// What a client loop saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    /// Each failure, with when it happened.
    errors: Mutex<Vec<(Instant, String)>>,
    /// When each successful request finished.
    done_at: Mutex<Vec<Instant>>,
}

impl Tally {
    fn record(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.ok.fetch_add(1, Ordering::SeqCst);
                self.done_at.lock().unwrap().push(Instant::now());
            }
            Err(e) => self.errors.lock().unwrap().push((Instant::now(), e)),
        }
    }

    fn ok(&self) -> usize {
        self.ok.load(Ordering::SeqCst)
    }

    /// The failures, each timed from `origin` (the upgrade's trigger).
    fn errors_since(&self, origin: Instant) -> Vec<String> {
        self.errors
            .lock()
            .unwrap()
            .iter()
            .map(|(t, e)| format!("{:?} after the trigger: {e}", t.duration_since(origin)))
            .collect()
    }

    /// The longest time without a successful request between `from` and `to`.
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        let mut points = vec![from];
        points.extend(
            self.done_at
                .lock()
                .unwrap()
                .iter()
                .filter(|t| **t > from && **t < to),
        );
        points.push(to);
        points
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    }
}

/// One request per connection (`Connection: close`), read to EOF.
async fn fresh_connection_request(web: SocketAddr, i: usize) -> Result<(), String> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(web)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET /fresh/{i} HTTP/1.1\r\nHost: palisade\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&out).into_owned();
        if text.starts_with("HTTP/1.1 200") && text.contains(&format!("/fresh/{i}")) {
            Ok(())
        } else {
            Err(format!("unexpected answer: {text:?}"))
        }
    };
    match tokio::time::timeout(STEP, exchange).await {
        Ok(r) => r.map_err(|e| format!("request {i} on a new connection: {e}")),
        Err(_) => Err(format!("request {i} on a new connection: timed out")),
    }
}

/// Sequential requests through one client: one keep-alive connection while the server keeps it.
async fn keep_alive_request(c: &reqwest::Client, web: SocketAddr, i: usize) -> Result<(), String> {
    let rsp = c
        .get(format!("http://{web}/keep/{i}"))
        .send()
        .await
        .map_err(|e| format!("keep-alive request {i}: {e:?}"))?;
    let status = rsp.status();
    let body = rsp
        .text()
        .await
        .map_err(|e| format!("keep-alive request {i} body: {e:?}"))?;
    if status == 200 && body.contains(&format!("/keep/{i}")) {
        Ok(())
    } else {
        Err(format!("keep-alive request {i}: {status} {body}"))
    }
}

/// Runs a binary upgrade (started by `trigger`) under two client loops and checks that no request
/// failed, that requests were served before, during and after it, and that the old process exited 0.
async fn upgrade_under_traffic(trigger: impl FnOnce(&Palisade, &Path)) {
    let a = EchoServer::start("A").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    let ports = Ports::free();
    std::fs::write(&path, config(&ports, a.addr(), a.addr(), "a", NO_WATCH)).unwrap();
    let successors = Successors::new(&path);
    let mut old = start(&path, &[]);
    let old_pid = old.pid();
    let web = ports.web;

    let stop = Arc::new(AtomicBool::new(false));
    let (fresh, keep) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let fresh_loop = tokio::spawn({
        let (stop, tally) = (Arc::clone(&stop), Arc::clone(&fresh));
        async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                tally.record(fresh_connection_request(web, i).await);
                i += 1;
            }
        }
    });
    let keep_loop = tokio::spawn({
        let (stop, tally) = (Arc::clone(&stop), Arc::clone(&keep));
        async move {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                tally.record(keep_alive_request(&c, web, i).await);
                i += 1;
            }
        }
    });
    support::eventually("both client loops to be served", STEP, || async {
        fresh.ok() >= 20 && keep.ok() >= 20
    })
    .await;

    let started = Instant::now();
    trigger(&old, &path);
    let deadline = Instant::now() + 3 * STEP;
    let new_pid = loop {
        if let Some(pid) = try_admin_json(ports.admin, "/server_info")
            .await
            .and_then(|i| i["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != old_pid)
        {
            break pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new process answered /server_info; output:\n{:?}",
            old.seen
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    successors.record(new_pid);
    let status = tokio::task::block_in_place(|| old.wait_exit(3 * STEP));
    let exited = Instant::now();
    tokio::task::block_in_place(|| {
        old.wait_for(STEP, |_, l| {
            l.contains("handed over to the new process").then_some(())
        });
    });
    let (fresh_at_exit, keep_at_exit) = (fresh.ok(), keep.ok());
    support::eventually(
        "both loops to be served by the new process",
        STEP,
        || async { fresh.ok() >= fresh_at_exit + 20 && keep.ok() >= keep_at_exit + 20 },
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    fresh_loop.await.unwrap();
    keep_loop.await.unwrap();
    let info = admin_json(ports.admin, "/server_info").await;

    assert_eq!(status.code(), Some(0), "the old process drains and exits 0");
    assert_eq!(
        info["pid"], new_pid,
        "the new process serves the admin port"
    );
    for (name, t) in [("new connections", &fresh), ("keep-alive", &keep)] {
        let errors = t.errors_since(started);
        assert!(
            errors.is_empty(),
            "{name}: failed requests: {errors:#?}\nold process exited {:?} after the trigger; \
             upgrade log:\n{}",
            exited.duration_since(started),
            upgrade_log(&old)
        );
        let gap = t.longest_gap(started, exited);
        assert!(
            gap < Duration::from_secs(5),
            "{name}: nothing served for {gap:?} during the upgrade"
        );
    }
}

/// The log lines about the upgrade and the drain (both processes write to the same pipes).
fn upgrade_log(p: &Palisade) -> String {
    p.seen
        .iter()
        .map(|(_, l)| l.as_str())
        .filter(|l| {
            ["upgrade", "drain", "handed over", "listening"]
                .iter()
                .any(|k| l.contains(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_upgrade_hands_over_without_dropping_requests() {
    upgrade_under_traffic(|old, _| signal(old.pid(), Signal::SIGUSR2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palisade_upgrade_command_asks_the_running_process() {
    upgrade_under_traffic(|_, path| {
        let (code, stdout, stderr) = tokio::task::block_in_place(|| {
            run(
                &["upgrade", "-c", path.to_str().unwrap()],
                path.parent().unwrap(),
            )
        });
        assert_eq!(code, Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("upgrade started"), "{stdout}");
    })
    .await;
}

/// `POST /drain` drains on demand, as SIGTERM does: the request in flight completes, then the
/// process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_drain_drains_and_exits() {
    let slow = support::Upstream::start_with(
        "slow",
        support::Mode::Slow(std::time::Duration::from_millis(300)),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("palisade.toml");
    let ports = Ports::free();
    std::fs::write(
        &path,
        config(&ports, slow.addr(), slow.addr(), "a", NO_WATCH),
    )
    .unwrap();
    let mut p = start(&path, &[]);
    let web = ports.web;
    let in_flight = tokio::spawn(async move { get(&format!("http://{web}/")).await });
    slow.wait_hits(1).await;
    let r = support::send(client().post(format!("http://{}/drain", ports.admin))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rsp = in_flight.await.unwrap();
    assert_eq!(rsp.status, 200);
    let status = tokio::task::block_in_place(|| p.wait_exit(STEP));
    assert!(status.success(), "{status:?}");
}

/// `POST /reload` re-reads the file, like SIGHUP, and answers with the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_reload_rereads_the_file() {
    let Setup {
        a,
        b,
        dir: _dir,
        path,
        ports,
    } = Setup::new().await;
    std::fs::write(&path, config(&ports, a.addr(), b.addr(), "a", NO_WATCH)).unwrap();
    let _p = start(&path, &[]);
    assert_eq!(served_by(ports.web).await, "A");
    let to_b = config(&ports, a.addr(), b.addr(), "b", NO_WATCH);
    std::fs::write(&path, &to_b).unwrap();

    let r = support::send(client().post(format!("http://{}/reload", ports.admin))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["result"], "applied");
    assert_eq!(r.json()["version"], version_of(&to_b));
    assert_eq!(served_by(ports.web).await, "B");
    wait_for_entry(ports.admin, "api", "applied").await;
}
