//! Chaos upstreams in their own process, for benchmark scripts:
//!
//! ```text
//! cargo run --release --example chaos -- --upstreams 3 --control 127.0.0.1:0
//! ```
//!
//! prints `upstream <name> <addr>` per upstream and `control <addr>`, then serves until killed.
//! Flip faults with e.g. `curl -X POST http://<control>/u2/hang`; see `palisade::chaos`.
//!
//! `--capacity 20 --service-time 10ms` gives every upstream a fixed capacity (20 requests in
//! service at once, 10 ms each, the rest queued inside the upstream in arrival order: 2,000
//! requests/s), as the overload benchmark needs.

use std::{io::Write, net::SocketAddr, time::Duration};

use clap::Parser;
use palisade::chaos::{Capacity, ChaosUpstream, Control, layout};

#[derive(Parser)]
#[command(about = "Fault-switchable HTTP/1.1 upstreams with a control API")]
struct Args {
    /// How many upstreams (default: as many as --names/--listen give, else 3).
    #[arg(long)]
    upstreams: Option<usize>,
    /// Their names, comma-separated (default u1..uN).
    #[arg(long, value_delimiter = ',')]
    names: Vec<String>,
    /// A fixed address for the next upstream (repeatable; the rest take 127.0.0.1:0).
    #[arg(long)]
    listen: Vec<SocketAddr>,
    /// The control API's address.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Runtime threads: 1 is a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// A fixed capacity for every upstream: at most this many requests in service at once (each
    /// for --service-time), the rest waiting inside the upstream, first come first served.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    capacity: Option<u64>,
    /// With --capacity: how long each request is in service (e.g. 10ms, 1500us).
    #[arg(
        long,
        default_value = "10ms",
        value_parser = humantime::parse_duration,
        requires = "capacity"
    )]
    service_time: Duration,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let plan = layout(args.upstreams, &args.names, &args.listen)?;
    let capacity = match args.capacity {
        Some(c) => Some(Capacity {
            concurrency: usize::try_from(c)?,
            service_time: args.service_time,
        }),
        None => None,
    };
    let runtime = if args.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let mut upstreams = Vec::with_capacity(plan.len());
        let mut out = std::io::stdout().lock();
        for (name, addr) in &plan {
            let up = match capacity {
                Some(cap) => ChaosUpstream::start_with_capacity(name, *addr, cap).await?,
                None => ChaosUpstream::start(name, *addr).await?,
            };
            writeln!(out, "upstream {} {}", up.name(), up.addr())?;
            upstreams.push(up);
        }
        let control = Control::start(args.control, upstreams).await?;
        if let Some(cap) = capacity {
            writeln!(
                out,
                "capacity {} {:?} {:.0}/s",
                cap.concurrency,
                cap.service_time,
                cap.requests_per_second()
            )?;
        }
        writeln!(out, "control {}", control.addr())?;
        out.flush()?;
        drop(out);
        std::future::pending::<()>().await;
        Ok(())
    })
}
