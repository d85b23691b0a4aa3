//! Shared support code for the PostgreSQL integration tests.
//!
//! Use from a test file with `mod support;`. What is here:
//!
//! * [`test_db`]: a fresh, uniquely named database for one test, dropped
//!   (`WITH (FORCE)`) when the [`TestDb`] is dropped. The server is picked
//!   once per test process, in this order:
//!   1. `RC_TEST_DATABASE_URL` (a `postgres://` URL or `key=value` conninfo
//!      to a database of a role that may `CREATE DATABASE`);
//!   2. `127.0.0.1:5432`, user `postgres`, database `test`, if it answers
//!      within about a second;
//!   3. a throwaway [`Cluster`] started once for the whole test binary
//!      (needs the PostgreSQL server binaries; see [`cluster`]).
//!
//!   `RC_TEST_THROWAWAY=1` skips 1 and 2 and always uses a throwaway cluster.
//! * [`Cluster`]: a private throwaway cluster that a test may stop, kill and
//!   restart.
//! * [`Proxy`]: a TCP proxy for fault injection ([`Mode::Pass`],
//!   [`Mode::Delay`], [`Mode::Cut`], [`Mode::Blackhole`]).
//! * [`unique_key`] and [`eventually`].
//!
//! Everything here talks to PostgreSQL without TLS (`NoTls`): a server given
//! through `RC_TEST_DATABASE_URL` must accept plain connections. It uses real
//! time: don't call it from a test whose tokio clock is paused (the
//! connection timeouts would fire at once).

pub mod breakers;
pub mod cluster;
pub mod pgbouncer;
pub mod proxy;

pub use cluster::Cluster;
pub use proxy::{Mode, Proxy};

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use resilient_circuit::admin::RoleKind;
use tokio::sync::OnceCell;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

/// The server every [`test_db`] of this process lives on.
enum Server {
    /// `RC_TEST_DATABASE_URL` or the local server on 127.0.0.1:5432.
    External(ConnParts),
    /// A throwaway cluster owned by this process (stopped at process exit by
    /// the watchdog described in [`cluster`]).
    Throwaway(Cluster),
}

impl Server {
    fn admin(&self) -> ConnParts {
        match self {
            Server::External(parts) => parts.clone(),
            Server::Throwaway(cluster) => cluster.admin_parts(),
        }
    }
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// How to reach one database: enough to build a [`Config`], a conninfo
/// string and a URL.
#[derive(Clone, Debug)]
pub(crate) struct ConnParts {
    /// A host name, an IP address, or (if it starts with `/`) a Unix socket
    /// directory.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl ConnParts {
    pub(crate) fn local(port: u16, dbname: &str) -> ConnParts {
        ConnParts {
            host: "127.0.0.1".to_owned(),
            port,
            user: "postgres".to_owned(),
            password: None,
            dbname: dbname.to_owned(),
        }
    }

    fn from_config(cfg: &Config) -> ConnParts {
        let host = match cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_owned(),
        };
        ConnParts {
            host,
            port: cfg.get_ports().first().copied().unwrap_or(5432),
            user: cfg.get_user().unwrap_or("postgres").to_owned(),
            password: cfg
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            dbname: cfg.get_dbname().unwrap_or("postgres").to_owned(),
        }
    }

    pub(crate) fn with_db(&self, dbname: &str) -> ConnParts {
        ConnParts {
            dbname: dbname.to_owned(),
            ..self.clone()
        }
    }

    fn with_addr(&self, addr: SocketAddr) -> ConnParts {
        ConnParts {
            host: addr.ip().to_string(),
            port: addr.port(),
            ..self.clone()
        }
    }

    pub(crate) fn config(&self) -> Config {
        let mut cfg = Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .connect_timeout(Duration::from_secs(5));
        if let Some(pw) = &self.password {
            cfg.password(pw);
        }
        cfg
    }

