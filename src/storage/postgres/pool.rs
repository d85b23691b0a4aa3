//! Transition calls: one unnamed statement on a pooled connection (nothing prepared, so a
//! transaction-mode pooler can route it), bounded by the statement timeout (getting a connection
//! included), cancelled on the server when the client gives up, and its connection then dropped
//! from the pool.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::{statements, tls, Shared};
use crate::error::StorageError;

impl Shared {
    /// A pooled connection, with errors that name the target and never the password.
    pub(crate) async fn client(
        &self,
        during: &'static str,
    ) -> Result<deadpool_postgres::Object, StorageError> {
        self.pool.get().await.map_err(|e| {
            let cause = match &e {
                deadpool_postgres::PoolError::Backend(pg) => {
                    tls::describe_connect_error(pg, &self.opts.tls_settings())
                }
                other => other.to_string(),
            };
            tracing::debug!(during, %cause, "no database connection");
            StorageError::Connect {
                target: self.opts.target(),
                cause,
            }
        })
    }

    /// Closes the pool's idle connections. Called when the listener lost its connection: the
    /// server the pool's connections lead to has likely gone (restarted, failed over, or silent),
    /// and a connection to a silent server would stay open and make the next calls time out one
    /// by one. Connections in use are left to their calls.
    pub(crate) fn drop_idle_connections(&self) {
        let removed = self.pool.retain(|_, _| false).removed.len();
        if removed > 0 {
            tracing::debug!(removed, "closed the pool's idle connections");
        }
    }

    /// Runs one transition function: one round trip on a pooled connection, as an unnamed
    /// statement with typed parameters, bounded by the statement timeout. A call the timeout
    /// abandons is cancelled on the server too, so it does not keep a row lock, and its
    /// connection is not reused (see [`abandon`](Self::abandon)).
    pub(crate) async fn call_many(
        &self,
        during: &'static str,
        call: statements::Call,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        if params.len() != call.types.len() {
            // A programming error in this crate, reported rather than sent.
            return Err(StorageError::Internal {
                during,
                what: format!(
                    "{} parameters for a statement of {}",
                    params.len(),
                    call.types.len()
                ),
            });
        }
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .zip(call.types)
            .map(|(p, t)| (*p, t.clone()))
            .collect();
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + self.opts.statement_timeout;
        let timed_out = || StorageError::Timeout {
            after: self.opts.statement_timeout,
            during,
        };
        let result = async {
            let client = tokio::time::timeout_at(deadline, self.client(during))
                .await
                .map_err(|_| timed_out())??;
            let answer =
                tokio::time::timeout_at(deadline, client.query_typed(call.sql, &typed)).await;
            match answer {
                Ok(r) => r.map_err(|e| StorageError::db(during, e)),
                Err(_) => {
                    self.abandon(client);
                    Err(timed_out())
                }
            }
        }
        .await;
        self.metrics
            .store_operation(call.op, started.elapsed(), result.is_ok());
        result
    }

    /// A call on `client` went unanswered within the statement timeout: it is cancelled on the
    /// server (so it keeps no row lock), and the connection leaves the pool, since a server that
    /// did not answer may never do (a black hole keeps the socket open, and a reused connection
    /// would time out again on every call). The cancel request is bounded by the connect
    /// timeout.
    fn abandon(&self, client: deadpool_postgres::Object) {
        let token = client.cancel_token();
        drop(deadpool_postgres::Object::take(client));
        let tls = self.pool_tls.clone();
        let bound = self.opts.network.connect_timeout;
        self.spawn(async move {
            let _ = tokio::time::timeout(bound, token.cancel_query(tls)).await;
        });
    }

    /// Runs one transition function that answers one row, decoded.
    pub(crate) async fn call_one(
        &self,
        during: &'static str,
        call: statements::Call,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<statements::RowState, StorageError> {
        let rows = self.call_many(during, call, params).await?;
        let row = rows.first().ok_or(StorageError::Unexpected {
            during,
            what: "the function returned no row".into(),
        })?;
        statements::decode(row, during)
    }
}
