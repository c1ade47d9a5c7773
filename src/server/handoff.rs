//! The socket handoff of a zero-downtime binary upgrade (Pingora's model): the old process offers
//! its listening sockets on a Unix stream socket, the new process takes them (SCM_RIGHTS), starts
//! serving on them, and says "ready"; only then does the old process stop accepting.
//!
//! Owns the transport and the wire protocol. Does not own the orchestration: spawning the new
//! binary, deciding when to offer, what the names mean (they are opaque strings here), draining
//! and exiting are the caller's.
//!
//! Wire protocol, version 1 (one connection per offer):
//! 1. old → new: a `u32` big-endian length, then that many bytes of JSON
//!    `{"version":1,"names":["web","admin"]}`; the descriptors travel in SCM_RIGHTS control messages
//!    on the same bytes, in the order of `names`.
//! 2. new → old: `ready\n` once the new process serves.
//! 3. old → new: `ok\n`: the old process has committed to stop accepting.
//!
//! The acknowledgement in step 3 exists so both sides agree on who serves: without it the new
//! process could say "ready" just as the old one gives up waiting, and believe the old one drains
//! while it keeps accepting.
//!
//! I/O runs on tokio's `UnixStream`; the SCM_RIGHTS calls go through `UnixStream::async_io` with
//! rustix's non-blocking `sendmsg`/`recvmsg`, so no thread blocks and no `unsafe` is needed.

use std::{
    fs,
    io::{self, IoSlice, IoSliceMut},
    mem::MaybeUninit,
    net::TcpListener,
    os::{
        fd::{BorrowedFd, OwnedFd},
        unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    time::Duration,
};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketType,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::UnixStream,
};

/// The protocol version this binary speaks (both directions).
pub const PROTOCOL_VERSION: u32 = 1;
/// Most listeners one handoff carries (config listeners plus the admin socket).
pub const MAX_LISTENERS: usize = 64;
/// Largest header accepted, in bytes (64 listener names fit many times over).
const MAX_HEADER_LEN: usize = 64 * 1024;
const READY: &[u8] = b"ready\n";
const ACK: &[u8] = b"ok\n";
/// Control-message space for `MAX_LISTENERS` descriptors; one more would set MSG_CTRUNC.
const CMSG_SPACE: usize = rustix::cmsg_space!(ScmRights(MAX_LISTENERS));

/// The old process's side: a Unix socket the new process connects to.
#[derive(Debug)]
pub struct Offer {
    listener: std::os::unix::net::UnixListener,
    file: SocketFile,
    /// Owner of the socket file, i.e. this process's effective uid: the only peer accepted.
    uid: u32,
}

impl Offer {
    /// Binds a Unix stream socket at `path` with mode 0600, replacing a stale socket left there
    /// (a path that exists and is not a socket is refused rather than deleted). The file is
    /// removed when the offer ends, whatever the outcome.
    ///
    /// Replacing a socket that a concurrent offer still listens on makes that offer time out:
    /// the caller runs one upgrade at a time.
    pub fn bind(path: &Path) -> io::Result<Offer> {
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket; refusing to replace it",
                        path.display()
                    ),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = std::os::unix::net::UnixListener::bind(path)?;
        let meta = fs::symlink_metadata(path)?;
        let file = SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
        // Between bind and chmod the umask decides who may connect; the peer uid check in
        // `hand_over` covers that window.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        Ok(Offer {
            listener,
            file,
            uid: meta.uid(),
        })
    }

    /// Waits (up to `timeout`) for the new process to connect, sends it every listener (name and
    /// descriptor; the descriptors stay open here), then waits (up to `timeout` again) for it to
    /// say it serves, and acknowledges.
    ///
    /// `Ok(())`: the new process serves on the listeners; the caller stops accepting and drains.
    /// `Err`: no upgrade happened (nobody connected, a peer with another uid, a protocol error,
    /// the new process exited or gave up, a timeout); the caller keeps serving.
    ///
    /// One connection per offer: the socket file is removed as soon as a peer connects.
    pub async fn hand_over(
        self,
        listeners: &[(String, BorrowedFd<'_>)],
        timeout: Duration,
    ) -> io::Result<()> {
        let names: Vec<&str> = listeners.iter().map(|(name, _)| name.as_str()).collect();
        let frame = encode_frame(&names)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let fds: Vec<BorrowedFd<'_>> = listeners.iter().map(|(_, fd)| *fd).collect();

        let Offer {
            listener,
            file,
            uid,
        } = self;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let (mut stream, _) = tokio::time::timeout(timeout, listener.accept())
            .await
            .map_err(|_| timed_out(format!("no new process connected within {timeout:?}")))??;
        drop(listener);
        drop(file);
        let peer = stream.peer_cred()?.uid();
        if peer != uid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("handoff peer runs as uid {peer}, not {uid}; refused"),
            ));
        }

        tokio::time::timeout(timeout, async {
            send_frame(&mut stream, &frame, &fds).await?;
            expect(
                &mut stream,
                READY,
                "the new process disconnected before saying it was ready",
            )
            .await?;
            stream.write_all(ACK).await
        })
        .await
        .map_err(|_| {
            timed_out(format!(
                "the new process did not get ready within {timeout:?}"
            ))
        })?
    }
}

