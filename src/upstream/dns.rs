//! DNS for endpoints written as names: resolved when a config is compiled, then re-resolved in the
//! background at the records' TTL (bounded by the cluster's `dns_refresh`, at least 1 s).
//!
//! When DNS fails the cluster keeps its last good addresses: a resolver outage must not empty a
//! cluster that was serving. Endpoints that stay keep their identity, so their pool and stats survive.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_resolver::TokioResolver;
use tokio_util::sync::CancellationToken;

use super::cluster::Spec;
use super::{
    cluster::{Cluster, Endpoint},
    pool::Pool,
};
use crate::config::validate::split_host_port;

/// Resolves one `host:port` with the system resolver (the same one `validate` used).
pub async fn resolve_now(spec: &str) -> Vec<SocketAddr> {
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return vec![a];
    }
    match tokio::net::lookup_host(spec).await {
        Ok(it) => {
            let mut v: Vec<SocketAddr> = it.collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::warn!(endpoint = spec, error = %e, "DNS resolution failed");
            Vec::new()
        }
    }
}

/// The stable identity of an endpoint resolved from `spec`.
pub fn endpoint_id(spec: &str, addr: SocketAddr) -> Arc<str> {
    if spec.parse::<SocketAddr>().is_ok() {
        spec.into()
    } else {
        format!("{spec}@{addr}").into()
    }
}

/// True when any endpoint of the cluster is a DNS name (so it needs refreshing).
pub fn has_names(cluster: &Cluster) -> bool {
    cluster
        .specs
        .iter()
        .any(|s| s.address.parse::<SocketAddr>().is_err())
}

/// Re-resolves the cluster's names until `stop`.
pub async fn refresh_loop(
    cluster: Arc<Cluster>,
    max_idle: usize,
    pool_idle: Duration,
    stop: CancellationToken,
) {
    let resolver = match TokioResolver::builder_tokio().and_then(|b| b.build()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(cluster = %cluster.name, error = %e, "no DNS resolver; endpoints keep their start-up addresses");
            return;
        }
    };
    let mut wait = cluster.dns_refresh;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let mut next = cluster.dns_refresh;
        let mut resolved: Vec<(&Spec, Vec<SocketAddr>)> = Vec::new();
        let mut failed = false;
        for spec in &cluster.specs {
            if let Ok(a) = spec.address.parse::<SocketAddr>() {
                resolved.push((spec, vec![a]));
                continue;
            }
            let Some((host, port)) = split_host_port(&spec.address) else {
                continue;
            };
            match resolver.lookup_ip(host).await {
                Ok(lookup) => {
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    next = next.min(ttl.max(Duration::from_secs(1)));
                    let mut addrs: Vec<SocketAddr> =
                        lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
                    addrs.sort();
                    addrs.dedup();
                    resolved.push((spec, addrs));
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(cluster = %cluster.name, endpoint = %spec.address, error = %e, "DNS refresh failed; keeping the last good addresses");
                }
            }
        }
        wait = if failed {
            next.min(Duration::from_secs(5))
        } else {
            next
        };
        if failed || resolved.iter().all(|(_, a)| a.is_empty()) {
            continue;
        }
        let current = cluster.members();
        let by_id: HashMap<&str, &Arc<Endpoint>> =
            current.endpoints.iter().map(|e| (&*e.id, e)).collect();
        let mut endpoints = Vec::new();
        let now = Instant::now();
        for (spec, addrs) in &resolved {
            for addr in addrs {
                let id = endpoint_id(&spec.address, *addr);
                match by_id.get(&*id) {
                    Some(e) if e.matches(spec) => endpoints.push(Arc::clone(e)),
                    _ => endpoints.push(Arc::new(Endpoint::new(
                        &cluster.name,
                        spec,
                        id,
                        *addr,
                        Pool::new(max_idle, pool_idle),
                        cluster.health.probe.is_some(),
                        now,
                    ))),
                }
            }
        }
        let changed = endpoints.len() != current.endpoints.len()
            || endpoints
                .iter()
                .zip(&current.endpoints)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if changed {
            tracing::info!(cluster = %cluster.name, endpoints = endpoints.len(), "DNS changed the endpoint list");
            cluster.set_endpoints(endpoints);
        }
    }
}
