//! The cluster profile as written in TOML: raw, unvalidated values.
//!
//! Every struct denies unknown keys, so a typo is an error that names the
//! line instead of a setting silently ignored. The doc comments here are the
//! profile reference: `DocumentedFields` makes them constants of each type,
//! which `reference.rs` renders (`chbuild profile-reference` prints it).

use documented::DocumentedFields;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// A whole cluster profile.
#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Cluster-wide settings: name and networks.
    pub cluster: RawCluster,
    /// The ClusterHAT controller (the Pi running ClusterCTRL): Slurm
    /// controller, munge key holder, SSH hub. `chbuild image clusterhat` and
    /// `chbuild deploy --controller` give it the files chbuild owns.
    pub controller: RawController,
    /// Where the base root filesystem comes from.
    pub base: RawBase,
    /// The login user baked into every node.
    pub user: RawUser,
    /// Feature flags (Slurm, Docker, k3s, NFS).
    #[serde(default)]
    pub features: RawFeatures,
    /// Package lists: `base` for every node plus `extra` per group.
    #[serde(default)]
    pub packages: RawPackages,
    /// Aggregate groups: name = [member groups].
    #[serde(default)]
    pub groups: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
    /// How node trees share the base (hardlinks) or copy it.
    #[serde(default)]
    pub tree: RawTree,
    /// Secrets handling.
    #[serde(default)]
    pub secrets: RawSecrets,
    /// The nodes chbuild builds.
    #[serde(rename = "node", default)]
    #[documented_fields(rename = "node")]
    pub nodes: Vec<RawNode>,
    /// Extra overlay directory of this profile (highest precedence),
    /// relative to the profile file.
    pub overlay_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// Cluster name; output goes to `images/out/<name>/`.
    pub name: Spanned<String>,
    /// LAN network of the SD-booted Pis and the controller.
    pub lan_network: Spanned<String>,
    /// The Zeros' untagged `usb0` network (ClusterCTRL: 172.19.181.0/24).
    pub zero_network: Spanned<String>,
    /// The Zeros' NFS network on VLAN 10 (ClusterCTRL: 172.19.180.0/24).
    pub nfs_network: Spanned<String>,
    /// Time zone written to /etc/timezone.
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// DNS domain appended to node names in /etc/hosts (optional).
    #[serde(default)]
    pub domain: Option<String>,
    /// Default gateway of the SD-booted Pis with a static address, an
    /// address in `lan_network`. Default: the network's first host (e.g.
    /// 172.16.2.1 in 172.16.2.0/24), where most LANs have their router;
    /// the controller is not the default, as it routes only the Zeros'
    /// networks.
    pub lan_gateway: Option<Spanned<String>>,
    /// DNS servers (IPv4, in order of preference) of the SD-booted Pis
    /// with a static address. Default: the gateway. DHCP nodes use the
    /// ones their DHCP server gives.
    pub lan_dns: Option<Spanned<Vec<Spanned<String>>>>,
    /// The SD-booted Pis' LAN interface, configured for the network stack
    /// the base uses (NetworkManager, ifupdown or systemd-networkd).
    /// Default `eth0`: the Pi kernels' command line (`net.ifnames=0`, as
    /// Raspberry Pi OS and Debian's raspi-firmware write it) keeps that
    /// name.
    #[serde(default = "default_lan_interface")]
    pub lan_interface: Spanned<String>,
}

fn default_lan_interface() -> Spanned<String> {
    Spanned::new(0..0, "eth0".into())
}

fn default_timezone() -> String {
    "Etc/UTC".into()
}

#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawController {
    /// Host name of the controller.
    pub hostname: Spanned<String>,
    /// Other names of the controller (ClusterCTRL: `controller`, `p0`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Address on the LAN.
    pub lan_address: Spanned<String>,
    /// Address on the Zeros' `usb0` network.
    pub zero_address: Spanned<String>,
    /// Address on the Zeros' NFS VLAN.
    pub nfs_address: Spanned<String>,
    /// Board model (zero, zero2, pi3, pi4, pi5).
    pub model: Spanned<String>,
    /// Also a Slurm compute node, in a partition of its own (as the
    /// reference setup has it).
    #[serde(default = "yes")]
    pub slurm_compute: bool,
    /// Name of the controller's own Slurm partition.
    #[serde(default = "default_controller_partition")]
    pub slurm_partition: Spanned<String>,
    /// CPU count given to Slurm instead of the model's default.
    pub cpus: Option<u32>,
    /// Memory in MiB given to Slurm instead of the model's default.
    pub memory_mb: Option<u32>,
    /// Run a k3s agent on the controller (with `features.k3s`).
    #[serde(default)]
    pub k3s_agent: bool,
    /// The controller's own base, `[controller.base]` with the keys of
    /// `[base]` (e.g. a ClusterCTRL CNAT image's root filesystem as an
    /// archive): with it, `chbuild sd clusterhat` builds a complete
    /// controller card.
    #[serde(default)]
    pub base: Option<RawBase>,
}

