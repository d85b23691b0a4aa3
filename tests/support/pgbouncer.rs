//! A throwaway pgbouncer (Debian's `pgbouncer` package) in front of a test server, in
//! transaction or session pooling, started by the test that needs it.
//!
//! It runs under a tiny `sh` that holds it on a pipe from this process: dropping the
//! [`PgBouncer`], or this process dying however it dies, closes the pipe and the shell kills it.
//! As root it runs as the `postgres` OS user (pgbouncer refuses root), from a directory in the
//! clusters' process directory (see [`super::cluster`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::cluster::{find_on_path, is_executable, pick_port, process_dir, PgTools};

/// How the pooler hands server connections to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per transaction: no session state, no LISTEN, no named statements
    /// across transactions (pgbouncer 1.18).
    Transaction,
    /// A server connection per client session.
    Session,
}

const NO_PGBOUNCER_HELP: &str = "\
These tests need pgbouncer: on Debian/Ubuntu `apt-get install pgbouncer` (scripts/test.sh
installs it when run as root), or put its directory on PATH or in RC_TEST_PGBOUNCER.";

/// Kills pgbouncer when this process lets go of its stdin.
const KEEPER: &str = r#"
"$@" &
pid=$!
cat >/dev/null 2>&1
kill -9 "$pid" 2>/dev/null
"#;

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A running pgbouncer; stopped when dropped.
pub struct PgBouncer {
    port: u16,
    dir: PathBuf,
    keeper: Child,
    stdin: Option<ChildStdin>,
}

/// The pgbouncer binary: `RC_TEST_PGBOUNCER`, else PATH, else `/usr/sbin/pgbouncer`.
fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("RC_TEST_PGBOUNCER") {
        return PathBuf::from(p);
    }
    find_on_path("pgbouncer")
        .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| is_executable(p)))
        .unwrap_or_else(|| panic!("{NO_PGBOUNCER_HELP}"))
}

impl PgBouncer {
    /// Starts pgbouncer in `mode` in front of the server at `server` (trust authentication, as
    /// the test servers), letting in `users`, with `server_conns` server connections per user
    /// and database. Returns once it accepts connections.
    pub async fn start(
        server: SocketAddr,
        mode: PoolMode,
        users: &[&str],
        server_conns: u32,
    ) -> PgBouncer {
        let tools =
            PgTools::find().unwrap_or_else(|| panic!("{}", super::cluster::NO_POSTGRES_HELP));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = process_dir(tools).join(format!("pgbouncer{n}"));
        tools.make_dir(&dir);
        let userlist: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("userlist.txt"), userlist).expect("writes the user list");
        let binary = binary();
        for _ in 0..10 {
            let port = pick_port();
            let ini = format!(
                "[databases]\n\
                 * = host={host} port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {dir}/userlist.txt\n\
                 pool_mode = {mode}\n\
                 default_pool_size = {server_conns}\n\
                 max_client_conn = 5000\n\
                 ignore_startup_parameters = extra_float_digits\n\
                 logfile = {dir}/pgbouncer.log\n",
                host = server.ip(),
                server_port = server.port(),
                dir = dir.display(),
                mode = match mode {
                    PoolMode::Transaction => "transaction",
                    PoolMode::Session => "session",
                },
            );
            let ini_path = dir.join(format!("pgbouncer{port}.ini"));
            std::fs::write(&ini_path, ini).expect("writes the configuration");
            if let Some((uid, gid)) = tools.owner() {
                for f in [ini_path.clone(), dir.join("userlist.txt")] {
                    std::os::unix::fs::chown(&f, Some(uid), Some(gid)).expect("chown");
                }
            }
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(KEEPER)
                .arg("rc-pgbouncer-keeper")
                .arg(&binary)
                .arg(&ini_path)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0);
            if let Some((uid, gid)) = tools.owner() {
                cmd.uid(uid).gid(gid);
            }
            let mut keeper = cmd.spawn().expect("spawning pgbouncer's keeper (/bin/sh)");
            let stdin = keeper.stdin.take();
            let mut bouncer = PgBouncer {
                port,
                dir: dir.clone(),
                keeper,
                stdin,
            };
            if bouncer.wait_ready().await {
                return bouncer;
            }
            let log = bouncer.log();
            drop(bouncer);
            if !log.contains("Address already in use") {
                panic!("pgbouncer did not start:\n{log}");
            }
        }
        panic!("starting pgbouncer failed 10 times: port always in use");
    }

    /// Polls until pgbouncer accepts a TCP connection (true), it died, or 10 s passed.
    async fn wait_ready(&mut self) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if tokio::net::TcpStream::connect(self.addr()).await.is_ok() {
                return true;
            }
            if let Ok(Some(_)) = self.keeper.try_wait() {
                return false;
            }
            // Polling a port that has no event to wait on.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// pgbouncer's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // End of file on the keeper's stdin: it kills pgbouncer and exits.
        drop(self.stdin.take());
        let _ = self.keeper.wait();
    }
}
