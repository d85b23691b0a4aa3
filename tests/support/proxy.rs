//! A TCP proxy for fault injection between a client and PostgreSQL.
//!
//! Semantics of each [`Mode`]:
//!
//! * `Pass`: bytes and end-of-stream are forwarded as they come.
//! * `Delay(d)`: every chunk read from either side waits `d` before it is
//!   written to the other side (so a request/response round trip takes at
//!   least `2 * d`).
//! * `Cut`: every current connection is reset (RST to both peers, via
//!   `SO_LINGER 0`), and new connections are accepted and reset at once.
//! * `Blackhole`: connections stay open but every byte (and end-of-stream)
//!   from either side is silently dropped; new connections are accepted but
//!   nothing flows (no upstream connection is made). A connection that lost
//!   anything to the black hole is corrupt, so it is reset as soon as the
//!   mode changes to anything else; connections that were idle throughout go
//!   on normally.
//!
//! All tasks run on the runtime that called [`Proxy::start`] and end when the
//! [`Proxy`] is dropped (every open connection is then reset).
//!
//! [`Proxy::bytes_from_clients`] counts the bytes read from clients (whether
//! then forwarded, delayed or swallowed), e.g. to show that a client sent
//! nothing at all for a while.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Delay(Duration),
    Cut,
    Blackhole,
}

pub struct Proxy {
    addr: SocketAddr,
    /// Where new connections go (see [`Proxy::retarget`]).
    target: Arc<std::sync::Mutex<SocketAddr>>,
    mode: watch::Sender<Mode>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    bytes: Arc<Bytes>,
    acceptor: JoinHandle<()>,
}

/// Bytes read from each side, over every connection.
#[derive(Default)]
struct Bytes {
    from_clients: AtomicU64,
    from_servers: AtomicU64,
}