    pub(crate) fn conninfo(&self) -> String {
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            conninfo_quote(&self.host),
            self.port,
            conninfo_quote(&self.user),
            conninfo_quote(&self.dbname)
        );
        if let Some(pw) = &self.password {
            s.push_str(" password=");
            s.push_str(&conninfo_quote(pw));
        }
        s
    }

    pub(crate) fn url(&self) -> String {
        let mut auth = percent_encode(&self.user);
        if let Some(pw) = &self.password {
            auth.push(':');
            auth.push_str(&percent_encode(pw));
        }
        let db = percent_encode(&self.dbname);
        if self.host.starts_with('/') {
            format!(
                "postgresql://{auth}@/{db}?host={}&port={}",
                percent_encode(&self.host),
                self.port
            )
        } else if self.host.contains(':') {
            format!("postgresql://{auth}@[{}]:{}/{db}", self.host, self.port)
        } else {
            format!("postgresql://{auth}@{}:{}/{db}", self.host, self.port)
        }
    }

    fn addr(&self) -> SocketAddr {
        assert!(
            !self.host.starts_with('/'),
            "the test server is reached through the Unix socket {}: it has no TCP address",
            self.host
        );
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("resolving {}:{} failed: {e}", self.host, self.port))
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .unwrap_or_else(|| panic!("{}:{} resolved to no address", self.host, self.port))
    }

    pub(crate) async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.config().connect(NoTls).await?;
        tokio::spawn(async move {
            // The driver ends with an error when the server goes away; tests
            // observe that through the client.
            let _ = connection.await;
        });
        Ok(client)
    }
}

/// A fresh database on the test server, dropped when this value is dropped.
pub struct TestDb {
    name: String,
    /// Connection to the admin database that created (and will drop) it.
    admin: ConnParts,
    /// The application role ([`TestDb::app`]), made on first use; dropped after the database.
    app: OnceCell<TestRole>,
}

/// A new, uniquely named, empty database for one test. See the module docs
/// for how the server is chosen.
pub async fn test_db() -> TestDb {
    let server = SERVER.get_or_init(choose_server).await;
    TestDb::create(server.admin()).await
}

/// Like [`test_db`], with `CREATE DATABASE` options after the name (e.g. `TEMPLATE template0
/// ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C'`).
pub async fn test_db_with(options: &str) -> TestDb {
    let server = SERVER.get_or_init(choose_server).await;
    TestDb::create_with(server.admin(), options).await
}

async fn choose_server() -> Server {
    if std::env::var_os("RC_TEST_THROWAWAY").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("support: RC_TEST_THROWAWAY is set: starting a throwaway PostgreSQL cluster");
        return Server::Throwaway(Cluster::start().await);
    }
    if let Ok(url) = std::env::var("RC_TEST_DATABASE_URL") {
        if !url.trim().is_empty() {
            let cfg = Config::from_str(&url).unwrap_or_else(|e| {
                panic!(
                    "RC_TEST_DATABASE_URL is not a valid postgres URL or conninfo: {}",
                    error_chain(&e)
                )
            });
            return Server::External(ConnParts::from_config(&cfg));
        }
    }
    let local = ConnParts::local(5432, "test");
    let why = match tokio::time::timeout(Duration::from_millis(1500), local.connect()).await {
        Ok(Ok(_client)) => return Server::External(local),
        Ok(Err(e)) => error_chain(&e),
        Err(_) => "no answer within 1.5 s".to_owned(),
    };
    if cluster::PgTools::find().is_some() {
        eprintln!(
            "support: cannot use 127.0.0.1:5432 (user postgres, db test: {why}): \
             starting a throwaway cluster"
        );
        return Server::Throwaway(Cluster::start().await);
    }
    panic!("{}", cluster::NO_POSTGRES_HELP);
}

impl TestDb {
    /// Creates a database on the server reached by `admin` (whose role must
    /// be allowed to create databases).
    pub(crate) async fn create(admin: ConnParts) -> TestDb {
        TestDb::create_with(admin, "").await
    }

