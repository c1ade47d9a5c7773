//! Palisade: a fault-tolerant, highly available HTTP reverse proxy and load balancer.
//!
//! # Layout
//!
//! Modules in the order a request meets them:
//!
//! - [`server`]: listeners; accept under a connection cap and the abuse limits (client networks,
//!   per-client caps), TLS ([`tls`]), HTTP/1.1 + HTTP/2 (with a frame-flood guard), the
//!   per-connection header/idle/write deadlines.
//! - [`handler`]: the request path, one function in request order; [`checks`]: what it refuses
//!   before routing.
//! - [`snapshot`]: the immutable runtime view loaded once per request, compiled from [`config`].
//! - [`route`]: matching a request to a route; rewrites.
//! - [`overload`]: shedding by priority under the process's in-flight cap and shed level; a
//!   cluster's adaptive concurrency limit and its queue.
//! - [`ratelimit`]: the route's rate-limit policies, counted here or in Redis.
//! - [`headers`]: hop-by-hop, forwarding (`X-Forwarded-*`, `Forwarded`, `Via`) and request ids.
//! - [`upstream`]: clusters, the attempts of a request (retries, hedges, limits), the routing
//!   plan (tiers, zones, panic), balancers, sending (our own HTTP/1.1 client, hyper for HTTP/2),
//!   connecting, pooling.
//! - [`health`]: active probes, outlier detection, and the task that turns verdicts into the plan.
//! - [`body`]: streaming bodies with idle timeouts and an end hook; [`upgrade`]: WebSocket tunnels.
//! - [`error`]: every failure and the one place it becomes a response.
//! - [`access_log`], [`metrics`]: what the operator sees per request; [`admin`]: the admin API.
//! - [`cli`], [`demo`]: the binary's commands; [`chaos`]: the fault-switchable upstream the demo,
//!   the tests and `bench/faults.sh` use.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod chaos;
pub mod checks;
pub mod cli;
pub mod config;
pub mod demo;
pub mod error;
pub mod handler;
pub mod headers;
pub mod health;
pub mod metrics;
pub mod overload;
pub mod ratelimit;
pub mod reload;
pub mod route;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod upgrade;
pub mod upstream;
