//! Groups (`docs::groups`): the fleet-wide cap on a group's open members, under a race of many
//! instances, as members close, against the Python package's writes and an operator's decree,
//! and who may join a group.

use std::sync::Arc;

use resilient_circuit::admin::{AdminSession, ConfigChange, RoleKind};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::Mode;
use resilient_circuit::{CircuitBreaker, Group, Ratio, State, Storage};
use tokio_postgres::Client;

use crate::support::breakers::{fail, instance, trip_fast};
use crate::support::{connect_to, eventually, test_db, unique_key, WAIT};

/// The group's members that are OPEN or HALF_OPEN in the table.
async fn open_members(client: &Client, group: &Group) -> Vec<String> {
    client
        .query(
            "SELECT resource_key FROM public.rc_circuit_breakers \
             WHERE resource_key LIKE $1 || '/%' AND state IN ('OPEN', 'HALF_OPEN') \
             ORDER BY resource_key",
            &[&group.name()],
        )
        .await
        .expect("reads the table")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The group's open members as the database counted them (`rc_group_state`).
async fn counted_open(client: &Client, name: &str) -> i32 {
    client
        .query_one(
            "SELECT open_members FROM public.rc_group_state WHERE name = $1",
            &[&name],
        )
        .await
        .expect("the group's state")
        .get(0)
}

/// The refusals the change log recorded for the group's members: (key, why).
async fn refusals(client: &Client, group: &Group) -> Vec<(String, serde_json::Value)> {
    client
        .query(
            "SELECT resource_key, why FROM public.rc_changes \
             WHERE kind = 'group' AND resource_key LIKE $1 || '/%' ORDER BY at",
            &[&group.name()],
        )
        .await
        .expect("reads the change log")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn joined(storage: &Storage, name: &str, max_open: Ratio, members: usize) -> Group {
    storage
        .group(name)
        .max_open(max_open)
        .join((0..members).map(|i| format!("host-{i}")))
        .await
        .expect("joins")
}

/// Nine instances trip nine different members of a group capped at a third at the same
/// moment: exactly three open, six are refused, each refusal recorded with the group's counts,
/// and every instance ends with its member as the table has it.
#[tokio::test]
async fn a_race_of_trips_on_different_members_opens_at_most_the_cap() {
    let db = test_db().await;
    let client = db.client().await;
    let name = unique_key("race");
    let mut storages = Vec::new();
    for _ in 0..9 {
        storages.push(instance(&db).await);
    }
    let group = joined(&storages[0], &name, Ratio::new(1, 3), 9).await;
    let breakers: Vec<_> = storages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            // Each instance its member; the membership is the table's, joined once above.
            let key = group.key(&format!("host-{i}"));
            trip_fast(CircuitBreaker::builder(key).storage(s.clone()))
                .build()
                .expect("valid")
        })
        .collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(breakers.len()));
    let tasks: Vec<_> = breakers
        .iter()
        .map(|cb| {
            let (cb, barrier) = (cb.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                fail(&cb).await;
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("trips");
    }
    for s in &storages {
        assert!(s.flush(WAIT).await, "every trip is answered");
    }
    let open = open_members(&client, &group).await;
    assert_eq!(open.len(), 3, "a third of nine: {open:?}");
    let refused = refusals(&client, &group).await;
    assert_eq!(refused.len(), 6, "six refusals: {refused:?}");
    for (key, why) in &refused {
        assert!(!open.contains(key), "{key} was refused and is not open");
        assert_eq!(why["group"]["name"], name.as_str(), "{why}");
        assert_eq!(why["group"]["max_open"], 3, "{why}");
        assert_eq!(why["group"]["members"], 9, "{why}");
        assert_eq!(why["group"]["open"], 3, "{why}");
    }
    // Each instance follows the row its trip got back.
    for (i, cb) in breakers.iter().enumerate() {
        let want = if open.contains(&group.key(&format!("host-{i}"))) {
            State::Open
        } else {
            State::Closed
        };
        assert!(
            eventually(WAIT, || async { cb.state() == want }).await,
            "host-{i} is {:?} on its instance, {want:?} in the table",
            cb.state()
        );
    }
}

/// A group of three capped at a third (one open member): a second member's trip is refused
/// while the first is open, and succeeds once an operator closed the first. An operator's
/// decree is never refused, nor a member forced open by its live configuration.
#[tokio::test]
async fn a_member_that_closes_frees_room_and_a_decree_is_not_capped() {
    let db = test_db().await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let group = joined(&storage, &unique_key("room"), Ratio::new(1, 3), 3).await;
    let member = |i: usize| {
        trip_fast(group.member(&format!("host-{i}")))
            .build()
            .expect("valid")
    };
    let (a, b, c) = (member(0), member(1), member(2));
    fail(&a).await;
    assert!(storage.flush(WAIT).await);
    fail(&b).await;
    assert!(storage.flush(WAIT).await);
    let refused_at = std::time::Instant::now();
    assert_eq!(open_members(&client, &group).await, [group.key("host-0")]);
    assert!(
        eventually(WAIT, || async { b.state() == State::Closed }).await,
        "the refused member follows its row"
    );
    assert_eq!(refusals(&client, &group).await.len(), 1);

    a.force_closed_confirmed()
        .await
        .expect("an operator closes the open member");
    // A refused member trips again a second after its refusal at the soonest (the next test):
    // a time, waited out.
    tokio::time::sleep(std::time::Duration::from_secs(1).saturating_sub(refused_at.elapsed()))
        .await;
    fail(&b).await;
    assert!(storage.flush(WAIT).await);
    assert_eq!(open_members(&client, &group).await, [group.key("host-1")]);

    c.force_open_confirmed(std::time::Duration::from_secs(60))
        .await
        .expect("a decree is not capped");
    assert_eq!(
        open_members(&client, &group).await,
        [group.key("host-1"), group.key("host-2")]
    );

    // Nor is a member forced open by its live configuration, also after a TRUNCATE (which
    // brings forced keys back OPEN).
    let more = joined(&storage, group.name(), Ratio::new(1, 3), 4).await;
    let admin = AdminSession::connect(
        &PostgresOptions::from_dsn(&db.app_conninfo().await).expect("parses"),
    )
    .await
    .expect("an operator's session");
    admin
        .configure(
            "default",
            &more.key("host-3"),
            &ConfigChange::new().mode(Mode::ForcedOpen),
        )
        .await
        .expect("forces it open");
    let forced = [
        group.key("host-1"),
        group.key("host-2"),
        group.key("host-3"),
    ];
    assert_eq!(open_members(&client, &group).await, forced);
    client
        .batch_execute("TRUNCATE public.rc_circuit_breakers")
        .await
        .expect("truncates");
    assert_eq!(open_members(&client, &group).await, [group.key("host-3")]);
}

/// The cap holds for the Python package's writes: its UPDATE of a member's row to OPEN, and its
/// INSERT of a member's first row as OPEN, leave the member CLOSED (or without a row) while
/// the group is full, and are recorded as refusals.
#[tokio::test]
async fn the_python_package_cannot_open_a_member_past_the_cap() {
    let db = test_db().await;
    let python = db.role_of(&[RoleKind::Python, RoleKind::Reader]).await;
    let py = connect_to(&python.conninfo()).await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let group = joined(&storage, &unique_key("py"), Ratio::new(1, 3), 3).await;
    let ns = "default";
    let write = |sql: &'static str, key: String| {
        let py = &py;
        async move {
            py.execute(sql, &[&key, &ns])
                .await
                .expect("the Python package's statement runs")
        }
    };
    let insert = "INSERT INTO public.rc_circuit_breakers \
                  (resource_key, namespace, state, failure_count, open_until) \
                  VALUES ($1, $2, 'OPEN', 5, now() + interval '1 minute')";
    let update = "UPDATE public.rc_circuit_breakers SET state = 'OPEN', \
                  open_until = now() + interval '1 minute' \
                  WHERE resource_key = $1 AND namespace = $2";
    assert_eq!(write(insert, group.key("host-0")).await, 1, "room for one");
    assert_eq!(
        write(insert, group.key("host-1")).await,
        0,
        "a first row inserted OPEN is refused"
    );
    py.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
         VALUES ($1, $2, 'CLOSED')",
        &[&group.key("host-2"), &ns],
    )
    .await
    .expect("a CLOSED row is no entry into OPEN");
    assert_eq!(
        write(update, group.key("host-2")).await,
        0,
        "an UPDATE to OPEN is refused"
    );
    assert_eq!(open_members(&client, &group).await, [group.key("host-0")]);
    let refused: Vec<String> = refusals(&client, &group)
        .await
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(refused, [group.key("host-1"), group.key("host-2")]);
}

