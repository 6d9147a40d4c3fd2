//! The controller's plan: what chbuild owns on `clusterhat`, resolved from
//! the profile's `[controller]` and the nodes. `chbuild check` prints it,
//! `chbuild image clusterhat` and `chbuild deploy --controller` carry it
//! out. Its Slurm fields match every node's, so the one `slurm.conf`
//! template renders the same file for the controller and the nodes.

use super::plan::{
    cluster_hosts, slurm_layout, ControllerPlan, HostEntry, NodePlan, SlurmNode, SlurmPartition,
    UserPlan,
};
use super::{Node, NodeKind, Profile};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// One `Host` block of the admin user's `~/.ssh/config`.
#[derive(Debug, Clone, Serialize)]
pub struct SshHost {
    /// The node's inventory name first, then its host name (when
    /// different): `ssh z1` and `ssh <hostname>` both match.
    pub patterns: Vec<String>,
    /// `HostName`: the address, or the host name of a DHCP node.
    pub address: String,
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

        let hosts = cluster_hosts(p, c.lan_address);

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
            // Slurm's cgroup/v2 plugin asks systemd for its scope over D-Bus.
            packages.extend(["slurmd", "dbus"]);
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
            user: UserPlan::of(&p.user),
            controller: ControllerPlan::of(&p.controller),
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
            address: c.lan_address.to_string(),
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
            address: n.reach(),
            user: p.user.name.clone(),
            // A DHCP node is on the LAN (only SD nodes may use DHCP).
            proxy_jump: (from_lan && n.address.is_some_and(|a| !p.lan_network.contains(&a)))
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

    /// The controller as an SD node, for `chbuild sd <controller>` (None
    /// without `[controller.base]`): the roles every SD node gets (host
    /// name, hosts, users, SSH, munge key, Slurm's files), on the
    /// controller's own base. What only the controller has (slurmctld,
    /// its exports or mount, k3s, the SSH hub) are its owned files, baked
    /// on top; ClusterCTRL routes the Zeros itself, so no route to them.
    pub fn controller_sd_plan(&self) -> Option<NodePlan> {
        let c = &self.controller;
        let base = c.base.as_ref()?;
        let cp = self.controller_plan();
        let node = Node {
            name: c.hostname.clone(),
            kind: NodeKind::Sd,
            model: c.model,
            address: Some(c.lan_address),
            hostname: c.hostname.clone(),
            slot: None,
            groups: BTreeSet::new(),
            extra_packages: vec![],
            memory_mb: c.memory_mb,
            cpus: c.cpus,
            docker_override: Some(false),
            vars: BTreeMap::new(),
        };
        let mut plan = NodePlan::new(self, &node);
        plan.architecture = base.architecture;
        plan.boot_dir = base.boot_dir.clone();
        plan.hosts = cp.hosts;
        plan.munge = cp.munge;
        plan.slurm = cp.slurm;
        plan.zero_route = None;
        // ClusterCTRL's image configures its own interfaces (the Zeros'
        // bridges and NAT on top of the LAN), and then the network role
        // leaves them alone; on a base without ClusterCTRL it writes the
        // LAN interface and the Zeros' side itself (see roles::usbhost).
        plan.usbhost = Some(super::plan::UsbHostPlan::of(self));
        plan.nfs_role = None;
        plan.nfs_server_address = None;
        plan.k3s_role = None;
        plan.k3s_server_url = None;
        plan.k3s_airgap = false;
        plan.k3s_download = None;
        plan.docker = false;
        // Baked into the card like a node's packages, from the roles it
        // has after the changes above.
        plan.packages.clear();
        plan.package_origins.clear();
        super::plan::add_packages(&mut plan, self, &node);
        plan.add_packages("the controller's roles", &cp.packages);
        // It serves the Zeros' roots (ClusterCTRL's image has it already).
        if plan.usbhost.as_ref().is_some_and(|u| !u.links.is_empty()) {
            plan.add_packages(
                "the controller's Zero side",
                &[crate::roles::usbhost::NFS_SERVER_PACKAGE.to_string()],
            );
        }
        Some(plan)
    }
}

#[cfg(test)]
mod tests {
    use crate::profile::{parse_profile, Profile};
    use std::path::Path;

    const DEFAULT: &str = include_str!("../../profiles/clusterhat.toml");

    fn parse(text: &str) -> Result<Profile, crate::profile::ProfileError> {
        parse_profile(
            text,
            Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/profiles/clusterhat.toml"
            )),
        )
    }

    #[test]
    fn the_controller_computes_in_its_own_partition_once() {
        let p = parse(DEFAULT).unwrap();
        let c = p.controller_plan();
        assert!(c.slurmctld && c.slurm && c.munge);
        let names: Vec<&str> = c.slurm_nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["clusterhat", "z1", "z2", "z3", "z4"]);
        let parts: Vec<(&str, bool)> = c
            .slurm_partitions
            .iter()
            .map(|p| (p.name.as_str(), p.default))
            .collect();
        assert_eq!(parts, [("zero", true), ("controller", false)]);
        // The nodes carry the same layout, so slurm.conf is identical.
        let z1 = p.plan(p.node("z1").unwrap());
        assert_eq!(
            serde_json::to_string(&z1.slurm_partitions).unwrap(),
            serde_json::to_string(&c.slurm_partitions).unwrap()
        );
        assert_eq!(c.nfs_role.as_deref(), Some("client"));
        assert_eq!(c.nfs_server_address.unwrap().to_string(), "172.16.2.205");
        assert!(c.units.contains(&"opt-data.automount".to_string()));
    }

    #[test]
    fn the_compute_switch_and_extra_partitions() {
        let off = DEFAULT.replacen(
            "model = \"pi4\"\n",
            "model = \"pi4\"\nslurm_compute = false\n",
            1,
        );
        let c = parse(&off).unwrap().controller_plan();
        assert!(c.slurmctld && !c.slurm);
        assert!(c.slurm_nodes.iter().all(|n| n.name != "clusterhat"));
        assert!(!c.packages.contains(&"slurmd".to_string()));
        let extra =
            "\n[[features.slurm_partitions_extra]]\nname = \"all\"\nnodes = [\"z1\", \"p0\"]\n";
        let with = |base: &str| {
            let at = base.find("[packages]").unwrap();
            format!("{}{extra}\n{}", &base[..at], &base[at..])
        };
        let p = parse(&with(DEFAULT)).unwrap();
        let all = p
            .controller_plan()
            .slurm_partitions
            .into_iter()
            .find(|x| x.name == "all")
            .unwrap();
        assert_eq!(all.nodes, ["z1", "clusterhat"]);
        let e = parse(&with(&off)).unwrap_err();
        assert!(e.message.contains("not a Slurm compute node"), "{e}");
        assert!(e.line > 0, "{e}");
    }

    #[test]
    fn the_controller_is_not_a_node() {
        let bad = DEFAULT.replacen("name = \"p5\"", "name = \"p0\"", 1);
        let e = parse(&bad).unwrap_err();
        assert!(e.message.contains("is the controller"), "{e}");
        let line = bad[..bad.find("name = \"p0\"").unwrap()]
            .matches('\n')
            .count()
            + 1;
        assert_eq!(e.line, line);
    }
}
