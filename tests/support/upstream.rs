//! A scripted HTTP/1.1 upstream on raw TCP: it parses requests itself (so it sees exactly the bytes
//! Palisade sent, framing included), records each one, counts requests and connections, and answers
//! according to a [`Mode`] that a test switches at run time (or queues per request).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Notify, watch},
    task::JoinHandle,
};

/// How the upstream answers a request.
#[derive(Clone, Debug)]
pub enum Mode {
    /// 200 with a JSON echo of the request (`upstream`, `method`, `target`, `headers`, `body_len`)
    /// and `x-upstream: <name>`; keep-alive.
    Ok,
    /// This status with a short text body (none for 1xx/204/304 or HEAD).
    Status(u16),
    /// [`Mode::Ok`] after a delay.
    Slow(Duration),
    /// Reads the request and never answers; the connection stays open until the peer closes it.
    Hang,
    /// Reads the request, then closes (FIN) without a byte of response.
    Close,
    /// Reads the request, then resets (RST) without a byte of response.
    Reset,
    /// `200`, `content-length: 1000`, 10 body bytes, then RST.
    ResetMidBody,
    /// `200`, chunked, one 10-byte chunk, then RST (no last chunk).
    ChunkedResetMidBody,
    /// `NOT HTTP\r\n\r\n`, then close.
    Garbage,
    /// `200` with `content-length: bytes`, one byte every `gap`.
    Trickle { gap: Duration, bytes: usize },
    /// The status line, then `pause`, then the rest of an OK response.
    SlowHeaders(Duration),
    /// Exactly these bytes as the response, connection kept for the next request.
    Raw(Vec<u8>),
    /// Exactly these bytes, then close.
    RawClose(Vec<u8>),
    /// Head and a `first` chunk, then waits for the notify, then a `second` chunk and the end.
    Gate(Arc<Notify>),
    /// [`Mode::Close`] for a request that is not the first on its connection (the keep-alive race
    /// where the upstream closes as our request arrives); [`Mode::Ok`] otherwise.
    CloseIfReused,
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub version: String,
    /// Lowercased names, values as sent, in order.
    pub headers: Vec<(String, String)>,
    pub raw_head: Vec<u8>,
    pub body: Vec<u8>,
    /// Framing as received.
    pub chunked: bool,
    pub content_length: Option<String>,
    pub trailers: Vec<(String, String)>,
    /// Which connection (1-based, in accept order) and its position on it (0-based).
    pub conn: usize,
    pub nth_on_conn: usize,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}

struct State {
    name: String,
    mode: Mutex<Mode>,
    queue: Mutex<VecDeque<Mode>>,
    seen: Mutex<Vec<Seen>>,
    hits: AtomicUsize,
    accepted: AtomicUsize,
    open: AtomicUsize,
    close_idle: watch::Sender<u64>,
}

/// A running scripted upstream; stops listening when dropped.
pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
        }
    }
}

impl Upstream {
    /// An upstream named `name` answering [`Mode::Ok`].
    pub async fn start(name: &str) -> Upstream {
        Self::start_with(name, Mode::Ok).await
    }

