//! k3s: the server on the profile's `k3s_server`, agents on the
//! `containers` group, all with the token from the secrets directory. With
//! `k3s_airgap_dir` the binary and the images tarball are baked in with
//! chbuild's own unit; otherwise the first-boot unit runs the install
//! script, which reads the same config.yaml.

use super::{enable_unit, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::NodePlan;
use anyhow::{bail, Context, Result};

pub const CONFIG: &str = "etc/rancher/k3s/config.yaml";

fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

pub fn config_yaml(plan: &NodePlan, role: &str, token: &str) -> String {
    let mut s = String::from("# Written by chbuild from the profile. Holds the cluster token.\n");
    if role == "agent" {
        if let Some(url) = &plan.k3s_server_url {
            s.push_str(&format!("server: {}\n", quote(url)));
        }
    }
    s.push_str(&format!("token: {}\n", quote(token)));
    s.push_str(&format!("node-name: {}\n", quote(&plan.hostname)));
    s.push_str(&format!("node-ip: {}\n", quote(&plan.address.to_string())));
    if role == "server" {
        s.push_str("write-kubeconfig-mode: \"0600\"\ntls-san:\n");
        s.push_str(&format!("  - {}\n", quote(&plan.hostname)));
        s.push_str(&format!("  - {}\n", quote(&plan.address.to_string())));
    }
    s
}

/// The unit k3s's install script would write, for the air-gapped case.
pub fn unit(role: &str) -> String {
    let (desc, ty) = if role == "server" {
        ("server", "notify")
    } else {
        ("agent", "exec")
    };
    format!(
        "[Unit]\n\
         Description=Lightweight Kubernetes ({desc}), baked by chbuild\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type={ty}\n\
         KillMode=process\n\
         Delegate=yes\n\
         LimitNOFILE=1048576\n\
         LimitNPROC=infinity\n\
         LimitCORE=infinity\n\
         TasksMax=infinity\n\
         TimeoutStartSec=0\n\
         Restart=always\n\
         RestartSec=5s\n\
         ExecStartPre=-/usr/sbin/modprobe br_netfilter\n\
         ExecStartPre=-/usr/sbin/modprobe overlay\n\
         ExecStart=/usr/local/bin/k3s {role}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

pub fn unit_name(role: &str) -> &'static str {
    if role == "server" {
        "k3s.service"
    } else {
        "k3s-agent.service"
    }
}

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    let Some(role) = ctx.plan.k3s_role.as_deref() else {
        return Ok(());
    };
    w.write(
        CONFIG,
        config_yaml(ctx.plan, role, &ctx.secrets.k3s_token).as_bytes(),
        0o600,
        Owner::ROOT,
    )?;
    match ctx.profile.features.k3s_airgap_dir.as_deref() {
        Some(dir) => {
            let bin = dir.join("k3s");
            if !bin.is_file() {
                bail!(
                    "the k3s air-gap bundle {} has no `k3s` binary",
                    dir.display()
                );
            }
            w.copy_from("usr/local/bin/k3s", &bin, 0o755, Owner::ROOT)?;
            let mut images: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("k3s-airgap-images-"))
                .collect();
            images.sort();
            if images.is_empty() {
                bail!(
                    "the k3s air-gap bundle {} has no k3s-airgap-images-<arch>.tar[.zst]",
                    dir.display()
                );
            }
            for n in images {
                w.copy_from(
                    format!("var/lib/rancher/k3s/agent/images/{n}"),
                    &dir.join(&n),
                    0o644,
                    Owner::ROOT,
                )?;
            }
            let name = unit_name(role);
            w.write(
                format!("etc/systemd/system/{name}"),
                unit(role).as_bytes(),
                0o644,
                Owner::ROOT,
            )?;
            enable_unit(w, name, "multi-user.target")?;
        }
        None => {
            pending.packages.push("curl".into());
            pending.packages.push("ca-certificates".into());
            pending.k3s_install = Some(role.to_string());
            pending.k3s_version = ctx.profile.features.k3s_version.clone();
        }
    }
    Ok(())
}
