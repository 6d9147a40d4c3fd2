//! The controller's files: the part of `clusterhat` chbuild owns. The
//! plan decides which files apply; their text is the templates under
//! `overlays/roles/controller/` (and the slurm role's, so `slurm.conf` is
//! the nodes' file byte for byte); owners and modes come from that
//! directory's `_meta.toml`, as names, resolved only where the files land
//! (the controller's own `/etc/passwd`).
//!
//! ClusterCTRL's own files stay untouched: the exports chbuild adds go to
//! `/etc/exports.d/`, never `/etc/exports`, which holds the Zeros' roots.

use super::render_template;
use crate::overlay::{self, Meta, META_FILE};
use crate::profile::controller::ControllerNodePlan;
use crate::profile::Profile;
use crate::secrets::Secrets;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

const ROLE: &str = "controller";
/// Stands for the admin user's name in template paths.
const USER_DIR: &str = "_user_";

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

/// Variables the controller templates see: the plan plus the values that
/// come from the secrets directory (never printed by `check`).
#[derive(Serialize)]
struct Vars<'a> {
    #[serde(flatten)]
    plan: &'a ControllerNodePlan,
    known_hosts: String,
    k3s_token: &'a str,
    ssh_known_hosts_file: &'a str,
}

/// The known_hosts file the controller's SSH config names.
pub const KNOWN_HOSTS: &str = "home/_user_/.ssh/known_hosts.chbuild";
const SSH_CONFIG: &str = "home/_user_/.ssh/config";

struct Builder<'a> {
    overlays_dir: &'a Path,
    meta: Meta,
    vars: Vars<'a>,
    ctx: serde_json::Value,
    user: String,
    out: Vec<Owned>,
}

impl Builder<'_> {
    fn attrs(&self, key: &str, dir: bool) -> Result<(u32, String, String)> {
        let attr = if dir {
            self.meta.dirs.get(key)
        } else {
            self.meta.files.get(key)
        }
        .cloned()
        .unwrap_or_default();
        let d = &self.meta.defaults;
        let mode = attr.mode.unwrap_or(if dir {
            d.dir_mode.clone()
        } else {
            d.file_mode.clone()
        });
        let what = format!("overlays/roles/{ROLE}/{META_FILE}: {key}");
        let text = |s: &str| -> Result<String> {
            overlay::render(&what, s, &self.ctx).with_context(|| what.clone())
        };
        Ok((
            overlay::parse_mode(&mode, &what)?,
            text(attr.owner.as_deref().unwrap_or(&d.owner))?,
            text(attr.group.as_deref().unwrap_or(&d.group))?,
        ))
    }

    fn target(&self, key: &str) -> String {
        key.replace(USER_DIR, &self.user)
    }

    /// A file rendered from the template at `key` (a tree path, `_user_`
    /// for the admin's name), written at `target` or the key's own path.
    fn template(
        &mut self,
        role: &str,
        key: &str,
        target: Option<String>,
        restarts: &[&str],
    ) -> Result<()> {
        let text = render_template(self.overlays_dir, role, key, &self.vars)?;
        let (mode, owner, group) = self.attrs(key, false)?;
        let path = target.unwrap_or_else(|| self.target(key));
        self.out.push(Owned {
            path,
            content: Some(text.into_bytes()),
            mode,
            owner,
            group,
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        });
        Ok(())
    }

    fn data(&mut self, key: &str, data: Vec<u8>, restarts: &[&str]) -> Result<()> {
        let (mode, owner, group) = self.attrs(key, false)?;
        self.out.push(Owned {
            path: self.target(key),
            content: Some(data),
            mode,
            owner,
            group,
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        });
        Ok(())
    }

    fn dir(&mut self, key: &str) -> Result<()> {
        let (mode, owner, group) = self.attrs(key, true)?;
        self.out.push(Owned {
            path: self.target(key),
            content: None,
            mode,
            owner,
            group,
            restarts: vec![],
        });
        Ok(())
    }
}

