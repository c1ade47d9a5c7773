//! The `palisade` binary as a child process: output read line by line on background threads, a
//! signal sender, and a kill on drop so a failing test never leaves it running.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub struct Palisade {
    child: Child,
    lines: Receiver<(Stream, String)>,
    /// Every line read so far, for failure messages.
    pub seen: Vec<(Stream, String)>,
}

impl Drop for Palisade {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_palisade")
}

/// Runs the binary to completion: (exit code, stdout, stderr).
pub fn run(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_LOG")
        .output()
        .expect("run palisade");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Palisade {
    /// Starts the binary with `args`.
    pub fn spawn(args: &[&str], cwd: &Path) -> Palisade {
        Self::spawn_under(&[], args, cwd)
    }

    /// Starts the binary through a wrapper that execs it (e.g. `prlimit --nofile=64 --`), so the
    /// child's pid is still Palisade's.
    pub fn spawn_under(wrapper: &[&str], args: &[&str], cwd: &Path) -> Palisade {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        let mut child = cmd
            .args(args)
            .current_dir(cwd)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn palisade");
        let (tx, lines) = channel();
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((Stream::Stdout, l)).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                if tx2.send((Stream::Stderr, l)).is_err() {
                    break;
                }
            }
        });
        Palisade {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (blocking, up to `within`) for a line for which `pick` returns something.
    pub fn wait_for<T>(
        &mut self,
        within: Duration,
        mut pick: impl FnMut(Stream, &str) -> Option<T>,
    ) -> T {
        for (s, l) in &self.seen {
            if let Some(v) = pick(*s, l) {
                return v;
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((s, l)) => {
                    let found = pick(s, &l);
                    self.seen.push((s, l));
                    if let Some(v) = found {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => panic!(
                    "palisade never printed the expected line; output so far:\n{}",
                    self.seen
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Sends SIGTERM (through `kill`, as an operator or an orchestrator would).
    pub fn terminate(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits (blocking, polling) up to `within` for the process to exit.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "palisade did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
