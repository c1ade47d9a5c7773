//! Palisade's own HTTP/1.1 client for upstream connections, in request order: `request` (encode
//! the head, stream the body) → `conn` (the connection and the exchange up to the response head) →
//! `head` (parse the response head, decide its framing) → `response` (the response body, which
//! returns the connection to the pool) with `chunked` (the chunked decoder); `stream` is the byte
//! stream underneath (TCP or TLS).
//!
//! Why not hyper's client: it drives each connection in a task of its own and talks to it over
//! channels, which costs two task wake-ups and a channel round trip per request. Here the request's
//! task does the I/O itself (see bench/README.md for what it saved). HTTP/2 upstreams still use
//! hyper (`super::connect`).

mod chunked;
mod conn;
mod head;
mod request;
mod response;
mod stream;

pub use conn::{Conn, MAX_HEAD_BYTES, SendError, exchange};
pub use head::{HeadError, ResponseHead};
pub use request::{Outgoing, encode_head};
pub use response::{ResponseBody, failure_flag};
pub use stream::Stream;
