//! `group`: the groups of a namespace (members open of how many, the cap, the threshold, the
//! group's own state), or one group, read or changed live (`rc_group_states`,
//! `rc_group_configure`). A change reaches every instance at once: the cap is checked by the
//! database at each member's entry into OPEN, and the group is counted again on the spot.
//!
//! The JSON (`--json`) is stable, fields are only ever added:
//!
//! ```json
//! {"namespace": "default", "groups": [{"name": "payments", "members": 6, "open": 2,
//!   "state": "CLOSED", "max_open": "1/3", "open_at": "1/2", "version": 42}]}
//! ```

use std::process::ExitCode;

use resilient_circuit::admin::{GroupChange, GroupRow};
use resilient_circuit::storage::postgres::PostgresOptions;
use resilient_circuit::Ratio;
use serde::Serialize;

use super::config::parse_ratio;
use super::text::escaped;
use super::{connect, namespace, CliError};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The group; without it, every group of the namespace is listed.
    name: Option<String>,
    /// The namespace (default: RC_NAMESPACE, else `default`).
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
    /// At most this share K/N of the members OPEN or HALF_OPEN at once, for every instance
    /// (instead of what they declare).
    #[arg(long, value_name = "K/N", value_parser = parse_ratio)]
    max_open: Option<Ratio>,
    /// The group is OPEN as a whole while this share K/N of its members is open; `none`: never
    /// (instead of what the instances declare).
    #[arg(long, value_name = "K/N|none", value_parser = parse_open_at)]
    open_at: Option<OpenAt>,
    /// Clear the live values first: back to what the instances declare.
    #[arg(long)]
    reset: bool,
    /// Why, kept with the group and in the change log.
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

/// `--open-at`: a ratio, or none.
#[derive(Debug, Clone, Copy)]
pub enum OpenAt {
    At(Ratio),
    Never,
}

fn parse_open_at(s: &str) -> Result<OpenAt, String> {
    if s.trim().eq_ignore_ascii_case("none") {
        return Ok(OpenAt::Never);
    }
    parse_ratio(s).map(OpenAt::At)
}

#[derive(Debug, Serialize)]
struct Listing<'a> {
    namespace: &'a str,
    groups: Vec<Group>,
}

/// One group as printed (and in `status --json`).
#[derive(Debug, Serialize)]
pub struct Group {
    name: String,
    members: u32,
    open: u32,
    state: String,
    max_open: String,
    open_at: Option<String>,
    version: i64,
}

impl From<GroupRow> for Group {
    fn from(g: GroupRow) -> Group {
        Group {
            name: g.name,
            members: g.members,
            open: g.open,
            state: g.state.as_str().to_owned(),
            max_open: g.max_open.to_string(),
            open_at: g.open_at.map(|r| r.to_string()),
            version: g.version,
        }
    }
}

impl Group {
    /// `payments: 2 of 6 members open, at most 1/3, opens at 1/2: CLOSED`, escaped.
    pub fn line(&self) -> String {
        let at = match &self.open_at {
            Some(r) => format!("opens at {r}"),
            None => "never opens as a whole".into(),
        };
        format!(
            "{}: {} of {} members open, at most {}, {at}: {}",
            escaped(&self.name),
            self.open,
            self.members,
            self.max_open,
            self.state
        )
    }
}

pub async fn run(opts: &PostgresOptions, args: Args) -> Result<ExitCode, CliError> {
    let ns = namespace(opts, &args.namespace);
    let changes = args.max_open.is_some() || args.open_at.is_some() || args.reset;
    if changes && args.name.is_none() {
        return Err(CliError::Usage(
            "--max-open, --open-at and --reset change one group: name it".into(),
        ));
    }
    if args.note.is_some() && !changes {
        return Err(CliError::Usage(
            "--note goes with a change (--max-open, --open-at or --reset)".into(),
        ));
    }
    let session = connect(opts).await?;
    let groups: Vec<Group> = match &args.name {
        Some(name) if changes => {
            let mut change = GroupChange::new();
            if args.reset {
                change = change.reset();
            }
            if let Some(r) = args.max_open {
                change = change.max_open(r);
            }
            match args.open_at {
                Some(OpenAt::At(r)) => change = change.open_at(r),
                Some(OpenAt::Never) => change = change.never_open(),
                None => {}
            }
            if let Some(note) = &args.note {
                change = change.note(note.clone());
            }
            vec![session.configure_group(ns, name, &change).await?.into()]
        }
        Some(name) => {
            let found: Vec<Group> = session
                .groups(ns)
                .await?
                .into_iter()
                .filter(|g| g.name == *name)
                .map(Group::from)
                .collect();
            if found.is_empty() {
                return Err(CliError::Problem(format!(
                    "no group {} in namespace {}",
                    escaped(name),
                    escaped(ns)
                )));
            }
            found
        }
        None => session
            .groups(ns)
            .await?
            .into_iter()
            .map(Group::from)
            .collect(),
    };
    if args.json {
        let text = serde_json::to_string_pretty(&Listing {
            namespace: ns,
            groups,
        })
        .map_err(|e| CliError::Problem(format!("encoding JSON: {e}")))?;
        say!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if groups.is_empty() {
        say!("no groups in namespace {}", escaped(ns));
    }
    for g in &groups {
        say!("{}", g.line());
    }
    Ok(ExitCode::SUCCESS)
}
