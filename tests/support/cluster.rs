//! Throwaway PostgreSQL clusters.
//!
//! # Layout and cleanup
//!
//! The first cluster of a test process creates a process directory
//! `$TMPDIR/rc-pg-<pid>-<random>/` and, once, a template data directory in it
//! (`initdb`, about 1.5 s). Every [`Cluster`] is a `cp -a` of that template
//! (about 0.2 s) in its own subdirectory `c<n>/` (data directory, log, Unix
//! socket), started with `pg_ctl` on a free port.
//!
//! Rust never runs destructors of statics, so a cluster kept in a static (the
//! one [`super::test_db`] falls back to) would outlive the test process. To
//! stop that, creating the process directory also spawns a tiny `sh`
//! *watchdog* in its own process group whose stdin is a pipe; this process
//! holds the pipe's only write end (close-on-exec, so no child inherits it) and
//! never closes it. When the test process exits, however it exits (normal end,
//! panic, `std::process::exit`, SIGKILL), the kernel closes the write end, the
//! watchdog's `cat` sees end-of-file, and the watchdog runs
//! `pg_ctl stop -m immediate` on every data directory that still has a
//! `postmaster.pid` (then `kill -9` as a last resort) and `rm -rf`s the process
//! directory (retrying for up to 10 s while a `cp` or `pg_ctl start` left
//! running by the dead process may still write into it; a postmaster started
//! after that finds its data directory gone and shuts itself down within a
//! minute, when it rechecks its lock file). It ignores SIGINT/SIGHUP, so
//! Ctrl-C on `cargo test` still cleans up. A cluster dropped normally is
//! stopped and removed by its own `Drop` at once.
//!
//! # Running as root
//!
//! `initdb` and `postgres` refuse to run as root. As root, every PostgreSQL
//! command runs as the `postgres` OS user through `runuser -u postgres --`,
//! and the directories are chowned to that user (so `$TMPDIR` must be
//! traversable by it, as `/tmp` is).

use std::ffi::OsString;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tokio_postgres::{Client, Config};

use super::{error_chain, random_u32, ConnParts, TestDb};

pub(crate) const NO_POSTGRES_HELP: &str = "\
The PostgreSQL integration tests need a PostgreSQL server. Either:
  * set RC_TEST_DATABASE_URL to a postgres URL or conninfo of a role that may CREATE DATABASE
    (e.g. RC_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres), or
  * run a server on 127.0.0.1:5432 that accepts user `postgres` on database `test`
    without a password, or
  * install the PostgreSQL server binaries (initdb, pg_ctl, postgres) so the tests start
    throwaway clusters themselves: on Debian/Ubuntu `apt-get install postgresql`
    (they are found on PATH or under /usr/lib/postgresql/<version>/bin).
scripts/test.sh does the last step for you. Fault-injection tests that stop the database
always need the server binaries.";

/// Where the PostgreSQL binaries are, and how to run them.
pub(crate) struct PgTools {
    bin_dir: PathBuf,
    /// `Some(runuser)` when this process is root and must run PostgreSQL
    /// commands as the `postgres` user.
    runuser: Option<PathBuf>,
    /// uid/gid of `postgres` (root only): owner of the directories.
    owner: Option<(u32, u32)>,
}

impl PgTools {
    /// uid/gid of the `postgres` OS user when this process is root (whom servers run as).
    pub(crate) fn owner(&self) -> Option<(u32, u32)> {
        self.owner
    }

