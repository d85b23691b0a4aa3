//! A counting TCP proxy (plain TCP only), for what only the wire shows: the round trips an
//! instance starts (phase 7), the instant a notification is handed to an instance's socket,
//! from which B's own share of a propagation is timed, and the instant an instance's statement is
//! complete on the wire, from which A's own share is timed (phase 2).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use resilient_circuit::storage::postgres::{PostgresOptions, SslMode};
use tokio_postgres::Config;

use crate::db::Target;
use crate::{R, WAIT};

/// What the proxy saw.
#[derive(Default)]
struct WireLog {
    /// Round trips the pool's connections started: Sync (extended protocol) and Query (simple
    /// protocol) messages from the client.
    pool_round_trips: AtomicU64,
    /// The same on the listener's connection (LISTEN, reloads, heartbeats).
    listener_round_trips: AtomicU64,
    /// When each of the pool's statements was complete (its Sync read from the client's
    /// socket, before the proxy passed it on).
    pool_statements: Mutex<Vec<Instant>>,
    /// Connections accepted so far.
    connections: AtomicU64,
    /// NotificationResponses to the listener's connection: payload and the instant just before
    /// the proxy wrote the bytes that complete it to the client's socket.
    notifications: Mutex<Vec<(Instant, String)>>,
}

/// A TCP proxy in front of the server for one instance, on plain std threads (blocking I/O, so it
/// takes nothing from the tokio runtime and answers as soon as the kernel wakes it). It parses
/// the protocol in both directions; the instance must connect with `sslmode=disable`.
pub(crate) struct WireProxy {
    pub(crate) port: u16,
    log: Arc<WireLog>,
    stop: Arc<AtomicBool>,
    sockets: Arc<Mutex<Vec<std::net::TcpStream>>>,
}

