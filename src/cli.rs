//! The command line: `run`, `validate` (also `-t`), `demo`, `upgrade`, `--version`; logging
//! set-up; signals.
//!
//! This module turns arguments into one of the library's entry points and owns the process: the
//! tokio runtime (sized by `runtime.workers`), stderr logging, and signals: SIGTERM/SIGINT drain
//! gracefully (a second one exits at once), SIGHUP reloads the config file, SIGUSR2 upgrades the
//! binary (`server::succession`).

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::config::{self, Config, ConfigError, Source};

#[derive(Debug, Parser)]
#[command(
    name = "palisade",
    version,
    about = "A fault-tolerant HTTP reverse proxy and load balancer"
)]
pub struct Cli {
    /// Config file.
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        default_value = "palisade.toml"
    )]
    pub config: PathBuf,
    /// Validate the config and exit (same as `validate`).
    #[arg(short = 't', long = "test")]
    pub test: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve with the config file (the default command).
    Run {
        /// When the config file is invalid, start from the last known good config (kept in the
        /// state directory) instead of refusing to start.
        #[arg(long)]
        fallback_last_good: bool,
        /// Set by the process being upgraded: take its listening sockets from this Unix socket.
        #[arg(long, hide = true, value_name = "SOCKET")]
        upgrade_from: Option<PathBuf>,
    },
    /// Check the config file: prints `configuration ok (version …)` or every problem, and exits 0 or 1.
    Validate {
        /// Also print the compiled routing table.
        #[arg(long)]
        explain: bool,
        /// Re-route the requests of a Palisade access log through this config and report.
        #[arg(long, value_name = "ACCESS_LOG")]
        replay: Option<PathBuf>,
        /// With --replay: compare with this config (the one running now) and report every
        /// request that would land elsewhere.
        #[arg(long, value_name = "FILE", requires = "replay")]
        against: Option<PathBuf>,
    },
    /// Start three demo upstreams and Palisade in front of them, with an embedded config.
    Demo {
        /// Where the demo proxy listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Where the demo admin API listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Where the demo upstreams' fault control API listens.
        #[arg(long, default_value = "127.0.0.1:9902")]
        chaos: std::net::SocketAddr,
    },
    /// Upgrade the running Palisade (the one whose admin port the config names) to the binary now
    /// at its path, without dropping a connection (same as SIGUSR2).
    Upgrade,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match (&cli.command, cli.test) {
        (
            Some(Command::Validate {
                explain,
                replay,
                against,
            }),
            _,
        ) => validate(&cli, *explain, replay.as_deref(), against.as_deref()),
        (_, true) => validate(&cli, false, None, None),
        (Some(Command::Demo { listen, admin, .. }), _) => {
            let source = crate::demo::source(listen, admin);
            serve(&cli, source, Start::Demo, None)
        }
        (
            Some(Command::Run {
                fallback_last_good,
                upgrade_from,
            }),
            false,
        ) => run(&cli, *fallback_last_good, upgrade_from.as_deref()),
        (Some(Command::Upgrade), false) => ask_upgrade(&cli),
        (None, false) => run(&cli, false, None),
    }
}

/// `palisade upgrade`: `POST /upgrade` on the admin port the config names.
fn ask_upgrade(cli: &Cli) -> ExitCode {
    let source = match config::load_file(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            print_problems(&e);
            return ExitCode::FAILURE;
        }
    };
    let admin = &source.config.admin;
    let auth = admin
        .auth_token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "POST /upgrade HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
        admin.listen
    );
    let answer = std::net::TcpStream::connect(&admin.listen).and_then(|mut s| {
        use std::io::{Read, Write};
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
        s.write_all(request.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    });
    match answer {
        Ok(a) if a.starts_with("HTTP/1.1 200") => {
            println!(
                "upgrade started; the running Palisade hands over once the new one is ready (see its log)"
            );
            ExitCode::SUCCESS
        }
        Ok(a) => {
            println!("the admin API refused: {}", a.lines().next().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("cannot reach the admin API at {}: {e}", admin.listen);
            ExitCode::FAILURE
        }
    }
}

/// How `serve` was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Demo,
    File,
    /// The file was invalid and the last known good config stands in for it.
    LastGood,
}

fn run(cli: &Cli, fallback_last_good: bool, upgrade_from: Option<&std::path::Path>) -> ExitCode {
    let problems = match config::load_file(&cli.config) {
        Ok(source) => {
            let d = config::validate(&source.config, &source.base_dir);
            if d.is_ok() {
                return serve(cli, source, Start::File, upgrade_from);
            }
            d.errors
        }
        Err(e) => e.problems,
    };
    eprintln!("palisade: invalid configuration {}:", cli.config.display());
    for p in &problems {
        println!("{p}");
    }
    if !fallback_last_good {
        return ExitCode::FAILURE;
    }
    match last_good(&cli.config) {
        Some(source) => {
            eprintln!(
                "palisade: WARNING: starting from the LAST KNOWN GOOD config (version {}) because {} is invalid; fix the file and reload",
                config::version_of(&source.config),
                cli.config.display()
            );
            serve(cli, source, Start::LastGood, upgrade_from)
        }
        None => {
            eprintln!("palisade: --fallback-last-good: no last known good config was found");
            ExitCode::FAILURE
        }
    }
}