/// The new process's side: the received listeners and the connection to the old process.
#[derive(Debug)]
pub struct Taken {
    /// In the old process's order; non-blocking, ready for `tokio::net::TcpListener::from_std`.
    pub listeners: Vec<(String, TcpListener)>,
    conn: UnixStream,
    /// How long `ready` waits for the acknowledgement (the `take` timeout).
    timeout: Duration,
}

/// Connects to the old process's offer at `path` and receives its listeners, all within
/// `timeout`. Every descriptor is checked to be a listening TCP socket before it is wrapped.
///
/// Dropping the returned `Taken` without calling `ready` aborts the upgrade: the old process
/// keeps serving.
pub async fn take(path: &Path, timeout: Duration) -> io::Result<Taken> {
    tokio::time::timeout(timeout, async {
        let conn = UnixStream::connect(path).await?;
        let mut fds = Vec::new();
        let mut len = [0u8; 4];
        recv_exact(&conn, &mut len, &mut fds).await?;
        let mut body = vec![0u8; frame_len(len)?];
        recv_exact(&conn, &mut body, &mut fds).await?;
        let names = decode_header(&body)?;
        if names.len() != fds.len() {
            return Err(invalid(format!(
                "the header names {} listeners but {} descriptors arrived",
                names.len(),
                fds.len()
            )));
        }
        let listeners = names
            .into_iter()
            .zip(fds)
            .map(|(name, fd)| into_listener(&name, fd).map(|l| (name, l)))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Taken {
            listeners,
            conn,
            timeout,
        })
    })
    .await
    .map_err(|_| timed_out(format!("no listeners received within {timeout:?}")))?
}

impl Taken {
    /// Tells the old process it may stop accepting (call once this process serves on the
    /// listeners) and waits for its acknowledgement.
    ///
    /// `Ok(())`: the old process has committed to drain. `Err`: it did not confirm (it gave up
    /// waiting and keeps serving, or it died); both processes may now accept on the shared
    /// sockets, which is harmless, and what to do next is the caller's call.
    pub async fn ready(self) -> io::Result<()> {
        let Taken {
            mut conn, timeout, ..
        } = self;
        tokio::time::timeout(timeout, async {
            conn.write_all(READY).await?;
            expect(
                &mut conn,
                ACK,
                "the old process closed without acknowledging (it keeps serving, or it died)",
            )
            .await
        })
        .await
        .map_err(|_| {
            timed_out(format!(
                "the old process did not acknowledge within {timeout:?}"
            ))
        })?
    }
}

/// Removes the socket file on drop, unless another offer has replaced it since.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && meta.dev() == self.dev
            && meta.ino() == self.ino
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    version: u32,
    names: &'a [&'a str],
}

/// Read first and alone so an unknown version is reported as such, not as a shape mismatch.
#[derive(Deserialize)]
struct VersionOnly {
    version: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderV1 {
    #[serde(rename = "version")]
    _version: u32,
    names: Vec<String>,
}

/// The length-prefixed header for `names`. Refuses more than `MAX_LISTENERS`, duplicate names
/// (the receiver looks listeners up by name) and a header over `MAX_HEADER_LEN`.
fn encode_frame(names: &[&str]) -> io::Result<Vec<u8>> {
    check_names(names.iter().copied())?;
    let json = serde_json::to_vec(&HeaderOut {
        version: PROTOCOL_VERSION,
        names,
    })?;
    if json.len() > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "handoff header of {} bytes exceeds {MAX_HEADER_LEN}",
            json.len()
        )));
    }
    let len = u32::try_from(json.len()).map_err(|_| invalid("handoff header too long"))?;
    let mut frame = Vec::with_capacity(json.len().saturating_add(4));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&json);
    Ok(frame)
}

