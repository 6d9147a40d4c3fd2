//! The controller's files: the part of `clusterhat` chbuild owns. The plan
//! decides which role layers apply; their text is the templates under
//! `overlays/roles/` (`controller`, `controller_exports`, and the nodes'
//! own `slurm`, `nfs_client` and `k3s`, so `slurm.conf` is the nodes' file
//! byte for byte). Owners are names, resolved only where the files land
//! (the controller's own `/etc/passwd`).
//!
//! ClusterCTRL's own files stay untouched: the export chbuild adds goes to
//! `/etc/exports.d/`, never `/etc/exports`, which holds the Zeros' roots.

use super::accounts::Accounts;
use crate::overlay::write::{Owner, TreeWriter};
use crate::overlay::{self, Layer, Overlays};
use crate::profile::controller::ControllerNodePlan;
use crate::profile::Profile;
use crate::secrets::Secrets;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;

/// One file or directory chbuild owns on the controller.
#[derive(Debug, Clone, Serialize)]
pub struct Owned {
    /// Path relative to the root, e.g. `etc/slurm/slurm.conf`.
    pub path: String,
    /// None for a directory (created when missing, never emptied).
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
    pub mode: u32,
    pub owner: String,
    pub group: String,
    /// Units to restart when this file changes.
    pub restarts: Vec<String>,
}

impl Owned {
    pub fn is_dir(&self) -> bool {
        self.content.is_none()
    }
}

/// The known_hosts file the controller's SSH config names.
const KNOWN_HOSTS_FILE: &str = "~/.ssh/known_hosts.chbuild";

/// Template variables: the plan at the top level (as a node's are), the
/// secrets the templates may read, and each role layer's values.
fn context(
    plan: &ControllerNodePlan,
    secrets: &Secrets,
    known_hosts: &str,
    ssh_hosts: &[crate::profile::controller::SshHost],
    known_hosts_file: &str,
) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(plan).context("serializing the controller plan")?;
    let obj = v
        .as_object_mut()
        .context("the controller plan is not a map")?;
    obj.insert("chbuild_version".into(), env!("CARGO_PKG_VERSION").into());
    obj.insert(
        overlay::SECRETS_NAMESPACE.into(),
        json!({ "k3s_token": secrets.k3s_token }),
    );
    let k3s_role = plan.k3s_role.as_deref().unwrap_or("agent");
    obj.insert(
        "roles".into(),
        json!({
            "controller": {
                "known_hosts": known_hosts,
                "known_hosts_file": known_hosts_file,
                "ssh_hosts": ssh_hosts,
            },
            "slurm": super::slurm::values(&plan.cluster, &plan.slurm_partitions),
            "nfs_client": { "unit": super::escape_path(&plan.nfs_mount_point) },
            "k3s": super::k3s::values(k3s_role),
        }),
    );
    Ok(v)
}

fn layer(overlays: &Overlays, name: &str) -> Result<Layer> {
    overlays
        .layer(name)?
        .with_context(|| format!("the overlays have no layer {name}"))
}

