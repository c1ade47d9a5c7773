//! Routing: which route a request takes ([`router`]) and how that route changes the request and the
//! response ([`rewrite`]).
//!
//! This module owns the compiled, per-snapshot form of `[[routes]]`. It does not read requests off
//! the wire, resolve clusters, choose endpoints or send anything: the caller extracts a
//! [`RouteRequest`], gets a [`Route`], and hands its targets and rewrites to the forwarding code.

pub mod explain;
pub mod rewrite;
pub mod router;
pub mod whatif;

pub use rewrite::Rewrite;
pub use router::{Route, RouteRequest, Router};