fn frame_len(prefix: [u8; 4]) -> io::Result<usize> {
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > MAX_HEADER_LEN {
        return Err(invalid(format!(
            "handoff header of {len} bytes exceeds {MAX_HEADER_LEN}"
        )));
    }
    Ok(len)
}

/// The listener names of a header body (the bytes after the length prefix).
fn decode_header(body: &[u8]) -> io::Result<Vec<String>> {
    let VersionOnly { version } =
        serde_json::from_slice(body).map_err(|e| invalid(format!("not a handoff header: {e}")))?;
    if version != PROTOCOL_VERSION {
        return Err(invalid(format!(
            "unsupported handoff protocol version {version} (this binary speaks {PROTOCOL_VERSION})"
        )));
    }
    let header: HeaderV1 = serde_json::from_slice(body)
        .map_err(|e| invalid(format!("malformed handoff header: {e}")))?;
    check_names(header.names.iter().map(String::as_str))?;
    Ok(header.names)
}

fn check_names<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> io::Result<()> {
    if names.len() > MAX_LISTENERS {
        return Err(invalid(format!(
            "{} listeners exceed the handoff limit of {MAX_LISTENERS}",
            names.len()
        )));
    }
    let mut seen: Vec<&str> = Vec::with_capacity(names.len());
    for name in names {
        if seen.contains(&name) {
            return Err(invalid(format!(
                "listener name {name:?} appears twice in the handoff"
            )));
        }
        seen.push(name);
    }
    Ok(())
}

/// Sends `frame` with `fds` attached to its first bytes.
async fn send_frame(
    stream: &mut UnixStream,
    frame: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let sent = stream
        .async_io(Interest::WRITABLE, || {
            let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
                return Err(invalid("too many descriptors for one handoff"));
            }
            Ok(rustix::net::sendmsg(
                &*stream,
                &[IoSlice::new(frame)],
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        })
        .await?;
    // The descriptors went with the first byte; the rest is plain data.
    stream
        .write_all(frame.get(sent..).unwrap_or_default())
        .await
}

/// Fills `buf` from `stream`, collecting every descriptor that arrives on the way into `fds`
/// (close-on-exec, so a later spawn does not inherit them).
async fn recv_exact(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or_default();
        let n = stream
            .async_io(Interest::READABLE, || recv_some(stream, rest, fds))
            .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the old process closed the handoff before sending every listener",
            ));
        }
        filled = filled.saturating_add(n);
    }
    Ok(())
}

fn recv_some(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::<u8>::uninit(); CMSG_SPACE];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    // The kernel closed whatever did not fit; a partial set is useless.
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > MAX_LISTENERS {
        return Err(invalid(format!(
            "more than {MAX_LISTENERS} descriptors in one handoff"
        )));
    }
    Ok(msg.bytes)
}

