//! Per-node plan: every resolved variable of one node. `chbuild show`
//! prints it, overlay templates render with it, roles read it. The build
//! runs exactly this plan, so `chbuild check` is a free dry run.

use super::model::{Arch, Model};
use super::{BaseSource, Controller, Node, NodeKind, Profile, User};
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
    /// Slurm's `NodeAddr`: the address, or the host name of a DHCP node.
    pub address: String,
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
            address: c.lan_address.to_string(),
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
                address: n.reach(),
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
    /// `None`: the LAN address comes from DHCP.
    pub address: Option<Ipv4Addr>,
    pub netmask_bits: u8,
    /// The LAN interface of an SD node, as the network role writes it.
    pub lan: Option<LanPlan>,
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
    /// The binary comes from an air-gap bundle, baked in.
    pub k3s_airgap: bool,
    /// Without a bundle: the pinned release binary first boot downloads.
    pub k3s_download: Option<K3sDownload>,
    /// `server`, `client`, or none.
    pub nfs_role: Option<String>,
    pub nfs_server_address: Option<Ipv4Addr>,
    pub nfs_export_path: String,
    pub nfs_mount_point: String,
    pub nfs_export_networks: Vec<String>,
    /// LAN nodes reach the Zeros through the controller.
    pub zero_route: Option<RoutePlan>,
    /// The controller's card only: its side of the Zeros' USB links, for
    /// a base without ClusterCTRL (which sets them up itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usbhost: Option<UsbHostPlan>,
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

/// An SD node's LAN interface: DHCP, or the static address with the
/// LAN's prefix, gateway and DNS servers.
#[derive(Debug, Clone, Serialize)]
pub struct LanPlan {
    pub interface: String,
    pub dhcp: bool,
    pub address: Option<Ipv4Addr>,
    pub prefix: u8,
    pub netmask: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
}

/// The one k3s binary a node's first boot may download.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct K3sDownload {
    pub version: String,
    pub url: String,
    pub sha256: String,
}

/// k3s release binaries whose sha256 chbuild knows, as their releases'
/// `sha256sum-<arch>.txt` list them (the same sums vendored by several
/// independent projects): `import-ansible` pins an inventory's version
/// with them.
const KNOWN_K3S: [(&str, &str, &str); 2] = [
    (
        "v1.36.4+k3s1",
        "arm64",
        "c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb",
    ),
    (
        "v1.36.3+k3s1",
        "arm64",
        "c9a209103f480f163b7c6a56f00862b4481927b284dc29a3716bb70d886691a8",
    ),
];

/// The known sha256 of a release's binary for `arch` (`arm64`, `armhf`).
pub fn known_k3s_sha256(version: &str, arch: &str) -> Option<&'static str> {
    KNOWN_K3S
        .iter()
        .find(|(v, a, _)| *v == version && *a == arch)
        .map(|(_, _, sum)| *sum)
}

/// Where k3s publishes its release binaries.
pub const K3S_RELEASES: &str = "https://github.com/k3s-io/k3s/releases/download";

impl K3sDownload {
    /// The release binary for `arch`, `+` in the tag escaped as GitHub's
    /// download URLs need.
    pub fn new(version: &str, sha256: &str, arch: Arch) -> K3sDownload {
        let file = match arch {
            Arch::Arm64 => "k3s-arm64",
            Arch::Armhf => "k3s-armhf",
        };
        K3sDownload {
            version: version.to_string(),
            url: format!("{K3S_RELEASES}/{}/{file}", version.replace('+', "%2B")),
            sha256: sha256.to_string(),
        }
    }
}

/// What ClusterCTRL does on the controller for its Zeros, for a
/// controller base without ClusterCTRL: the USB network of each Zero
/// named by its gadget's address, the untagged Zero network and the NFS
/// VLAN as bridges, forwarding between them and the LAN, and the export
/// of each Zero's root.
#[derive(Debug, Clone, Serialize)]
pub struct UsbHostPlan {
    /// The controller on the untagged Zero network, with its prefix.
    pub zero_address: Ipv4Addr,
    pub zero_prefix: u8,
    /// The controller on the NFS VLAN, with its prefix.
    pub nfs_address: Ipv4Addr,
    pub nfs_prefix: u8,
    /// Where the Zeros' roots live (`/var/lib/clusterctrl/nfs`).
    pub nfs_root: String,
    pub links: Vec<UsbLink>,
}

/// One Zero's USB link as the controller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct UsbLink {
    pub node: String,
    pub slot: u8,
    /// `ethupiN`, ClusterCTRL's name for the link.
    pub interface: String,
    /// The controller-side MAC the Zero's gadget gives the link
    /// (`00:22:82:ff:fe:NN`, NN = N in hex, as ClusterCTRL's gadget does).
    pub host_mac: String,
    /// `/var/lib/clusterctrl/nfs/pN`, exported to the Zero's VLAN address.
    pub export: String,
    pub nfs_client: Ipv4Addr,
}

