//! Connecting to a host list as libpq does: each host in turn, each attempt bounded on its own.
//!
//! tokio-postgres walks a host list too, but bounds only the TCP connect of each address with
//! `connect_timeout`: a host that accepts the connection and then says nothing (a hung load
//! balancer or pooler, a server stuck in start-up) holds the attempt forever, and a caller's
//! overall timeout then ends it before the next host is tried. After a failover whose old primary
//! is listed first and went silent, no instance would ever reach the new one. So the list is split
//! here into one configuration per host, and each attempt (TCP, TLS, start-up, authentication and
//! the `target_session_attrs` check) gets `connect_timeout` of its own, as libpq's does: a list
//! of `n` hosts takes at most `n × connect_timeout` to fail.
//!
//! The host that took the last connection is tried first, then the others in the order given
//! (or shuffled, with `load_balance_hosts=random`): after a failover the pool's new connections
//! go straight to the new primary the listener found, instead of spending a connect timeout on
//! the silent old one each time (the pool's calls are bounded by the statement timeout, which one
//! silent host would use up).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use tokio::task::JoinHandle;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config, Connection, Socket};

use super::config::TlsSettings;
use super::tls::describe_connect_error;
use crate::error::describe_pg_error;

/// One host of a list: where it is (for messages) and how to connect to it alone.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    /// `host:port`, never the password.
    pub(crate) target: String,
    pub(crate) config: Config,
}

/// A host list with a per-host time limit and a memory of the host that answered last.
#[derive(Debug)]
pub(crate) struct Hosts {
    hosts: Vec<Host>,
    /// How the connections use TLS, to say which mode and files a failed handshake used.
    tls: TlsSettings,
    per_host: Duration,
    random: bool,
    /// Index of the host that took the last connection: tried first.
    preferred: Arc<AtomicUsize>,
}

/// Every attempt failed.
#[derive(Debug)]
pub(crate) struct Failed {
    /// The error of the last host tried, when it answered with one (rather than a timeout).
    pub(crate) last: Option<tokio_postgres::Error>,
    /// `target: cause` of every host tried, in order.
    pub(crate) causes: Vec<String>,
}

impl Failed {
    /// Every host's failure, `; `-separated.
    pub(crate) fn describe(&self) -> String {
        if self.causes.is_empty() {
            return "no host to connect to".to_owned();
        }
        self.causes.join("; ")
    }
}

