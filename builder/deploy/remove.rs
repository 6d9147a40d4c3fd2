//! The verbs that act on deployed trees rather than on new builds:
//! `deploy --uninstall` and `rollback`.

use super::*;

pub(super) fn uninstall(
    args: &DeployOptions,
    plans: &[NodePlan],
    nfs: &Path,
    on: &mut dyn FnMut(Event),
) -> Result<Vec<NodeReport>> {
    if !nfs.is_dir() {
        tracing::info!("{} does not exist: nothing to uninstall", nfs.display());
        return Ok(Vec::new());
    }
    let _lock = if args.dry_run {
        None
    } else {
        Some(lock::acquire(nfs)?)
    };
    let d = NfsDir::open(nfs)?;
    if !args.dry_run {
        recover_all(&d)?;
    }
    let power = power_status(!args.no_power && !args.dry_run)?;
    let mut reports = Vec::new();
    for plan in plans {
        let ub = plan.usbboot.as_ref().expect("usbboot plans");
        let p = ub.pname.as_str();
        let prev = format!("{p}.prev");
        let names: Vec<&str> = [p, prev.as_str()]
            .into_iter()
            .filter(|n| d.exists(n))
            .collect();
        let was_on = power
            .as_ref()
            .and_then(|s| s.get(&ub.slot))
            .copied()
            .unwrap_or(false);
        let mut steps = Vec::new();
        if was_on && !names.is_empty() {
            steps.push(format!("power off {p} (it is on)"));
        }
        for n in &names {
            steps.push(format!("remove {n}"));
        }
        let previous = deployed_build(&d.join(p));
        if args.dry_run {
            on(Event::Planned {
                node: &plan.name,
                pname: p,
                action: "uninstalled",
                steps: &steps,
            });
        } else {
            if was_on && !names.is_empty() {
                if args.no_power {
                    bail!("{p} is powered on: power it off first or drop --no-power");
                }
                clusterctrl::power(p, false)?;
            }
            for n in &names {
                d.discard(n)?;
            }
            tracing::info!(
                "{} ({p}): uninstalled ({})",
                plan.name,
                if names.is_empty() {
                    "nothing was there".to_string()
                } else {
                    names.join(", ")
                }
            );
        }
        reports.push(NodeReport {
            node: plan.name.clone(),
            slot: ub.slot,
            action: if args.dry_run {
                "would-uninstall".into()
            } else {
                "uninstalled".into()
            },
            build: None,
            previous,
            usbboot_init: None,
            steps,
            diff: None,
        });
    }
    Ok(reports)
}

pub fn rollback(profile: &Profile, args: &RollbackOptions) -> Result<()> {
    let plans = usbboot_plans(profile, &args.nodes)?;
    let nfs = args.root.join(NFS_DIR);
    if !nfs.is_dir() {
        bail!("{} does not exist: nothing was deployed", nfs.display());
    }
    let _lock = lock::acquire(&nfs)?;
    let d = NfsDir::open(&nfs)?;
    recover_all(&d)?;
    for plan in &plans {
        let p = &plan.usbboot.as_ref().expect("usbboot plans").pname;
        let prev = format!("{p}.prev");
        if !d.exists(p) || !d.exists(&prev) {
            bail!(
                "{} ({p}) has no previous tree {} to go back to",
                plan.name,
                d.join(&prev).display()
            );
        }
    }
    if !args.no_power {
        crate::tools::CLUSTERCTRL.require()?;
    }
    let power = power_status(!args.no_power)?;
    for plan in &plans {
        let ub = plan.usbboot.as_ref().expect("usbboot plans");
        let p = ub.pname.as_str();
        let prev = format!("{p}.prev");
        let was_on = power
            .as_ref()
            .and_then(|s| s.get(&ub.slot))
            .copied()
            .unwrap_or(false);
        if was_on {
            if args.no_power {
                bail!("{p} is powered on: a running Zero is never swapped underneath; drop --no-power");
            }
            clusterctrl::power(p, false)?;
        }
        let from = deployed_build(&d.join(p));
        d.exchange(p, &prev)?;
        d.sync()?;
        let to = deployed_build(&d.join(p));
        tracing::info!(
            "{} ({p}): rolled back from build {} to build {} (run rollback again to undo)",
            plan.name,
            from.as_deref().map(short).unwrap_or("?"),
            to.as_deref().map(short).unwrap_or("?")
        );
        if was_on {
            clusterctrl::power(p, true)?;
            tracing::info!("{p}: powered on again");
        }
    }
    Ok(())
}