    pub async fn start_with(name: &str, mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (close_idle, _) = watch::channel(0);
        let state = Arc::new(State {
            name: name.to_owned(),
            mode: Mutex::new(mode),
            queue: Mutex::new(VecDeque::new()),
            seen: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            open: AtomicUsize::new(0),
            close_idle,
        });
        let st = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = st.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                st.open.fetch_add(1, Ordering::SeqCst);
                let st = Arc::clone(&st);
                tokio::spawn(async move {
                    serve(stream, id, &st).await;
                    st.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Upstream {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// The default behaviour from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// A behaviour for the next request only (queued ones go first, in order).
    pub fn push(&self, mode: Mode) {
        self.state.queue.lock().unwrap().push_back(mode);
    }

    /// Requests received (fully read), whatever the answer.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen().pop().expect("the upstream received a request")
    }

    /// Closes (FIN) every connection that is waiting for its next request.
    pub fn close_idle_connections(&self) {
        self.state.close_idle.send_modify(|g| *g += 1);
    }

    /// Stops accepting: new connections are refused from now on (existing ones keep working).
    pub fn stop_listening(&mut self) {
        if let Some(t) = self.accept.take() {
            t.abort();
        }
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_hits(&self, n: usize) {
        super::eventually(
            &format!("{} to receive {n} request(s)", self.state.name),
            super::STEP,
            || async { self.hits() >= n },
        )
        .await;
    }

    /// Waits until no connection is open (the proxy closed them all).
    pub async fn wait_no_open_connections(&self) {
        super::eventually(
            &format!("{}'s connections to be closed", self.state.name),
            super::STEP,
            || async { self.open_connections() == 0 },
        )
        .await;
    }
}

fn next_mode(st: &State) -> Mode {
    if let Some(m) = st.queue.lock().unwrap().pop_front() {
        return m;
    }
    st.mode.lock().unwrap().clone()
}

/// One connection: read a request, answer per mode, repeat while keep-alive.
async fn serve(mut stream: TcpStream, conn: usize, st: &State) {
    let mut buf = Vec::new();
    let mut close_idle = st.close_idle.subscribe();
    close_idle.mark_unchanged();
    for nth in 0.. {
        // Idle: wait for the next request's first bytes, or a close order.
        if buf.is_empty() {
            buf.reserve(8192);
            tokio::select! {
                r = stream.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
                _ = close_idle.changed() => return,
            }
        }
        let Some(mut seen) = read_request(&mut stream, &mut buf).await else {
            return;
        };
        seen.conn = conn;
        seen.nth_on_conn = nth;
        st.seen.lock().unwrap().push(seen.clone());
        st.hits.fetch_add(1, Ordering::SeqCst);
        let keep = answer(&mut stream, st, &seen).await;
        if !keep
            || seen
                .header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(65536);
    !matches!(stream.read_buf(buf).await, Ok(0) | Err(_))
}

async fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = buf[..i].to_vec();
            buf.drain(..i + 2);
            return Some(line);
        }
        if !fill(stream, buf).await {
            return None;
        }
    }
}

async fn read_exact_buf(stream: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    while buf.len() < n {
        if !fill(stream, buf).await {
            return None;
        }
    }
    Some(buf.drain(..n).collect())
}

/// Reads one request (head and body) from `buf` + the stream.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Seen> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if !fill(stream, buf).await {
            return None;
        }
    };
    let raw_head: Vec<u8> = buf.drain(..head_end).collect();
    let text = String::from_utf8_lossy(&raw_head).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.splitn(3, ' ');
    let method = parts.next()?.to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let mut seen = Seen {
        method,
        target,
        version,
        headers,
        raw_head,
        body: Vec::new(),
        chunked: false,
        content_length: None,
        trailers: Vec::new(),
        conn: 0,
        nth_on_conn: 0,
    };
    seen.content_length = seen.header("content-length").map(str::to_owned);
    seen.chunked = seen
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    if seen.chunked {
        loop {
            let line = read_line(stream, buf).await?;
            let size_text = String::from_utf8_lossy(&line);
            let size_text = size_text.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_text, 16).ok()?;
            if size == 0 {
                loop {
                    let t = read_line(stream, buf).await?;
                    if t.is_empty() {
                        break;
                    }
                    let t = String::from_utf8_lossy(&t).into_owned();
                    if let Some((n, v)) = t.split_once(':') {
                        seen.trailers
                            .push((n.to_ascii_lowercase(), v.trim().to_owned()));
                    }
                }
                break;
            }
            let data = read_exact_buf(stream, buf, size + 2).await?;
            seen.body.extend_from_slice(&data[..size]);
        }
    } else if let Some(cl) = &seen.content_length {
        let n: usize = cl.trim().parse().ok()?;
        seen.body = read_exact_buf(stream, buf, n).await?;
    }
    Some(seen)
}