impl Hosts {
    /// `hosts` (one configuration each), each attempt bounded by `per_host`.
    pub(crate) fn new(
        hosts: Vec<Host>,
        tls: TlsSettings,
        per_host: Duration,
        random: bool,
    ) -> Hosts {
        Hosts {
            hosts,
            tls,
            per_host,
            random,
            preferred: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Shares `other`'s memory of the host that answered last (the listener's list, when it is
    /// the pool's).
    pub(crate) fn sharing_preference_with(mut self, other: &Hosts) -> Hosts {
        self.preferred = other.preferred.clone();
        self
    }

    /// How long one connection through the whole list may take: `per_host` for each host.
    pub(crate) fn bound(&self) -> Duration {
        let n = u32::try_from(self.hosts.len().max(1)).unwrap_or(u32::MAX);
        self.per_host.saturating_mul(n)
    }

    /// The order of this attempt: the preferred host, then the others as given; or shuffled.
    fn order(&self) -> Vec<usize> {
        let n = self.hosts.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.random {
            for i in (1..n).rev() {
                let j = usize::try_from(random_below(i as u64 + 1)).unwrap_or(0);
                order.swap(i, j);
            }
            return order;
        }
        // Relaxed: a hint; a stale value only changes which host is tried first.
        let first = self.preferred.load(Ordering::Relaxed);
        if first < n {
            order.remove(first);
            order.insert(0, first);
        }
        order
    }

    /// Connects to the first host that accepts (and meets `target_session_attrs`). Each attempt
    /// but the last is bounded by `per_host`; the last one too when `bound_last`, else it is the
    /// caller's to bound (deadpool's create timeout does), so that a failure always carries
    /// tokio-postgres's own error.
    pub(crate) async fn connect<T>(
        &self,
        tls: T,
        bound_last: bool,
    ) -> Result<(Client, Connection<Socket, T::Stream>), Failed>
    where
        T: MakeTlsConnect<Socket> + Clone,
    {
        let order = self.order();
        let mut failed = Failed {
            last: None,
            causes: Vec::with_capacity(order.len()),
        };
        for (n, &i) in order.iter().enumerate() {
            let Some(host) = self.hosts.get(i) else {
                continue;
            };
            let attempt = host.config.connect(tls.clone());
            let result = if bound_last || n + 1 < order.len() {
                match tokio::time::timeout(self.per_host, attempt).await {
                    Ok(r) => r,
                    Err(_) => {
                        failed.last = None;
                        failed.causes.push(format!(
                            "{}: no answer within {:?}",
                            host.target, self.per_host
                        ));
                        continue;
                    }
                }
            } else {
                attempt.await
            };
            match result {
                Ok(pair) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(pair);
                }
                Err(e) => {
                    failed.causes.push(format!(
                        "{}: {}",
                        host.target,
                        describe_connect_error(&e, &self.tls)
                    ));
                    failed.last = Some(e);
                }
            }
        }
        Err(failed)
    }
}

/// The pool's way to connect (deadpool's [`Connect`](deadpool_postgres::Connect)): through
/// [`Hosts`], so that the pool walks a host list as the listener does.
pub(crate) struct PoolConnect {
    pub(crate) hosts: Arc<Hosts>,
    pub(crate) tls: MakeTlsConnector,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        _: &Config,
    ) -> BoxFuture<'_, Result<(Client, JoinHandle<()>), tokio_postgres::Error>> {
        Box::pin(async move {
            let (client, connection) = match self.hosts.connect(self.tls.clone(), false).await {
                Ok(pair) => pair,
                Err(Failed { last: Some(e), .. }) => return Err(e),
                // Only for an empty list, which the options' check refuses: tokio-postgres
                // refuses it too, in its own words.
                Err(Failed { last: None, .. }) => Config::new().connect(self.tls.clone()).await?,
            };
            Ok((client, drive_pooled(connection)))
        })
    }
}

/// How long a connection the pool let go may take to say goodbye before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Drives a pooled connection; returns the handle deadpool keeps beside its client.
///
/// deadpool aborts that handle when it drops a connection (reaped, closed after a loss,
/// abandoned after a timeout), and aborting the task that drives the connection cuts the socket
/// without PostgreSQL's Terminate message or TLS's close_notify: a TLS server then logs "could
/// not receive data from client: Connection reset by peer" for every connection closed, which
/// reaping makes routine. So deadpool gets the handle of a stand-in task instead, whose end
/// tells the driver that the client is gone: the driver then lets the connection close as
/// tokio-postgres does once its client is dropped (Terminate, close_notify, FIN), bounded by
/// [`CLOSE_GRACE`] for a server that does not answer (a call still waiting is left, as before).
fn drive_pooled<S, T>(connection: Connection<S, T>) -> JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (held, released) = tokio::sync::oneshot::channel::<()>();
    let stand_in = tokio::spawn(async move {
        // Aborting this task drops `held`, which wakes the driver.
        let _held = held;
        std::future::pending::<()>().await
    });
    tokio::spawn(async move {
        tokio::pin!(connection);
        let ended = tokio::select! {
            r = &mut connection => Some(r),
            _ = released => None,
        };
        let ended = match ended {
            Some(r) => Some(r),
            None => tokio::time::timeout(CLOSE_GRACE, connection).await.ok(),
        };
        if let Some(Err(e)) = ended {
            tracing::debug!(error = %describe_pg_error(&e), "a pooled connection ended");
        }
    });
    stand_in
}

/// A cheap random number below `bound` (not for cryptography).
fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(bound);
    h.finish() % bound.max(1)
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;