fn default_controller_partition() -> Spanned<String> {
    Spanned::new(0..0, "controller".into())
}

/// An extra Slurm partition (`slurm_partitions_extra` in the reference
/// setup).
#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawPartition {
    /// Partition name.
    pub name: Spanned<String>,
    /// Member nodes: node names, host names, or the controller.
    pub nodes: Vec<Spanned<String>>,
}

/// Source of the base root filesystem.
#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawBase {
    /// `archive` (a local tar file), `url` (downloaded and checked), or
    /// `debian` (built from Debian packages with mmdebstrap).
    pub source: Spanned<String>,
    /// For `archive`: path to the tar archive, relative to the profile file.
    pub path: Option<Spanned<String>>,
    /// For `url`: where to download the archive.
    pub url: Option<Spanned<String>>,
    /// For `url` (and optionally `archive`): `sha256:<hex>` or `md5:<hex>`;
    /// for `url`, `"unverified"` downloads without a check, with a warning.
    pub checksum: Option<Spanned<String>>,
    /// For `debian`: the suite (bookworm).
    pub suite: Option<String>,
    /// Architecture of the base (arm64 or armhf).
    pub architecture: Spanned<String>,
    /// For `debian`: mmdebstrap variant (minbase, important, standard...).
    #[serde(default)]
    pub variant: Option<String>,
    /// For `debian`: archive components.
    #[serde(default)]
    pub components: Vec<String>,
    /// For `debian`: a mirror URL; leave unset to use the machine's apt
    /// configuration or mmdebstrap's default.
    #[serde(default)]
    pub mirror: Option<String>,
    /// For `debian`: bake `packages.base` into the base so nodes need no
    /// package installs at first boot.
    #[serde(default = "yes")]
    pub include_base_packages: bool,
    /// Extra packages for the `debian` recipe only.
    #[serde(default)]
    pub include: Vec<String>,
    /// Boot directory inside the tree: `boot/firmware` (Bookworm) or `boot`.
    #[serde(default = "default_boot_dir")]
    pub boot_dir: Spanned<String>,
}

fn yes() -> bool {
    true
}

fn default_boot_dir() -> Spanned<String> {
    Spanned::new(0..0, "boot/firmware".into())
}

#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// Login name.
    pub name: Spanned<String>,
    /// File holding the sha512crypt hash (`$6$...`), relative to the
    /// secrets directory. It must not be readable by others.
    pub password_hash_file: Option<Spanned<String>>,
    /// Environment variable holding the sha512crypt hash (used when set).
    pub password_hash_env: Option<String>,
    /// File of public SSH keys (authorized_keys format), relative to the
    /// secrets directory; added to `ssh_authorized_keys`.
    pub ssh_authorized_keys_file: Option<String>,
    /// Public SSH keys allowed to log in as the user.
    #[serde(default)]
    pub ssh_authorized_keys: Vec<Spanned<String>>,
    /// Refuse password logins over SSH.
    #[serde(default = "yes")]
    pub ssh_key_only: bool,
    /// Allow root to log in over SSH.
    #[serde(default)]
    pub permit_root_login: bool,
    /// Member of `sudo` with password-less sudo.
    #[serde(default = "yes")]
    pub sudo: bool,
    /// UID of the user (Raspberry Pi OS renames UID 1000).
    #[serde(default = "default_uid")]
    pub uid: u32,
}

fn default_uid() -> u32 {
    1000
}

