//! `deploy` and `rollback`: the library does the work and says what
//! happens; this prints it.

use super::commands::{load, print_json};
use super::{Cli, DeployArgs, RollbackArgs};
use crate::deploy::Event;
use anyhow::Result;

pub fn deploy(cli: &Cli, args: &DeployArgs) -> Result<()> {
    let p = load(cli)?;
    if args.controller {
        return super::controller::deploy(cli, &p, args);
    }
    let json = cli.global.json;
    let reports = crate::deploy::run(&p, &args.options(), &mut |event| {
        print_deploy_event(event, json)
    })?;
    print_json(cli, &reports)?;
    if reports.iter().any(|r| r.action == "would-fail") {
        anyhow::bail!("a real deploy would stop here: a prerequisite is missing (see above)");
    }
    Ok(())
}

/// What a deploy tells as it goes; with `--json` only what the JSON
/// report does not say.
/// stdout holds only the JSON report under `--json`.
fn print_deploy_event(event: Event, json: bool) {
    let say = |l: String| {
        if json {
            tracing::warn!("{l}");
        } else {
            println!("{l}");
        }
    };
    match event {
        Event::WouldRecover(p) => say(format!("would recover the interrupted deploy of {p}")),
        Event::WouldRemove(s) => say(format!("would remove {s} left by an interrupted run")),
        Event::Missing(m) => tracing::error!("missing: {m}"),
        Event::Diff { .. } | Event::Planned { .. } if json => {}
        Event::Diff { node, pname, lines } => {
            println!("--- {node} ({pname}) {} files differ", lines.len());
            for l in lines {
                println!("{l}");
            }
        }
        Event::Planned {
            node,
            pname,
            action,
            steps,
        } => {
            match action {
                "would-fail" => {
                    println!("{node} ({pname}): would fail (a prerequisite is missing)")
                }
                "unchanged" => println!("{node} ({pname}): would be unchanged"),
                _ => println!("{node} ({pname}): would be deployed"),
            }
            for s in steps {
                println!("  {s}");
            }
        }
    }
}

pub fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<()> {
    let p = load(cli)?;
    if super::controller::names_controller(&p, &args.nodes)? {
        return super::controller::rollback(cli, args);
    }
    crate::deploy::rollback(&p, &args.options())
}
