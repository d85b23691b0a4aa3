//! Transition calls: one statement on a pooled connection, bounded by the statement timeout
//! (getting a connection included), cancelled on the server when the client gives up, and its
//! connection then dropped from the pool.
//!
//! A call is prepared once per connection and then only bound and executed: parsing and planning
//! it again on every call took about 0.1 ms of a trip's 0.5 on the server. That is safe only on
//! a session of the connection's own: a transaction pooler routes each statement to some server
//! session, where a name may be unknown, or (another process's, since every process numbers its
//! statements from `s0`) another statement. So calls are prepared only once the listener,
//! connected to the same address, has heard another session's notification (a transaction
//! pooler's LISTEN hears nothing), and never when the address is declared a transaction pooler
//! or the instance polls; until then, and from the moment the listener finds itself deaf, they
//! are unnamed statements with typed parameters, nothing prepared. A server that refuses a
//! prepared statement turns them off too.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;

use super::{statements, tls, Follow, Shared};
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

    /// Runs one transition function: one round trip on a pooled connection (two the first time
    /// on a connection, to prepare it), bounded by the statement timeout. A call the timeout
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
            let answer = tokio::time::timeout_at(deadline, self.query(&client, call, params)).await;
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

    /// What the listener found on the main address: a session that hears other sessions
    /// (`hears`), or not. Calls are prepared only on such an address, and only when the instance
    /// listens there itself (see the module doc).
    pub(crate) fn main_address_heard(&self, hears: bool) {
        let session = hears
            && !self.opts.transaction_pooler
            && self.opts.listener.is_none()
            && self.opts.follow == Follow::Listen;
        self.prepared.set(session);
    }

    /// Sends `call`: prepared on this connection (once), or unnamed when calls are not
    /// prepared. A prepared statement the server does not know or already has (a pooler that
    /// moved the session), or whose plan no longer fits (a function redefined by a newer
    /// schema), fails before it runs, so it is sent again unnamed.
    async fn query(
        &self,
        client: &deadpool_postgres::Object,
        call: statements::Call,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        if self.prepared.on() {
            let answer = match client.prepare_typed_cached(call.sql, call.types).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(e) => Err(e),
            };
            match answer.as_ref().err().and_then(|e| e.code()) {
                Some(code) if refused_prepared(code) => {
                    if self.prepared.refuse() {
                        tracing::warn!(target = %self.opts.target(), code = code.code(), "the server refused a prepared statement, as a transaction pooler does: transition calls are sent unnamed from now on (set RC_DB_TRANSACTION_POOLER=1 to say so)");
                    }
                    client.statement_cache.clear();
                }
                Some(code) if *code == SqlState::FEATURE_NOT_SUPPORTED => {
                    // "cached plan must not change result type": prepared again next time.
                    client.statement_cache.remove(call.sql, call.types);
                }
                _ => return answer,
            }
        }
        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
            .iter()
            .zip(call.types)
            .map(|(p, t)| (*p, t.clone()))
            .collect();
        client.query_typed(call.sql, &typed).await
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

/// The errors of a prepared statement that a transaction pooler causes: unknown on the server
/// session the pooler picked, or a name already taken there by another client's.
fn refused_prepared(code: &SqlState) -> bool {
    *code == SqlState::INVALID_SQL_STATEMENT_NAME || *code == SqlState::DUPLICATE_PSTATEMENT
}

/// Whether transition calls are prepared: off until the listener vouches for the address, and
/// off for good once a server refused one.
#[derive(Debug, Default)]
pub(crate) struct Prepared(AtomicU8);

const OFF: u8 = 0;
const ON: u8 = 1;
const REFUSED: u8 = 2;

impl Prepared {
    fn on(&self) -> bool {
        self.0.load(Ordering::Relaxed) == ON
    }

    /// On or off, unless refused.
    fn set(&self, on: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now != REFUSED).then_some(if on { ON } else { OFF })
            });
    }

    /// Off for good; true the first time.
    fn refuse(&self) -> bool {
        self.0.swap(REFUSED, Ordering::Relaxed) != REFUSED
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off until vouched for, on and off as the listener finds, and off for good once refused:
    /// a listener that hears someone again does not turn a refused instance back on.
    #[test]
    fn a_refusal_turns_prepared_calls_off_for_good() {
        let p = Prepared::default();
        assert!(!p.on(), "off until the listener vouches");
        p.set(true);
        assert!(p.on());
        p.set(false);
        assert!(!p.on(), "a deaf listener turns it off");
        p.set(true);
        assert!(p.refuse(), "the first refusal is told");
        assert!(!p.on());
        assert!(!p.refuse(), "and only the first");
        p.set(true);
        assert!(!p.on(), "refused for good");
    }

    #[test]
    fn only_a_poolers_errors_count_as_refusals() {
        assert!(refused_prepared(&SqlState::INVALID_SQL_STATEMENT_NAME));
        assert!(refused_prepared(&SqlState::DUPLICATE_PSTATEMENT));
        assert!(!refused_prepared(&SqlState::FEATURE_NOT_SUPPORTED));
        assert!(!refused_prepared(&SqlState::INSUFFICIENT_PRIVILEGE));
    }
}