    /// [`TestDb::create`] with `CREATE DATABASE` options after the name.
    pub(crate) async fn create_with(admin: ConnParts, options: &str) -> TestDb {
        let name = unique_db_name();
        let client = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "connecting to the admin database ({}) to create a test database failed: {}",
                admin.conninfo(),
                error_chain(&e)
            )
        });
        let sql = format!("CREATE DATABASE \"{name}\" {options}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            match client.batch_execute(&sql).await {
                Ok(()) => break,
                // 55006: "source database template1 is being accessed by other
                // users": someone else is copying it right now; try again.
                Err(e)
                    if attempt < 20
                        && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                {
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                }
                Err(e) => panic!("{sql} failed on {}: {}", admin.conninfo(), error_chain(&e)),
            }
        }
        TestDb {
            name,
            admin,
            app: OnceCell::new(),
        }
    }

    /// The database name (`rc_test_<pid>_<counter>_<random>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn parts(&self) -> ConnParts {
        self.admin.with_db(&self.name)
    }

    /// `host=... port=... user=... dbname=...` (plus `password=` if the
    /// server needs one).
    pub fn conninfo(&self) -> String {
        self.parts().conninfo()
    }

    /// `postgresql://user@host:port/dbname`.
    pub fn url(&self) -> String {
        self.parts().url()
    }

    /// A `tokio_postgres` config for this database (connect timeout 5 s).
    pub fn config(&self) -> Config {
        self.parts().config()
    }

    pub fn host(&self) -> String {
        self.admin.host.clone()
    }

    pub fn port(&self) -> u16 {
        self.admin.port
    }

    /// The server's TCP address, e.g. as a [`Proxy`] target. Panics if the
    /// server is only reachable through a Unix socket.
    pub fn addr(&self) -> SocketAddr {
        self.admin.addr()
    }

    /// Like [`TestDb::conninfo`], but connecting through `addr` (a proxy).
    pub fn conninfo_via(&self, addr: SocketAddr) -> String {
        self.parts().with_addr(addr).conninfo()
    }

    /// Like [`TestDb::url`], but connecting through `addr` (a proxy).
    pub fn url_via(&self, addr: SocketAddr) -> String {
        self.parts().with_addr(addr).url()
    }

    /// Like [`TestDb::config`], but connecting through `addr` (a proxy).
    pub fn config_via(&self, addr: SocketAddr) -> Config {
        self.parts().with_addr(addr).config()
    }

    /// The crate's administration session on this database, as its owner.
    pub async fn admin_session(&self) -> resilient_circuit::admin::AdminSession {
        let opts = resilient_circuit::storage::postgres::PostgresOptions::from_dsn(
            &self.parts().conninfo(),
        )
        .expect("the test database's conninfo parses");
        resilient_circuit::admin::AdminSession::connect(&opts)
            .await
            .unwrap_or_else(|e| panic!("an admin session on {}: {e}", self.name))
    }

    /// A plain connection to this database (its driver spawned on the current
    /// runtime), for setting up and asserting.
    pub async fn client(&self) -> Client {
        self.parts().connect().await.unwrap_or_else(|e| {
            panic!(
                "connecting to test database {} failed: {}",
                self.name,
                error_chain(&e)
            )
        })
    }
}

impl TestDb {
    /// A new login role holding exactly `grants` on this database's objects (each a GRANT
    /// statement with `{role}` where the role's name goes), dropped with the returned guard.
    /// Declare the guard before the `TestDb` it belongs to, so the database (where its grants
    /// live) is dropped first.
    pub async fn role(&self, grants: &[&str]) -> TestRole {
        let client = self.client().await;
        let role = TestRole::create(&self.admin, &self.name, &client).await;
        for g in grants {
            let sql = g.replace("{role}", &format!("\"{}\"", role.name));
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", error_chain(&e)));
        }
        role
    }

    /// This database's conninfo, logging in as `role`.
    pub fn conninfo_as(&self, role: &TestRole) -> String {
        role.conninfo()
    }

    /// The role the instances of a test run as: on first use the schema is set up as an
    /// operator would (the migrations, as the admin) and a login role that owns nothing gets
    /// exactly what `resilient-circuit setup --grant-operator ROLE --grant-python ROLE` grants:
    /// an instance's rights, an operator's (the tests force states and change live
    /// configurations) and the Python package's table writes (the tests write rows as it does).
    /// `tests/it/security.rs` tests each kind of role alone ([`TestDb::role_of`]).
    pub async fn app(&self) -> &TestRole {
        self.app
            .get_or_init(|| {
                app_role(
                    self.admin.clone(),
                    &self.name,
                    &[RoleKind::Operator, RoleKind::Python],
                )
            })
            .await
    }