/// The NFS directory of every slot, as ClusterCTRL names it.
pub const CLUSTERCTRL_NFS: &str = "/var/lib/clusterctrl/nfs";

impl UsbHostPlan {
    pub fn of(p: &Profile) -> UsbHostPlan {
        let links = p
            .nodes
            .iter()
            .filter_map(|n| usbboot(p, n).map(|u| (n, u)))
            .map(|(n, u)| UsbLink {
                node: n.name.clone(),
                slot: u.slot,
                interface: format!("ethupi{}", u.slot),
                host_mac: format!("00:22:82:ff:fe:{:02x}", u.slot),
                export: u.nfs_dir,
                nfs_client: u.nfs_address,
            })
            .collect();
        UsbHostPlan {
            zero_address: p.controller.zero_address,
            zero_prefix: p.zero_network.prefix_len(),
            nfs_address: p.controller.nfs_address,
            nfs_prefix: p.nfs_network.prefix_len(),
            nfs_root: CLUSTERCTRL_NFS.to_string(),
            links,
        }
    }
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
        let k3s_download = k3s_download(p).filter(|_| k3s_role.is_some());
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
            lan: (!is_zero).then(|| LanPlan {
                interface: p.lan.interface.clone(),
                dhcp: node.address.is_none(),
                address: node.address,
                prefix: p.lan_network.prefix_len(),
                netmask: p.lan_network.netmask(),
                gateway: p.lan.gateway,
                dns: p.lan.dns.clone(),
            }),
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
            k3s_airgap: k3s_bundled(p) && k3s_role.is_some(),
            k3s_download: k3s_download.clone(),
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
            usbhost: None,
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

impl NodePlan {
    /// What the node needs the network for at first boot (today: `k3s`,
    /// when its binary is downloaded there).
    pub fn needs_network(&self) -> Vec<String> {
        let mut v = vec![];
        if self.k3s_download.is_some() {
            v.push("k3s".to_string());
        }
        v
    }

