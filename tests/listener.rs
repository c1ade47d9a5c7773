//! The listener's limits: its connection cap (connections beyond it wait in the backlog, and are
//! served as soon as one closes), and resource exhaustion with the real binary in its own process:
//! when accept fails for lack of descriptors (EMFILE), Palisade keeps running, does not spin on the
//! error, logs it, and serves again as soon as descriptors are free (bad-inputs.md rows 32–33).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use support::{
    Proxy,
    process::Palisade,
    raw::{Fate, RawConn},
    upstream::Upstream,
};

/// User + system CPU time of a process, in clock ticks (from /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn get(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /after HTTP/1.1\r\nhost: a.test\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_listener_backs_off_and_recovers() {
    let up = Upstream::start("a").await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[admin]
listen = "127.0.0.1:0"
[runtime]
workers = 1
[access_log]
enabled = false
[listeners.web]
listen = "127.0.0.1:0"
[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
cluster = "up"
[clusters.up]
endpoints = ["{}"]
"#,
        up.addr()
    );
    std::fs::write(dir.path().join("p.toml"), config).unwrap();
    let mut proxy = Palisade::spawn_under(
        &["prlimit", "--nofile=64:64", "--"],
        &["run", "-c", "p.toml"],
        dir.path(),
    );
    let addr: SocketAddr = proxy.wait_for(Duration::from_secs(20), |_, line| {
        let rest = line.split("listener=web address=").nth(1)?;
        rest.split_whitespace().next()?.parse().ok()
    });

    // Far more connections than descriptors: the kernel queues them, accept runs dry.
    let held: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(
        held.len() > 64,
        "only {} client connections opened",
        held.len()
    );
    proxy.wait_for(Duration::from_secs(20), |_, line| {
        line.contains("accept failed").then_some(())
    });

    // While out of descriptors it waits between attempts instead of spinning on the error.
    let (t0, c0) = (Instant::now(), cpu_ticks(proxy.pid()));
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_ticks(proxy.pid()) - c0) as f64 / 100.0 / t0.elapsed().as_secs_f64();
    assert!(
        busy < 0.5,
        "palisade used {:.0}% of a core while out of descriptors",
        busy * 100.0
    );

    // Descriptors come back: the same listener serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(a) = get(addr).filter(|a| a.starts_with("HTTP/1.1 200")) {
            break a;
        }
        assert!(Instant::now() < deadline, "the listener never recovered");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_one_closes() {
    let up = Upstream::start("up").await;
    let proxy = Proxy::start(&format!(
        "[listeners.web]\nmax_connections = 2\n{}",
        support::one_route(&[up.addr()])
    ))
    .await;
    let request = b"GET /capped HTTP/1.1\r\nhost: a.test\r\n\r\n";
    let mut first = RawConn::connect(proxy.addr()).await;
    first.send(request).await;
    assert_eq!(first.read_response().await.status, 200);
    let mut second = RawConn::connect(proxy.addr()).await;
    second.send(request).await;
    assert_eq!(second.read_response().await.status, 200);

    // A third connection is over the cap: the kernel holds it, Palisade does not accept it.
    let mut third = RawConn::connect(proxy.addr()).await;
    third.send(request).await;
    assert_eq!(
        third.fate(Duration::from_millis(500)).await,
        Fate::Open,
        "served beyond the cap"
    );
    assert_eq!(up.hits(), 2);

    // One closes: the waiting connection is accepted and answered.
    drop(first);
    assert_eq!(third.read_response().await.status, 200);
    assert_eq!(up.hits(), 3);
}