/// Joining a group is an instance's right: a stranger and a reader are refused, and bad input
/// gets a typed error, not a row; nor can a key not named as a member (`group/member`) be put
/// under a cap, so a role that may join groups cannot keep another service's key from opening.
#[tokio::test]
async fn only_instances_join_groups_and_bad_input_is_refused() {
    let db = test_db().await;
    let call = "SELECT o_members FROM public.rc_group_join('default', 'g', ARRAY['g/a'], 1, 3, NULL, NULL)";
    for kinds in [&[][..], &[RoleKind::Reader][..]] {
        let role = db.role_of(kinds).await;
        let err = connect_to(&role.conninfo())
            .await
            .query(call, &[])
            .await
            .expect_err("refused");
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{kinds:?}: {err}"
        );
    }
    let instance_role = db.role_of(&[RoleKind::Instance]).await;
    let app = connect_to(&instance_role.conninfo()).await;
    let n: i32 = app.query_one(call, &[]).await.expect("joins").get(0);
    assert_eq!(n, 1);
    for bad in [
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/a'], 0, 3, NULL, NULL)",
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/a'], 4, 3, NULL, NULL)",
        "SELECT public.rc_group_join('default', '', ARRAY['g/a'], 1, 3, NULL, NULL)",
        "SELECT public.rc_group_join('default', 'g', ARRAY[''], 1, 3, NULL, NULL)",
        // A threshold is a whole ratio k/n with 1 <= k <= n.
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/a'], 1, 3, 1, NULL)",
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/a'], 1, 3, 0, 3)",
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/a'], 1, 3, 4, 3)",
        // Only keys named as the group's members: no capping another service's key.
        "SELECT public.rc_group_join('default', 'g', ARRAY['payments'], 1, 3, NULL, NULL)",
        "SELECT public.rc_group_join('default', 'g', ARRAY['gx/a'], 1, 3, NULL, NULL)",
        "SELECT public.rc_group_join('default', 'g', ARRAY['g/'], 1, 3, NULL, NULL)",
    ] {
        let err = app.query(bad, &[]).await.expect_err(bad);
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE),
            "{bad}: {err}"
        );
    }
    // Through the API: a cap that is no ratio is a configuration error, nothing is sent.
    let storage = instance(&db).await;
    let err = storage
        .group("g")
        .max_open(Ratio::new(0, 3))
        .join(["a"])
        .await
        .expect_err("refused");
    assert!(
        matches!(err, resilient_circuit::StorageError::Config(_)),
        "{err:?}"
    );
}