    /// What reaches the node: its address, or the host name of a DHCP node.
    pub fn reach(&self) -> String {
        self.address
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.hostname.clone())
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

/// Whether an air-gap bundle brings the k3s binary.
pub fn k3s_bundled(p: &Profile) -> bool {
    p.features.k3s_airgap_dir.is_some() || p.features.k3s_bundle.is_some()
}

/// The pinned binary first boot downloads when no bundle brings one.
pub fn k3s_download(p: &Profile) -> Option<K3sDownload> {
    let f = &p.features;
    if !f.k3s || k3s_bundled(p) {
        return None;
    }
    // Parsing requires both when k3s is on without a bundle.
    Some(K3sDownload::new(
        f.k3s_version.as_deref()?,
        f.k3s_sha256.as_deref()?,
        p.base.architecture,
    ))
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
/// then every node with a static address (a DHCP node is found through
/// the LAN's DNS), fully qualified first when the cluster has a domain.
pub fn cluster_hosts(p: &Profile, controller_address: Ipv4Addr) -> Vec<HostEntry> {
    let mut hosts = vec![HostEntry {
        address: controller_address,
        names: std::iter::once(p.controller.hostname.clone())
            .chain(p.controller.aliases.iter().cloned())
            .collect(),
    }];
    for n in &p.nodes {
        let Some(address) = n.address else { continue };
        let mut names = vec![n.hostname.clone()];
        if n.name != n.hostname {
            names.push(n.name.clone());
        }
        hosts.push(HostEntry { address, names });
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
        if self.k3s_download.is_some() {
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
    // The shell role's `ll`/`la`/`lt` use eza or exa when installed; a
    // profile naming either itself keeps its choice. (An archive base's
    // suite is read from its tree when it is stored: see
    // `pipeline::add_base_packages`.)
    if !plan.packages.iter().any(|x| x == "exa" || x == "eza") {
        if let Some(tool) = ls_package(&p.base.source) {
            plan.add_packages("role shell (ll, la, lt)", &[tool]);
        }
    }
}

/// The package of the modern `ls` the shell aliases prefer, for a Debian
/// base: `exa` up to bookworm (which has no eza), `eza` from trixie on
/// (exa was dropped for it). Other bases (archives) name it in
/// `packages.base` themselves: their suite is not known from the profile.
pub fn ls_package(base: &BaseSource) -> Option<&'static str> {
    let BaseSource::Debian(r) = base else {
        return None;
    };
    Some(ls_package_for_suite(&r.suite))
}

/// `exa` up to bookworm, `eza` after.
pub fn ls_package_for_suite(suite: &str) -> &'static str {
    match suite {
        "buster" | "bullseye" | "bookworm" | "oldoldstable" | "oldstable" => "exa",
        _ => "eza",
    }
}

impl NodePlan {
    /// What only the stored base can tell: for a base whose suite the
    /// profile does not name (an archive: Raspberry Pi OS, ClusterCTRL's
    /// image), the `ls` of the shell aliases, by the suite its os-release
    /// names. `os_release` is the text of the base's os-release.
    pub fn add_base_packages(&mut self, os_release: &str) {
        if self.packages.iter().any(|x| x == "exa" || x == "eza") {
            return;
        }
        let field = |k: &str| shell_assignment(os_release, k);
        let debian_like = field("ID") == Some("debian")
            || field("ID_LIKE").is_some_and(|v| v.split_whitespace().any(|x| x == "debian"));
        if let (true, Some(suite)) = (debian_like, field("VERSION_CODENAME")) {
            if !suite.is_empty() {
                self.add_packages("role shell (ll, la, lt)", &[ls_package_for_suite(suite)]);
            }
        }
    }
}

/// The value `text` (a shell-style `KEY=value` file of the base:
/// os-release, initramfs.conf) gives `key`: its last assignment, as the
/// shell reading the file would leave it, without quotes.
pub fn shell_assignment<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .map(|v| v.trim().trim_matches(['"', '\'']))
}

fn usbboot(p: &Profile, node: &Node) -> Option<UsbbootPlan> {
    node.slot.map(|n| {
        let nfs_address = Ipv4Addr::from(u32::from(p.nfs_network.network()) + n as u32);
        UsbbootPlan {
            slot: n,
            pname: format!("p{n}"),
            nfs_dir: format!("{CLUSTERCTRL_NFS}/p{n}"),
            nfs_address,
            cmdline_nfsroot: format!(
                "nfsroot={ctl}:{CLUSTERCTRL_NFS}/p{n} rw ip={nfs_address}:{ctl}::{mask}:p{n}:usb0.10:static",
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
        // A DHCP node is refused as a server when the profile is parsed.
        self.node(server).and_then(|n| n.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_assignment_is_the_last_one_unquoted() {
        let os = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(shell_assignment(os, "ID"), Some("debian"));
        assert_eq!(shell_assignment(os, "VERSION_CODENAME"), Some("bookworm"));
        assert_eq!(shell_assignment(os, "ID_LIKE"), None);
        let conf = "# MODULES=list\nMODULES=most\n  MODULES='dep'\n";
        assert_eq!(shell_assignment(conf, "MODULES"), Some("dep"));
    }

    fn profile() -> Profile {
        crate::profile::default_profile_for_tests()
    }

    fn set_suite(p: &mut Profile, suite: &str) {
        let BaseSource::Debian(r) = &mut p.base.source else {
            panic!("the default profile has a Debian base");
        };
        r.suite = suite.into();
    }

    #[test]
    fn exa_on_bookworm_eza_later_once() {
        let mut p = profile();
        let z1 = p.node("z1").unwrap().clone();
        let pk = NodePlan::new(&p, &z1).packages;
        assert!(pk.contains(&"exa".to_string()), "{pk:?}");
        assert!(!pk.contains(&"eza".to_string()), "{pk:?}");
        set_suite(&mut p, "trixie");
        let pk = NodePlan::new(&p, &z1).packages;
        assert!(pk.contains(&"eza".to_string()) && !pk.contains(&"exa".to_string()));
        // A profile's own choice is kept, and nothing is added twice.
        p.packages_base.push("exa".into());
        let pk = NodePlan::new(&p, &z1).packages;
        assert_eq!(pk.iter().filter(|x| *x == "exa").count(), 1);
        assert!(!pk.contains(&"eza".to_string()));
    }

    #[test]
    fn k3s_download_url_is_the_pinned_release_binary() {
        let d = K3sDownload::new("v1.36.4+k3s1", "ab", Arch::Arm64);
        assert_eq!(
            d.url,
            "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s-arm64"
        );
        assert!(K3sDownload::new("v1.36.4+k3s1", "ab", Arch::Armhf)
            .url
            .ends_with("/k3s-armhf"));
        let p = profile();
        let p5 = NodePlan::new(&p, p.node("p5").unwrap());
        assert_eq!(p5.needs_network(), ["k3s"]);
        let z1 = NodePlan::new(&p, p.node("z1").unwrap());
        assert!(z1.k3s_download.is_none() && z1.needs_network().is_empty());
        // What the download needs is in the plan, once.
        let mut p = p;
        p.packages_base.retain(|x| x != "curl");
        let p5 = NodePlan::new(&p, p.node("p5").unwrap());
        for tool in ["curl", "ca-certificates"] {
            assert_eq!(p5.packages.iter().filter(|x| *x == tool).count(), 1);
        }
        let z1 = NodePlan::new(&p, p.node("z1").unwrap());
        assert!(!z1.packages.iter().any(|x| x == "curl"));
    }

    #[test]
    fn no_guess_for_an_archive_base() {
        let mut p = profile();
        p.base.source = BaseSource::Archive {
            path: "base.tar".into(),
            checksum: None,
        };
        let z1 = p.node("z1").unwrap().clone();
        let pk = NodePlan::new(&p, &z1).packages;
        assert!(!pk.iter().any(|x| x == "exa" || x == "eza"), "{pk:?}");
    }
}
