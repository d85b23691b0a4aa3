//! The administration API: everything the `resilient-circuit` command does, as typed calls on
//! one connection ([`AdminSession`]), each owning its SQL and the mapping of its rows. The
//! command is argument parsing and printing over it; a tool of your own can do the same.
//!
//! * the schema and the roles (`setup`): [`pending`](AdminSession::pending),
//!   [`migrate`](AdminSession::migrate), [`grant`](AdminSession::grant);
//! * the database's health (`check`): [`check`](AdminSession::check),
//!   [`check_role`](AdminSession::check_role);
//! * the breakers (`status`, `history`): [`status`](AdminSession::status),
//!   [`history`](AdminSession::history);
//! * overrides (`open`, `close`, `delete`): [`force`](AdminSession::force),
//!   [`delete`](AdminSession::delete);
//! * live configuration (`config`): [`configuration`](AdminSession::configuration),
//!   [`configurations`](AdminSession::configurations), [`configure`](AdminSession::configure);
//! * groups (`group`, `status`): [`groups`](AdminSession::groups),
//!   [`configure_group`](AdminSession::configure_group).
//!
//! It connects with the same settings, TLS and timeouts as an instance's pool, without the
//! instance. (`watch` is an instance instead: it uses
//! [`Storage::changes`](crate::Storage::changes).)
//!
//! ```no_run
//! # async fn tool() -> Result<(), Box<dyn std::error::Error>> {
//! use resilient_circuit::admin::AdminSession;
//! use resilient_circuit::storage::postgres::PostgresOptions;
//! let opts = PostgresOptions::from_env()?.ok_or("set RC_DB_DSN")?;
//! let session = AdminSession::connect(&opts).await?;
//! for row in session.status(session.namespace()).await? {
//!     println!("{} {}", row.key, row.state);
//! }
//! # Ok(()) }
//! ```

mod breakers;
mod configure;
mod groups;
mod schema;

pub use super::migrate::{Migration, Object, Pending, MIGRATIONS, OBJECTS};
pub use super::roles::{InvalidRoleName, Rights, RoleKind, RoleName};
pub use breakers::{BreakerRow, HistoryEntry, Override};
pub use configure::ConfigChange;
pub use groups::{GroupChange, GroupRow};
pub use schema::{Health, OpenSchema, RoleCheck, TriggerCheck};

use tokio_postgres::Client;

use super::{tls, PostgresOptions};
use crate::error::StorageError;

/// A connection to the breaker database, for tools; dropping it closes the connection (with a
/// goodbye to the server: its driver task sends Terminate once the client is gone, and ends).
pub struct AdminSession {
    client: Client,
    namespace: String,
}

impl std::fmt::Debug for AdminSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminSession")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
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
        // The driver ends with the connection, after the client is dropped; errors surface
        // through the client.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(AdminSession {
            client,
            namespace: opts.namespace.clone(),
        })
    }

    /// The namespace the options selected (`default` unless set); every call takes the
    /// namespace it works on.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The connection itself, for SQL of your own.
    #[deprecated(
        since = "0.1.0",
        note = "use the typed calls of AdminSession, or a connection of your own"
    )]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The connection itself, for transactions of your own.
    #[deprecated(
        since = "0.1.0",
        note = "use the typed calls of AdminSession, or a connection of your own"
    )]
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl PostgresOptions {
    /// The namespace these options select (`default` unless set).
    pub fn namespace_name(&self) -> &str {
        &self.namespace
    }
}
