//! One plain connection for administration tools (the `resilient-circuit` command): the same
//! settings, TLS and timeouts as an instance's pool, without the instance. (`watch` is an
//! instance instead: it uses [`Storage::changes`](crate::Storage::changes).)

use tokio::task::JoinHandle;
use tokio_postgres::Client;

use super::{tls, PostgresOptions};
use crate::error::StorageError;

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
    driver: JoinHandle<()>,
}

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSession").finish_non_exhaustive()
    }
}

impl AdminSession {
    /// Connects with `opts` (its TLS settings and connect timeout; `application_name`
    /// `resilient-circuit-cli` unless the options name one).
    pub async fn connect(opts: &PostgresOptions) -> Result<AdminSession, StorageError> {
        let hosts = opts.pool_hosts("resilient-circuit-cli")?;
        let tls = tls::make_tls(opts)?;
        // One host at a time, each within the connect timeout (`hosts.rs`).
        let (client, connection) =
            hosts
                .connect(tls, true)
                .await
                .map_err(|failed| StorageError::Connect {
                    target: opts.target(),
                    cause: failed.describe(),
                })?;
        // The driver ends with the connection; errors surface through the client.
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(AdminSession { client, driver })
    }

    /// The connection, for queries.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection, for transactions (e.g. [`migrate`](super::migrate::migrate)).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
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