/// The tower layer picks the member from the request: a failing host's breaker opens and its
/// requests are rejected while the other hosts are still called; a second failing host is held
/// CLOSED by the cap and still called; a host seen first in a request joins the group; a host
/// name that makes no valid key is an error, and nothing is called.
#[cfg(feature = "tower")]
#[tokio::test]
async fn the_group_layer_picks_the_member_from_the_request() {
    use resilient_circuit::tower::{Error, GroupLayer};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::{service_fn, ServiceExt};

    let db = test_db().await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let group = storage
        .group(unique_key("layer"))
        .max_open(Ratio::new(1, 3))
        .join(["a", "b", "c"])
        .await
        .expect("joins");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    // Host "c" answers; every other host fails.
    let inner = service_fn(move |host: String| {
        counted.fetch_add(1, Ordering::SeqCst);
        async move {
            if host == "c" {
                Ok(host)
            } else {
                Err(std::io::Error::other("down"))
            }
        }
    });
    let svc = tower::ServiceBuilder::new()
        .layer(GroupLayer::new(group.clone(), |host: &String| host.clone()).configure(trip_fast))
        .service(inner);
    let send = |host: &str| svc.clone().oneshot(host.to_owned());
    assert!(!send("a").await.expect_err("a fails").is_rejected());
    assert!(storage.flush(WAIT).await);
    assert!(send("a").await.expect_err("a is open").is_rejected());
    assert_eq!(send("c").await.expect("c answers"), "c");
    assert!(!send("b").await.expect_err("b fails").is_rejected());
    assert!(storage.flush(WAIT).await);
    let before = calls.load(Ordering::SeqCst);
    assert!(
        !send("b").await.expect_err("b fails again").is_rejected(),
        "the cap holds b CLOSED: it is still called"
    );
    assert_eq!(calls.load(Ordering::SeqCst), before + 1);
    assert_eq!(open_members(&client, &group).await, [group.key("a")]);

    // A host first seen in a request joins the group.
    assert!(!send("d").await.expect_err("d fails").is_rejected());
    let members = || async {
        client
            .query_one(
                "SELECT count(*) FROM public.rc_group_members WHERE group_name = $1",
                &[&group.name()],
            )
            .await
            .expect("reads the members")
            .get::<_, i64>(0)
    };
    assert!(
        eventually(WAIT, || async { members().await == 4 }).await,
        "d joined on its first request"
    );

    // A host name that makes no valid key: an error, and nothing called.
    let before = calls.load(Ordering::SeqCst);
    let err = send("bad\u{7}host").await.expect_err("no breaker for it");
    assert!(
        matches!(&err, Error::Inner(e) if e.is::<resilient_circuit::ConfigError>()),
        "{err:?}"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the inner service was not called"
    );
}

