//! Breaker-level helpers shared by the PostgreSQL test files: an instance on a test database, a
//! breaker whose transitions can be awaited, the tripping shortcuts, and WARN-log capture.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::{Builder, Change, CircuitBreaker, State, Storage};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::TestDb;

/// How long `Watched::reaches` waits by default.
pub const REACH: Duration = Duration::from_secs(10);

/// Options for an instance on `db`, logging in as its application role (a role that owns
/// nothing, holding what `setup --grant-operator --grant-python` grants; the schema is set up on
/// first use), under a name of its own: votes and fleet-rate reports are counted by instance
/// name, so each instance of a test counts as a pod of its own.
pub async fn options(db: &TestDb) -> PostgresOptions {
    options_at(&db.app_conninfo().await)
}

/// An instance on `db` with [`options`].
pub async fn instance(db: &TestDb) -> Storage {
    Storage::connect_with(options(db).await)
        .await
        .expect("connects to the test database")
}

/// Trips on the first failure and stays open a minute.
pub fn trip_fast(b: Builder) -> Builder {
    b.failure_limit(resilient_circuit::Ratio::new(1, 1))
        .cooldown(Duration::from_secs(60))
}

/// One failed call.
pub async fn fail(cb: &CircuitBreaker) {
    let _ = cb.call(|| async { Err::<(), _>("down") }).await;
}

/// A breaker plus a stream of the transitions it sees, to await instead of sleeping.
pub struct Watched {
    pub cb: CircuitBreaker,
    pub changes: mpsc::UnboundedReceiver<Change>,
}

impl Watched {
    pub fn new(
        storage: &Storage,
        key: &str,
        configure: impl FnOnce(Builder) -> Builder,
    ) -> Watched {
        let (tx, changes) = mpsc::unbounded_channel();
        let builder = CircuitBreaker::builder(key)
            .storage(storage.clone())
            .on_status_change(move |c| {
                let _ = tx.send(c.clone());
            });
        let cb = configure(builder).build().expect("valid breaker");
        Watched { cb, changes }
    }

    /// Waits until the breaker is in `state` (at once if it is already), at most [`REACH`].
    pub async fn reaches(&mut self, state: State) -> bool {
        self.reaches_within(state, REACH).await
    }

    /// Waits until the breaker is in `state` (at once if it is already), at most `within`.
    pub async fn reaches_within(&mut self, state: State, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.cb.state() != state {
            match tokio::time::timeout_at(deadline, self.changes.recv()).await {
                Ok(Some(_)) => continue,
                _ => return false,
            }
        }
        true
    }
}

/// Log lines captured for one test: those logged on its thread, and those of the instances it
/// connected (their tasks run on the library's background thread, inside the instance's span,
/// which is made on the test's thread and remembers its capture).
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl Logs {
    /// Captures WARN and above logged on this thread until the guard is dropped.
    ///
    /// One process-wide subscriber writes each line to the capture of the thread that logged it
    /// (if any). A subscriber per thread (`set_default`) would be simpler, but with many tests
    /// in one binary tracing may cache a callsite as uninteresting while no capturing thread
    /// exists, and later events of that callsite are then lost.
    pub fn capture() -> (Logs, Capturing) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            use tracing_subscriber::layer::SubscriberExt;
            use tracing_subscriber::Layer;
            let lines = tracing_subscriber::fmt::layer()
                .with_writer(ThreadSink)
                .with_ansi(false)
                .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
            // Inner layers see an event first: the span router picks its capture, then the
            // formatter writes the line there.
            let subscriber = tracing_subscriber::registry().with(SpanRouter).with(lines);
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other global subscriber in the test binary");
        });
        let logs = Logs::default();
        SINK.with(|s| *s.borrow_mut() = Some(logs.0.clone()));
        (logs, Capturing)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static SINK: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
    /// The capture of the event being written, found in its spans (see [`SpanRouter`]).
    static EVENT_SINK: std::cell::RefCell<Option<Arc<Mutex<Vec<u8>>>>> = const { std::cell::RefCell::new(None) };
}

/// The capture a span was made under.
struct SpanSink(Arc<Mutex<Vec<u8>>>);

/// Remembers, in each span made on a capturing thread, that thread's capture; for each event,
/// points [`EVENT_SINK`] at the capture of its nearest such span (or none).
struct SpanRouter;