/// Every file and directory chbuild owns on the controller, in the order
/// they are put in place (directories before what they hold).
pub fn owned_files(
    profile: &Profile,
    plan: &ControllerNodePlan,
    secrets: &Secrets,
    overlays: &Overlays,
) -> Result<Vec<Owned>> {
    let known_hosts = super::known_hosts(profile, secrets)?;
    let ctx = context(
        plan,
        secrets,
        &known_hosts,
        &plan.ssh_hosts,
        KNOWN_HOSTS_FILE,
    )?;
    let user = &plan.user.name;
    let mut out = Vec::new();
    let dir = |path: &str, mode: u32, owner: &str| Owned {
        path: path.to_string(),
        content: None,
        mode,
        owner: owner.to_string(),
        group: owner.to_string(),
        restarts: vec![],
    };
    out.push(dir(&format!("home/{user}/.ssh"), 0o700, user));
    if plan.munge {
        out.push(dir("etc/munge", 0o700, "munge"));
    }
    if plan.slurmctld {
        out.push(dir("var/lib/slurm/slurmctld", 0o755, "slurm"));
        out.push(dir("var/log/slurm", 0o755, "slurm"));
    }
    if plan.nfs_role.as_deref() == Some("server") {
        // Owned by the user: with root_squash, root on a client cannot
        // write there.
        out.push(dir(plan.nfs_export_path.trim_matches('/'), 0o755, user));
    }

    let mut slurm_units = vec!["slurmctld.service".to_string()];
    if plan.slurm {
        slurm_units.push("slurmd.service".into());
    }
    if plan.munge {
        let mut units = vec!["munge.service".to_string()];
        if plan.slurmctld {
            units.extend(slurm_units.iter().cloned());
        }
        out.push(Owned {
            path: super::munge::KEY.to_string(),
            content: Some(secrets.munge_key.clone()),
            mode: 0o400,
            owner: "munge".into(),
            group: "munge".into(),
            restarts: units,
        });
    }

    // Role layers, each with the units a change of its files restarts.
    let mut layers: Vec<(&str, Vec<String>)> = vec![("roles/controller", vec![])];
    if plan.slurmctld {
        layers.push(("roles/slurm", slurm_units));
    }
    match plan.nfs_role.as_deref() {
        Some("server") => layers.push((
            "roles/controller_exports",
            vec!["nfs-server.service".into()],
        )),
        Some(_) => layers.push((
            "roles/nfs_client",
            vec![format!(
                "{}.automount",
                super::escape_path(&plan.nfs_mount_point)
            )],
        )),
        None => {}
    }
    if let Some(role) = &plan.k3s_role {
        let unit = super::k3s::unit_name(role).to_string();
        layers.push(("roles/k3s", vec![unit.clone()]));
        // With an air-gap bundle the controller gets what a node gets: the
        // binary, the images and the unit; without one, only the config
        // (deploy reports the unit as not installed).
        if let Some(files) = super::k3s::bundle_files(&profile.features)? {
            for f in files {
                let content = std::fs::read(&f.source)
                    .with_context(|| format!("reading {}", f.source.display()))?;
                out.push(Owned {
                    path: f.path,
                    content: Some(content),
                    mode: f.mode,
                    owner: "root".into(),
                    group: "root".into(),
                    restarts: vec![unit.clone()],
                });
            }
            layers.push(("roles/k3s_unit", vec![unit]));
        }
    }
    for (name, restarts) in layers {
        let l = layer(overlays, name)?;
        for r in overlay::render_layers(&ctx, &[l])? {
            // A layer's directories only hold its files: they are created
            // when missing, never owned.
            let Some(content) = r.content else { continue };
            out.push(Owned {
                path: r.path.to_string_lossy().into_owned(),
                content: Some(content),
                mode: r.mode,
                owner: r.owner,
                group: r.group,
                restarts: restarts.clone(),
            });
        }
    }
    Ok(out)
}

/// The target a controller unit is enabled under.
pub fn unit_target(unit: &str) -> &'static str {
    if unit.ends_with(".automount") {
        "remote-fs.target"
    } else {
        "multi-user.target"
    }
}

/// The owned files baked into a controller card's tree (`chbuild sd
/// <controller>`), after the roles every SD node gets, and its units
/// enabled. An owner the base does not have yet stays root: the slurm
/// user comes with the slurmctld package at first boot, whose postinst
/// hands it its directories (munge's key is handed over by the first-boot
/// unit, as on the nodes). A unit not in the base yet is enabled by its
/// package when the first-boot unit installs it.
pub fn bake(
    profile: &Profile,
    secrets: &Secrets,
    overlays: &Overlays,
    tree: &std::path::Path,
) -> Result<()> {
    let plan = profile.controller_plan();
    let files = owned_files(profile, &plan, secrets, overlays)?;
    let mut w = TreeWriter::new(tree)?;
    let acc = Accounts::load(&w)?;
    for f in &files {
        let owner = acc.owner(&f.owner, &f.group).unwrap_or(Owner::ROOT);
        match &f.content {
            None => w.mkdir(&f.path, f.mode, owner)?,
            Some(d) => w.write(&f.path, d, f.mode, owner)?,
        }
    }
    for unit in &plan.units {
        super::enable_unit(&mut w, unit, unit_target(unit))?;
    }
    Ok(())
}

/// `ssh_config` for the admin's machine on the LAN: the controller's SSH
/// config template with the blocks seen from the LAN (the Zeros through
/// the controller) and the cluster's known_hosts copied to
/// `~/.ssh/known_hosts.<cluster>`.
pub fn lan_ssh_config(
    profile: &Profile,
    plan: &ControllerNodePlan,
    secrets: &Secrets,
    overlays: &Overlays,
) -> Result<String> {
    let known_hosts = super::known_hosts(profile, secrets)?;
    let ctx = context(
        plan,
        secrets,
        &known_hosts,
        &plan.ssh_hosts_lan,
        &format!("~/.ssh/known_hosts.{}", plan.cluster),
    )?;
    let config = format!("home/{}/.ssh/config", plan.user.name);
    overlay::render_layers(&ctx, &[layer(overlays, "roles/controller")?])?
        .into_iter()
        .find(|r| r.path.to_string_lossy() == config)
        .and_then(|r| r.content)
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .context("the controller layer has no .ssh/config template")
}
