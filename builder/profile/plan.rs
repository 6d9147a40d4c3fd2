//! Per-node plan: every resolved variable of one node. `chbuild show`
//! prints it, overlay templates render with it, roles read it. The build
//! runs exactly this plan, so `chbuild check` is a free dry run.

use super::model::{Arch, Model};
use super::{Controller, Node, NodeKind, Profile, User};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Serialize)]
pub struct HostEntry {
    pub address: Ipv4Addr,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserPlan {
    pub name: String,
    pub uid: u32,
    pub sudo: bool,
    pub ssh_key_only: bool,
    pub permit_root_login: bool,
    pub ssh_authorized_keys: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerPlan {
    pub hostname: String,
    pub aliases: Vec<String>,
    pub lan_address: Ipv4Addr,
    pub zero_address: Ipv4Addr,
    pub nfs_address: Ipv4Addr,
}

/// ClusterCTRL USB boot settings of a Zero (see docs: `ip=` must keep the
/// exact `:pN:usb0.10:static` form, the initramfs parses it).
#[derive(Debug, Clone, Serialize)]
pub struct UsbbootPlan {
    pub slot: u8,
    /// `pN`, ClusterCTRL's name of the slot.
    pub pname: String,
    /// `/var/lib/clusterctrl/nfs/pN` on the controller.
    pub nfs_dir: String,
    /// Address on the NFS VLAN (172.19.180.N).
    pub nfs_address: Ipv4Addr,
    pub cmdline_nfsroot: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlurmNode {
    pub name: String,
    pub address: Ipv4Addr,
    pub cpus: u32,
    pub memory_mb: u32,
}

/// The Zeros' Slurm partition.
pub const ZERO_PARTITION: &str = "zero";
/// The LAN Pis' Slurm partition (as the reference setup names it).
pub const PI_PARTITION: &str = "picluster";

#[derive(Debug, Clone, Serialize)]
pub struct SlurmPartition {
    pub name: String,
    /// Slurm node names (host names).
    pub nodes: Vec<String>,
    pub default: bool,
}

/// Slurm's nodes and partitions, the same for every node and the
/// controller (slurm.conf must be identical everywhere): the controller
/// first when it computes, in its own partition; the Zeros in `zero`, the
/// LAN Pis in `picluster`, then the extra partitions.
pub fn slurm_layout(p: &Profile) -> (Vec<SlurmNode>, Vec<SlurmPartition>) {
    let f = &p.features;
    if !f.slurm {
        return (Vec::new(), Vec::new());
    }
    let c = &p.controller;
    let mut nodes: Vec<SlurmNode> = Vec::new();
    if c.slurm_compute {
        nodes.push(SlurmNode {
            name: c.hostname.clone(),
            address: c.lan_address,
            cpus: c.cpus,
            memory_mb: c.memory_mb,
        });
    }
    nodes.extend(
        p.nodes
            .iter()
            .filter(|n| slurm_compute(p, n))
            .map(|n| SlurmNode {
                name: n.hostname.clone(),
                address: n.address,
                cpus: n.cpus,
                memory_mb: n.memory_mb,
            }),
    );
    let mut parts = vec![
        (
            ZERO_PARTITION.to_string(),
            slurm_hostnames(p, NodeKind::Usbboot),
        ),
        (PI_PARTITION.to_string(), slurm_hostnames(p, NodeKind::Sd)),
    ];
    if c.slurm_compute {
        parts.push((c.slurm_partition.clone(), vec![c.hostname.clone()]));
    }
    parts.extend(
        f.slurm_partitions_extra
            .iter()
            .map(|x| (x.name.clone(), x.nodes.clone())),
    );
    let mut out: Vec<SlurmPartition> = Vec::new();
    for (name, nodes) in parts {
        if nodes.is_empty() {
            continue;
        }
        let default = out.is_empty();
        out.push(SlurmPartition {
            name,
            nodes,
            default,
        });
    }
    (nodes, out)
}

#[derive(Debug, Clone, Serialize)]
pub struct NodePlan {
    pub cluster: String,
    pub name: String,
    pub hostname: String,
    pub kind: NodeKind,
    pub model: Model,
    pub architecture: Arch,
    pub cpus: u32,
    pub memory_mb: u32,
    pub address: Ipv4Addr,
    pub netmask_bits: u8,
    pub groups: Vec<String>,
    pub boot_dir: String,
    pub timezone: String,
    pub user: UserPlan,
    pub controller: ControllerPlan,
    pub usbboot: Option<UsbbootPlan>,
    pub hosts: Vec<HostEntry>,
    pub munge: bool,
    /// Slurm compute node (the controller runs slurmctld).
    pub slurm: bool,
    pub slurm_nodes: Vec<SlurmNode>,
    pub slurm_zero_nodes: Vec<String>,
    pub slurm_pi_nodes: Vec<String>,
    pub slurm_partitions: Vec<SlurmPartition>,
    pub docker: bool,
    /// `server`, `agent`, or none.
    pub k3s_role: Option<String>,
    pub k3s_server_url: Option<String>,
    pub k3s_airgap: bool,
    /// `server`, `client`, or none.
    pub nfs_role: Option<String>,
    pub nfs_server_address: Option<Ipv4Addr>,
    pub nfs_export_path: String,
    pub nfs_mount_point: String,
    pub nfs_export_networks: Vec<String>,
    /// LAN nodes reach the Zeros through the controller.
    pub zero_route: Option<RoutePlan>,
    /// Every package the node needs, baked into its tree at build time:
    /// the profile's lists, then what its roles need.
    pub packages: Vec<String>,
    /// Who asked for each package (`packages.extra.picluster`, `role
    /// slurm`), for errors that name it.
    pub package_origins: BTreeMap<String, String>,
    /// `packages.firstboot`: installed by the node itself at first boot.
    pub firstboot_packages: Vec<String>,
    pub overlays: Vec<String>,
    pub vars: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoutePlan {
    pub network: String,
    pub via: Ipv4Addr,
}

impl NodePlan {
    pub fn new(p: &Profile, node: &Node) -> NodePlan {
        let f = &p.features;
        let is_zero = node.kind == NodeKind::Usbboot;
        let docker = docker_on(p, node);
        let k3s_role = k3s_role(p, node);
        let k3s_server_url = f
            .k3s_server
            .as_ref()
            .filter(|_| k3s_role.is_some())
            .and_then(|s| p.server_address(s, node.kind))
            .map(|a| format!("https://{a}:6443"));
        let nfs_role = match &f.nfs_server {
            Some(s) if s == &node.name => Some("server".to_string()),
            Some(_) => Some("client".to_string()),
            None => None,
        };
        let nfs_server_address = f
            .nfs_server
            .as_ref()
            .and_then(|s| p.server_address(s, node.kind));
        let slurm = slurm_compute(p, node);
        let (slurm_nodes, slurm_partitions) = slurm_layout(p);
        let munge = slurm || node.groups.contains("munge");
        let overlays = overlays(
            node,
            &[
                (munge, "munge"),
                (slurm, "slurm"),
                (docker, "docker"),
                (k3s_role.is_some(), "k3s"),
                (nfs_role.as_deref() == Some("server"), "nfs-server"),
                (nfs_role.as_deref() == Some("client"), "nfs-client"),
            ],
        );
        let mut plan = NodePlan {
            cluster: p.name.clone(),
            name: node.name.clone(),
            hostname: node.hostname.clone(),
            kind: node.kind,
            model: node.model,
            architecture: p.base.architecture,
            cpus: node.cpus,
            memory_mb: node.memory_mb,
            address: node.address,
            netmask_bits: if is_zero {
                p.zero_network.prefix_len()
            } else {
                p.lan_network.prefix_len()
            },
            groups: node.groups.iter().cloned().collect(),
            boot_dir: p.base.boot_dir.clone(),
            timezone: p.timezone.clone(),
            user: UserPlan::of(&p.user),
            controller: ControllerPlan::of(&p.controller),
            usbboot: usbboot(p, node),
            hosts: hosts(p, is_zero),
            munge,
            slurm,
            slurm_nodes,
            slurm_partitions,
            slurm_zero_nodes: slurm_hostnames(p, NodeKind::Usbboot),
            slurm_pi_nodes: slurm_hostnames(p, NodeKind::Sd),
            docker,
            k3s_server_url,
            k3s_airgap: p.features.k3s_airgap_dir.is_some() && k3s_role.is_some(),
            k3s_role,
            nfs_server_address,
            nfs_export_path: f.nfs_export_path.clone(),
            nfs_mount_point: f.nfs_mount_point.clone(),
            nfs_export_networks: vec![p.lan_network.to_string(), p.zero_network.to_string()],
            nfs_role,
            zero_route: (!is_zero).then(|| RoutePlan {
                network: p.zero_network.to_string(),
                via: p.controller.lan_address,
            }),
            packages: vec![],
            package_origins: BTreeMap::new(),
            firstboot_packages: p.packages_firstboot.clone(),
            overlays,
            vars: node.vars.clone(),
        };
        add_packages(&mut plan, p, node);
        plan
    }
}

impl UserPlan {
    pub fn of(u: &User) -> UserPlan {
        UserPlan {
            name: u.name.clone(),
            uid: u.uid,
            sudo: u.sudo,
            ssh_key_only: u.ssh_key_only,
            permit_root_login: u.permit_root_login,
            ssh_authorized_keys: u.ssh_authorized_keys.clone(),
        }
    }
}

impl ControllerPlan {
    pub fn of(c: &Controller) -> ControllerPlan {
        ControllerPlan {
            hostname: c.hostname.clone(),
            aliases: c.aliases.clone(),
            lan_address: c.lan_address,
            zero_address: c.zero_address,
            nfs_address: c.nfs_address,
        }
    }
}

fn docker_on(p: &Profile, node: &Node) -> bool {
    let f = &p.features;
    f.docker
        && node.docker_override != Some(false)
        && if node.kind == NodeKind::Usbboot {
            f.docker_on_zeros
        } else {
            node.groups.contains("containers")
        }
}

/// `server`, `agent`, or none.
fn k3s_role(p: &Profile, node: &Node) -> Option<String> {
    let f = &p.features;
    if !f.k3s {
        None
    } else if f.k3s_server.as_deref() == Some(node.name.as_str()) {
        Some("server".to_string())
    } else if node.groups.contains("containers") {
        Some("agent".to_string())
    } else {
        None
    }
}

fn slurm_compute(p: &Profile, n: &Node) -> bool {
    is_slurm_compute(p.features.slurm, p.features.slurm_include_picluster, n)
}

/// Whether `n` is a Slurm compute node: Zeros are the compute partition;
/// LAN Pis join only on request. (Also used while the profile is parsed.)
pub fn is_slurm_compute(slurm: bool, include_picluster: bool, n: &Node) -> bool {
    slurm
        && (n.groups.contains("slurm") || n.groups.contains("zerocluster"))
        && (n.kind == NodeKind::Usbboot || include_picluster)
}

/// Host names of the Slurm compute nodes of one kind.
fn slurm_hostnames(p: &Profile, kind: NodeKind) -> Vec<String> {
    p.nodes
        .iter()
        .filter(|n| slurm_compute(p, n) && n.kind == kind)
        .map(|n| n.hostname.clone())
        .collect()
}

fn hosts(p: &Profile, is_zero: bool) -> Vec<HostEntry> {
    cluster_hosts(
        p,
        if is_zero {
            p.controller.zero_address
        } else {
            p.controller.lan_address
        },
    )
}

/// /etc/hosts: the controller at the address the reader reaches it on,
/// then every node, fully qualified first when the cluster has a domain.
pub fn cluster_hosts(p: &Profile, controller_address: Ipv4Addr) -> Vec<HostEntry> {
    let mut hosts = vec![HostEntry {
        address: controller_address,
        names: std::iter::once(p.controller.hostname.clone())
            .chain(p.controller.aliases.iter().cloned())
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
    hosts
}

impl NodePlan {
    /// Add packages (each once), remembering who first asked for each.
    pub fn add_packages<S: AsRef<str>>(&mut self, origin: &str, list: &[S]) {
        for pk in list {
            let pk = pk.as_ref();
            if !self.packages.iter().any(|x| x == pk) {
                self.packages.push(pk.to_string());
                self.package_origins
                    .insert(pk.to_string(), origin.to_string());
            }
        }
    }

    /// What the node's roles run, from the same flags the roles read: the
    /// packages are installed at build time, so the roles find their
    /// users, groups and units in the tree and enable them offline.
    pub fn role_packages(&self) -> Vec<(&'static str, Vec<&'static str>)> {
        let mut out = vec![];
        if self.munge {
            out.push(("role munge", vec!["munge"]));
        }
        if self.slurm {
            // Slurm's cgroup/v2 plugin (proctrack/cgroup on a unified
            // hierarchy) asks systemd for its scope over D-Bus: without
            // the bus daemon slurmd does not start.
            out.push(("role slurm", vec!["slurmd", "dbus"]));
        }
        if self.docker {
            out.push(("role docker", vec!["docker.io"]));
        }
        match self.nfs_role.as_deref() {
            Some("server") => out.push(("role nfs (server)", vec!["nfs-kernel-server"])),
            Some("client") => out.push(("role nfs (client)", vec!["nfs-common"])),
            _ => {}
        }
        if self.k3s_role.is_some() && !self.k3s_airgap {
            // First boot fetches the pinned k3s release with them.
            out.push(("role k3s", vec!["curl", "ca-certificates"]));
        }
        out
    }
}

/// Base packages, then each group's extras, then the host's, then the
/// roles', each once.
pub(super) fn add_packages(plan: &mut NodePlan, p: &Profile, node: &Node) {
    plan.add_packages("packages.base", &p.packages_base);
    for (g, list) in &p.packages_extra {
        if node.groups.contains(g) {
            plan.add_packages(&format!("packages.extra.{g}"), list);
        }
    }
    plan.add_packages(
        &format!("node {} overrides.packages", node.name),
        &node.extra_packages,
    );
    for (origin, list) in plan.role_packages() {
        plan.add_packages(origin, &list);
    }
}

fn usbboot(p: &Profile, node: &Node) -> Option<UsbbootPlan> {
    node.slot.map(|n| {
        let nfs_address = Ipv4Addr::from(u32::from(p.nfs_network.network()) + n as u32);
        UsbbootPlan {
            slot: n,
            pname: format!("p{n}"),
            nfs_dir: format!("/var/lib/clusterctrl/nfs/p{n}"),
            nfs_address,
            cmdline_nfsroot: format!(
                "nfsroot={ctl}:/var/lib/clusterctrl/nfs/p{n} rw ip={nfs_address}:{ctl}::{mask}:p{n}:usb0.10:static",
                ctl = p.controller.nfs_address,
                mask = p.nfs_network.netmask(),
            ),
        }
    })
}

/// Overlay layers in precedence order: common, kind, groups, the features
/// that are on, host.
fn overlays(node: &Node, features: &[(bool, &str)]) -> Vec<String> {
    let mut overlays = vec!["common".to_string()];
    overlays.push(format!(
        "kind/{}",
        match node.kind {
            NodeKind::Usbboot => "usbboot",
            NodeKind::Sd => "sd",
        }
    ));
    for g in &node.groups {
        overlays.push(format!("group/{g}"));
    }
    for (on, name) in features {
        if *on {
            overlays.push(format!("feature/{name}"));
        }
    }
    overlays.push(format!("host/{}", node.name));
    overlays
}

impl Profile {
    pub fn plan(&self, node: &Node) -> NodePlan {
        NodePlan::new(self, node)
    }

    /// Address of a server (a node, or the controller under its host name)
    /// as a node of `kind` reaches it: Zeros reach the controller on their
    /// own network.
    pub fn server_address(&self, server: &str, kind: NodeKind) -> Option<Ipv4Addr> {
        if self.controller.hostname == server {
            return Some(match kind {
                NodeKind::Usbboot => self.controller.zero_address,
                NodeKind::Sd => self.controller.lan_address,
            });
        }
        self.node(server).map(|n| n.address)
    }
}
