//! `deploy` and `rollback`: the library does the work and says what
//! happens; this prints it.

use super::commands::{load, print_json};
use super::{Cli, DeployArgs, RollbackArgs};
use crate::deploy::Event;
use anyhow::Result;

pub fn deploy(cli: &Cli, args: &DeployArgs) -> Result<()> {
    let p = load(cli)?;
    let json = cli.global.json;
    let reports = crate::deploy::run(&p, &args.options(), &mut |event| {
        print_deploy_event(event, json)
    })?;
    print_json(cli, &reports)
}

/// What a deploy tells as it goes; with `--json` only what the JSON
/// report does not say.
fn print_deploy_event(event: Event, json: bool) {
    match event {
        Event::WouldRecover(p) => println!("would recover the interrupted deploy of {p}"),
        Event::WouldRemove(s) => println!("would remove {s} left by an interrupted run"),
        Event::Missing(m) => println!("missing: {m}"),
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
            println!("{node} ({pname}): would be {action}");
            for s in steps {
                println!("  {s}");
            }
        }
    }
}

pub fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<()> {
    let p = load(cli)?;
    crate::deploy::rollback(&p, &args.options())
}