/// Every file and directory chbuild owns on the controller, in the order
/// they are put in place (directories before what they hold).
pub fn owned_files(
    profile: &Profile,
    plan: &ControllerNodePlan,
    secrets: &Secrets,
    overlays_dir: &Path,
) -> Result<Vec<Owned>> {
    let meta_path = overlays_dir.join("roles").join(ROLE).join(META_FILE);
    let meta: Meta = toml::from_str(
        &std::fs::read_to_string(&meta_path)
            .with_context(|| format!("reading {}", meta_path.display()))?,
    )
    .with_context(|| format!("parsing {}", meta_path.display()))?;
    let vars = Vars {
        plan,
        known_hosts: super::known_hosts(profile, secrets)?,
        k3s_token: &secrets.k3s_token,
        ssh_known_hosts_file: "~/.ssh/known_hosts.chbuild",
    };
    let ctx = serde_json::to_value(&vars).context("serializing the controller plan")?;
    let mut b = Builder {
        overlays_dir,
        meta,
        vars,
        ctx,
        user: plan.user.name.clone(),
        out: Vec::new(),
    };

    b.template(ROLE, "etc/hosts", None, &[])?;
    b.template(ROLE, "etc/ssh/ssh_known_hosts", None, &[])?;
    b.dir("home/_user_/.ssh")?;
    b.template(ROLE, SSH_CONFIG, None, &[])?;
    b.template(ROLE, KNOWN_HOSTS, None, &[])?;

    let mut slurm_units = vec!["slurmctld.service"];
    if plan.slurm {
        slurm_units.push("slurmd.service");
    }
    if plan.munge {
        b.dir("etc/munge")?;
        let mut units = vec!["munge.service"];
        units.extend(&slurm_units);
        b.data(
            "etc/munge/munge.key",
            secrets.munge_key.clone(),
            if plan.slurmctld { &units } else { &units[..1] },
        )?;
    }
    if plan.slurmctld {
        for f in [super::slurm::CONF, super::slurm::CGROUP] {
            b.template("slurm", f, None, &slurm_units)?;
        }
        b.dir("var/lib/slurm/slurmctld")?;
        b.dir("var/log/slurm")?;
    }
    match plan.nfs_role.as_deref() {
        Some("server") => {
            // Owned by the user: with root_squash, root on a client cannot
            // write there.
            b.out.push(Owned {
                path: plan.nfs_export_path.trim_matches('/').to_string(),
                content: None,
                mode: 0o755,
                owner: plan.user.name.clone(),
                group: plan.user.name.clone(),
                restarts: vec![],
            });
            b.template(
                ROLE,
                "etc/exports.d/chbuild.exports",
                None,
                &["nfs-server.service"],
            )?;
        }
        Some(_) => {
            let unit = super::escape_path(&plan.nfs_mount_point);
            for ext in ["mount", "automount"] {
                let key = format!("etc/systemd/system/nfs-share.{ext}");
                let target = format!("etc/systemd/system/{unit}.{ext}");
                b.template(ROLE, &key, Some(target), &[&format!("{unit}.automount")])?;
            }
        }
        None => {}
    }
    if let Some(role) = &plan.k3s_role {
        b.template(
            ROLE,
            "etc/rancher/k3s/config.yaml",
            None,
            &[super::k3s::unit_name(role)],
        )?;
    }
    Ok(b.out)
}

/// `ssh_config` for the admin's machine on the LAN: the same template with
/// the blocks seen from the LAN (the Zeros through the controller) and the
/// cluster's known_hosts copied to `~/.ssh/known_hosts.<cluster>`.
pub fn lan_ssh_config(plan: &ControllerNodePlan, overlays_dir: &Path) -> Result<String> {
    #[derive(Serialize)]
    struct LanVars<'a> {
        cluster: &'a str,
        ssh_hosts: &'a [crate::profile::controller::SshHost],
        ssh_known_hosts_file: String,
    }
    render_template(
        overlays_dir,
        ROLE,
        SSH_CONFIG,
        &LanVars {
            cluster: &plan.cluster,
            ssh_hosts: &plan.ssh_hosts_lan,
            ssh_known_hosts_file: format!("~/.ssh/known_hosts.{}", plan.cluster),
        },
    )
}
