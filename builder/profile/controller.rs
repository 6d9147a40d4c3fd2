//! The controller's plan: what chbuild owns on `clusterhat`, resolved from
//! the profile's `[controller]` and the nodes. `chbuild check` prints it,
//! `chbuild image clusterhat` and `chbuild deploy --controller` carry it
//! out. Its Slurm fields match every node's, so the one `slurm.conf`
//! template renders the same file for the controller and the nodes.

use super::plan::{
    slurm_layout, ControllerPlan, HostEntry, SlurmNode, SlurmPartition, UserPlan,
};
use super::{NodeKind, Profile};
use serde::Serialize;
use std::net::Ipv4Addr;

/// One `Host` block of the admin user's `~/.ssh/config`.
#[derive(Debug, Clone, Serialize)]
pub struct SshHost {
    /// The node's inventory name first, then its host name (when
    /// different): `ssh z1` and `ssh <hostname>` both match.
    pub patterns: Vec<String>,
    pub address: Ipv4Addr,
    pub user: String,
    /// The `Host` to jump through (the controller, for the Zeros seen from
    /// the LAN).
    pub proxy_jump: Option<String>,
    /// Checked against the cluster's known_hosts (the nodes; not the
    /// controller, whose key is its own).
    pub cluster_key: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerNodePlan {
    pub cluster: String,
    pub hostname: String,
    pub aliases: Vec<String>,
    pub address: Ipv4Addr,
    pub timezone: String,
    pub user: UserPlan,
    pub controller: ControllerPlan,
    pub hosts: Vec<HostEntry>,
    pub munge: bool,
    /// Runs slurmctld (with `features.slurm`).
    pub slurmctld: bool,
    /// Also a compute node (slurmd) in its own partition.
    pub slurm: bool,
    pub slurm_nodes: Vec<SlurmNode>,
    pub slurm_partitions: Vec<SlurmPartition>,
    /// `server`, `client`, or none.
    pub nfs_role: Option<String>,
    pub nfs_server_address: Option<Ipv4Addr>,
    pub nfs_export_path: String,
    pub nfs_mount_point: String,
    pub nfs_export_networks: Vec<String>,
    /// `server`, `agent`, or none.
    pub k3s_role: Option<String>,
    pub k3s_server_url: Option<String>,
    /// `~/.ssh/config` on the controller: every node, directly.
    pub ssh_hosts: Vec<SshHost>,
    /// `ssh_config` beside the artifacts, for the admin's machine on the
    /// LAN: the controller, and the Zeros through it.
    pub ssh_hosts_lan: Vec<SshHost>,
    /// Debian packages the plan needs on the controller.
    pub packages: Vec<String>,
    /// Units enabled (and started) on the controller.
    pub units: Vec<String>,
}

impl ControllerNodePlan {
    pub fn new(p: &Profile) -> ControllerNodePlan {
        let c = &p.controller;
        let f = &p.features;
        let (slurm_nodes, slurm_partitions) = slurm_layout(p);
        let slurmctld = f.slurm;
        let slurm = f.slurm && c.slurm_compute;
        let munge = slurmctld;

        let mut hosts = vec![HostEntry {
            address: c.lan_address,
            names: std::iter::once(c.hostname.clone())
                .chain(c.aliases.iter().cloned())
                .collect(),
        }];
        for n in &p.nodes {
            let mut names = vec![n.hostname.clone()];
            if n.name != n.hostname {
                names.push(n.name.clone());
            }
            hosts.push(HostEntry {
                address: n.address,
                names,
            });
        }
        if let Some(d) = &p.domain {
            for h in &mut hosts {
                let fq = format!("{}.{d}", h.names[0]);
                h.names.insert(0, fq);
            }
        }

        let ssh_hosts = host_blocks(p, false);
        let ssh_hosts_lan = host_blocks(p, true);

        let is_server = |s: &Option<String>| s.as_deref() == Some(c.hostname.as_str());
        let nfs_role = match &f.nfs_server {
            None => None,
            Some(_) if is_server(&f.nfs_server) => Some("server".to_string()),
            Some(_) => Some("client".to_string()),
        };
        let k3s_role = if !f.k3s {
            None
        } else if is_server(&f.k3s_server) {
            Some("server".to_string())
        } else if c.k3s_agent {
            Some("agent".to_string())
        } else {
            None
        };
        let k3s_server_url = f
            .k3s_server
            .as_ref()
            .filter(|_| k3s_role.as_deref() == Some("agent"))
            .and_then(|s| p.server_address(s, NodeKind::Sd))
            .map(|a| format!("https://{a}:6443"));

        let mut packages = Vec::new();
        let mut units = Vec::new();
        if munge {
            packages.push("munge");
            units.push("munge.service".to_string());
        }
        if slurmctld {
            packages.push("slurmctld");
            units.push("slurmctld.service".to_string());
        }
        if slurm {
            packages.push("slurmd");
            units.push("slurmd.service".to_string());
        }
        match nfs_role.as_deref() {
            Some("server") => {
                packages.push("nfs-kernel-server");
                units.push("nfs-server.service".to_string());
            }
            Some(_) => {
                packages.push("nfs-common");
                units.push(format!(
                    "{}.automount",
                    crate::roles::escape_path(&f.nfs_mount_point)
                ));
            }
            None => {}
        }
        packages.push("openssh-client");
        if let Some(role) = &k3s_role {
            units.push(crate::roles::k3s::unit_name(role).to_string());
        }

        ControllerNodePlan {
            cluster: p.name.clone(),
            hostname: c.hostname.clone(),
            aliases: c.aliases.clone(),
            address: c.lan_address,
            timezone: p.timezone.clone(),
            user: UserPlan {
                name: p.user.name.clone(),
                uid: p.user.uid,
                sudo: p.user.sudo,
                ssh_key_only: p.user.ssh_key_only,
                permit_root_login: p.user.permit_root_login,
                ssh_authorized_keys: p.user.ssh_authorized_keys.clone(),
            },
            controller: ControllerPlan {
                hostname: c.hostname.clone(),
                aliases: c.aliases.clone(),
                lan_address: c.lan_address,
                zero_address: c.zero_address,
                nfs_address: c.nfs_address,
            },
            hosts,
            munge,
            slurmctld,
            slurm,
            slurm_nodes,
            slurm_partitions,
            nfs_server_address: f
                .nfs_server
                .as_ref()
                .filter(|_| nfs_role.as_deref() == Some("client"))
                .and_then(|s| p.server_address(s, NodeKind::Sd)),
            nfs_role,
            nfs_export_path: f.nfs_export_path.clone(),
            nfs_mount_point: f.nfs_mount_point.clone(),
            nfs_export_networks: vec![p.lan_network.to_string(), p.zero_network.to_string()],
            k3s_role,
            k3s_server_url,
            ssh_hosts,
            ssh_hosts_lan,
            packages: packages.into_iter().map(String::from).collect(),
            units,
        }
    }
}

/// One `Host` block per node, seen from the controller (every network is
/// its own) or from the LAN (the Zeros' network sits behind the
/// controller, so they get `ProxyJump` through its block).
fn host_blocks(p: &Profile, from_lan: bool) -> Vec<SshHost> {
    let c = &p.controller;
    let mut out = Vec::new();
    if from_lan {
        out.push(SshHost {
            patterns: std::iter::once(c.hostname.clone())
                .chain(c.aliases.iter().cloned())
                .collect(),
            address: c.lan_address,
            user: p.user.name.clone(),
            proxy_jump: None,
            cluster_key: false,
        });
    }
    for n in &p.nodes {
        let mut patterns = vec![n.name.clone()];
        if n.hostname != n.name {
            patterns.push(n.hostname.clone());
        }
        out.push(SshHost {
            patterns,
            address: n.address,
            user: p.user.name.clone(),
            proxy_jump: (from_lan && !p.lan_network.contains(&n.address))
                .then(|| c.hostname.clone()),
            cluster_key: true,
        });
    }
    out
}

impl Profile {
    pub fn controller_plan(&self) -> ControllerNodePlan {
        ControllerNodePlan::new(self)
    }
}