/// Wraps `fd` if it is a listening TCP socket.
fn into_listener(name: &str, fd: OwnedFd) -> io::Result<TcpListener> {
    let not_listener = |why: &str| invalid(format!("listener {name:?}: received {why}"));
    match rustix::net::sockopt::socket_type(&fd) {
        Ok(kind) if kind == SocketType::STREAM => {}
        Ok(_) => return Err(not_listener("a socket that is not a stream socket")),
        Err(_) => return Err(not_listener("a descriptor that is not a socket")),
    }
    // Apple declares SO_ACCEPTCONN without implementing it; `local_addr` below still catches
    // non-TCP sockets there.
    #[cfg(not(target_vendor = "apple"))]
    if !rustix::net::sockopt::socket_acceptconn(&fd).unwrap_or(false) {
        return Err(not_listener("a socket that is not listening"));
    }
    let listener = TcpListener::from(fd);
    // Only an IPv4 or IPv6 address converts; a Unix socket's fails here.
    if listener.local_addr().is_err() {
        return Err(not_listener("a socket that is not TCP"));
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Waits for exactly `want`; end of stream is `eof_msg`.
async fn expect(stream: &mut UnixStream, want: &[u8], eof_msg: &str) -> io::Result<()> {
    let mut got = [0u8; 8];
    let got = got.get_mut(..want.len()).unwrap_or_default();
    match stream.read_exact(got).await {
        Ok(_) if got == want => Ok(()),
        Ok(_) => Err(invalid(format!(
            "handoff expected {:?}, got {:?}",
            String::from_utf8_lossy(want),
            String::from_utf8_lossy(got)
        ))),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(io::Error::new(io::ErrorKind::UnexpectedEof, eof_msg))
        }
        Err(e) => Err(e),
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn timed_out(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, msg)
}

#[cfg(test)]
mod tests {
    use std::{
        net::{SocketAddr, TcpStream, UdpSocket},
        os::fd::AsFd,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
    };

    use proptest::prelude::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixListener,
    };

    use super::*;

    const LONG: Duration = Duration::from_secs(10);

    fn sock_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("handoff.sock")
    }

    fn tcp_listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").unwrap()
    }

    fn raw_frame(json: &str) -> Vec<u8> {
        let mut frame = u32::try_from(json.len()).unwrap().to_be_bytes().to_vec();
        frame.extend_from_slice(json.as_bytes());
        frame
    }

    /// A hand-rolled old process: sends `frame` with `fds`, then answers `ready` with `reply`
    /// (or hangs up when `reply` is `None`). Returns what the peer sent.
    async fn raw_offer(
        path: PathBuf,
        frame: Vec<u8>,
        fds: Vec<OwnedFd>,
        reply: Option<&'static [u8]>,
    ) -> tokio::task::JoinHandle<Vec<u8>> {
        let server = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = server.accept().await.unwrap();
            let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            send_frame(&mut stream, &frame, &borrowed).await.unwrap();
            let mut got = vec![0u8; READY.len()];
            let n = stream.read(&mut got).await.unwrap_or(0);
            got.truncate(n);
            if let Some(reply) = reply {
                stream.write_all(reply).await.unwrap();
            }
            got
        })
    }

    #[tokio::test]
    async fn happy_path_hands_listeners_over_and_waits_for_ready() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let admin = tcp_listener();
        let want_addrs = vec![web.local_addr().unwrap(), admin.local_addr().unwrap()];
        let offer = Offer::bind(&path).unwrap();
        let ready_called = Arc::new(AtomicBool::new(false));

        let new = tokio::spawn({
            let path = path.clone();
            let ready_called = Arc::clone(&ready_called);
            async move {
                let mut taken = take(&path, LONG).await.unwrap();
                let listeners = std::mem::take(&mut taken.listeners);
                let names: Vec<String> = listeners.iter().map(|(n, _)| n.clone()).collect();
                let addrs: Vec<SocketAddr> = listeners
                    .iter()
                    .map(|(_, l)| l.local_addr().unwrap())
                    .collect();
                let web_addr = addrs[0];
                let mut listeners = listeners.into_iter();
                let (_, web) = listeners.next().unwrap();
                let web = tokio::net::TcpListener::from_std(web).unwrap();
                let client = tokio::spawn(async move {
                    let mut c = tokio::net::TcpStream::connect(web_addr).await.unwrap();
                    c.write_all(b"ping").await.unwrap();
                    let mut buf = [0u8; 4];
                    c.read_exact(&mut buf).await.unwrap();
                    buf
                });
                let (mut conn, _) = web.accept().await.unwrap();
                let mut buf = [0u8; 4];
                conn.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"ping");
                conn.write_all(b"pong").await.unwrap();
                assert_eq!(&client.await.unwrap(), b"pong");
                ready_called.store(true, Ordering::SeqCst);
                taken.ready().await.unwrap();
                (names, addrs)
            }
        });

        let offered = vec![
            ("web".to_string(), web.as_fd()),
            ("admin".to_string(), admin.as_fd()),
        ];
        offer.hand_over(&offered, LONG).await.unwrap();
        assert!(
            ready_called.load(Ordering::SeqCst),
            "hand_over returned before the new process called ready()"
        );
        let (names, addrs) = new.await.unwrap();
        assert_eq!(names, ["web", "admin"]);
        assert_eq!(addrs, want_addrs);
        assert!(!path.exists(), "the socket file outlived the offer");
    }

    #[tokio::test]
    async fn new_process_leaving_without_ready_fails_the_handover() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let offer = Offer::bind(&path).unwrap();
        let new = tokio::spawn({
            let path = path.clone();
            async move { drop(take(&path, LONG).await.unwrap()) }
        });
        let err = offer
            .hand_over(&[("web".to_string(), web.as_fd())], LONG)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        new.await.unwrap();
    }

    #[tokio::test]
    async fn nobody_connecting_times_out_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let offer = Offer::bind(&path).unwrap();
        let err = offer
            .hand_over(&[], Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn garbage_instead_of_ready_fails_the_handover() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let offer = Offer::bind(&path).unwrap();
        let new = tokio::spawn({
            let path = path.clone();
            async move {
                let conn = UnixStream::connect(&path).await.unwrap();
                let mut fds = Vec::new();
                let mut len = [0u8; 4];
                recv_exact(&conn, &mut len, &mut fds).await.unwrap();
                let mut body = vec![0u8; frame_len(len).unwrap()];
                recv_exact(&conn, &mut body, &mut fds).await.unwrap();
                let mut conn = conn;
                conn.write_all(b"nope!\n").await.unwrap();
                let mut rest = Vec::new();
                let _ = conn.read_to_end(&mut rest).await;
                rest
            }
        });
        let err = offer
            .hand_over(&[("web".to_string(), web.as_fd())], LONG)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(
            new.await.unwrap().is_empty(),
            "the old process acknowledged garbage"
        );
    }

    #[tokio::test]
    async fn ready_fails_without_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let fd = OwnedFd::from(web.try_clone().unwrap());
        let frame = encode_frame(&["web"]).unwrap();
        let old = raw_offer(path.clone(), frame, vec![fd], None).await;
        let taken = take(&path, LONG).await.unwrap();
        let err = taken.ready().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
        assert_eq!(old.await.unwrap(), READY);
    }

    #[tokio::test]
    async fn ready_succeeds_on_acknowledgement_from_a_raw_peer() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let fd = OwnedFd::from(web.try_clone().unwrap());
        let frame = encode_frame(&["web"]).unwrap();
        let old = raw_offer(path.clone(), frame, vec![fd], Some(ACK)).await;
        let taken = take(&path, LONG).await.unwrap();
        taken.ready().await.unwrap();
        assert_eq!(old.await.unwrap(), READY);
    }

    #[tokio::test]
    async fn unknown_protocol_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let fd = OwnedFd::from(web.try_clone().unwrap());
        let frame = raw_frame(r#"{"version":2,"listeners":[{"name":"web"}]}"#);
        let _old = raw_offer(path.clone(), frame, vec![fd], None).await;
        let err = take(&path, LONG).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("version 2"), "{err}");
    }

    #[tokio::test]
    async fn header_and_descriptor_counts_must_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let fd = OwnedFd::from(web.try_clone().unwrap());
        let frame = encode_frame(&["web", "admin"]).unwrap();
        let _old = raw_offer(path.clone(), frame, vec![fd], None).await;
        let err = take(&path, LONG).await.unwrap_err();
        assert!(
            err.to_string().contains("2 listeners but 1 descriptors"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn more_descriptors_than_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let web = tcp_listener();
        let fds: Vec<OwnedFd> = (0..=MAX_LISTENERS)
            .map(|_| OwnedFd::from(web.try_clone().unwrap()))
            .collect();
        let frame = encode_frame(&["web"]).unwrap();
        let _old = raw_offer(path.clone(), frame, fds, None).await;
        let err = take(&path, LONG).await.unwrap_err();
        assert!(err.to_string().contains("more than 64"), "{err}");
    }

    #[tokio::test]
    async fn descriptors_that_are_not_tcp_listeners_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let web = tcp_listener();
        let connected = TcpStream::connect(web.local_addr().unwrap()).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let unix = std::os::unix::net::UnixListener::bind(dir.path().join("other.sock")).unwrap();
        let file = fs::File::open("/dev/null").unwrap();
        let cases: Vec<(&str, OwnedFd)> = vec![
            ("not listening", connected.into()),
            ("not a stream", udp.into()),
            ("not TCP", unix.into()),
            ("not a socket", file.into()),
        ];
        for (i, (why, fd)) in cases.into_iter().enumerate() {
            let path = dir.path().join(format!("h{i}.sock"));
            let frame = encode_frame(&["web"]).unwrap();
            let _old = raw_offer(path.clone(), frame, vec![fd], None).await;
            let err = take(&path, LONG).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{why}: {err}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[tokio::test]
    async fn stale_socket_file_is_replaced_and_the_file_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let offer = Offer::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // The new socket really listens: a client gets through and the handoff proceeds.
        let web = tcp_listener();
        let new = tokio::spawn({
            let path = path.clone();
            async move { take(&path, LONG).await.unwrap().ready().await }
        });
        offer
            .hand_over(&[("web".to_string(), web.as_fd())], LONG)
            .await
            .unwrap();
        new.await.unwrap().unwrap();
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        fs::write(&path, b"precious").unwrap();
        let err = Offer::bind(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&path).unwrap(), b"precious");
    }

    #[test]
    fn dropping_an_offer_spares_a_newer_socket_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = sock_path(&dir);
        let first = Offer::bind(&path).unwrap();
        let second = Offer::bind(&path).unwrap();
        drop(first);
        assert!(
            path.exists(),
            "the older offer removed the newer one's socket"
        );
        drop(second);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn bad_offers_are_refused_before_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let web = tcp_listener();
        let twice = vec![
            ("web".to_string(), web.as_fd()),
            ("web".to_string(), web.as_fd()),
        ];
        let too_many: Vec<(String, BorrowedFd<'_>)> = (0..=MAX_LISTENERS)
            .map(|i| (format!("l{i}"), web.as_fd()))
            .collect();
        for offered in [twice, too_many] {
            let offer = Offer::bind(&sock_path(&dir)).unwrap();
            let err = offer.hand_over(&offered, LONG).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
        }
    }

    #[test]
    fn header_rules() {
        let ok = decode_header(br#"{"version":1,"names":["web","admin"]}"#).unwrap();
        assert_eq!(ok, ["web", "admin"]);
        for (body, needle) in [
            (&br"not json"[..], "not a handoff header"),
            (br#"{"names":["web"]}"#, "not a handoff header"),
            (br#"{"version":0,"names":[]}"#, "version 0"),
            (br#"{"version":1}"#, "malformed"),
            (br#"{"version":1,"names":[],"extra":true}"#, "malformed"),
            (br#"{"version":1,"names":["a","a"]}"#, "twice"),
        ] {
            let err = decode_header(body).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(err.to_string().contains(needle), "{needle}: {err}");
        }
        let names: Vec<String> = (0..=MAX_LISTENERS).map(|i| format!("l{i}")).collect();
        let body = format!(
            r#"{{"version":1,"names":{}}}"#,
            serde_json::to_string(&names).unwrap()
        );
        assert!(
            decode_header(body.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("limit")
        );
    }

    #[test]
    fn frame_length_is_capped() {
        assert_eq!(
            frame_len(u32::try_from(MAX_HEADER_LEN).unwrap().to_be_bytes()).unwrap(),
            MAX_HEADER_LEN
        );
        assert!(frame_len(u32::try_from(MAX_HEADER_LEN + 1).unwrap().to_be_bytes()).is_err());
        assert!(frame_len(u32::MAX.to_be_bytes()).is_err());
    }

    proptest! {
        /// Whatever names the old side may send, the new side reads back exactly those, in order.
        #[test]
        fn frames_round_trip(names in prop::collection::btree_set(".{0,24}", 0..=MAX_LISTENERS)) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let frame = encode_frame(&names).unwrap();
            let len = frame_len(frame[..4].try_into().unwrap()).unwrap();
            prop_assert_eq!(len, frame.len() - 4);
            prop_assert_eq!(decode_header(&frame[4..]).unwrap(), names);
        }

        /// Arbitrary bytes never panic the decoder, and anything accepted respects the limits.
        #[test]
        fn decoding_never_accepts_out_of_bounds(body in prop::collection::vec(any::<u8>(), 0..256),
                                                names in prop::collection::vec("[a-c]{0,2}", 0..80)) {
            if let Ok(got) = decode_header(&body) {
                prop_assert!(got.len() <= MAX_LISTENERS);
            }
            let json = serde_json::json!({ "version": PROTOCOL_VERSION, "names": names });
            let decoded = decode_header(json.to_string().as_bytes());
            let unique = names.iter().collect::<std::collections::BTreeSet<_>>().len() == names.len();
            prop_assert_eq!(decoded.is_ok(), unique && names.len() <= MAX_LISTENERS);
        }
    }
}
