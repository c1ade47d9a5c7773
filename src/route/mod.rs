//! STUB (replaced by the router helper).
pub mod rewrite;
pub mod router;
