//! The CPU a local PostgreSQL server used, read from `/proc` (Linux only): user plus system time
//! of the postmaster, of each live child (backends, background workers), and of the children it
//! already reaped (the postmaster's `cutime`/`cstime`), so that a backend that exits in between
//! still counts.
//!
//! Accuracy: the kernel reports these in clock ticks (`sysconf(_SC_CLK_TCK)`, 100 a second
//! here), truncated per process, so a difference over `p` processes is off by up to `p` ticks,
//! about ±√p ticks in practice: with 1,000 backends, about ±0.3 s over a measurement. Divide by
//! enough transitions. A child that exits between the two reads is counted twice or not at all
//! (rare: the reads are microseconds apart). `None` where the server is not on this machine or
//! its processes cannot be read.

use std::time::Duration;

use tokio_postgres::Client;

/// The server one connection leads to.
pub(crate) struct ServerCpu {
    postmaster: u32,
    ticks_per_sec: f64,
}

/// The fields of `/proc/<pid>/stat` used here.
struct Stat {
    ppid: u32,
    /// utime + stime, in ticks.
    own: u64,
    /// cutime + cstime: reaped children, in ticks.
    children: u64,
}

impl ServerCpu {
    /// The server `client` is connected to, if it runs here: the postmaster is the parent of
    /// `client`'s backend.
    pub(crate) async fn of(client: &Client) -> Option<ServerCpu> {
        let backend: i32 = client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .ok()?
            .get(0);
        let stat = read_stat(u32::try_from(backend).ok()?)?;
        Some(ServerCpu {
            postmaster: stat.ppid,
            ticks_per_sec: ticks_per_sec()?,
        })
    }

    /// Process `pid` and its children, e.g. a pgbouncer (which has none).
    pub(crate) fn of_process(pid: u32) -> Option<ServerCpu> {
        read_stat(pid)?;
        Some(ServerCpu {
            postmaster: pid,
            ticks_per_sec: ticks_per_sec()?,
        })
    }

    /// CPU time the server's processes used so far.
    pub(crate) fn used(&self) -> Option<Duration> {
        let pm = read_stat(self.postmaster)?;
        let mut ticks = pm.own + pm.children;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let pid = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok());
            if let Some(child) = pid.and_then(read_stat) {
                if child.ppid == self.postmaster {
                    ticks += child.own;
                }
            }
        }
        Some(Duration::from_secs_f64(ticks as f64 / self.ticks_per_sec))
    }

    /// Clock ticks a second, for the report.
    pub(crate) fn ticks_per_sec(&self) -> f64 {
        self.ticks_per_sec
    }
}

/// Parses `/proc/<pid>/stat`; the command name in parentheses may hold spaces, so the fields
/// are counted after its closing parenthesis.
fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: state(3) ppid(4) … utime(14) stime(15) cutime(16) cstime(17).
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(Stat {
        ppid: u32::try_from(num(4)?).ok()?,
        own: num(14)? + num(15)?,
        children: num(16)? + num(17)?,
    })
}

#[cfg(target_os = "linux")]
fn ticks_per_sec() -> Option<f64> {
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (t > 0).then_some(t as f64)
}

#[cfg(not(target_os = "linux"))]
fn ticks_per_sec() -> Option<f64> {
    None
}