    /// A new login role that owns nothing and holds exactly the rights of `kinds` as `setup`
    /// grants them (the schema is set up first, as for [`TestDb::app`]); dropped with the
    /// returned guard, which must be declared before the `TestDb`. No kinds: a stranger.
    pub async fn role_of(&self, kinds: &[RoleKind]) -> TestRole {
        let _ = self.app().await; // the schema
        app_role(self.admin.clone(), &self.name, kinds).await
    }

    /// This database's conninfo as its application role ([`TestDb::app`]).
    pub async fn app_conninfo(&self) -> String {
        self.app().await.conninfo()
    }

    /// Like [`TestDb::app_conninfo`], but connecting through `addr` (a proxy).
    pub async fn app_conninfo_via(&self, addr: SocketAddr) -> String {
        self.app().await.conninfo_via(addr)
    }

    /// A plain connection as the application role (its driver spawned on the current runtime):
    /// SQL as an application would send it.
    pub async fn app_client(&self) -> Client {
        let conninfo = self.app_conninfo().await;
        let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("the app role connects: {}", error_chain(&e)));
        tokio::spawn(connection);
        client
    }
}

/// Sets database `db` of the server reached by `admin` up for an application, as an operator
/// would: applies the migrations as the admin, then makes a login role that owns nothing and
/// grants it the rights of `kinds` as `setup` grants them. The role is dropped with the
/// returned guard.
pub(crate) async fn app_role(admin: ConnParts, db: &str, kinds: &[RoleKind]) -> TestRole {
    use resilient_circuit::admin::{AdminSession, RoleName};
    use resilient_circuit::storage::postgres::PostgresOptions;
    let opts = PostgresOptions::from_dsn(&admin.with_db(db).conninfo())
        .unwrap_or_else(|e| panic!("the admin's conninfo for {db}: {e}"));
    let mut session = AdminSession::connect(&opts)
        .await
        .unwrap_or_else(|e| panic!("connecting to {db} to set it up failed: {e}"));
    session
        .migrate(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("applying the migrations to {db}: {e}"));
    let client = admin.with_db(db).connect().await.unwrap_or_else(|e| {
        panic!(
            "connecting to {db} to set it up failed: {}",
            error_chain(&e)
        )
    });
    let role = TestRole::create(&admin, db, &client).await;
    let name = RoleName::new(&role.name).expect("a test role's name is valid");
    for kind in kinds {
        session
            .grant(&name, *kind)
            .await
            .unwrap_or_else(|e| panic!("granting {kind} to {}: {e}", role.name));
    }
    role
}

/// A login role made by [`TestDb::role`] or [`TestDb::app`]; dropped (with whatever it owns)
/// when this is dropped.
pub struct TestRole {
    name: String,
    admin: ConnParts,
    db: String,
}

impl TestRole {
    /// `CREATE ROLE ... LOGIN` through `client` (the admin's), for database `db`.
    async fn create(admin: &ConnParts, db: &str, client: &Client) -> TestRole {
        let name = format!("rc_role_{}_{:08x}", std::process::id(), random_u32());
        client
            .batch_execute(&format!("CREATE ROLE \"{name}\" LOGIN"))
            .await
            .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {}", error_chain(&e)));
        TestRole {
            name,
            admin: admin.clone(),
            db: db.to_owned(),
        }
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn parts(&self) -> ConnParts {
        ConnParts {
            user: self.name.clone(),
            password: None,
            ..self.admin.with_db(&self.db)
        }
    }

    /// Its database's conninfo, logging in as this role.
    pub fn conninfo(&self) -> String {
        self.parts().conninfo()
    }

    /// Like [`TestRole::conninfo`], but connecting through `addr` (a proxy).
    pub fn conninfo_via(&self, addr: SocketAddr) -> String {
        self.parts().with_addr(addr).conninfo()
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let db = self.db.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async move {
                // Its grants live in the test database, which may still exist.
                if let Ok(c) = admin.with_db(&db).connect().await {
                    let _ = c.batch_execute(&format!("DROP OWNED BY \"{name}\"")).await;
                }
                let c = admin.connect().await.ok()?;
                let _ = c
                    .batch_execute(&format!("DROP ROLE IF EXISTS \"{name}\""))
                    .await;
                Some(())
            })
        })
        .join();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // A separate thread with its own runtime: this may run inside a tokio
        // runtime (where `block_on` would panic), or after it has shut down.
        let dropper = std::thread::spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return Err(format!("building a runtime failed: {e}")),
            };
            rt.block_on(async move {
                let client = tokio::time::timeout(Duration::from_secs(5), admin.connect())
                    .await
                    .map_err(|_| "connecting to the admin database timed out".to_owned())?
                    .map_err(|e| {
                        format!(
                            "connecting to the admin database failed: {}",
                            error_chain(&e)
                        )
                    })?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                tokio::time::timeout(Duration::from_secs(30), client.batch_execute(&sql))
                    .await
                    .map_err(|_| format!("{sql} timed out"))?
                    .map_err(|e| format!("{sql} failed: {}", error_chain(&e)))
            })
        });
        match dropper.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("support: could not drop test database {}: {e}", self.name),
            Err(_) => eprintln!("support: the thread dropping {} panicked", self.name),
        }
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random-ish 32-bit number (std's `RandomState` is seeded randomly).
fn random_u32() -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u64(COUNTER.load(Ordering::Relaxed));
    h.finish() as u32
}