/// The last known good config from the state directory: the one the broken file names if it still
/// parses that far, else the default one beside the file.
fn last_good(path: &std::path::Path) -> Option<Source> {
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
    let state_dir = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| toml::from_str::<toml::Table>(&t).ok())
        .and_then(|t| {
            t.get("reload")?
                .get("state_dir")?
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| config::ReloadConfig::default().state_dir);
    if state_dir.is_empty() {
        return None; // the history was kept in memory only
    }
    let good = crate::reload::history::History::read_last_good(&base.join(state_dir)).ok()??;
    config::parse(&good.text, good.base_dir).ok()
}

fn validate(
    cli: &Cli,
    explain: bool,
    replay: Option<&std::path::Path>,
    against: Option<&std::path::Path>,
) -> ExitCode {
    let source = match config::load_file(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            print_problems(&e);
            return ExitCode::FAILURE;
        }
    };
    let d = config::validate(&source.config, &source.base_dir);
    for w in &d.warnings {
        eprintln!("warning: {w}");
    }
    if !d.is_ok() {
        for e in &d.errors {
            println!("{e}");
        }
        println!("configuration invalid: {} problem(s)", d.errors.len());
        return ExitCode::FAILURE;
    }
    println!(
        "configuration ok (version {})",
        config::version_of(&source.config)
    );
    if explain {
        match crate::route::explain::explain(&source.config) {
            Ok(table) => print!("{table}"),
            Err(e) => {
                println!("cannot explain: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if let Some(log) = replay {
        return replay_log(&source, log, against);
    }
    ExitCode::SUCCESS
}

/// `--replay`: exit 0 when no request loses its route, 2 when some would, 1 on bad input.
fn replay_log(
    source: &Source,
    log: &std::path::Path,
    against: Option<&std::path::Path>,
) -> ExitCode {
    let against = match against.map(config::load_file).transpose() {
        Ok(a) => a,
        Err(e) => {
            println!("--against:");
            print_problems(&e);
            return ExitCode::FAILURE;
        }
    };
    let file = match std::fs::File::open(log) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) => {
            println!("cannot read {}: {e}", log.display());
            return ExitCode::FAILURE;
        }
    };
    match crate::route::whatif::replay(&source.config, against.as_ref().map(|a| &a.config), file) {
        Ok(r) => {
            print!("{}", r.render());
            if r.regressions() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            println!("cannot replay: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_problems(e: &ConfigError) {
    for p in &e.problems {
        println!("{p}");
    }
}

fn init_logging(cli: &Cli, config: &Config) {
    let level = match cli.verbose {
        0 => config.log.level.clone(),
        1 => "debug".to_owned(),
        _ => "trace".to_owned(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        // Colour only for a person at a terminal: not in journald, files or pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        config::LogFormat::Json => builder.json().try_init(),
        config::LogFormat::Text => builder.try_init(),
    };
}

fn serve(
    cli: &Cli,
    source: Source,
    start: Start,
    upgrade_from: Option<&std::path::Path>,
) -> ExitCode {
    let demo = start == Start::Demo;
    init_logging(cli, &source.config);
    if start == Start::LastGood {
        tracing::error!(config = %cli.config.display(), version = %config::version_of(&source.config), "the config file is invalid: serving the LAST KNOWN GOOD config instead");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all().thread_name("palisade-worker");
    if let Some(n) = source.config.runtime.workers {
        rt.worker_threads(n);
    }
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("palisade: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(async move {
        let mut signals = Signals::register();
        let demo_upstreams = match &cli.command {
            Some(Command::Demo { chaos, .. }) if demo => {
                Some(crate::demo::Upstreams::start(*chaos).await)
            }
            _ => None,
        };
        let source = match &demo_upstreams {
            Some(Ok(u)) => u.fill(source),
            Some(Err(e)) => {
                eprintln!("palisade: cannot start the demo upstreams: {e}");
                return ExitCode::FAILURE;
            }
            None => source,
        };
        // An upgrade's new process: the old one's sockets first, so nothing is bound twice.
        let taken = match upgrade_from {
            Some(path) => match crate::server::succession::take(path).await {
                Ok(t) => Some(t),
                Err(e) => {
                    eprintln!("palisade: cannot take the listening sockets over: {e}");
                    return ExitCode::FAILURE;
                }
            },
            None => None,
        };
        let mut options = crate::server::Options {
            config_path: (!demo).then(|| cli.config.clone()),
            trigger: (start == Start::LastGood)
                .then_some(crate::reload::history::Trigger::LastGood),
            ..crate::server::Options::default()
        };
        let taken = taken.map(|mut t| {
            options.inherited = std::mem::take(&mut t.listeners).into_iter().collect();
            t
        });
        let running = match crate::server::start_with(&source, options).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("palisade: cannot start:");
                print_problems(&e);
                return ExitCode::FAILURE;
            }
        };
        if let Some(t) = taken {
            crate::server::succession::first_checks(&running.shared).await;
            if let Err(e) = t.ready().await {
                // The old process did not commit to leaving, so it goes on serving: this one
                // steps back (draining what it accepted meanwhile) rather than serve beside it.
                tracing::error!(error = %e, "binary upgrade: the old process did not confirm; this new process drains and exits");
                running.hand_off().await;
                return ExitCode::FAILURE;
            }
            tracing::warn!("binary upgrade: serving; the old process drains");
        }
        if let Some(Ok(u)) = &demo_upstreams {
            crate::demo::print_tour(&running, u);
        }
        let hup = signals.hup.take().map(|hup| {
            tokio::spawn(reload_on_hangup(
                std::sync::Arc::clone(&running.reloader),
                hup,
            ))
        });
        let succession = (!demo)
            .then(|| crate::server::succession::Succession::current(&cli.config, cli.verbose).ok())
            .flatten();
        let handed_over = serve_until_stop(&running, succession.as_ref(), &mut signals).await;
        if let Some(h) = hup {
            h.abort();
        }
        if handed_over {
            running.hand_off().await;
            return ExitCode::SUCCESS;
        }
        #[allow(
            clippy::exit,
            reason = "a second signal means the operator wants out now, without draining"
        )]
        tokio::spawn(async move {
            signals.stop().await;
            tracing::warn!("second signal: exiting now");
            std::process::exit(1);
        });
        running.shutdown().await;
        ExitCode::SUCCESS
    });
    // Drained already: do not wait for stray tasks (idle demo upstreams, DNS refresh) to notice.
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    code
}

