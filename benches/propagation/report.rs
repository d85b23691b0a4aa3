//! The report: percentiles of the samples and the tables printed at the end.
//!
//! Every figure is printed twice: as it is taken (on stderr, so that a long run shows progress
//! and a failed one keeps what it measured), and in the final table on stdout, with the goals
//! and their verdicts. Percentiles are nearest-rank over all samples (no interpolation, no
//! outlier removal), so p99 and max are real samples.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
pub(crate) struct Stats {
    pub(crate) n: usize,
    pub(crate) p50: Duration,
    pub(crate) p90: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

/// Nearest-rank percentiles.
pub(crate) fn stats(samples: &[Duration]) -> Option<Stats> {
    if samples.is_empty() {
        return None;
    }
    let mut s = samples.to_vec();
    s.sort_unstable();
    let at = |p: f64| {
        let rank = (p / 100.0 * s.len() as f64).ceil() as usize;
        s[rank.clamp(1, s.len()) - 1]
    };
    Some(Stats {
        n: s.len(),
        p50: at(50.0),
        p90: at(90.0),
        p99: at(99.0),
        max: s[s.len() - 1],
    })
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

pub(crate) fn ratio(a: Duration, b: Duration) -> String {
    if b.is_zero() {
        "-".into()
    } else {
        format!("x{:.2}", a.as_secs_f64() / b.as_secs_f64())
    }
}

#[derive(Default)]
pub(crate) struct Report {
    started: Option<Instant>,
    rows: Vec<Vec<String>>,
    goals: Vec<[String; 4]>,
    notes: Vec<String>,
}

impl Report {
    pub(crate) fn section(&mut self, title: &str) {
        let started = *self.started.get_or_insert_with(Instant::now);
        eprintln!("== {title} (at {:.1} s)", started.elapsed().as_secs_f64());
        self.rows.push(vec![format!("[{title}]")]);
    }

    pub(crate) fn dist(&mut self, name: &str, samples: &[Duration], note: &str) -> Option<Stats> {
        let st = stats(samples);
        let row = match st {
            Some(s) => vec![
                name.to_owned(),
                s.n.to_string(),
                ms(s.p50),
                ms(s.p90),
                ms(s.p99),
                ms(s.max),
                note.to_owned(),
            ],
            None => vec![
                name.to_owned(),
                "0".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                note.to_owned(),
            ],
        };
        eprintln!("   {}", row.join("  "));
        self.rows.push(row);
        st
    }

    pub(crate) fn value(&mut self, name: &str, n: impl ToString, value: String, note: &str) {
        let row = vec![
            name.to_owned(),
            n.to_string(),
            value,
            String::new(),
            String::new(),
            String::new(),
            note.to_owned(),
        ];
        eprintln!("   {}", row.join("  "));
        self.rows.push(row);
    }

    pub(crate) fn goal(&mut self, what: &str, target: &str, measured: String, ok: bool) {
        self.goals.push([
            what.to_owned(),
            target.to_owned(),
            measured,
            if ok { "met" } else { "MISSED" }.to_owned(),
        ]);
    }

    pub(crate) fn note(&mut self, note: String) {
        eprintln!("   note: {note}");
        self.notes.push(note);
    }

    pub(crate) fn print(&self, quick: bool) {
        const HEAD: [&str; 7] = ["measurement", "n", "p50", "p90", "p99", "max", "notes"];
        let mut w = HEAD.map(str::len);
        for r in self.rows.iter().filter(|r| r.len() > 1) {
            for (i, c) in r.iter().enumerate().take(6) {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: &[String]| {
            let mut s = format!("{:<w0$}", cells[0], w0 = w[0]);
            for (i, c) in cells.iter().enumerate().skip(1).take(5) {
                s.push_str(&format!("  {:>wi$}", c, wi = w[i]));
            }
            if let Some(n) = cells.get(6).filter(|n| !n.is_empty()) {
                s.push_str("  ");
                s.push_str(n);
            }
            s
        };
        println!();
        println!(
            "resilient-circuit fleet propagation: {}",
            if quick {
                "QUICK run (small sizes; figures not comparable with the goals)"
            } else {
                "full run"
            }
        );
        println!("{}", line(&HEAD.map(str::to_owned)));
        println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * 6 + 10));
        for r in &self.rows {
            if r.len() == 1 {
                println!("{}", r[0]);
            } else {
                println!("{}", line(r));
            }
        }
        if !self.goals.is_empty() {
            println!();
            let mut gw = [4, 6, 8, 7];
            for g in &self.goals {
                for (i, c) in g.iter().enumerate() {
                    gw[i] = gw[i].max(c.len());
                }
            }
            println!(
                "{:<a$}  {:<b$}  {:<c$}  verdict",
                "goal",
                "target",
                "measured",
                a = gw[0],
                b = gw[1],
                c = gw[2]
            );
            for g in &self.goals {
                println!(
                    "{:<a$}  {:<b$}  {:<c$}  {}",
                    g[0],
                    g[1],
                    g[2],
                    if quick { "(quick run)" } else { g[3].as_str() },
                    a = gw[0],
                    b = gw[1],
                    c = gw[2]
                );
            }
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("* {n}");
            }
        }
    }
}
