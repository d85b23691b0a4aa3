//! Joining a [`Group`](crate::Group): its members' rows of the membership table, through
//! `rc_group_join` (`sql/objects/rc_group_join.sql`). The cap itself is kept by the database
//! (`rc_group_full`); nothing of it runs here.

use std::sync::Arc;

use super::{statements, Shared};
use crate::{Ratio, StorageError};

/// Makes `keys` members of `group` with the cap `max_open`; the group's member count. Runs on
/// the instance's runtime, where its connections live.
pub(super) async fn join(
    shared: Arc<Shared>,
    group: String,
    keys: Vec<String>,
    max_open: Ratio,
) -> Result<u64, StorageError> {
    const DURING: &str = "joining a group";
    let runtime = shared.runtime.clone();
    let joined = runtime.spawn(async move {
        let term = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let rows = shared
            .call_many(
                DURING,
                statements::GROUP_JOIN,
                &[
                    &shared.opts.namespace,
                    &group,
                    &keys,
                    &term(max_open.numerator()),
                    &term(max_open.denominator()),
                ],
            )
            .await?;
        let members: i64 = rows
            .first()
            .ok_or(StorageError::Unexpected {
                during: DURING,
                what: "rc_group_join returned no row".into(),
            })?
            .try_get(0)
            .map_err(|e| StorageError::db(DURING, e))?;
        Ok(u64::try_from(members).unwrap_or(0))
    });
    joined.await.unwrap_or_else(|e| {
        Err(StorageError::Internal {
            during: DURING,
            what: e.to_string(),
        })
    })
}