#[derive(Debug, Default, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawFeatures {
    /// Generate Slurm configuration for the `slurm` group.
    #[serde(default)]
    pub slurm: bool,
    /// Include the LAN Pis as Slurm compute nodes (partition `picluster`).
    #[serde(default)]
    pub slurm_include_picluster: bool,
    /// Extra Slurm partitions: `[[features.slurm_partitions_extra]]` with
    /// `name` and `nodes`.
    #[serde(default)]
    pub slurm_partitions_extra: Vec<RawPartition>,
    /// Install Docker on the `containers` group.
    #[serde(default)]
    pub docker: bool,
    /// Also install Docker on the Zeros.
    #[serde(default)]
    pub docker_on_zeros: bool,
    /// Run k3s: a server on `k3s_server`, agents on the `containers` group.
    #[serde(default)]
    pub k3s: bool,
    /// Node (or the controller) running the k3s server.
    pub k3s_server: Option<Spanned<String>>,
    /// Optional k3s air-gap bundle as a directory holding `k3s` and
    /// `k3s-airgap-images-<arch>.tar[.zst]`, relative to the profile (or
    /// use `k3s_binary` and `k3s_images`).
    pub k3s_airgap_dir: Option<Spanned<String>>,
    /// The k3s release (`v1.36.4+k3s1`). Required with `k3s` unless an
    /// air-gap bundle brings the binary: each k3s node's first-boot unit
    /// then downloads exactly this release's binary from GitHub and checks
    /// it against `k3s_sha256` before installing it. No install script is
    /// ever run.
    pub k3s_version: Option<Spanned<String>>,
    /// sha256 of the release's binary for the base's architecture
    /// (`k3s-arm64` or `k3s-armhf`, as in the release's
    /// `sha256sum-<arch>.txt`). Required with `k3s_version` when there is
    /// no air-gap bundle.
    pub k3s_sha256: Option<Spanned<String>>,
    /// Air-gap bundle, the k3s binary: a local path (relative to the
    /// profile) or an http(s) URL. Ingested into the store once, checked
    /// against `k3s_binary_sha256`, baked into every k3s node with its
    /// unit and config. Needs `k3s_images`.
    pub k3s_binary: Option<Spanned<String>>,
    /// sha256 of `k3s_binary`.
    pub k3s_binary_sha256: Option<Spanned<String>>,
    /// Air-gap bundle, the images tarball
    /// (`k3s-airgap-images-<arch>.tar[.zst|.gz]`): a local path or an
    /// http(s) URL, its file name kept in the node. Needs `k3s_binary`.
    pub k3s_images: Option<Spanned<String>>,
    /// sha256 of `k3s_images`.
    pub k3s_images_sha256: Option<Spanned<String>>,
    /// Node (or the controller) serving NFS (exports `nfs_export_path`).
    pub nfs_server: Option<Spanned<String>>,
    /// Exported directory on the NFS server.
    #[serde(default = "default_nfs_path")]
    pub nfs_export_path: String,
    /// Mount point of the export on the other nodes.
    #[serde(default = "default_nfs_path")]
    pub nfs_mount_point: String,
}

fn default_nfs_path() -> String {
    "/opt/data".into()
}

#[derive(Debug, Default, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawPackages {
    /// Installed on every node.
    #[serde(default)]
    pub base: Vec<String>,
    /// Added per group: group = [packages]. Never replaces `base`.
    #[serde(default)]
    pub extra: BTreeMap<Spanned<String>, Vec<String>>,
    /// Installed by the first-boot unit over the network instead of at
    /// build time (everything else is baked into the image): the only way
    /// a node installs anything itself.
    #[serde(default)]
    pub firstboot: Vec<String>,
}

#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawTree {
    /// Top-level directories hardlinked from the base (read-mostly).
    /// Everything else is copied (reflinked where possible) per node.
    #[serde(default = "default_link")]
    pub link: Vec<Spanned<String>>,
}

impl Default for RawTree {
    fn default() -> Self {
        RawTree {
            link: default_link(),
        }
    }
}

fn default_link() -> Vec<Spanned<String>> {
    [
        "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "opt",
    ]
    .iter()
    .map(|s| Spanned::new(0..0, s.to_string()))
    .collect()
}

#[derive(Debug, Default, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawSecrets {
    /// Directory of secrets (munge key, k3s token, host keys), relative to
    /// the project: the parent of the `profiles/` directory holding the
    /// profile, else the profile's directory; default `secrets/<cluster name>`.
    pub dir: Option<String>,
}

#[derive(Debug, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    /// Inventory name (z1, p5...), used on the command line.
    pub name: Spanned<String>,
    /// `usbboot` (a Zero booted by ClusterCTRL over USB/NFS) or `sd`.
    pub kind: Spanned<String>,
    /// Board model: zero, zero2, pi3, pi4, pi5.
    pub model: Spanned<String>,
    /// IPv4 address (Zeros: on `zero_network`; SD Pis: on `lan_network`),
    /// or `dhcp` for an SD Pi that takes its LAN address from the LAN's
    /// DHCP server. A DHCP node is reached by its host name (the LAN's DNS
    /// must resolve it): it is left out of `/etc/hosts`, listed in
    /// known_hosts and ssh_config by name, and cannot be the
    /// `nfs_server` or `k3s_server`, whose clients need an address.
    pub address: Spanned<String>,
    /// Host name; defaults to `name`.
    pub hostname: Option<Spanned<String>>,
    /// ClusterCTRL slot N (directory pN) of a Zero.
    pub slot: Option<Spanned<u8>>,
    /// Groups the node belongs to.
    #[serde(default)]
    pub groups: Vec<Spanned<String>>,
    /// Per-host overrides.
    #[serde(default)]
    pub overrides: RawOverrides,
}

#[derive(Debug, Default, Deserialize, DocumentedFields)]
#[serde(deny_unknown_fields)]
pub struct RawOverrides {
    /// Extra packages for this host only.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Memory in MiB given to Slurm instead of the model's default.
    pub memory_mb: Option<u32>,
    /// CPU count given to Slurm instead of the model's default.
    pub cpus: Option<u32>,
    /// Turn Docker off on this host.
    pub docker: Option<bool>,
    /// Free-form variables available to overlay templates.
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
}
