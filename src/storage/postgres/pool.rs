//! Transition calls: one unnamed statement on a pooled connection (nothing prepared, so a
//! transaction-mode pooler can route it), bounded by the statement timeout, and cancelled on the
//! server when the client gives up.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::{statements, tls, Shared};
use crate::error::StorageError;

/// The `op` label of a transition call: short, fixed names for the few `during`s there are.
fn operation(during: &'static str) -> &'static str {
    match during {
        "leasing a probe" => "acquire_probe",
        "reporting a probe" => "report_probe",
        "publishing trips" => "publish_trips",
        "forcing states" => "force_states",
        _ => "other",
    }
}

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

    /// Runs one transition function: one round trip on a pooled connection, as an unnamed
    /// statement with typed parameters, bounded by the statement timeout. A call the timeout
    /// abandons is cancelled on the server too, so it does not keep a row lock.
    pub(crate) async fn call_many(
        &self,
        during: &'static str,
        call: statements::Call,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StorageError> {
        if params.len() != call.types.len() {
            // A programming error in this crate, reported rather than sent.
            return Err(StorageError::Database {
                during,
                cause: format!(
                    "{} parameters for a statement of {}",
                    params.len(),
                    call.types.len()
                ),
                source: None,
            });
        }
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .zip(call.types)
            .map(|(p, t)| (*p, t.clone()))
            .collect();
        let mut cancel = None;
        let work = async {
            let client = self.client(during).await?;
            cancel = Some(client.cancel_token());
            client
                .query_typed(call.sql, &typed)
                .await
                .map_err(|e| StorageError::db(during, e))
        };
        let started = std::time::Instant::now();
        let result = tokio::time::timeout(self.opts.statement_timeout, work).await;
        self.metrics.store_operation(
            operation(during),
            started.elapsed(),
            matches!(result, Ok(Ok(_))),
        );
        match result {
            Ok(r) => r,
            Err(_) => {
                if let Some(token) = cancel {
                    let tls = self.pool_tls.clone();
                    self.runtime.spawn(async move {
                        let _ = token.cancel_query(tls).await;
                    });
                }
                Err(StorageError::Timeout {
                    after: self.opts.statement_timeout,
                    during,
                })
            }
        }
    }

    /// Runs one transition function that answers one row, decoded.
    pub(crate) async fn call_one(
        &self,
        during: &'static str,
        call: statements::Call,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<statements::RowState, StorageError> {
        let rows = self.call_many(during, call, params).await?;
        let row = rows.first().ok_or(StorageError::Database {
            during,
            cause: "the function returned no row".into(),
            source: None,
        })?;
        statements::decode(row, during)
    }
}