/// A member held CLOSED by the cap while it keeps failing trips again a cooldown later (at most
/// a second), not at every failure: one instance failing a refused member twenty times in a row
/// sends one trip (one refusal in the log) and keeps calling it; after the cooldown (400 ms
/// here) its next failure trips again (a second refusal).
#[tokio::test]
async fn a_refused_member_trips_again_only_after_a_cooldown() {
    const COOLDOWN: std::time::Duration = std::time::Duration::from_millis(400);
    let db = test_db().await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let group = joined(&storage, &unique_key("again"), Ratio::new(1, 3), 3).await;
    let member = |i: usize| {
        trip_fast(group.member(&format!("host-{i}")))
            .cooldown(COOLDOWN)
            .build()
            .expect("valid")
    };
    let (a, b) = (member(0), member(1));
    fail(&a).await;
    assert!(storage.flush(WAIT).await);
    fail(&b).await;
    assert!(storage.flush(WAIT).await);
    assert_eq!(refusals(&client, &group).await.len(), 1);
    let refused_at = std::time::Instant::now();
    for _ in 0..20 {
        assert!(
            b.try_acquire().is_ok(),
            "the refused member is still called"
        );
        fail(&b).await;
    }
    assert!(storage.flush(WAIT).await);
    assert!(
        refused_at.elapsed() < COOLDOWN,
        "the failures came within the cooldown"
    );
    assert_eq!(
        refusals(&client, &group).await.len(),
        1,
        "no trip within the cooldown after a refusal"
    );
    // The hold is a time: it is waited out.
    tokio::time::sleep(COOLDOWN.saturating_sub(refused_at.elapsed())).await;
    fail(&b).await;
    assert!(storage.flush(WAIT).await);
    assert_eq!(refusals(&client, &group).await.len(), 2, "a trip after it");
    assert_eq!(open_members(&client, &group).await, [group.key("host-0")]);
}

