//! The upstream side: clusters of endpoints, choosing one, connecting, pooling, sending.
//!
//! In request order: `cluster` (the runtime cluster and its endpoints) → `balancer` (which endpoint) →
//! `forward` (send on a pooled or fresh connection) → `http1` (our HTTP/1.1 client) → `connect`
//! (open a connection) → `pool` (keep them);
//! `stats` holds each endpoint's live numbers and `dns` keeps name-based endpoint lists fresh.

pub mod balancer;
pub mod cluster;
pub mod connect;
pub mod dns;
pub mod forward;
pub mod http1;
pub mod pool;
pub mod stats;
