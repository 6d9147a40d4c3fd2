//! `check` and `show`: the plan of every node, or every variable of one.

use super::commands::load;
use super::Cli;
use crate::error::UsageError;
use crate::profile::{self, plan::NodePlan, Profile};
use anyhow::Result;
use std::io::Write;

pub fn check(cli: &Cli, nodes: &[String]) -> Result<()> {
    let p = load(cli)?;
    let names = super::commands::select(&p, nodes)?;
    let mut plans: Vec<NodePlan> = p
        .nodes
        .iter()
        .filter(|n| names.contains(&n.name))
        .map(|n| p.plan(n))
        .collect();
    // Only the layers that exist apply; the plan lists every candidate.
    let overlays = crate::overlay::Overlays::builtin()?;
    for pl in &mut plans {
        pl.overlays = crate::overlay::layers(pl, &overlays, p.overlay_dir.as_deref())?
            .into_iter()
            .map(|l| l.name)
            .collect();
    }
    if cli.global.quiet && !cli.global.json {
        return Ok(());
    }
    if cli.global.json {
        let v = serde_json::json!({
            "profile": p.file,
            "cluster": p.name,
            "base": p.base,
            "secrets_dir": p.secrets_dir,
            "controller": p.controller_plan(),
            "controller_artifacts": p.controller.base.as_ref().map(|_| {
                vec![format!("{}.img (+ .bmap, .sha256)", p.controller.hostname)]
            }).unwrap_or_default(),
            "nodes": plans.iter().map(|pl| serde_json::json!({
                "name": pl.name,
                "hostname": pl.hostname,
                "kind": pl.kind,
                "model": pl.model,
                "address": pl.address,
                "groups": pl.groups,
                "features": features(pl),
                "needs_network": pl.needs_network(),
                "overlays": pl.overlays,
                "packages": pl.packages,
                "firstboot_installs": pl.firstboot_packages,
                "artifacts": artifacts(pl),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let mut o = std::io::stdout().lock();
    writeln!(
        o,
        "profile {} (cluster {}): valid",
        p.file.display(),
        p.name
    )?;
    writeln!(o, "base: {}", describe_base(&p))?;
    writeln!(
        o,
        "controller: {} ({}) lan {} zeros {}",
        p.controller.hostname,
        p.controller.aliases.join(", "),
        p.controller.lan_address,
        p.controller.zero_address
    )?;
    super::controller::write_plan(&mut o, &p.controller_plan())?;
    if p.controller.base.is_some() {
        writeln!(
            o,
            "  artifacts: {}.img (+ .bmap, .sha256) from [controller.base]",
            p.controller.hostname
        )?;
    }
    for pl in &plans {
        writeln!(
            o,
            "\n{} [{}] {} {} hostname={} groups={}",
            pl.name,
            serde_json::to_value(pl.kind)?.as_str().unwrap_or(""),
            pl.model,
            pl.address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "dhcp".into()),
            pl.hostname,
            pl.groups.join(",")
        )?;
        writeln!(o, "  features:  {}", features(pl).join(", "))?;
        if let Some(l) = &pl.lan {
            let how = match l.address {
                Some(a) => format!(
                    "{a}/{} gateway {} dns {}",
                    l.prefix,
                    l.gateway,
                    l.dns
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
                None => "dhcp".into(),
            };
            writeln!(o, "  lan:       {} {how}", l.interface)?;
        }
        let overlays = if pl.overlays.is_empty() {
            "(none exist)".to_string()
        } else {
            pl.overlays.join(" < ")
        };
        writeln!(o, "  overlays:  {overlays}")?;
        writeln!(
            o,
            "  packages:  {} (baked into the image)",
            pl.packages.join(" ")
        )?;
        writeln!(o, "  firstboot: {}", firstboot(pl))?;
        if let Some(d) = &pl.k3s_download {
            writeln!(
                o,
                "  network:   first boot downloads k3s {} (sha256 {}): no air-gap bundle",
                d.version, d.sha256
            )?;
        }
        writeln!(o, "  artifacts: {}", artifacts(pl).join(", "))?;
    }
    Ok(())
}

/// What the node's first boot installs over the network.
fn firstboot(pl: &NodePlan) -> String {
    if pl.firstboot_packages.is_empty() {
        "nothing to install".into()
    } else {
        format!(
            "installs {} over the network (packages.firstboot)",
            pl.firstboot_packages.join(" ")
        )
    }
}

fn describe_base(p: &Profile) -> String {
    match &p.base.source {
        profile::BaseSource::Archive { path, .. } => format!("archive {}", path.display()),
        profile::BaseSource::Url { url, checksum } => match checksum {
            Some(c) => format!("{url} ({c})"),
            None => format!("{url} (UNVERIFIED: no checksum, the download is not checked)"),
        },
        profile::BaseSource::Debian(r) => format!(
            "Debian {} {} {} via mmdebstrap, {} packages",
            r.suite,
            r.architecture,
            r.variant,
            r.packages.len()
        ),
    }
}

fn features(pl: &NodePlan) -> Vec<String> {
    let mut f = vec![];
    if pl.munge {
        f.push("munge".to_string());
    }
    if pl.slurm {
        f.push("slurm".into());
    }
    if pl.docker {
        f.push("docker".into());
    }
    if let Some(r) = &pl.k3s_role {
        f.push(format!("k3s-{r}"));
    }
    if let Some(r) = &pl.nfs_role {
        f.push(format!("nfs-{r}"));
    }
    if let Some(u) = &pl.usbboot {
        f.push(format!("usbboot {}", u.pname));
    }
    if pl.zero_route.is_some() {
        f.push("zero-route".into());
    }
    f
}

fn artifacts(pl: &NodePlan) -> Vec<String> {
    let mut a = vec![
        format!("{}/ (tree)", pl.name),
        format!("{}.tar.zst", pl.name),
    ];
    if pl.kind == profile::NodeKind::Sd {
        a.push(format!("{}.img (+ .bmap, .sha256)", pl.name));
    }
    a
}

pub fn show(cli: &Cli, node: &str) -> Result<()> {
    let p = load(cli)?;
    // The keys a node gets include those of ssh_authorized_keys_file.
    let keys = match crate::secrets::authorized_keys(&p) {
        Ok(keys) => Some(keys),
        Err(e) => {
            tracing::warn!("{e:#}");
            None
        }
    };
    let v = if p.controller.is_named(node) {
        // The controller is shown like a node, from its own plan.
        let mut plan = p.controller_plan();
        if let Some(keys) = keys {
            plan.user.ssh_authorized_keys = keys;
        }
        serde_json::to_value(&plan)?
    } else {
        let n = p.node(node).ok_or_else(|| {
            let names: Vec<&str> = p.nodes.iter().map(|n| n.name.as_str()).collect();
            UsageError(format!(
                "unknown node `{node}` in {} (its nodes: {}; the controller: {})",
                p.file.display(),
                names.join(", "),
                p.controller.hostname
            ))
        })?;
        let mut plan = p.plan(n);
        if let Some(keys) = keys {
            plan.user.ssh_authorized_keys = keys;
        }
        serde_json::to_value(&plan)?
    };
    if cli.global.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut o = std::io::stdout().lock();
        flatten(&mut o, "", &v)?;
    }
    Ok(())
}

/// Print a JSON value as `key.sub = value` lines, like an inventory dump.
fn flatten(o: &mut impl Write, prefix: &str, v: &serde_json::Value) -> Result<()> {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(o, &key, x)?;
            }
        }
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object()) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            writeln!(o, "{prefix} = [{}]", items.join(", "))?;
        }
        serde_json::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                flatten(o, &format!("{prefix}[{i}]"), x)?;
            }
        }
        serde_json::Value::String(s) => writeln!(o, "{prefix} = {s}")?,
        other => writeln!(o, "{prefix} = {other}")?,
    }
    Ok(())
}
