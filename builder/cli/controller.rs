//! The controller's verbs: `image clusterhat`, `deploy --controller`,
//! `rollback clusterhat`, and its part of `check`.

use super::{Cli, DeployArgs, ImageArgs, RollbackArgs};
use crate::error::UsageError;
use crate::profile::controller::ControllerNodePlan;
use crate::profile::Profile;
use anyhow::Result;
use std::io::Write;
use std::path::Path;

/// Whether the selection names the controller, and the other names.
pub fn split(p: &Profile, names: &[String]) -> (bool, Vec<String>) {
    let mut controller = false;
    let mut rest = Vec::new();
    for n in names {
        if p.controller.is_named(n) {
            controller = true;
        } else {
            rest.push(n.clone());
        }
    }
    (controller, rest)
}

/// `rollback clusterhat`: the controller alone, never mixed with Zeros.
pub fn names_controller(p: &Profile, names: &[String]) -> Result<bool> {
    let (controller, rest) = split(p, names);
    if controller && !rest.is_empty() {
        return Err(UsageError(format!(
            "roll back the controller ({}) on its own, not with {}",
            p.controller.hostname,
            rest.join(", ")
        ))
        .into());
    }
    Ok(controller)
}

fn prefixed(root: &Path) -> bool {
    root != Path::new("/")
}

pub fn deploy(cli: &Cli, p: &Profile, args: &DeployArgs) -> Result<()> {
    let opts = crate::deploy::controller::Options {
        root: args.root.clone(),
        prefixed: prefixed(&args.root),
        dry_run: args.dry_run,
        diff: args.diff,
        overlays: crate::overlay::Overlays::builtin()?,
    };
    let p = &with_k3s_bundle(cli, p)?;
    let report = crate::deploy::controller::deploy(p, &opts)?;
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let host = &p.controller.hostname;
    let would = if report.dry_run { "would " } else { "" };
    for d in &report.diff {
        eprint!("{d}");
    }
    if report.is_unchanged() {
        tracing::info!("{host}: unchanged, every owned file is in place");
        return Ok(());
    }
    if !report.packages_installed.is_empty() {
        tracing::info!(
            "{host}: {would}install {}",
            report.packages_installed.join(" ")
        );
    }
    for f in &report.changed {
        tracing::info!("{host}: {would}replace /{f}");
    }
    for u in &report.enabled {
        tracing::info!("{host}: {would}enable {u}");
    }
    for u in &report.not_installed {
        tracing::warn!("{host}: {u} is not installed, so not enabled");
    }
    if !report.dry_run {
        if opts.prefixed {
            tracing::info!(
                "{host}: under --root nothing is restarted ({})",
                report.restarted.join(" ")
            );
        } else if !report.restarted.is_empty() {
            tracing::info!("{host}: restarted {}", report.restarted.join(" "));
        }
        tracing::info!("{host}: `chbuild rollback {host}` puts the previous files back");
    }
    Ok(())
}

pub fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<()> {
    let report = crate::deploy::controller::rollback(&args.root, prefixed(&args.root))?;
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.restored {
            tracing::info!("restored /{f}");
        }
        for f in &report.removed {
            tracing::info!("removed /{f}");
        }
    }
    Ok(())
}

/// The profile with its k3s bundle in the store, when the controller
/// runs k3s from one (the store is opened only then).
fn with_k3s_bundle(cli: &Cli, p: &Profile) -> Result<Profile> {
    if p.features.k3s_bundle.is_none() || p.controller_plan().k3s_role.is_none() {
        return Ok(p.clone());
    }
    super::commands::store(cli)?.with_k3s_bundle(p)
}

pub fn image(cli: &Cli, p: &Profile, args: &ImageArgs) -> Result<()> {
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| crate::artifact::default_output_dir(p));
    let p = &with_k3s_bundle(cli, p)?;
    let report = crate::artifact::controller::image(p, &out, args.format.into())?;
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

pub fn write_plan(o: &mut impl Write, plan: &ControllerNodePlan) -> Result<()> {
    writeln!(o, "  {}", crate::deploy::controller::describe(plan))?;
    for part in &plan.slurm_partitions {
        writeln!(
            o,
            "  slurm partition {}{}: {}",
            part.name,
            if part.default { " (default)" } else { "" },
            part.nodes.join(",")
        )?;
    }
    for h in &plan.ssh_hosts {
        writeln!(
            o,
            "  ssh {} -> {}@{}{}",
            h.patterns.join(" "),
            h.user,
            h.address,
            h.proxy_jump
                .as_ref()
                .map(|j| format!(" via {j}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}
