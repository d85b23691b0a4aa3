//! One plain connection for administration tools (the `resilient-circuit` command): the same
//! settings, TLS and timeouts as an instance's pool, without the instance. It can LISTEN to the
//! breaker channel and hands out changes authenticated as an instance does.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Client};

use super::payload::{self, NotifyKey, Op};
use super::{statements, tls, PostgresOptions};
use crate::error::{describe_pg_error, StorageError};

/// A connection to the breaker database, for tools; dropping it closes the connection.
///
/// ```no_run
/// # async fn tool() -> Result<(), Box<dyn std::error::Error>> {
/// use resilient_circuit::storage::postgres::{admin::AdminSession, PostgresOptions};
/// let opts = PostgresOptions::from_env()?.ok_or("set RC_DB_DSN")?;
/// let mut session = AdminSession::connect(&opts).await?;
/// let open: i64 = session
///     .client()
///     .query_one("SELECT count(*) FROM public.rc_circuit_breakers WHERE state = 'OPEN'", &[])
///     .await?
///     .get(0);
/// println!("{open} breakers are open");
/// # Ok(()) }
/// ```
pub struct AdminSession {
    client: Client,
    notes: mpsc::UnboundedReceiver<String>,
    key: Option<NotifyKey>,
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSession")
            .field("authenticated", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

/// One change announced on the channel `rc_circuit_breakers` (payload format 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncedChange {
    /// True for a `TRUNCATE` of the table (every breaker CLOSED); namespace and key are empty.
    pub reset: bool,
    /// The row's namespace.
    pub namespace: String,
    /// The row's key.
    pub key: String,
    /// The state as written (`OPEN`, `HALF_OPEN`, `CLOSED`, or whatever a hand-written row says).
    pub state: String,
    /// The row's version after the change.
    pub version: i64,
    /// Time left until half-open, as the database saw it at commit.
    pub remaining: Duration,
    /// The payload carried a valid MAC under the notification key. False when this session's
    /// role may not read the key (then nothing could be checked) or the MAC did not match.
    pub authenticated: bool,
}

impl AdminSession {
    /// Connects with `opts` (its TLS settings and connect timeout; `application_name`
    /// `resilient-circuit-cli` unless the options name one).
    pub async fn connect(opts: &PostgresOptions) -> Result<AdminSession, StorageError> {
        let config = opts.pg_config("resilient-circuit-cli")?;
        let tls = tls::make_tls(opts)?;
        let (client, mut connection) =
            match tokio::time::timeout(opts.network.connect_timeout, config.connect(tls)).await {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    return Err(StorageError::Connect {
                        target: opts.target(),
                        cause: describe_pg_error(&e),
                    })
                }
                Err(_) => {
                    return Err(StorageError::Connect {
                        target: opts.target(),
                        cause: format!("no answer within {:?}", opts.network.connect_timeout),
                    })
                }
            };
        let (tx, notes) = mpsc::unbounded_channel();
        // Notifications only surface through poll_message, so the connection is driven here.
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(msg) = messages.next().await {
                match msg {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(AdminSession {
            client,
            notes,
            key: None,
            driver,
        })
    }

    /// The connection, for queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, for transactions (e.g. [`migrate`](super::migrate::migrate)).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// Starts listening on `rc_circuit_breakers` and reads the notification key when this role
    /// may (else [`AnnouncedChange::authenticated`] stays false). Returns whether it may.
    pub async fn listen(&mut self) -> Result<bool, StorageError> {
        self.client
            .batch_execute("LISTEN rc_circuit_breakers")
            .await
            .map_err(|e| StorageError::db("listening", e))?;
        match self.client.query_one(statements::NOTIFY_KEY, &[]).await {
            Ok(row) => {
                let bytes: Vec<u8> = row
                    .try_get(0)
                    .map_err(|e| StorageError::db("reading the notification key", e))?;
                self.key =
                    Some(
                        NotifyKey::new(&bytes).map_err(|cause| StorageError::Database {
                            during: "reading the notification key",
                            cause,
                            source: None,
                        })?,
                    );
                Ok(true)
            }
            Err(e) if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => Ok(false),
            Err(e) => Err(StorageError::db("reading the notification key", e)),
        }
    }

    /// The next announced change, after [`listen`](Self::listen); `None` when the connection
    /// ended. A payload that cannot be read is an `Err` with the reason.
    pub async fn next_change(&mut self) -> Option<Result<AnnouncedChange, String>> {
        let text = self.notes.recv().await?;
        let change = match payload::parse(&text) {
            Ok(c) => c,
            Err(e) => return Some(Err(e.to_string())),
        };
        let authenticated = self.key.as_ref().is_some_and(|k| k.verify(&change));
        Some(Ok(AnnouncedChange {
            reset: change.op == Op::Reset,
            state: change
                .unknown_state
                .clone()
                .unwrap_or_else(|| change.state.as_str().to_owned()),
            namespace: change.namespace,
            key: change.key,
            version: change.version,
            remaining: change.remaining,
            authenticated,
        }))
    }
}

impl Drop for AdminSession {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl PostgresOptions {
    /// The namespace these options select (`default` unless set).
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }
}