/// Splits complete protocol messages off `buf`; calls `f(type, body)` for each. `untyped` is the
/// number of leading untyped messages still expected (the client's startup message).
fn split_messages(buf: &mut Vec<u8>, untyped: &mut usize, mut f: impl FnMut(u8, &[u8])) {
    let mut at = 0;
    loop {
        let head = if *untyped > 0 { 4 } else { 5 };
        if buf.len() < at + head {
            break;
        }
        let ty = if head == 5 { buf[at] } else { 0 };
        let len_at = at + head - 4;
        let len = u32::from_be_bytes([
            buf[len_at],
            buf[len_at + 1],
            buf[len_at + 2],
            buf[len_at + 3],
        ]) as usize;
        let end = len_at + len.max(4);
        if buf.len() < end {
            break;
        }
        let body = &buf[len_at + 4..end];
        if head == 4 {
            // SSLRequest / GSSENCRequest (8 bytes, a magic code) are followed by another
            // untyped message; the startup message ends the untyped part.
            let code = body
                .get(..4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
            if !matches!(code, Some(80_877_103 | 80_877_104)) {
                *untyped -= 1;
            }
        }
        f(ty, body);
        at = end;
    }
    buf.drain(..at);
}

impl WireProxy {
    pub(crate) fn start(upstream: std::net::SocketAddr) -> R<WireProxy> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let log = Arc::new(WireLog::default());
        let stop = Arc::new(AtomicBool::new(false));
        let sockets = Arc::new(Mutex::new(Vec::new()));
        let (l, st, so) = (log.clone(), stop.clone(), sockets.clone());
        std::thread::Builder::new()
            .name("wire-proxy".into())
            .spawn(move || {
                for client in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        return;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(server) = std::net::TcpStream::connect(upstream) else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                        so.lock().unwrap_or_else(|e| e.into_inner()).extend([c, s]);
                    }
                    l.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = Self::pipe(client, server, l.clone());
                }
            })?;
        Ok(WireProxy {
            port,
            log,
            stop,
            sockets,
        })
    }

    /// Two threads per connection: client -> server and server -> client.
    fn pipe(client: std::net::TcpStream, server: std::net::TcpStream, log: Arc<WireLog>) -> R<()> {
        use std::io::{Read, Write};
        // The role is known once the client's startup message is through: shared with the
        // other direction (0 unknown, 1 listener, 2 pool).
        let role = Arc::new(std::sync::atomic::AtomicU8::new(0));
        let (mut c_rd, mut s_wr) = (client.try_clone()?, server.try_clone()?);
        let (mut s_rd, mut c_wr) = (server, client);
        let (up_log, up_role) = (log.clone(), role.clone());
        std::thread::Builder::new()
            .name("wire-up".into())
            .spawn(move || {
                let (mut buf, mut untyped, mut chunk) = (Vec::new(), 1usize, [0u8; 16384]);
                loop {
                    let n = match c_rd.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let read_at = Instant::now();
                    buf.extend_from_slice(&chunk[..n]);
                    split_messages(&mut buf, &mut untyped, |ty, body| match ty {
                        0 => {
                            // Startup: protocol version, then name\0value\0 pairs.
                            let text = String::from_utf8_lossy(body.get(4..).unwrap_or(&[]));
                            let mut parts = text.split('\0');
                            let mut listener = false;
                            while let (Some(k), Some(v)) = (parts.next(), parts.next()) {
                                if k.ends_with("application_name") && v.ends_with("-listener") {
                                    listener = true;
                                }
                            }
                            if body.len() > 8 {
                                up_role.store(if listener { 1 } else { 2 }, Ordering::Release);
                            }
                        }
                        b'S' | b'Q' => {
                            if up_role.load(Ordering::Acquire) == 1 {
                                up_log.listener_round_trips.fetch_add(1, Ordering::Relaxed);
                            } else {
                                up_log.pool_round_trips.fetch_add(1, Ordering::Relaxed);
                                up_log
                                    .pool_statements
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(read_at);
                            }
                        }
                        _ => {}
                    });
                    if s_wr.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_wr.shutdown(std::net::Shutdown::Both);
            })?;
        std::thread::Builder::new()
            .name("wire-down".into())
            .spawn(move || {
                let (mut buf, mut untyped, mut chunk) = (Vec::new(), 0usize, [0u8; 16384]);
                let mut payloads = Vec::new();
                loop {
                    let n = match s_rd.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    split_messages(&mut buf, &mut untyped, |ty, body| {
                        if ty == b'A' && body.len() > 4 {
                            // NotificationResponse: pid, channel\0, payload\0.
                            let text = String::from_utf8_lossy(&body[4..]);
                            if let Some(p) = text.split('\0').nth(1) {
                                payloads.push(p.to_owned());
                            }
                        }
                    });
                    let at = Instant::now();
                    if c_wr.write_all(&chunk[..n]).is_err() {
                        break;
                    }
                    if !payloads.is_empty() && role.load(Ordering::Acquire) == 1 {
                        let mut v = log.notifications.lock().unwrap_or_else(|e| e.into_inner());
                        v.extend(payloads.drain(..).map(|p| (at, p)));
                    }
                    payloads.clear();
                }
                let _ = c_wr.shutdown(std::net::Shutdown::Both);
            })?;
        Ok(())
    }

    /// `(pool, listener)` round trips so far.
    pub(crate) fn round_trips(&self) -> (u64, u64) {
        (
            self.log.pool_round_trips.load(Ordering::Relaxed),
            self.log.listener_round_trips.load(Ordering::Relaxed),
        )
    }

    /// When the NotificationResponse announcing `ns`/`key` -> `state` was handed to the
    /// listener's socket; waits for it up to `WAIT`.
    pub(crate) fn notified(&self, ns: &str, key: &str, state: &str) -> R<Instant> {
        take_first(&self.log.notifications, |(_, p)| {
            serde_json::from_str::<serde_json::Value>(p)
                .is_ok_and(|j| j["ns"] == ns && j["key"] == key && j["state"] == state)
        })
        .map(|(at, _)| at)
        .ok_or_else(|| format!("the proxy saw no NOTIFY of {ns}/{key} -> {state}").into())
    }

    /// When the first of the pool's statements completed at or after `since` reached the
    /// proxy; waits for it up to `WAIT`. Earlier ones are dropped.
    pub(crate) fn statement_after(&self, since: Instant) -> R<Instant> {
        take_first(&self.log.pool_statements, |at| *at >= since)
            .ok_or_else(|| "the proxy saw no statement from the pool".into())
    }

    pub(crate) fn clear_notifications(&self) {
        self.log
            .notifications
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for WireProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        for s in self
            .sockets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// The first entry of `log` that `wanted` picks, removed with every entry before it; waits for
/// one up to `WAIT` (`None` then). The proxy's threads append to `log`.
fn take_first<T: Clone>(log: &Mutex<Vec<T>>, mut wanted: impl FnMut(&T) -> bool) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let mut v = log.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = v.iter().position(&mut wanted) {
                let found = v[i].clone();
                v.drain(..=i);
                return Some(found);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The server's TCP address, for a proxy in front of it (`None` for a Unix socket).
pub(crate) fn tcp_upstream(cfg: &Config) -> Option<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = match cfg.get_hosts().first()? {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => return None,
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    (host.as_str(), port).to_socket_addrs().ok()?.next()
}

/// Options for an instance of namespace `ns` whose connections all go through `proxy`, in plain
/// TCP (the proxy parses the protocol).
pub(crate) fn proxied_opts(t: &Target, ns: &str, proxy: &WireProxy) -> R<PostgresOptions> {
    Ok(t.opts(ns)?
        .host("127.0.0.1")
        .port(proxy.port)
        .ssl_mode(SslMode::Disable))
}
