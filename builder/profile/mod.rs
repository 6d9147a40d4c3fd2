//! Cluster profile: load, validate and resolve.
//!
//! `parse_profile` is pure (text in, validated `Profile` out); `load_profile`
//! only reads the file. Raw values (`schema`) and resolved values (`Profile`)
//! are different types, so nothing downstream sees an unvalidated setting.

pub mod controller;
pub mod model;
mod parse;
pub mod plan;
pub mod reference;
pub mod schema;
pub mod select;

use anyhow::Context;
use ipnet::Ipv4Net;
use model::{Arch, Model};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

pub use select::select_nodes;

/// Groups every profile has; aggregates are declared in `[groups]`.
pub const BUILTIN_GROUPS: [&str; 4] = ["master", "zerocluster", "picluster", "management"];

/// A profile error that names the file, line and key. Exit code 2.
#[derive(Debug)]
pub struct ProfileError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file.display())?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProfileError {}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "source", rename_all = "lowercase")]
pub enum BaseSource {
    Archive {
        path: PathBuf,
        checksum: Option<Checksum>,
    },
    Url {
        url: String,
        /// `None`: `checksum = "unverified"`, every download warns.
        checksum: Option<Checksum>,
    },
    Debian(DebianRecipe),
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Checksum {
    pub algorithm: ChecksumAlgorithm,
    pub hex: String,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumAlgorithm {
    Sha256,
    Md5,
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let alg = match self.algorithm {
            ChecksumAlgorithm::Sha256 => "sha256",
            ChecksumAlgorithm::Md5 => "md5",
        };
        write!(f, "{alg}:{}", self.hex)
    }
}

/// An mmdebstrap recipe. Its canonical JSON is what the store keys on.
#[derive(Debug, Clone, Serialize)]
pub struct DebianRecipe {
    pub suite: String,
    pub architecture: Arch,
    pub variant: String,
    pub components: Vec<String>,
    pub mirror: Option<String>,
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Base {
    pub source: BaseSource,
    pub architecture: Arch,
    pub boot_dir: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Controller {
    pub hostname: String,
    pub aliases: Vec<String>,
    pub lan_address: Ipv4Addr,
    pub zero_address: Ipv4Addr,
    pub nfs_address: Ipv4Addr,
    pub model: Model,
    /// Also a Slurm compute node, in its own partition.
    pub slurm_compute: bool,
    pub slurm_partition: String,
    pub cpus: u32,
    pub memory_mb: u32,
    pub k3s_agent: bool,
    /// `[controller.base]`: what `chbuild sd <controller>` builds on.
    pub base: Option<Base>,
}

impl Controller {
    /// Whether `name` is the controller's host name or one of its aliases.
    pub fn is_named(&self, name: &str) -> bool {
        self.hostname == name || self.aliases.iter().any(|a| a == name)
    }
}

/// An extra Slurm partition; `nodes` are Slurm node names (host names).
#[derive(Debug, Clone, Serialize)]
pub struct Partition {
    pub name: String,
    pub nodes: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub name: String,
    /// Where the password hash comes from (the hash itself is read only
    /// when a build needs it, and never printed).
    pub password_hash_file: Option<PathBuf>,
    pub password_hash_env: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub ssh_authorized_keys_file: Option<PathBuf>,
    pub ssh_key_only: bool,
    pub permit_root_login: bool,
    pub sudo: bool,
    pub uid: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Features {
    pub slurm: bool,
    pub slurm_include_picluster: bool,
    pub slurm_partitions_extra: Vec<Partition>,
    pub docker: bool,
    pub docker_on_zeros: bool,
    pub k3s: bool,
    pub k3s_server: Option<String>,
    pub k3s_airgap_dir: Option<PathBuf>,
    /// `k3s_binary` and `k3s_images`.
    pub k3s_bundle: Option<K3sBundle>,
    pub k3s_version: Option<String>,
    /// sha256 of the release binary first boot downloads (lowercase hex).
    pub k3s_sha256: Option<String>,
    pub nfs_server: Option<String>,
    pub nfs_export_path: String,
    pub nfs_mount_point: String,
}

/// A k3s air-gap bundle given file by file.
#[derive(Debug, Clone, Serialize)]
pub struct K3sBundle {
    pub binary: Blob,
    pub images: Blob,
}

/// One file the store keeps by its sha256 (`builder/store/blob.rs`).
#[derive(Debug, Clone, Serialize)]
pub struct Blob {
    /// The profile key naming it, for messages.
    pub key: String,
    pub source: BlobSource,
    /// Lowercase hex.
    pub sha256: String,
    /// Its file name (the last part of the path or URL).
    pub name: String,
    /// Where the store holds it, once ingested (`Store::with_k3s_bundle`).
    pub stored: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobSource {
    Path(PathBuf),
    Url(String),
}

impl fmt::Display for BlobSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlobSource::Path(p) => write!(f, "{}", p.display()),
            BlobSource::Url(u) => f.write_str(u),
        }
    }
}

/// The SD-booted Pis' LAN settings (`[cluster] lan_*`), defaults applied.
#[derive(Debug, Clone, Serialize)]
pub struct Lan {
    pub gateway: Ipv4Addr,
    pub dns: Vec<Ipv4Addr>,
    pub interface: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A Pi Zero booted by ClusterCTRL over USB with an NFS root.
    Usbboot,
    /// A Pi booted from an SD card.
    Sd,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    pub model: Model,
    /// `None`: the node takes its LAN address by DHCP (SD nodes only).
    pub address: Option<Ipv4Addr>,
    pub hostname: String,
    /// ClusterCTRL slot N (`/var/lib/clusterctrl/nfs/pN`), Zeros only.
    pub slot: Option<u8>,
    /// Declared groups plus every aggregate containing one of them.
    pub groups: BTreeSet<String>,
    pub extra_packages: Vec<String>,
    pub memory_mb: u32,
    pub cpus: u32,
    pub docker_override: Option<bool>,
    pub vars: BTreeMap<String, toml::Value>,
}

impl Node {
    /// What reaches the node: its address, or its host name when it takes
    /// its address by DHCP.
    pub fn reach(&self) -> String {
        self.address
            .map(|a| a.to_string())
            .unwrap_or_else(|| self.hostname.clone())
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub file: PathBuf,
    pub name: String,
    pub lan_network: Ipv4Net,
    pub zero_network: Ipv4Net,
    pub nfs_network: Ipv4Net,
    pub lan: Lan,
    pub timezone: String,
    pub domain: Option<String>,
    pub controller: Controller,
    pub base: Base,
    pub user: User,
    pub features: Features,
    pub packages_base: Vec<String>,
    pub packages_extra: BTreeMap<String, Vec<String>>,
    pub packages_firstboot: Vec<String>,
    pub aggregates: BTreeMap<String, Vec<String>>,
    pub link_dirs: Vec<String>,
    pub secrets_dir: PathBuf,
    pub overlay_dir: Option<PathBuf>,
    pub nodes: Vec<Node>,
}

impl Profile {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every group name known to the profile.
    pub fn group_names(&self) -> BTreeSet<String> {
        BUILTIN_GROUPS
            .iter()
            .map(|s| s.to_string())
            .chain(self.aggregates.keys().cloned())
            .collect()
    }

