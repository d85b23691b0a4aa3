//! Database helpers: the benchmark's own database, the transports (TLS as the crate connects, and
//! plain TCP), bare connections, and a bare LISTEN connection that timestamps notifications.
//!
//! Each run creates a database of its own (`rc_bench_prop_<pid>_<nanos>`) so that it never sees
//! rows or notifications of anyone else on a shared server, applies the crate's migrations there
//! and drops it at the end; databases left by killed runs are dropped at the next start.

use std::path::Path;
use std::time::Instant;

use futures_util::StreamExt;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use resilient_circuit::admin::AdminSession;
use resilient_circuit::storage::postgres::PostgresOptions;
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, NoTls, Socket};

use crate::{R, WAIT};

/// TLS without verification, as the crate's (and libpq's) `sslmode=prefer`/`require`.
pub(crate) fn tls_connector() -> R<MakeTlsConnector> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_verify(SslVerifyMode::NONE);
    let mut c = MakeTlsConnector::new(b.build());
    c.set_callback(|cfg, _| {
        cfg.set_verify_hostname(false);
        Ok(())
    });
    Ok(c)
}

#[derive(Clone)]
pub(crate) enum Transport {
    /// No TLS (`sslmode=disable`).
    Plain,
    /// TLS when the server offers it (or as the DSN's `sslmode` says).
    Tls(MakeTlsConnector),
}

impl Transport {
    pub(crate) async fn client(&self, cfg: &Config) -> R<Client> {
        match self {
            Transport::Plain => {
                let mut cfg = cfg.clone();
                cfg.ssl_mode(PgSslMode::Disable);
                connect_client(&cfg, NoTls).await
            }
            Transport::Tls(t) => connect_client(cfg, t.clone()).await,
        }
    }

    pub(crate) async fn listener(&self, cfg: &Config) -> R<NotifyListener> {
        match self {
            Transport::Plain => {
                let mut cfg = cfg.clone();
                cfg.ssl_mode(PgSslMode::Disable);
                notify_listener(&cfg, NoTls).await
            }
            Transport::Tls(t) => notify_listener(cfg, t.clone()).await,
        }
    }
}

async fn connect_client<T>(cfg: &Config, tls: T) -> R<Client>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = tokio::time::timeout(WAIT, cfg.connect(tls)).await??;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// A bare LISTEN connection on the crate's (secret) channel: every notification with the instant
/// its connection task saw it.
pub(crate) struct NotifyListener {
    _client: Client,
    pub(crate) rx: mpsc::UnboundedReceiver<(Instant, String)>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for NotifyListener {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn notify_listener<T>(cfg: &Config, tls: T) -> R<NotifyListener>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = tokio::time::timeout(WAIT, cfg.connect(tls)).await??;
    let (tx, rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    let at = Instant::now();
                    if tx.send((at, n.payload().to_owned())).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    // The channel is as secret as the notification key (`rc_notify_key`); the benchmark's role
    // applied the migrations, so it owns them and may read it.
    let channel: String = client
        .query_one("SELECT o_channel FROM public.rc_notify_secret()", &[])
        .await?
        .get(0);
    if channel.is_empty()
        || !channel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("rc_notify_key holds an odd channel name: {channel:?}").into());
    }
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    Ok(NotifyListener {
        _client: client,
        rx,
        driver,
    })
}

/// Waits for the notification of `ns`/`key` announcing `state`; returns when it arrived.
pub(crate) async fn recv_change(
    rx: &mut mpsc::UnboundedReceiver<(Instant, String)>,
    ns: &str,
    key: &str,
    state: &str,
) -> R<Instant> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (at, payload) = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(n)) => n,
            Ok(None) => return Err("the listener connection closed".into()),
            Err(_) => {
                return Err(format!("no NOTIFY of {ns}/{key} -> {state} within {WAIT:?}").into())
            }
        };
        let v: serde_json::Value = serde_json::from_str(&payload)?;
        if v["ns"] == ns && v["key"] == key && v["state"] == state {
            return Ok(at);
        }
    }
}

/// Where a benchmark database lives.
pub(crate) struct Target {
    pub(crate) label: String,
    /// The DSN given (URL or conninfo); the database name is replaced.
    pub(crate) dsn: String,
    pub(crate) db: String,
    /// tokio-postgres settings of the benchmark database.
    pub(crate) cfg: Config,
    pub(crate) transport: Transport,
}

impl Target {
    pub(crate) fn opts(&self, ns: &str) -> R<PostgresOptions> {
        self.opts_with(ns, None)
    }

    /// Options for namespace `ns`, with `options` (server settings, libpq's `options`) added to
    /// the DSN.
    pub(crate) fn opts_with(&self, ns: &str, options: Option<&str>) -> R<PostgresOptions> {
        let dsn = match options {
            None => self.dsn.clone(),
            Some(o) if self.dsn.contains("://") => {
                let sep = if self.dsn.contains('?') { '&' } else { '?' };
                let enc = o.replace(' ', "%20").replace('=', "%3D");
                format!("{}{sep}options={enc}", self.dsn)
            }
            Some(o) => format!("{} options='{o}'", self.dsn),
        };
        Ok(PostgresOptions::from_dsn(&dsn)?
            .dbname(self.db.clone())
            .namespace(ns)
            .auto_create(true))
    }

    pub(crate) async fn client(&self) -> R<Client> {
        self.transport.client(&self.cfg).await
    }
}

/// Creates a uniquely named database on the server of `admin` and applies the migrations.
pub(crate) async fn create_bench_db(
    admin: &Client,
    admin_cfg: &Config,
    dsn: &str,
    transport: &Transport,
    label: &str,
) -> R<Target> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let db = format!("rc_bench_prop_{}_{nanos:x}", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE \"{db}\""))
        .await?;
    let mut cfg = admin_cfg.clone();
    cfg.dbname(&db);
    let target = Target {
        label: label.to_owned(),
        dsn: dsn.to_owned(),
        db,
        cfg,
        transport: transport.clone(),
    };
    AdminSession::connect(&target.opts("setup")?)
        .await?
        .migrate(std::time::Duration::from_secs(60))
        .await?;
    Ok(target)
}

pub(crate) async fn drop_bench_db(admin: &Client, db: &str) {
    if let Err(e) = admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
        .await
    {
        eprintln!("warning: could not drop database {db}: {e}");
    }
}

/// Drops databases left by runs of this benchmark that were killed: named
/// `rc_bench_prop_<pid>_…`, with no connection, and no live local process of that pid.
pub(crate) async fn drop_stale_bench_dbs(admin: &Client) {
    let Ok(rows) = admin
        .query(
            "SELECT d.datname FROM pg_database d WHERE d.datname LIKE 'rc\\_bench\\_prop\\_%' \
             AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname)",
            &[],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let pid = name.split('_').nth(3).and_then(|p| p.parse::<u32>().ok());
        let alive = pid.is_some_and(|p| Path::new(&format!("/proc/{p}")).exists());
        if pid.is_some() && !alive {
            eprintln!("dropping {name}, left by a killed run");
            drop_bench_db(admin, &name).await;
        }
    }
}

/// Client connections the server can still take.
pub(crate) async fn free_slots(admin: &Client) -> R<usize> {
    let row = admin
        .query_one(
            "SELECT current_setting('max_connections')::int \
                    - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int",
            &[],
        )
        .await?;
    Ok(usize::try_from(row.get::<_, i32>(0)).unwrap_or(0))
}