/// The process's signal streams, registered before anything serves: a signal sent the moment
/// Palisade says it is live is handled, never fatal (the default action of HUP, USR2 and TERM is
/// to end the process).
struct Signals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
    hup: Option<tokio::signal::unix::Signal>,
    usr2: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn register() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        Self {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
            hup: signal(SignalKind::hangup()).ok(),
            usr2: signal(SignalKind::user_defined2()).ok(),
        }
    }

    /// SIGTERM or SIGINT. Without handlers, never (the process runs until killed).
    async fn stop(&mut self) {
        stop(self.term.as_mut(), self.int.as_mut()).await;
    }
}

async fn stop(
    term: Option<&mut tokio::signal::unix::Signal>,
    int: Option<&mut tokio::signal::unix::Signal>,
) {
    tokio::select! {
        Some(()) = recv(term) => tracing::info!("SIGTERM received"),
        Some(()) = recv(int) => tracing::info!("SIGINT received"),
    }
}

/// The next delivery of one signal; `None` (never, in a select) without a handler.
async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Serves until SIGTERM/SIGINT or `POST /drain` (false), or until a binary upgrade has handed
/// over (true). SIGUSR2 and `POST /upgrade` start an upgrade; a failed one changes nothing.
async fn serve_until_stop(
    running: &crate::server::Running,
    succession: Option<&crate::server::succession::Succession>,
    signals: &mut Signals,
) -> bool {
    let reloader = &running.reloader;
    loop {
        tokio::select! {
            () = stop(signals.term.as_mut(), signals.int.as_mut()) => return false,
            () = reloader.drain_requested.cancelled() => return false,
            Some(()) = recv(signals.usr2.as_mut()) => tracing::warn!("SIGUSR2 received"),
            () = reloader.upgrade_requested.notified() => {}
        }
        let Some(s) = succession else {
            tracing::warn!(
                "binary upgrade asked for, but this instance runs an embedded config (demo); ignored"
            );
            continue;
        };
        tracing::warn!("binary upgrade: starting the new process");
        reloader
            .upgrading
            .store(true, std::sync::atomic::Ordering::Release);
        let result = s.hand_over(running).await;
        reloader
            .upgrading
            .store(false, std::sync::atomic::Ordering::Release);
        match result {
            Ok(()) => return true,
            Err(e) => {
                tracing::error!(error = %e, "binary upgrade failed; this process goes on serving");
            }
        }
    }
}

/// SIGHUP: reload the config file (nginx's meaning).
async fn reload_on_hangup(
    reloader: std::sync::Arc<crate::reload::Reloader>,
    mut hup: tokio::signal::unix::Signal,
) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the config file");
        let report = reloader
            .reload_file(crate::reload::history::Trigger::Signal)
            .await;
        tracing::info!(result = report.result, "SIGHUP reload done");
    }
}
