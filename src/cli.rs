//! The command line: `run`, `validate` (also `-t`), `demo`, `--version`; logging set-up; signals.
//!
//! This module turns arguments into one of the library's entry points and owns the process: the
//! tokio runtime (sized by `runtime.workers`), stderr logging, and SIGTERM/SIGINT handling (the
//! first drains gracefully, a second exits at once).

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
    Run,
    /// Check the config file: prints `configuration ok (version …)` or every problem, and exits 0 or 1.
    Validate,
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
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match (&cli.command, cli.test) {
        (Some(Command::Validate), _) | (_, true) => validate(&cli),
        (Some(Command::Demo { listen, admin, .. }), _) => {
            let source = crate::demo::source(listen, admin);
            serve(&cli, source, true)
        }
        (Some(Command::Run) | None, false) => match config::load_file(&cli.config) {
            Ok(source) => serve(&cli, source, false),
            Err(e) => {
                eprintln!("palisade: invalid configuration {}:", cli.config.display());
                print_problems(&e);
                ExitCode::FAILURE
            }
        },
    }
}

fn validate(cli: &Cli) -> ExitCode {
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
    if d.is_ok() {
        println!(
            "configuration ok (version {})",
            config::version_of(&source.config)
        );
        ExitCode::SUCCESS
    } else {
        for e in &d.errors {
            println!("{e}");
        }
        println!("configuration invalid: {} problem(s)", d.errors.len());
        ExitCode::FAILURE
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

fn serve(cli: &Cli, source: Source, demo: bool) -> ExitCode {
    // Validate before the config sizes anything (the runtime's worker count, the log filter).
    let d = config::validate(&source.config, &source.base_dir);
    if !d.is_ok() && !demo {
        eprintln!("palisade: invalid configuration {}:", cli.config.display());
        for e in &d.errors {
            println!("{e}");
        }
        return ExitCode::FAILURE;
    }
    init_logging(cli, &source.config);
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
        let running = match crate::server::start(&source).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("palisade: cannot start:");
                print_problems(&e);
                return ExitCode::FAILURE;
            }
        };
        if let Some(Ok(u)) = &demo_upstreams {
            crate::demo::print_tour(&running, u);
        }
        wait_for_signal().await;
        #[allow(
            clippy::exit,
            reason = "a second signal means the operator wants out now, without draining"
        )]
        tokio::spawn(async {
            wait_for_signal().await;
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

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
