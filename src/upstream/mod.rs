//! The upstream side: clusters of endpoints, choosing one, connecting, pooling, sending.
//!
//! In request order: `cluster` (the runtime cluster and its endpoints) → `attempt` (the loop of
//! attempts: pick, send, record, retry or hedge) → `limits` (caps) with `budget` (the retry budget) → `priority` (which tiers and zones take traffic, from health) and `slow_start` →
//! `balancer` (which endpoint) → `forward` (send on a pooled or fresh connection) → `retry` (whether
//! a failed attempt deserves another) with `replay` (a request body a retry can send again) → `http1` (our HTTP/1.1 client) → `connect` (open a
//! connection) → `pool` (keep them);
//! `stats` holds each endpoint's live numbers, `latency` the cluster's recent latencies (for
//! hedging), and `dns` keeps name-based endpoint lists fresh.

pub mod attempt;
pub mod balancer;
pub mod budget;
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod forward;
pub mod http1;
pub mod latency;
pub mod limits;
pub mod pool;
pub mod priority;
pub mod replay;
pub mod retry;
pub mod slow_start;
pub mod stats;