    /// The PostgreSQL binaries, if installed: a directory holding `initdb`,
    /// `pg_ctl` and `postgres`: `RC_TEST_PG_BINDIR`, else the first on PATH,
    /// else the highest version under `/usr/lib/postgresql/*/bin`.
    pub(crate) fn find() -> Option<&'static PgTools> {
        static TOOLS: OnceLock<Option<PgTools>> = OnceLock::new();
        TOOLS
            .get_or_init(|| {
                let bin_dir = find_bin_dir()?;
                let (runuser, owner) = if running_as_root() {
                    let runuser = ["/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"]
                        .iter()
                        .map(PathBuf::from)
                        .find(|p| is_executable(p))
                        .or_else(|| find_on_path("runuser"))
                        .unwrap_or_else(|| {
                            panic!(
                                "running as root, PostgreSQL commands must run as the `postgres` \
                                 user, but `runuser` (util-linux) was not found"
                            )
                        });
                    let owner = (id_of("-u"), id_of("-g"));
                    (Some(runuser), Some(owner))
                } else {
                    (None, None)
                };
                Some(PgTools {
                    bin_dir,
                    runuser,
                    owner,
                })
            })
            .as_ref()
    }

    /// `tool args...`, as the `postgres` user when we are root.
    fn command<I, S>(&self, tool: &str, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut argv: Vec<OsString> = self.prefix(tool);
        argv.extend(args.into_iter().map(Into::into));
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).stdin(Stdio::null());
        cmd
    }

    /// Where `tool` is: in the binaries' directory, else beside the file `postgres` there
    /// resolves to (a PATH directory may hold links to only `initdb`, `pg_ctl` and `postgres`).
    fn tool_path(&self, tool: &str) -> PathBuf {
        let here = self.bin_dir.join(tool);
        if is_executable(&here) {
            return here;
        }
        std::fs::canonicalize(self.bin_dir.join("postgres"))
            .ok()
            .and_then(|p| Some(p.parent()?.join(tool)))
            .filter(|p| is_executable(p))
            .unwrap_or_else(|| {
                panic!(
                    "`{tool}` is neither in {} nor beside the `postgres` it holds: this test needs \
                     the PostgreSQL server package's full set of tools",
                    self.bin_dir.display()
                )
            })
    }

    /// The argv that runs `tool` (without its arguments).
    fn prefix(&self, tool: &str) -> Vec<OsString> {
        let tool = self.tool_path(tool).into_os_string();
        match &self.runuser {
            Some(runuser) => vec![
                runuser.clone().into_os_string(),
                "-u".into(),
                "postgres".into(),
                "--".into(),
                tool,
            ],
            None => vec![tool],
        }
    }

    /// Creates `dir` (mode 0700 and owned by `postgres` when we are root).
    pub(crate) fn make_dir(&self, dir: &Path) {
        std::fs::create_dir(dir)
            .unwrap_or_else(|e| panic!("creating {} failed: {e}", dir.display()));
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown postgres {} failed: {e}", dir.display()));
        }
    }
}

impl PgTools {
    /// Writes `path` with `mode`, owned by `postgres` when we are root (whom servers run as).
    pub(crate) fn write_file(&self, path: &Path, contents: &[u8], mode: u32) {
        // Created with the mode at once: a key is never readable by others, not even briefly.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
        std::io::Write::write_all(&mut file, contents)
            .unwrap_or_else(|e| panic!("writing {} failed: {e}", path.display()));
        // `mode` on open is filtered by the umask, and an existing file keeps its mode.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {} failed: {e}", path.display()));
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .unwrap_or_else(|e| panic!("chown postgres {} failed: {e}", path.display()));
        }
    }
}

fn running_as_root() -> bool {
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false),
    }
}

/// `id -u postgres` / `id -g postgres`.
fn id_of(flag: &str) -> u32 {
    let out = Command::new("id")
        .args([flag, "postgres"])
        .output()
        .expect("running `id` to look up the postgres user failed");
    assert!(
        out.status.success(),
        "running as root, PostgreSQL commands must run as the `postgres` OS user, which does \
         not exist (`id {flag} postgres`: {}). Installing the Debian package `postgresql` \
         creates it; or run the tests as a non-root user.",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("`id` printed something that is not a number")
}

pub(crate) fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn has_server_tools(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|t| is_executable(&dir.join(t)))
}

pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("RC_TEST_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        assert!(
            has_server_tools(&dir),
            "RC_TEST_PG_BINDIR={} has no initdb, pg_ctl and postgres",
            dir.display()
        );
        return Some(dir);
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(dir) = std::env::split_paths(&path).find(|d| has_server_tools(d)) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e
                .file_name()
                .to_string_lossy()
                .split('.')
                .map(|p| p.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            has_server_tools(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The process directory and its watchdog (see the module docs).
struct ProcessDir {
    path: PathBuf,
    /// The write end of the watchdog's stdin. Never closed: process exit
    /// closes it, which is what triggers the cleanup.
    _watchdog: Mutex<ChildStdin>,
}

// Retries while children of the dead process (a `cp -a` or `pg_ctl start`
// still running) may be writing into the directory.
const WATCHDOG: &str = r#"
trap '' INT HUP
root=$1; shift
cat >/dev/null 2>&1
i=0
while [ -e "$root" ] && [ $i -lt 50 ]; do
  for pidfile in "$root"/*/data/postmaster.pid; do
    [ -f "$pidfile" ] || continue
    "$@" stop -D "${pidfile%/postmaster.pid}" -m immediate -w -t 20 >/dev/null 2>&1
    pid=$(head -n 1 "$pidfile" 2>/dev/null) || continue
    grep -q postgres "/proc/$pid/cmdline" 2>/dev/null && kill -9 "$pid" 2>/dev/null
  done
  rm -rf "$root" 2>/dev/null
  [ -e "$root" ] && sleep 0.2
  i=$((i + 1))
done
"#;

// The watchdog is never waited for: it outlives this process by design.
#[allow(clippy::zombie_processes)]
pub(crate) fn process_dir(tools: &'static PgTools) -> &'static Path {
    static DIR: OnceLock<ProcessDir> = OnceLock::new();
    &DIR.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("rc-pg-{}-{:08x}", std::process::id(), random_u32()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating {} failed: {e}", path.display()));
        // Traversable by the postgres user; the cluster directories inside
        // are private.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {} failed: {e}", path.display()));
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("rc-pg-watchdog")
            .arg(&path)
            .args(tools.prefix("pg_ctl"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Out of the terminal's process group: Ctrl-C does not reach it.
            .process_group(0)
            .spawn()
            .expect("spawning the cluster-cleanup watchdog (/bin/sh) failed");
        let stdin = child.stdin.take().expect("watchdog stdin is piped");
        ProcessDir {
            path,
            _watchdog: Mutex::new(stdin),
        }
    })
    .path
}

/// The initdb'd template data directory of this process.
async fn template(tools: &'static PgTools) -> &'static Path {
    static TEMPLATE: OnceCell<PathBuf> = OnceCell::const_new();
    TEMPLATE
        .get_or_init(|| async move {
            let dir = process_dir(tools).join("template");
            // Left by an attempt that panicked (its test failed with the cause): start over.
            let _ = std::fs::remove_dir_all(&dir);
            tools.make_dir(&dir);
            let data = dir.join("data");
            let out = run(tools.command(
                "initdb",
                [
                    OsString::from("-D"),
                    data.clone().into_os_string(),
                    "-A".into(),
                    "trust".into(),
                    "-U".into(),
                    "postgres".into(),
                    "-E".into(),
                    "UTF8".into(),
                    "--locale=C".into(),
                    // (Not --no-instructions, which initdb 13 lacks: the output is not shown.)
                    "--no-sync".into(),
                ],
            ))
            .await;
            assert!(
                out.status.success(),
                "initdb failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            data
        })
        .await
}

async fn run(cmd: Command) -> std::process::Output {
    let desc = format!("{cmd:?}");
    tokio::process::Command::from(cmd)
        .output()
        .await
        .unwrap_or_else(|e| panic!("running {desc} failed: {e}"))
}

/// A free TCP port on 127.0.0.1, below the ephemeral range (so no outgoing
/// connection takes it while the cluster is stopped).
pub(crate) fn pick_port() -> u16 {
    for _ in 0..200 {
        let port = 20000 + (random_u32() % 12000) as u16;
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("found no free TCP port in 20000..32000 on 127.0.0.1");
}

static NEXT_CLUSTER: AtomicU64 = AtomicU64::new(0);

/// A private PostgreSQL cluster on 127.0.0.1 (trust auth, user `postgres`,
/// `fsync=off`), for tests that stop, kill or restart the database. It keeps
/// its port across restarts. Dropping it stops it (immediate mode) and
/// deletes its files.
pub struct Cluster {
    tools: &'static PgTools,
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    /// Extra ` -c 'name=value'` server options after the defaults (see
    /// [`Cluster::start_with`]); kept for restarts.
    settings: String,
}

enum StartError {
    PortInUse,
}

impl Cluster {
    /// Creates and starts a cluster, returning once it accepts connections.
    /// Panics with instructions when the PostgreSQL binaries are missing.
    pub async fn start() -> Cluster {
        Cluster::start_with(&[]).await
    }

    /// Like [`Cluster::start`], with extra server settings (`-c name=value`)
    /// placed after the defaults, so they override them (the last setting on
    /// the command line wins): e.g. the propagation bench mirrors its main
    /// server's `fsync`, `synchronous_commit` and TLS settings.
    pub async fn start_with(settings: &[(String, String)]) -> Cluster {
        Cluster::start_with_files(settings, &[]).await
    }

    /// Like [`Cluster::start_with`], with `files` (name, contents, mode) written into the data
    /// directory before the server starts, owned by the user the server runs as: e.g.
    /// `server.crt` and `server.key` for `ssl=on` (the key with mode 0600: PostgreSQL refuses a
    /// key that others may read), or a `pg_hba.conf` that replaces the template's.
    pub async fn start_with_files(
        settings: &[(String, String)],
        files: &[(&str, &[u8], u32)],
    ) -> Cluster {
        let settings: String = settings
            .iter()
            .map(|(k, v)| format!(" -c {}", sh_quote(&format!("{k}={v}"))))
            .collect();
        let tools = PgTools::find().unwrap_or_else(|| panic!("{NO_POSTGRES_HELP}"));
        let template = template(tools).await;
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let dir = process_dir(tools).join(format!("c{n}"));
        tools.make_dir(&dir);
        let data = dir.join("data");
        let mut cp = Command::new("cp");
        cp.arg("-a").arg(template).arg(&data);
        let out = run(cp).await;
        assert!(
            out.status.success(),
            "copying the template cluster failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (name, contents, mode) in files {
            tools.write_file(&data.join(name), contents, *mode);
        }
        for _ in 0..10 {
            let cluster = Cluster {
                tools,
                dir: dir.clone(),
                data: data.clone(),
                port: pick_port(),
                settings: settings.clone(),
            };
            match cluster.pg_start().await {
                Ok(()) => {
                    cluster.wait_ready().await;
                    return cluster;
                }
                // Someone took the port between the check and the start.
                Err(StartError::PortInUse) => std::mem::forget(cluster),
            }
        }
        panic!("starting a throwaway cluster failed 10 times: port always in use");
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("log")
    }

    /// The server log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Writes `name` into the cluster's directory (beside its data directory, removed with it)
    /// with `mode`, owned by the user the server runs as; returns its path.
    pub fn write_file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = self.dir.join(name);
        self.tools.write_file(&path, contents, mode);
        path
    }

    async fn pg_start(&self) -> Result<(), StartError> {
        let log = self.log_path();
        let log_before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) as usize;
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
             -c full_page_writes=off -c max_connections=200{}",
            self.port,
            sh_quote(&self.dir.to_string_lossy()),
            self.settings
        );
        let out = run(self.tools.command(
            "pg_ctl",
            [
                OsString::from("start"),
                "-D".into(),
                self.data.clone().into_os_string(),
                "-l".into(),
                log.into_os_string(),
                "-w".into(),
                "-t".into(),
                "60".into(),
                "-o".into(),
                opts.into(),
            ],
        ))
        .await;
        if out.status.success() {
            return Ok(());
        }
        let log = self.log();
        let new_log = log.get(log_before..).unwrap_or(&log);
        if new_log.contains("Address already in use") {
            return Err(StartError::PortInUse);
        }
        panic!(
            "pg_ctl start failed ({}):\n{}{}\nserver log:\n{new_log}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls until a connection succeeds (every 20 ms, at most 30 s).
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let parts = self.admin_parts();
        loop {
            let err = match tokio::time::timeout(Duration::from_secs(2), parts.connect()).await {
                Ok(Ok(_client)) => return,
                Ok(Err(e)) => error_chain(&e),
                Err(_) => "connect timed out".to_owned(),
            };
            assert!(
                Instant::now() < deadline,
                "cluster on port {} not ready after 30 s ({err}); log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn pg_stop(&self, mode: &str) {
        let out = run(self.tools.command(
            "pg_ctl",
            [
                OsString::from("stop"),
                "-D".into(),
                self.data.clone().into_os_string(),
                "-m".into(),
                mode.into(),
                "-w".into(),
                "-t".into(),
                "60".into(),
            ],
        ))
        .await;
        assert!(
            out.status.success(),
            "pg_ctl stop -m {mode} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A streaming standby of `primary`: `pg_basebackup -R -X stream` from it into a new
    /// directory, started on a port of its own with the primary's extra settings. Returns once it
    /// accepts (read-only) connections and its WAL receiver streams from the primary.
    pub async fn standby_of(primary: &Cluster) -> Cluster {
        let tools = primary.tools;
        let n = NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed);
        let dir = process_dir(tools).join(format!("c{n}"));
        tools.make_dir(&dir);
        let data = dir.join("data");
        let out = run(tools.command(
            "pg_basebackup",
            [
                OsString::from("-D"),
                data.clone().into_os_string(),
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                primary.port.to_string().into(),
                "-U".into(),
                "postgres".into(),
                "-R".into(),
                "-X".into(),
                "stream".into(),
                "-c".into(),
                "fast".into(),
                "--no-sync".into(),
            ],
        ))
        .await;
        assert!(
            out.status.success(),
            "pg_basebackup from the cluster on port {} failed ({}):\n{}{}",
            primary.port,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..10 {
            let standby = Cluster {
                tools,
                dir: dir.clone(),
                data: data.clone(),
                port: pick_port(),
                settings: primary.settings.clone(),
            };
            match standby.pg_start().await {
                Ok(()) => {
                    standby.wait_ready().await;
                    standby.wait_receiver(true).await;
                    return standby;
                }
                Err(StartError::PortInUse) => std::mem::forget(standby),
            }
        }
        panic!("starting a standby failed 10 times: port always in use");
    }

    /// Polls (every 20 ms, at most 30 s) until this standby's WAL receiver streams
    /// (`streaming`) or has stopped (`!streaming`), per `pg_stat_wal_receiver`.
    pub async fn wait_receiver(&self, streaming: bool) {
        let client = self.client("postgres").await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = client
                .query("SELECT status FROM pg_stat_wal_receiver", &[])
                .await
                .unwrap_or_else(|e| panic!("reading pg_stat_wal_receiver: {}", error_chain(&e)));
            let status: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let done = if streaming {
                status.iter().any(|s| s == "streaming")
            } else {
                status.is_empty()
            };
            if done {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the standby on port {}: WAL receiver {status:?} after 30 s, waiting for {}; log:\n{}",
                self.port,
                if streaming { "streaming" } else { "none" },
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops this standby's WAL receiver and keeps it stopped: `primary_conninfo` is emptied
    /// (reloadable since PostgreSQL 13) and the receiver is gone when this returns. The standby
    /// keeps serving reads and can still be promoted; nothing the primary writes from now on
    /// reaches it.
    pub async fn stop_receiving(&self) {
        let client = self.client("postgres").await;
        // One statement each: a multi-statement string runs as one transaction, which ALTER
        // SYSTEM refuses.
        for sql in [
            "ALTER SYSTEM SET primary_conninfo = ''",
            "SELECT pg_reload_conf()",
        ] {
            client
                .batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", error_chain(&e)));
        }
        self.wait_receiver(false).await;
    }

    /// Undoes [`stop_receiving`](Self::stop_receiving): streams from `primary` again, and returns
    /// once the WAL receiver streams.
    pub async fn resume_receiving(&self, primary: &Cluster) {
        let client = self.client("postgres").await;
        let conninfo = format!("host=127.0.0.1 port={} user=postgres", primary.port);
        for sql in [
            format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            client
                .batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {}", error_chain(&e)));
        }
        self.wait_receiver(true).await;
    }

    /// Promotes this standby (`pg_ctl promote -w`), returning once it accepts writes.
    pub async fn promote(&self) {
        let out = run(self.tools.command(
            "pg_ctl",
            [
                OsString::from("promote"),
                "-D".into(),
                self.data.clone().into_os_string(),
                "-w".into(),
                "-t".into(),
                "60".into(),
            ],
        ))
        .await;
        assert!(
            out.status.success(),
            "pg_ctl promote failed ({}):\n{}{}\nlog:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// Stops the server (fast mode: sessions are terminated, clean
    /// shutdown). Returns once it is down; connections fail from then on.
    pub async fn stop(&self) {
        self.pg_stop("fast").await;
    }

    /// Starts a stopped server again on the same port, returning once it
    /// accepts connections.
    pub async fn start_again(&self) {
        match self.pg_start().await {
            Ok(()) => self.wait_ready().await,
            Err(StartError::PortInUse) => panic!(
                "restarting the cluster failed: port {} was taken while it was stopped",
                self.port
            ),
        }
    }

    /// [`Cluster::stop`] then [`Cluster::start_again`].
    pub async fn restart(&self) {
        self.stop().await;
        self.start_again().await;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, e.g. as a [`super::Proxy`] target.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub(crate) fn admin_parts(&self) -> ConnParts {
        ConnParts::local(self.port, "postgres")
    }

    /// `host=127.0.0.1 port=<port> user=postgres dbname=<db>`.
    pub fn conninfo(&self, db: &str) -> String {
        self.admin_parts().with_db(db).conninfo()
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<db>`.
    pub fn url(&self, db: &str) -> String {
        self.admin_parts().with_db(db).url()
    }

    pub fn config(&self, db: &str) -> Config {
        self.admin_parts().with_db(db).config()
    }

    /// A plain connection to `db` (driver spawned on the current runtime).
    pub async fn client(&self, db: &str) -> Client {
        self.admin_parts()
            .with_db(db)
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "connecting to {db} on the cluster failed: {}",
                    error_chain(&e)
                )
            })
    }

    /// Creates a uniquely named database and returns its name. (It goes away
    /// with the cluster.)
    pub async fn create_db(&self) -> String {
        let db = TestDb::create(self.admin_parts()).await;
        let name = db.name().to_owned();
        // Keep it: no need to drop it one by one, the cluster is throwaway.
        std::mem::forget(db);
        name
    }

    /// Sets database `db` up for an application and returns its role (see
    /// [`TestDb::app`]); connect with [`super::TestRole::conninfo`].
    pub async fn app_role(&self, db: &str) -> super::TestRole {
        use resilient_circuit::admin::RoleKind;
        super::app_role(
            self.admin_parts(),
            db,
            &[RoleKind::Operator, RoleKind::Python],
        )
        .await
    }

    /// A [`TestDb`] on this cluster (dropped with the value, if the cluster
    /// is still running then).
    pub async fn test_db(&self) -> TestDb {
        TestDb::create(self.admin_parts()).await
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let mut stop = self.tools.command(
                "pg_ctl",
                [
                    OsString::from("stop"),
                    "-D".into(),
                    self.data.clone().into_os_string(),
                    "-m".into(),
                    "immediate".into(),
                    "-w".into(),
                    "-t".into(),
                    "20".into(),
                ],
            );
            if let Err(e) = stop.stdout(Stdio::null()).stderr(Stdio::null()).status() {
                eprintln!(
                    "support: stopping the cluster on port {} failed: {e}",
                    self.port
                );
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != ErrorKind::NotFound {
                eprintln!("support: removing {} failed: {e}", self.dir.display());
            }
        }
    }
}
