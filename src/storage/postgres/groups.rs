//! Joining a [`Group`](crate::Group): its members' rows of the membership table, through
//! `rc_group_join` (`sql/objects/rc_group_join.sql`), and reading a group's state
//! (`rc_group_states`). The cap and the counts are kept by the database (`rc_group_full`,
//! `rc_group_tally`); nothing of them runs here.

use std::sync::Arc;

use super::{statements, Shared};
use crate::{GroupState, Ratio, StorageError};

/// Makes `keys` members of `group` with the cap `max_open` and the threshold `open_at`; the
/// group's state. Runs on the instance's runtime, where its connections live.
pub(super) async fn join(
    shared: Arc<Shared>,
    group: String,
    keys: Vec<String>,
    max_open: Ratio,
    open_at: Option<Ratio>,
) -> Result<GroupState, StorageError> {
    const DURING: &str = "joining a group";
    let runtime = shared.runtime.clone();
    let joined = runtime.spawn(async move {
        let term = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
        let open_num = open_at.map(|r| term(r.numerator()));
        let open_den = open_at.map(|r| term(r.denominator()));
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
                    &open_num,
                    &open_den,
                ],
            )
            .await?;
        let row = rows.first().ok_or(StorageError::Unexpected {
            during: DURING,
            what: "rc_group_join returned no row".into(),
        })?;
        statements::decode_group(row, DURING)
    });
    joined.await.unwrap_or_else(|e| {
        Err(StorageError::Internal {
            during: DURING,
            what: e.to_string(),
        })
    })
}

/// The state of `group` as the database counts it (`None`: no such group).
pub(super) async fn state(
    shared: Arc<Shared>,
    group: String,
) -> Result<Option<GroupState>, StorageError> {
    const DURING: &str = "reading a group's state";
    let runtime = shared.runtime.clone();
    let read = runtime.spawn(async move {
        let names = vec![group];
        let rows = shared
            .call_many(
                DURING,
                statements::GROUP_STATES,
                &[&shared.opts.namespace, &names],
            )
            .await?;
        rows.first()
            .map(|row| statements::decode_group(row, DURING))
            .transpose()
    });
    read.await.unwrap_or_else(|e| {
        Err(StorageError::Internal {
            during: DURING,
            what: e.to_string(),
        })
    })
}
