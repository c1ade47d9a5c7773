//! A real `redis-server` as a child process, on its own ephemeral loopback port, for the shared
//! rate-limit tests: start, crash (SIGKILL), restart on the same port, freeze (SIGSTOP) and thaw.
//! Nothing is persisted; every test gets its own server, so tests can run in parallel.
//!
//! It does not talk Redis beyond the `PING` it needs to know the server is ready: tests use the
//! `redis` crate for that.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// How long a starting server may take to answer `PING`.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// A `redis-server` child, killed on drop.
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        // The port is free when read but another process could take it before redis-server binds
        // it: a server that exits at start is retried on a new port.
        for _ in 0..5 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                dir: tempfile::tempdir().expect("temp dir for redis-server"),
            };
            if s.spawn() {
                return s;
            }
        }
        panic!("redis-server never started on a free port (5 tries)");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn pid(&self) -> Pid {
        let child = self.child.as_ref().expect("redis-server is running");
        Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"))
    }

    /// Kills the server with SIGKILL and reaps it: a crash, connections reset, nothing saved.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port (stopping it first if it runs).
    pub fn restart(&mut self) {
        self.stop();
        // Right after a SIGKILL the port can be briefly unavailable; redis-server binds with
        // SO_REUSEADDR, so a few tries are plenty.
        let deadline = Instant::now() + READY_WITHIN;
        while !self.spawn() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not restart on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the process (SIGSTOP): connections stay open, nothing answers. Waits until the
    /// kernel reports it stopped.
    pub fn freeze(&self) {
        kill(self.pid(), Signal::SIGSTOP).expect("SIGSTOP redis-server");
        let stat = format!("/proc/{}/stat", self.pid());
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let s = std::fs::read_to_string(&stat).unwrap_or_default();
            // `pid (comm) state ...`: the state follows the last ')'.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            if state == Some('T') {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server never stopped: {s}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        kill(self.pid(), Signal::SIGCONT).expect("SIGCONT redis-server");
    }

    /// True if the server answers `PING` within `within`.
    pub fn answers(&self, within: Duration) -> bool {
        ping(self.addr(), within)
    }

    /// Spawns redis-server on `self.port` and waits until it answers; false if it exited at start.
    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--dir", &self.dir.path().to_string_lossy()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server not found: scripts/test installs it")
            }
            Err(e) => panic!("cannot run redis-server: {e}"),
        };
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if child.try_wait().expect("try_wait redis-server").is_some() {
                return false;
            }
            // Checks the pid: if another test's server won the port race, ours is about to exit.
            if serves_pid(self.addr(), child.id(), Duration::from_millis(200)) {
                self.child = Some(child);
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "redis-server on port {} did not answer PING within {READY_WITHIN:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One `PING` on a fresh connection; true on `+PONG`.
fn ping(addr: SocketAddr, within: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// True if the server on `addr` is process `pid` (`INFO server` names it).
fn serves_pid(addr: SocketAddr, pid: u32, within: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, within) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(within));
    let _ = s.set_write_timeout(Some(within));
    if s.write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .is_err()
    {
        return false;
    }
    // A bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n") {
            let Some(len) = head.strip_prefix('$').and_then(|l| l.parse::<usize>().ok()) else {
                return false;
            };
            if body.len() >= len {
                return body.contains(&format!("process_id:{pid}\r\n"));
            }
        }
    }
    false
}