impl<S> tracing_subscriber::Layer<S> for SpanRouter
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        _: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if let (Some(sink), Some(span)) = (SINK.with(|s| s.borrow().clone()), ctx.span(id)) {
            span.extensions_mut().insert(SpanSink(sink));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let found = ctx.event_scope(event).and_then(|scope| {
            scope
                .into_iter()
                .find_map(|span| span.extensions().get::<SpanSink>().map(|s| s.0.clone()))
        });
        EVENT_SINK.with(|s| *s.borrow_mut() = found);
    }
}

/// Stops this thread's capture when dropped.
pub struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

/// Writes to the capture of the event's spans, else of the current thread, else nowhere.
struct ThreadSink;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for ThreadSink {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        let sink = EVENT_SINK
            .with(|s| s.borrow().clone())
            .or_else(|| SINK.with(|s| s.borrow().clone()));
        LogWriter(sink.unwrap_or_default())
    }
}

/// The `state` of `key`'s row (any namespace), or `None` while it has no row.
pub async fn row_state(client: &Client, key: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT state FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Panics in this process outside the tests' own code (the library, its spawned tasks and its
/// dependencies) since the first call. Panics located in `tests/` (a failing assertion of a
/// test running beside, a test's deliberately panicking callback) are not counted.
pub fn panics() -> usize {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_tests = info
                .location()
                .is_some_and(|l| l.file().replace('\\', "/").contains("tests/"));
            if !in_tests {
                COUNT.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
    COUNT.load(Ordering::SeqCst)
}

/// Sends a `row` notification signed like the trigger's (`rc_announce`), committed now by the
/// database's clock, on the secret channel: for tests of what instances do with real-looking
/// stale or repeated notifications. `client` must be the owner's (`TestDb::client`): only it
/// reads `rc_notify_key`.
pub async fn notify_signed(
    client: &Client,
    namespace: &str,
    key: &str,
    state: &str,
    version: i64,
    remaining_ms: i64,
) {
    notify_signed_at(client, namespace, key, state, version, remaining_ms, None).await;
}

/// [`notify_signed`] with its commit time `at_us` (microseconds since the Unix epoch) given, e.g.
/// an old one; `None`: the database's clock now.
pub async fn notify_signed_at(
    client: &Client,
    namespace: &str,
    key: &str,
    state: &str,
    version: i64,
    remaining_ms: i64,
    at_us: Option<i64>,
) {
    let payload = signed_payload(client, namespace, key, state, version, remaining_ms, at_us).await;
    client
        .execute(
            "SELECT pg_notify((SELECT channel FROM public.rc_notify_key), $1)",
            &[&payload],
        )
        .await
        .expect("a signed notification (as the owner)");
}

/// A `row` payload in format 3, built and signed in SQL as `rc_announce` does (`client` must be
/// the owner's): `at_us` as given, else the database's clock now.
pub async fn signed_payload(
    client: &Client,
    namespace: &str,
    key: &str,
    state: &str,
    version: i64,
    remaining_ms: i64,
    at_us: Option<i64>,
) -> String {
    client
        .query_one(
            "WITH m AS (
                 SELECT coalesce($6::bigint,
                                 floor(date_part('epoch', clock_timestamp()) * 1e6)::bigint) AS at_us)
             SELECT json_build_object(
                 'v', 3, 'op', 'row', 'ns', $1::text, 'key', $2::text, 'state', $3::text,
                 'version', $4::bigint, 'remaining_ms', $5::bigint, 'at_us', m.at_us,
                 'mac', encode(sha256(k.opad || sha256(k.ipad || convert_to(concat_ws('|', '3', 'row',
                     char_length($1::text) || ':' || $1::text, char_length($2::text) || ':' || $2::text,
                     $3::text, $4::bigint::text, $5::bigint::text, m.at_us::text), 'UTF8'))), 'hex')
             )::text
             FROM public.rc_notify_key k, m",
            &[&namespace, &key, &state, &version, &remaining_ms, &at_us],
        )
        .await
        .expect("a signed payload (as the owner)")
        .get(0)
}

/// The secret channel the trigger notifies on (read as the owner: `client` is
/// `TestDb::client`'s).
pub async fn notify_channel(client: &Client) -> String {
    client
        .query_one("SELECT channel FROM public.rc_notify_key", &[])
        .await
        .expect("the notification channel (as the owner)")
        .get(0)
}

/// A breaker that trips on its first failure and rests for `cooldown`.
pub fn quick_trip(storage: &Storage, key: &str, cooldown: Duration) -> CircuitBreaker {
    CircuitBreaker::builder(key)
        .storage(storage.clone())
        .failure_limit(resilient_circuit::Ratio::new(1, 1))
        .cooldown(cooldown)
        .build()
        .expect("valid breaker")
}

/// Waits (at most [`REACH`]) until `storage` has no trip or override waiting for the database.
pub async fn published(storage: &Storage) {
    assert!(
        super::eventually(REACH, || async { storage.pending_publications() == 0 }).await,
        "still {} publications pending after {REACH:?}",
        storage.pending_publications()
    );
}

/// A fleet probe permit: asks until the database leases one (at most [`REACH`]).
pub async fn fleet_probe(cb: &CircuitBreaker) -> resilient_circuit::Permit<'_> {
    let deadline = tokio::time::Instant::now() + REACH;
    loop {
        match cb.acquire().await {
            Ok(p) => return p,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                panic!("no probe lease within {REACH:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Writes `key`'s row OPEN for an hour by plain SQL, as an operator or the Python package would.
pub async fn insert_open(client: &Client, key: &str) {
    client
        .execute(
            "INSERT INTO rc_circuit_breakers (resource_key, state, open_until) VALUES ($1, 'OPEN', now() + interval '1 hour')",
            &[&key],
        )
        .await
        .unwrap_or_else(|e| panic!("inserting the OPEN row of {key}: {e}"));
}

/// A barrier on the notification stream: commits a new OPEN row and waits (at most `within`)
/// until every one of `storages` has applied it. Notifications arrive in commit order, so each
/// storage has then applied everything committed before the call. False on a timeout.
pub async fn caught_up(client: &Client, storages: &[&Storage], within: Duration) -> bool {
    let marker = super::unique_key("marker");
    let mut watched: Vec<Watched> = storages
        .iter()
        .map(|s| Watched::new(s, &marker, |b| b))
        .collect();
    insert_open(client, &marker).await;
    for w in &mut watched {
        if !w.reaches_within(State::Open, within).await {
            return false;
        }
    }
    true
}

/// Records every row write of `rc_circuit_breakers` from now on (key, state before — `NONE` for
/// an insert — and after) in a table `transitions`, in order: to count transitions exactly. The
/// trigger names its table in full and pins its own `search_path` (it fires inside the crate's
/// functions, whose `search_path` is `pg_catalog, pg_temp`), and runs as the owner (`client`'s
/// role), so that plain writes by a role that may not write `transitions` are recorded too.
pub async fn audit_transitions(client: &Client) {
    client
        .batch_execute(
            "CREATE TABLE public.transitions (seq bigserial, key text, from_state text, to_state text);
             CREATE FUNCTION public.log_transition() RETURNS trigger LANGUAGE plpgsql
               SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
             BEGIN
               INSERT INTO public.transitions (key, from_state, to_state) VALUES (NEW.resource_key,
                 CASE WHEN TG_OP = 'INSERT' THEN 'NONE' ELSE OLD.state END, NEW.state);
               RETURN NULL;
             END $$;
             CREATE TRIGGER log_transition AFTER INSERT OR UPDATE ON public.rc_circuit_breakers
               FOR EACH ROW EXECUTE FUNCTION public.log_transition();",
        )
        .await
        .expect("audit trigger");
}

/// The writes [`audit_transitions`] recorded for `key`: `(from, to)`, in order.
pub async fn audited(client: &Client, key: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT from_state, to_state FROM transitions WHERE key = $1 ORDER BY seq",
            &[&key],
        )
        .await
        .expect("audit rows")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Options logging in as `conninfo`'s role, for an instance of its own name (votes and rate
/// reports count by name: each instance is a pod of its own).
pub fn options_at(conninfo: &str) -> PostgresOptions {
    PostgresOptions::from_dsn(conninfo)
        .expect("test conninfo parses")
        .instance_name(super::unique_key("instance"))
}

/// An instance reaching the database only through `proxy` (pool and listener), with reconciling
/// pushed out of the test's way so that only what the test names can heal it.
pub async fn behind(db: &TestDb, proxy: &super::Proxy) -> Storage {
    Storage::connect_with(
        options_at(&db.app_conninfo_via(proxy.addr()).await)
            .reconcile_interval(Duration::from_secs(3600)),
    )
    .await
    .expect("connects through the proxy")
}

/// An instance whose pool goes through `proxy` while its listener connects directly.
pub async fn pool_behind(
    db: &TestDb,
    proxy: &super::Proxy,
    tune: impl FnOnce(PostgresOptions) -> PostgresOptions,
) -> Storage {
    let listener = format!("host={} port={}", db.host(), db.port());
    let opts = tune(options_at(&db.app_conninfo_via(proxy.addr()).await))
        .listener_dsn(&listener)
        .expect("listener DSN");
    Storage::connect_with(opts).await.expect("connects")
}
