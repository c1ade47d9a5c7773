//! A raw HTTP/1 client: exact bytes out, responses parsed by hand (so framing, interim responses,
//! truncation and the connection's fate are all visible).

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::STEP;

/// One response as read off the wire.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    /// The body ended as its framing says (false: the connection closed first).
    pub complete: bool,
    /// The body was chunked (so a missing last chunk means truncation).
    pub chunked: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How a read attempt ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Fate {
    /// EOF or reset: the peer closed.
    Closed,
    /// Still open after the wait (no bytes arrived).
    Open,
    /// Unexpected bytes arrived.
    Data(Vec<u8>),
}

pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connect to proxy");
        stream.set_nodelay(true).ok();
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
        self.stream.flush().await.expect("flush");
    }

    /// Sends, ignoring errors (the peer may already have closed).
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads more bytes; false at EOF/reset.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        self.buf.reserve(65536);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(_) => true,
        }
    }

    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    async fn exact(&mut self, n: usize) -> (Vec<u8>, bool) {
        while self.buf.len() < n {
            if !self.fill().await {
                let got = std::mem::take(&mut self.buf);
                return (got, false);
            }
        }
        (self.buf.drain(..n).collect(), true)
    }

    /// Reads one response to a non-HEAD request; panics if none comes within [`STEP`].
    pub async fn read_response(&mut self) -> RawResponse {
        self.read_response_for("GET").await
    }

    /// Reads one response; `method` decides whether a body follows (HEAD has none).
    pub async fn read_response_for(&mut self, method: &str) -> RawResponse {
        match tokio::time::timeout(STEP, self.try_read_response(method)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("no response: {e}"),
            Err(_) => panic!("no response within {STEP:?}"),
        }
    }

    /// Reads one response, or says why there was none (closed before a complete head).
    pub async fn try_read_response(&mut self, method: &str) -> Result<RawResponse, String> {
        let status_line = self
            .line()
            .await
            .ok_or_else(|| format!("closed before a status line; got {:?}", self.leftover()))?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("not an HTTP/1 status line: {status_line:?}"));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let l = self
                .line()
                .await
                .ok_or_else(|| format!("closed inside the head after {status_line:?}"))?;
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
            }
        }
        let mut rsp = RawResponse {
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
            complete: true,
            chunked: false,
        };
        let bodyless =
            method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304;
        if bodyless {
            return Ok(rsp);
        }
        let chunked = rsp
            .header("transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
        if chunked {
            rsp.chunked = true;
            loop {
                let Some(size_line) = self.line().await else {
                    rsp.complete = false;
                    return Ok(rsp);
                };
                let size_text = size_line.split(';').next().unwrap_or("").trim();
                let Ok(size) = usize::from_str_radix(size_text, 16) else {
                    return Err(format!("bad chunk size line {size_line:?}"));
                };
                if size == 0 {
                    loop {
                        let Some(t) = self.line().await else {
                            rsp.complete = false;
                            return Ok(rsp);
                        };
                        if t.is_empty() {
                            return Ok(rsp);
                        }
                        if let Some((n, v)) = t.split_once(':') {
                            rsp.trailers
                                .push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
                        }
                    }
                }
                let (data, ok) = self.exact(size + 2).await;
                if !ok {
                    rsp.body.extend_from_slice(&data[..data.len().min(size)]);
                    rsp.complete = false;
                    return Ok(rsp);
                }
                rsp.body.extend_from_slice(&data[..size]);
            }
        } else if let Some(cl) = rsp.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| format!("bad content-length {cl:?}"))?;
            let (data, ok) = self.exact(n).await;
            rsp.body = data;
            rsp.complete = ok;
        } else {
            // Delimited by close.
            while self.fill().await {}
            rsp.body = std::mem::take(&mut self.buf);
        }
        Ok(rsp)
    }

    fn leftover(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// Waits up to `wait` for the peer to close; says whether it did, stayed open, or sent bytes.
    pub async fn fate(&mut self, wait: Duration) -> Fate {
        if !self.buf.is_empty() {
            return Fate::Data(std::mem::take(&mut self.buf));
        }
        match tokio::time::timeout(wait, self.fill()).await {
            Err(_) => Fate::Open,
            Ok(false) => Fate::Closed,
            Ok(true) => Fate::Data(std::mem::take(&mut self.buf)),
        }
    }

    /// Asserts that the proxy closes this connection (within [`STEP`]) without sending more.
    pub async fn expect_closed(&mut self) {
        let fate = self.fate(STEP).await;
        assert_eq!(fate, Fate::Closed, "the proxy should close the connection");
    }

    /// Everything until close (or [`STEP`]).
    pub async fn read_to_close(&mut self) -> Vec<u8> {
        let _ = tokio::time::timeout(STEP, async { while self.fill().await {} }).await;
        std::mem::take(&mut self.buf)
    }
}

/// Sends `bytes` on a fresh connection and reads one response.
pub async fn exchange(addr: SocketAddr, bytes: &[u8]) -> (RawResponse, RawConn) {
    let mut c = RawConn::connect(addr).await;
    c.send(bytes).await;
    let r = c.read_response().await;
    (r, c)
}
