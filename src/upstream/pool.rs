//! `Pool`: the reusable connections to one endpoint.
//!
//! HTTP/1.1: a LIFO stack of idle keep-alive connections (the most recently used is the least likely to
//! have been closed by the upstream), capped and aged out on use. A connection comes back only when its
//! response body was read to the end; anything else (an error, a client that went away mid-body) may
//! leave bytes on the wire, so that connection is dropped. HTTP/2: one shared multiplexed connection,
//! replaced when it closes. Opening connections is `connect.rs`'s job; this module only keeps them.

use std::{
    collections::VecDeque,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use hyper::client::conn::http2;

use super::http1::Conn;
use crate::body::ProxyBody;

pub type H2Sender = http2::SendRequest<ProxyBody>;

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Debug)]
pub struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    /// Signalled at every check-in, for requests waiting for a connection (`limits`).
    pub returned: tokio::sync::Notify,
    h2: Mutex<Option<H2Sender>>,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            returned: tokio::sync::Notify::new(),
            h2: Mutex::new(None),
            max_idle,
            idle_timeout,
        }
    }

    /// Whether this pool was made with these settings (a reload keeps it, and its connections).
    pub fn has_settings(&self, max_idle: usize, idle_timeout: Duration) -> bool {
        self.max_idle == max_idle && self.idle_timeout == idle_timeout
    }

    /// An idle HTTP/1 connection that is young enough and still open, if any. (Whether it is open
    /// is asked outside the lock: see `Conn::is_idle_open`.)
    pub fn checkout(&self, now: Instant) -> Option<Conn> {
        loop {
            let mut c = {
                let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                let c = idle.pop_back()?;
                if now.saturating_duration_since(c.since) >= self.idle_timeout {
                    // The rest are older still.
                    idle.clear();
                    return None;
                }
                c
            };
            if c.conn.is_idle_open() {
                return Some(c.conn);
            }
        }
    }

    /// Returns a connection whose last response was read completely.
    pub fn checkin(&self, conn: Conn, now: Instant) {
        if self.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Age out from the cold end so connections nobody reuses do not hold descriptors forever.
        while idle
            .front()
            .is_some_and(|c| now.saturating_duration_since(c.since) >= self.idle_timeout)
        {
            idle.pop_front();
        }
        if idle.len() >= self.max_idle {
            idle.pop_front();
        }
        idle.push_back(Idle { conn, since: now });
        drop(idle);
        self.returned.notify_one();
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Closes the oldest idle HTTP/1 connection, if any (to free its slot under a connection
    /// cap for another endpoint's request). True if one was closed.
    pub fn evict_oldest(&self) -> bool {
        let oldest = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        oldest.is_some()
    }

    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// The shared HTTP/2 connection, if it is still usable.
    pub fn h2(&self) -> Option<H2Sender> {
        let mut h2 = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        match &*h2 {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                *h2 = None;
                None
            }
            None => None,
        }
    }

    pub fn set_h2(&self, sender: H2Sender) {
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    }
}