fn unique_db_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rc_test_{}_{n}_{:08x}", std::process::id(), random_u32())
}

/// A key (breaker name, channel suffix...) that no other test, in this or a
/// concurrently running test binary, will use: `<prefix>-<pid>-<n>-<random>`.
pub fn unique_key(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{:08x}", std::process::id(), random_u32())
}

/// A plain connection to `conninfo` (its driver spawned on the current runtime).
pub async fn connect_to(conninfo: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {conninfo}: {}", error_chain(&e)));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// How long a test waits for something that should happen within milliseconds (a notification,
/// an answer, a row): long enough for a loaded CI machine, short enough that a broken behaviour
/// fails the test rather than hangs it.
pub const WAIT: Duration = Duration::from_secs(10);

/// The current version of `key`'s row (in any namespace; tests use unique keys).
pub async fn version_of(client: &tokio_postgres::Client, key: &str) -> i64 {
    client
        .query_one(
            "SELECT version FROM rc_circuit_breakers WHERE resource_key = $1",
            &[&key],
        )
        .await
        .unwrap_or_else(|e| panic!("reading the version of {key}: {e}"))
        .get(0)
}

/// Polls `cond` every 20 ms until it returns true (then returns true) or
/// `timeout` of wall-clock time has passed (then returns false). For
/// conditions that have no awaitable event. `cond` should itself return
/// quickly; the deadline uses real time, so this also works (by spinning) under
/// a paused tokio clock.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return false;
        }
        tokio::time::sleep((deadline - now).min(Duration::from_millis(20))).await;
    }
}

/// `e` and its sources, joined by `: ` (`tokio_postgres::Error`'s `Display`
/// alone says only e.g. "db error" or "error connecting to server").
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// Quotes a conninfo value when it needs it.
fn conninfo_quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\' || c == '=')
    {
        return v.to_owned();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

fn percent_encode(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// A session that LISTENs on `channels` and hands over what it hears.
pub async fn listening(
    conninfo: &str,
    channels: &[&str],
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
        .await
        .expect("connects");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send(n);
            }
        }
    });
    for c in channels {
        client
            .batch_execute(&format!("LISTEN \"{c}\""))
            .await
            .expect("listens");
    }
    (client, rx)
}

/// Terminates this database's backends named `application_name` and waits (at most 5 s) until
/// they have exited, as `pg_terminate_backend(pid, 5000)` does on PostgreSQL 14 and later (13
/// has only the one-argument form). Returns what each termination returned.
pub async fn terminate(client: &Client, application_name: &str) -> Vec<bool> {
    let rows = client
        .query(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            &[&application_name],
        )
        .await
        .expect("terminate");
    let pids: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    let gone = eventually(Duration::from_secs(5), || async {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)",
                &[&pids],
            )
            .await
            .map(|r| r.get::<_, i64>(0) == 0)
            .unwrap_or(false)
    })
    .await;
    assert!(gone, "the terminated backends {pids:?} exit within 5 s");
    rows.iter().map(|r| r.get(1)).collect()
}