impl Proxy {
    /// Listens on `127.0.0.1:<free port>` and forwards to `target`, starting
    /// in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("binding the proxy listener on 127.0.0.1:0 failed");
        let addr = listener
            .local_addr()
            .expect("reading the proxy listener's address failed");
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(Bytes::default());
        let target = Arc::new(std::sync::Mutex::new(target));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            target.clone(),
            mode_rx,
            accepted.clone(),
            open.clone(),
            bytes.clone(),
        ));
        Proxy {
            addr,
            target,
            mode,
            accepted,
            open,
            bytes,
            acceptor,
        }
    }

    /// The address clients should connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches mode; takes effect at once on current connections too.
    /// Sends new connections to `to` (open ones stay where they are): an address that now
    /// leads somewhere else, as after a failover or a change of pooler.
    pub fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Connections accepted so far, in any mode (including ones reset at once
    /// in `Cut`).
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open through the proxy.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Bytes read so far from clients (towards the server), over every
    /// connection and in every mode: counted when the proxy reads them,
    /// before any delay, and also when they are swallowed by a black hole.
    pub fn bytes_from_clients(&self) -> u64 {
        self.bytes.from_clients.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping `self.mode` closes the channel, which resets every
        // connection; the acceptor is stopped here.
        self.acceptor.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: Arc<std::sync::Mutex<SocketAddr>>,
    mut mode: watch::Receiver<Mode>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    bytes: Arc<Bytes>,
) {
    loop {
        let socket = tokio::select! {
            r = listener.accept() => match r {
                Ok((socket, _)) => socket,
                Err(_) => {
                    // E.g. out of file descriptors: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            r = mode.changed() => {
                if r.is_err() {
                    return; // proxy dropped
                }
                continue;
            }
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => reset(socket),
            Mode::Blackhole => {
                tokio::spawn(blackholed(
                    socket,
                    mode.clone(),
                    OpenGuard::new(&open),
                    bytes.clone(),
                ));
            }
            Mode::Pass | Mode::Delay(_) => {
                let target = *target.lock().unwrap_or_else(|e| e.into_inner());
                tokio::spawn(forward(
                    socket,
                    target,
                    mode.clone(),
                    OpenGuard::new(&open),
                    bytes.clone(),
                ));
            }
        }
    }
}

/// Counts an open connection while alive.
struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: &Arc<AtomicUsize>) -> OpenGuard {
        open.fetch_add(1, Ordering::SeqCst);
        OpenGuard(open.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Closes with RST instead of FIN.
fn reset(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}

/// Whether a connection must be reset now: the proxy is gone, the mode is
/// `Cut`, or the connection lost bytes to the black hole and the black hole
/// is over.
fn must_reset(mode: &watch::Receiver<Mode>, poisoned: &AtomicBool) -> bool {
    if mode.has_changed().is_err() {
        return true;
    }
    match *mode.borrow() {
        Mode::Cut => true,
        Mode::Blackhole => false,
        Mode::Pass | Mode::Delay(_) => poisoned.load(Ordering::SeqCst),
    }
}

/// Runs `fut` unless/until the connection must be reset (then `None`).
async fn guarded<F: Future>(
    fut: F,
    mode: &mut watch::Receiver<Mode>,
    poisoned: &AtomicBool,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        if must_reset(mode, poisoned) {
            return None;
        }
        tokio::select! {
            biased;
            r = mode.changed() => {
                if r.is_err() {
                    return None;
                }
            }
            out = &mut fut => return Some(out),
        }
    }
}

/// A connection accepted in `Blackhole`: swallow everything, reset when the
/// mode changes.
async fn blackholed(
    mut client: TcpStream,
    mut mode: watch::Receiver<Mode>,
    _open: OpenGuard,
    bytes: Arc<Bytes>,
) {
    let poisoned = AtomicBool::new(true);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match guarded(client.read(&mut buf), &mut mode, &poisoned).await {
            None => return reset(client),
            Some(Ok(0)) | Some(Err(_)) => return, // the client gave up
            Some(Ok(n)) => {
                bytes.from_clients.fetch_add(n as u64, Ordering::SeqCst);
            }
        }
    }
}

#[derive(PartialEq, Eq)]
enum Outcome {
    /// Forwarded end-of-stream: this direction is done.
    Closed,
    /// Both sockets must be reset.
    Reset,
}

async fn forward(
    mut client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    _open: OpenGuard,
    bytes: Arc<Bytes>,
) {
    let poisoned = AtomicBool::new(false);
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target));
    let mut upstream = match guarded(connect, &mut mode, &poisoned).await {
        Some(Ok(Ok(upstream))) => upstream,
        _ => return reset(client),
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let outcome = {
        let (mut client_r, mut client_w) = client.split();
        let (mut upstream_r, mut upstream_w) = upstream.split();
        let to_server = pump(
            &mut client_r,
            &mut upstream_w,
            mode.clone(),
            &poisoned,
            &bytes.from_clients,
        );
        let to_client = pump(
            &mut upstream_r,
            &mut client_w,
            mode.clone(),
            &poisoned,
            &bytes.from_servers,
        );
        tokio::pin!(to_server, to_client);
        let (mut server_done, mut client_done) = (false, false);
        loop {
            tokio::select! {
                o = &mut to_server, if !server_done => {
                    if o == Outcome::Reset { break Outcome::Reset; }
                    server_done = true;
                }
                o = &mut to_client, if !client_done => {
                    if o == Outcome::Reset { break Outcome::Reset; }
                    client_done = true;
                }
            }
            if server_done && client_done {
                break Outcome::Closed;
            }
        }
    };
    if outcome == Outcome::Reset {
        reset(client);
        reset(upstream);
    }
}

/// Copies one direction, applying the mode to every chunk and counting what it reads in `read`.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    mut mode: watch::Receiver<Mode>,
    poisoned: &AtomicBool,
    read: &AtomicU64,
) -> Outcome
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match guarded(from.read(&mut buf), &mut mode, poisoned).await {
            None | Some(Err(_)) => return Outcome::Reset,
            Some(Ok(n)) => n,
        };
        read.fetch_add(n as u64, Ordering::SeqCst);
        let current = *mode.borrow();
        if current == Mode::Blackhole {
            poisoned.store(true, Ordering::SeqCst);
            if n == 0 {
                // Swallow the end-of-stream too; wait for the mode to change.
                guarded(std::future::pending::<()>(), &mut mode, poisoned).await;
                return Outcome::Reset;
            }
            continue;
        }
        if n == 0 {
            return match guarded(to.shutdown(), &mut mode, poisoned).await {
                Some(Ok(())) => Outcome::Closed,
                _ => Outcome::Reset,
            };
        }
        let current = *mode.borrow();
        if let Mode::Delay(d) = current {
            if guarded(tokio::time::sleep(d), &mut mode, poisoned)
                .await
                .is_none()
            {
                return Outcome::Reset;
            }
        }
        // The mode may have changed during the delay.
        let current = *mode.borrow();
        if current == Mode::Blackhole {
            poisoned.store(true, Ordering::SeqCst);
            continue;
        }
        match guarded(to.write_all(&buf[..n]), &mut mode, poisoned).await {
            Some(Ok(())) => {}
            None | Some(Err(_)) => return Outcome::Reset,
        }
    }
}