    /// Directory the profile file lives in; relative paths start there.
    pub fn dir(&self) -> &Path {
        self.file.parent().unwrap_or(Path::new("."))
    }
}

/// The default profile, used when `--profile` is not given.
pub fn default_profile_path() -> PathBuf {
    PathBuf::from("profiles/clusterhat.toml")
}

/// The project a profile belongs to, wherever chbuild runs from: the
/// parent of a `profiles/` directory holding it (beside `overlays/` and
/// `secrets/`), else the profile's own directory. Empty: the current
/// directory.
pub fn project_root(file: &Path) -> PathBuf {
    let dir = file.parent().unwrap_or(Path::new(""));
    if dir.file_name().is_some_and(|n| n == "profiles") {
        return dir.parent().unwrap_or(Path::new("")).to_path_buf();
    }
    dir.to_path_buf()
}

/// Read and validate a profile file.
/// The shipped default profile, for unit tests.
#[cfg(test)]
pub(crate) fn default_profile_for_tests() -> Profile {
    load_profile(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/profiles/clusterhat.toml"
    )))
    .unwrap()
}

pub fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_profile(&text, path)?)
}

/// Parse and validate a profile. `file` is used for messages and for
/// resolving relative paths.
pub fn parse_profile(text: &str, file: &Path) -> Result<Profile, ProfileError> {
    parse::parse(text, file, None)
}

/// As `parse_profile`, with the secrets directory given on the command line.
pub fn parse_profile_with_secrets(
    text: &str,
    file: &Path,
    secrets_dir: &Path,
) -> Result<Profile, ProfileError> {
    parse::parse(text, file, Some(secrets_dir))
}

/// A secret file that exists must not be readable by group or others.
pub fn check_secret_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(m) if m.permissions().mode() & 0o077 != 0 => Err(format!(
            "secret file {} has mode {:04o}: it must not be readable by others (chmod 600)",
            path.display(),
            m.permissions().mode() & 0o7777
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_profile_parses() {
        let p = load_profile(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/profiles/clusterhat.toml"
        )))
        .unwrap();
        assert_eq!(p.nodes.len(), 9);
        let z1 = p.node("z1").unwrap();
        assert_eq!(z1.slot, Some(1));
        assert!(z1.groups.contains("munge"));
    }
}