/// Waits, at most [`WAIT`], for `news` to bring group `name`'s counts with `open` members
/// open; the change that brought them.
async fn group_news(
    news: &mut resilient_circuit::Changes,
    name: &str,
    open: u32,
) -> Option<resilient_circuit::Change> {
    use tokio_stream::StreamExt;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, news.next()).await {
            Ok(Some(Ok(c)))
                if c.key == name
                    && matches!(c.kind, resilient_circuit::ChangeKind::Group { open: o, .. } if o == open) =>
            {
                return Some(c)
            }
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// Three instances join a group of six that opens as a whole at half its members: each trip
/// of a member, made on one instance, reaches every instance as the group's new counts (the
/// change stream, `Group::state`); the third opens the group on every instance, an operator's
/// close of one closes it again, and a process that only follows the group sees the same.
#[tokio::test]
async fn every_instance_sees_the_groups_counts_and_its_opening() {
    let db = test_db().await;
    let client = db.client().await;
    let name = unique_key("seen");
    let mut storages = Vec::new();
    let mut groups = Vec::new();
    let mut news = Vec::new();
    for _ in 0..3 {
        let s = instance(&db).await;
        news.push(s.changes());
        let g = s
            .group(&name)
            .max_open(Ratio::new(2, 3))
            .open_at(Ratio::new(1, 2))
            .join((0..6).map(|i| format!("host-{i}")))
            .await
            .expect("joins");
        assert_eq!((g.state().open, g.state().members), (0, 6));
        groups.push(g);
        storages.push(s);
    }
    let watcher = instance(&db).await;
    let mut watched = watcher.changes();
    let followed = watcher.group(&name).follow().await.expect("follows");
    assert_eq!(followed.state().members, 6);
    for i in 0..3 {
        let cb = trip_fast(groups[i].member(&format!("host-{i}")))
            .build()
            .expect("valid");
        fail(&cb).await;
        let open = u32::try_from(i + 1).expect("small");
        for (j, n) in news.iter_mut().enumerate() {
            let c = group_news(n, &name, open).await;
            let c = c.unwrap_or_else(|| panic!("instance {j} hears {open} open"));
            let want = if open >= 3 {
                State::Open
            } else {
                State::Closed
            };
            assert_eq!(c.to, want, "instance {j}, {open} open: {c:?}");
            assert_eq!(groups[j].state().open, open);
            assert_eq!(groups[j].is_open(), open >= 3);
        }
        assert!(group_news(&mut watched, &name, open).await.is_some());
    }
    assert!(followed.is_open(), "a follower sees the group open");
    let logged: Vec<serde_json::Value> = client
        .query(
            "SELECT why FROM public.rc_changes WHERE kind = 'group' AND resource_key = $1 \
             ORDER BY version",
            &[&name],
        )
        .await
        .expect("reads the change log")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let opens: Vec<&serde_json::Value> = logged.iter().map(|w| &w["group"]["open"]).collect();
    assert_eq!(opens, [0, 1, 2, 3], "{logged:?}");
    assert_eq!(logged[3]["group"]["open_at"], "1/2", "{logged:?}");

    client
        .query(
            "SELECT * FROM public.rc_force('default', $1, 'CLOSED', 0)",
            &[&groups[0].key("host-1")],
        )
        .await
        .expect("an operator closes one");
    for (j, n) in news.iter_mut().enumerate() {
        let c = group_news(n, &name, 2).await;
        let c = c.unwrap_or_else(|| panic!("instance {j} hears the close"));
        assert_eq!((c.from, c.to), (State::Open, State::Closed), "{c:?}");
        assert!(!groups[j].is_open());
    }
}

/// Many writers at once, on the Python package's role, open and close a group's members at
/// random: the counts the database ends with are the table's, and so are the instance's. (Each
/// transaction counts its group after taking the group's lock at commit; without the lock two
/// commits at once each count without the other's change.) A TRUNCATE counts every group
/// again, and a member moving to a nested group leaves its old group's count.
#[tokio::test]
async fn the_counts_stay_true_through_races_truncates_and_moves() {
    let db = test_db().await;
    let python = db.role_of(&[RoleKind::Python, RoleKind::Reader]).await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let name = unique_key("tally");
    let group = joined(&storage, &name, Ratio::new(1, 1), 8).await;
    let mut writers = Vec::new();
    for w in 0..8u64 {
        writers.push((
            connect_to(&python.conninfo()).await,
            group.key(&format!("host-{w}")),
        ));
    }
    let writers: Vec<_> = writers.into_iter().map(Arc::new).collect();
    // Bursts that end together, each checked: the last commits of a burst are the ones a
    // count without the lock gets wrong.
    let mut truth = 0;
    for burst in 0..6u64 {
        let tasks: Vec<_> = writers
            .iter()
            .enumerate()
            .map(|(w, writer)| {
                let writer = writer.clone();
                let w = w as u64;
                tokio::spawn(async move {
                    let (py, key) = &*writer;
                    for round in 0..20u64 {
                        // A cheap scramble of (writer, burst, round): each member flips
                        // often, and members flip at the same moments.
                        let open = (w * 7 + burst * 5 + round * 13 + round / 3) % 2 == 0;
                        let state = if open { "OPEN" } else { "CLOSED" };
                        py.execute(
                            "INSERT INTO public.rc_circuit_breakers \
                             (resource_key, namespace, state, failure_count, open_until) \
                             VALUES ($1, 'default', $2, 0, now() + interval '1 minute') \
                             ON CONFLICT (resource_key, namespace) DO UPDATE \
                             SET state = EXCLUDED.state, open_until = EXCLUDED.open_until",
                            &[key, &state],
                        )
                        .await
                        .expect("the Python package's write");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("writes");
        }
        truth = i64::try_from(open_members(&client, &group).await.len()).expect("small");
        let counted = counted_open(&client, &name).await;
        assert_eq!(
            i64::from(counted),
            truth,
            "the database's count after burst {burst}"
        );
    }
    assert!(
        eventually(WAIT, || async { i64::from(group.state().open) == truth }).await,
        "the instance holds {} open, the table {truth}",
        group.state().open
    );
    // A TRUNCATE leaves no member open: every group is counted again.
    client
        .execute("TRUNCATE public.rc_circuit_breakers", &[])
        .await
        .expect("the owner truncates");
    assert_eq!(
        counted_open(&client, &name).await,
        0,
        "counted again after the TRUNCATE"
    );
    assert!(
        eventually(WAIT, || async { group.state().open == 0 }).await,
        "the instance reloads the group's counts"
    );
    // A member moving to another group (a nested one: `name/sub/m` may be a member of `name`
    // or of `name/sub`) leaves its old group's count and enters the new one's.
    let moving = group.key("sub/m");
    group.join(["sub/m"]).await.expect("joins");
    let py = connect_to(&python.conninfo()).await;
    py.execute(
        "INSERT INTO public.rc_circuit_breakers (resource_key, namespace, state) \
         VALUES ($1, 'default', 'OPEN')",
        &[&moving],
    )
    .await
    .expect("opens the member");
    assert!(eventually(WAIT, || async { group.state().open == 1 }).await);
    let sub = storage
        .group(group.key("sub"))
        .max_open(Ratio::new(1, 1))
        .join(["m"])
        .await
        .expect("the nested group takes the member");
    assert_eq!((sub.state().open, sub.state().members), (1, 1));
    assert!(
        eventually(WAIT, || async {
            (group.state().open, group.state().members) == (0, 8)
        })
        .await,
        "the old group counted it out: {:?}",
        group.state()
    );
}

/// An operator sets a group's cap and threshold live with `resilient-circuit group`: the cap
/// refuses the next entry into OPEN and the threshold opens the group at once, for every
/// instance, whatever the instances declare; `--reset` gives the declarations back. A reader
/// may list groups but not change one, an instance's role neither, a stranger not even list.
#[tokio::test]
async fn an_operator_sets_the_cap_and_threshold_live() {
    use crate::cli::{ok, run};
    let db = test_db().await;
    let client = db.client().await;
    let storage = instance(&db).await;
    let name = unique_key("live");
    let group = joined(&storage, &name, Ratio::new(1, 2), 4).await;
    let a = trip_fast(group.member("host-0")).build().expect("valid");
    fail(&a).await;
    assert!(storage.flush(WAIT).await);
    assert!(!group.is_open(), "no threshold declared");

    let operator = db.role_of(&[RoleKind::Operator, RoleKind::Reader]).await;
    let mut news = storage.changes();
    let r = ok(
        &operator.conninfo(),
        &[
            "group",
            &name,
            "--max-open",
            "1/4",
            "--open-at",
            "1/4",
            "--note",
            "zone b",
        ],
    )
    .await;
    assert!(
        r.stdout
            .contains("1 of 4 members open, at most 1/4, opens at 1/4: OPEN"),
        "{}",
        r.stdout
    );
    let c = group_news(&mut news, &name, 1)
        .await
        .expect("the instance hears it");
    assert_eq!((c.from, c.to), (State::Closed, State::Open));
    assert!(group.is_open());
    // The cap in force is one member: a second one's trip is refused and recorded.
    let b = trip_fast(group.member("host-1")).build().expect("valid");
    fail(&b).await;
    assert!(storage.flush(WAIT).await);
    assert_eq!(open_members(&client, &group).await, [group.key("host-0")]);
    let refused = refusals(&client, &group).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].1["group"]["limit"], "1/4", "{refused:?}");
    // A re-declaration by an instance does not undo the operator's values.
    storage
        .group(&name)
        .max_open(Ratio::new(1, 2))
        .join(["host-0"])
        .await
        .expect("joins again");
    let listed = ok(&operator.conninfo(), &["group", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("JSON");
    let ours: Vec<&serde_json::Value> = listed["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| g["name"] == name.as_str())
        .collect();
    assert_eq!(ours.len(), 1, "{listed}");
    assert_eq!(
        (&ours[0]["max_open"], &ours[0]["open_at"], &ours[0]["state"]),
        (
            &serde_json::json!("1/4"),
            &serde_json::json!("1/4"),
            &serde_json::json!("OPEN")
        ),
        "{listed}"
    );
    // Reset: the declarations again (half may open, no threshold), and the group closes.
    ok(&operator.conninfo(), &["group", &name, "--reset"]).await;
    assert!(
        eventually(WAIT, || async { !group.is_open() }).await,
        "the reset reached the instance"
    );
    let status = ok(&operator.conninfo(), &["status"]).await;
    assert!(
        status.stdout.contains(&format!(
            "group {name}: 1 of 4 members open, at most 1/2, never opens as a whole: CLOSED"
        )),
        "{}",
        status.stdout
    );

    // Who may: a reader lists, but changes nothing; nor does an instance; a stranger neither.
    let reader = db.role_of(&[RoleKind::Reader]).await;
    ok(&reader.conninfo(), &["group"]).await;
    for (who, role) in [
        ("reader", reader),
        (
            "instance",
            db.role_of(&[RoleKind::Instance, RoleKind::Reader]).await,
        ),
    ] {
        let r = run(&role.conninfo(), &["group", &name, "--max-open", "4/4"]).await;
        assert_eq!(r.code, 1, "{who}: {}", r.stderr);
        assert!(
            r.stderr.contains("permission denied"),
            "{who}: {}",
            r.stderr
        );
    }
    let stranger = db.role_of(&[]).await;
    let r = run(&stranger.conninfo(), &["group"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("permission denied"), "{}", r.stderr);
    // Bad input: a usage error, nothing sent.
    let r = run(&operator.conninfo(), &["group", &name, "--max-open", "0/4"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    let r = run(&operator.conninfo(), &["group", "--max-open", "1/4"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
}