fn reason(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Whatever")
}

fn echo_json(name: &str, seen: &Seen) -> Vec<u8> {
    let v = serde_json::json!({
        "upstream": name,
        "method": seen.method,
        "target": seen.target,
        "version": seen.version,
        "headers": seen.headers,
        "body_len": seen.body.len(),
        "conn": seen.conn,
        "nth": seen.nth_on_conn,
    });
    serde_json::to_vec(&v).unwrap_or_default()
}

fn ok_response(name: &str, seen: &Seen) -> Vec<u8> {
    let body = echo_json(name, seen);
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if seen.method != "HEAD" {
        out.extend_from_slice(&body);
    }
    out
}

async fn reset(stream: &mut TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Answers one request; returns whether the connection stays open.
async fn answer(stream: &mut TcpStream, st: &State, seen: &Seen) -> bool {
    let name = st.name.as_str();
    match next_mode(st) {
        Mode::Ok => stream.write_all(&ok_response(name, seen)).await.is_ok(),
        Mode::Status(code) => {
            let bodyless = code < 200 || code == 204 || code == 304;
            let body = format!("status {code} from {name}\n");
            let mut out = format!("HTTP/1.1 {code} {}\r\nx-upstream: {name}\r\n", reason(code));
            if !bodyless {
                out.push_str(&format!("content-length: {}\r\n", body.len()));
            }
            out.push_str("\r\n");
            if !bodyless && seen.method != "HEAD" {
                out.push_str(&body);
            }
            stream.write_all(out.as_bytes()).await.is_ok()
        }
        Mode::Slow(d) => {
            tokio::time::sleep(d).await;
            stream.write_all(&ok_response(name, seen)).await.is_ok()
        }
        Mode::Hang => {
            let mut sink = Vec::with_capacity(1024);
            while matches!(stream.read_buf(&mut sink).await, Ok(n) if n > 0) {
                sink.clear();
            }
            false
        }
        Mode::Close => false,
        Mode::Reset => {
            reset(stream).await;
            false
        }
        Mode::ResetMidBody => {
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-length: 1000\r\n\r\n0123456789")
                        .as_bytes(),
                )
                .await;
            let _ = stream.flush().await;
            reset(stream).await;
            false
        }
        Mode::ChunkedResetMidBody => {
            let _ = stream
                .write_all(
                    format!("HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n")
                        .as_bytes(),
                )
                .await;
            let _ = stream.flush().await;
            reset(stream).await;
            false
        }
        Mode::Garbage => {
            let _ = stream.write_all(b"NOT HTTP\r\n\r\n").await;
            false
        }
        Mode::Trickle { gap, bytes } => {
            let head =
                format!("HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ncontent-length: {bytes}\r\n\r\n");
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            for _ in 0..bytes {
                tokio::time::sleep(gap).await;
                if stream.write_all(b"x").await.is_err() {
                    return false;
                }
            }
            true
        }
        Mode::SlowHeaders(pause) => {
            if stream.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
                return false;
            }
            tokio::time::sleep(pause).await;
            let rest = ok_response(name, seen);
            let rest = rest
                .strip_prefix(b"HTTP/1.1 200 OK\r\n".as_slice())
                .unwrap_or(&rest);
            stream.write_all(rest).await.is_ok()
        }
        Mode::Raw(bytes) => stream.write_all(&bytes).await.is_ok(),
        Mode::RawClose(bytes) => {
            let _ = stream.write_all(&bytes).await;
            false
        }
        Mode::Gate(gate) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nx-upstream: {name}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
            );
            if stream.write_all(head.as_bytes()).await.is_err() {
                return false;
            }
            gate.notified().await;
            stream.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.is_ok()
        }
        Mode::CloseIfReused => {
            if seen.nth_on_conn > 0 {
                false
            } else {
                stream.write_all(&ok_response(name, seen)).await.is_ok()
            }
        }
    }
}
