//! Cluster profile: load, validate and resolve.
//!
//! `parse_profile` is pure (text in, validated `Profile` out); `load_profile`
//! only reads the file. Raw values (`schema`) and resolved values (`Profile`)
//! are different types, so nothing downstream sees an unvalidated setting.

pub mod controller;
pub mod model;
pub mod plan;
pub mod reference;
pub mod schema;
pub mod select;

use anyhow::Context;
use ipnet::Ipv4Net;
use model::{Arch, Model, MODEL_NAMES};
use schema::RawProfile;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

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
        checksum: Checksum,
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
    pub nfs_server: Option<String>,
    pub nfs_export_path: String,
    pub nfs_mount_point: String,
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
    pub address: Ipv4Addr,
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

#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub file: PathBuf,
    pub name: String,
    pub lan_network: Ipv4Net,
    pub zero_network: Ipv4Net,
    pub nfs_network: Ipv4Net,
    pub timezone: String,
    pub domain: Option<String>,
    pub controller: Controller,
    pub base: Base,
    pub user: User,
    pub features: Features,
    pub packages_base: Vec<String>,
    pub packages_extra: BTreeMap<String, Vec<String>>,
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

/// Read and validate a profile file.
pub fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(parse_profile(&text, path)?)
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ProfileError {
        let (line, column) = if span == (0..0) {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        ProfileError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn addr(&self, v: &Spanned<String>, key: &str) -> Result<Ipv4Addr, ProfileError> {
        v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!("`{}` is not an IPv4 address", v.get_ref()),
            )
        })
    }

    fn net(&self, v: &Spanned<String>, key: &str) -> Result<Ipv4Net, ProfileError> {
        v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "`{}` is not an IPv4 network such as 172.16.2.0/24",
                    v.get_ref()
                ),
            )
        })
    }

    fn model(&self, v: &Spanned<String>, key: &str) -> Result<Model, ProfileError> {
        Model::parse(v.get_ref()).ok_or_else(|| {
            self.err(
                v.span(),
                key,
                format!(
                    "unknown model `{}` (expected one of {MODEL_NAMES})",
                    v.get_ref()
                ),
            )
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

fn parse_checksum(ctx: &Ctx, v: &Spanned<String>) -> Result<Checksum, ProfileError> {
    let s = v.get_ref();
    let (alg, hex, len) = if let Some(h) = s.strip_prefix("sha256:") {
        (ChecksumAlgorithm::Sha256, h, 64)
    } else if let Some(h) = s.strip_prefix("md5:") {
        (ChecksumAlgorithm::Md5, h, 32)
    } else {
        return Err(ctx.err(
            v.span(),
            "base.checksum",
            "expected `sha256:<hex>` or `md5:<hex>`",
        ));
    };
    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ctx.err(
            v.span(),
            "base.checksum",
            format!("expected {len} hexadecimal digits after the algorithm"),
        ));
    }
    Ok(Checksum {
        algorithm: alg,
        hex: hex.to_ascii_lowercase(),
    })
}

/// Parse and validate a profile. `file` is used for messages and for
/// resolving relative paths.
pub fn parse_profile(text: &str, file: &Path) -> Result<Profile, ProfileError> {
    parse(text, file, None)
}

/// As `parse_profile`, with the secrets directory given on the command line.
pub fn parse_profile_with_secrets(
    text: &str,
    file: &Path,
    secrets_dir: &Path,
) -> Result<Profile, ProfileError> {
    parse(text, file, Some(secrets_dir))
}

fn parse(
    text: &str,
    file: &Path,
    secrets_override: Option<&Path>,
) -> Result<Profile, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ProfileError {
            file: file.to_path_buf(),
            line,
            column,
            key: String::new(),
            message: e.message().to_string(),
        }
    })?;
    let ctx = Ctx { text, file };
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let rel = |p: &str| -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };

    let name = raw.cluster.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ctx.err(
            raw.cluster.name.span(),
            "cluster.name",
            "must be letters, digits, `-` or `_`",
        ));
    }
    let lan_network = ctx.net(&raw.cluster.lan_network, "cluster.lan_network")?;
    let zero_network = ctx.net(&raw.cluster.zero_network, "cluster.zero_network")?;
    let nfs_network = ctx.net(&raw.cluster.nfs_network, "cluster.nfs_network")?;

    let c = &raw.controller;
    let controller = Controller {
        hostname: c.hostname.get_ref().clone(),
        aliases: c.aliases.clone(),
        lan_address: ctx.addr(&c.lan_address, "controller.lan_address")?,
        zero_address: ctx.addr(&c.zero_address, "controller.zero_address")?,
        nfs_address: ctx.addr(&c.nfs_address, "controller.nfs_address")?,
        model: ctx.model(&c.model, "controller.model")?,
        slurm_compute: c.slurm_compute,
        slurm_partition: c.slurm_partition.get_ref().clone(),
        cpus: 0,
        memory_mb: 0,
        k3s_agent: c.k3s_agent,
    };
    let controller = Controller {
        cpus: c.cpus.unwrap_or(controller.model.cpus()),
        memory_mb: c.memory_mb.unwrap_or(controller.model.memory_mb()),
        ..controller
    };
    if !valid_hostname(&controller.hostname) {
        return Err(ctx.err(
            c.hostname.span(),
            "controller.hostname",
            "must be a valid host name",
        ));
    }
    for (addr, net, key, span) in [
        (
            controller.lan_address,
            lan_network,
            "controller.lan_address",
            c.lan_address.span(),
        ),
        (
            controller.zero_address,
            zero_network,
            "controller.zero_address",
            c.zero_address.span(),
        ),
        (
            controller.nfs_address,
            nfs_network,
            "controller.nfs_address",
            c.nfs_address.span(),
        ),
    ] {
        if !net.contains(&addr) {
            return Err(ctx.err(span, key, format!("{addr} is outside {net}")));
        }
    }

    // Groups: built-ins plus aggregates whose members must exist.
    let mut known: BTreeSet<String> = BUILTIN_GROUPS.iter().map(|s| s.to_string()).collect();
    known.extend(raw.groups.keys().cloned());
    let mut aggregates = BTreeMap::new();
    for (agg, members) in &raw.groups {
        if BUILTIN_GROUPS.contains(&agg.as_str()) {
            return Err(ctx.err(
                members.span(),
                &format!("groups.{agg}"),
                "a built-in group cannot be redefined as an aggregate",
            ));
        }
        let mut list = Vec::new();
        for m in members.get_ref() {
            if !known.contains(m.get_ref()) {
                return Err(ctx.err(
                    m.span(),
                    &format!("groups.{agg}"),
                    format!("group `{}` does not exist", m.get_ref()),
                ));
            }
            list.push(m.get_ref().clone());
        }
        aggregates.insert(agg.clone(), list);
    }

    // Base.
    let architecture = Arch::parse(raw.base.architecture.get_ref()).ok_or_else(|| {
        ctx.err(
            raw.base.architecture.span(),
            "base.architecture",
            "expected `arm64` or `armhf`",
        )
    })?;
    let source = match raw.base.source.get_ref().as_str() {
        "archive" => {
            let p = raw.base.path.as_ref().ok_or_else(|| {
                ctx.err(
                    raw.base.source.span(),
                    "base.path",
                    "an `archive` base needs `path`",
                )
            })?;
            BaseSource::Archive {
                path: rel(p.get_ref()),
                checksum: raw
                    .base
                    .checksum
                    .as_ref()
                    .map(|c| parse_checksum(&ctx, c))
                    .transpose()?,
            }
        }
        "url" => {
            let u = raw.base.url.as_ref().ok_or_else(|| {
                ctx.err(
                    raw.base.source.span(),
                    "base.url",
                    "a `url` base needs `url`",
                )
            })?;
            if !(u.get_ref().starts_with("https://") || u.get_ref().starts_with("http://")) {
                return Err(ctx.err(u.span(), "base.url", "expected an http:// or https:// URL"));
            }
            let c = raw.base.checksum.as_ref().ok_or_else(|| {
                ctx.err(
                    u.span(),
                    "base.checksum",
                    "a downloaded base needs `checksum = \"sha256:...\"`",
                )
            })?;
            BaseSource::Url {
                url: u.get_ref().clone(),
                checksum: parse_checksum(&ctx, c)?,
            }
        }
        "debian" => {
            let mut packages: Vec<String> = raw.base.include.clone();
            if raw.base.include_base_packages {
                packages.extend(raw.packages.base.iter().cloned());
            }
            packages.sort();
            packages.dedup();
            BaseSource::Debian(DebianRecipe {
                suite: raw.base.suite.clone().unwrap_or_else(|| "bookworm".into()),
                architecture,
                variant: raw.base.variant.clone().unwrap_or_else(|| "minbase".into()),
                components: if raw.base.components.is_empty() {
                    vec!["main".into()]
                } else {
                    raw.base.components.clone()
                },
                mirror: raw.base.mirror.clone(),
                packages,
            })
        }
        other => {
            return Err(ctx.err(
                raw.base.source.span(),
                "base.source",
                format!("unknown source `{other}` (expected archive, url or debian)"),
            ))
        }
    };
    let boot_dir = raw.base.boot_dir.get_ref().trim_matches('/').to_string();
    if boot_dir != "boot/firmware" && boot_dir != "boot" {
        return Err(ctx.err(
            raw.base.boot_dir.span(),
            "base.boot_dir",
            "expected `boot/firmware` (Bookworm) or `boot` (older releases)",
        ));
    }

    // Secrets directory and the user's password hash source.
    let secrets_dir = match secrets_override {
        Some(d) => d.to_path_buf(),
        None => PathBuf::from(
            raw.secrets
                .dir
                .clone()
                .unwrap_or_else(|| format!("secrets/{name}")),
        ),
    };
    let u = &raw.user;
    if u.password_hash_file.is_none() && u.password_hash_env.is_none() {
        return Err(ctx.err(
            u.name.span(),
            "user.password_hash_file",
            "give `password_hash_file` or `password_hash_env`: the hash is never written inline",
        ));
    }
    let password_hash_file = match &u.password_hash_file {
        Some(f) => {
            let p = secrets_dir.join(f.get_ref());
            check_secret_mode(&p).map_err(|m| ctx.err(f.span(), "user.password_hash_file", m))?;
            Some(p)
        }
        None => None,
    };
    for k in &u.ssh_authorized_keys {
        if ssh_key::PublicKey::from_openssh(k.get_ref()).is_err() {
            return Err(ctx.err(
                k.span(),
                "user.ssh_authorized_keys",
                "not an OpenSSH public key (`ssh-ed25519 AAAA... comment`)",
            ));
        }
    }
    let user = User {
        name: u.name.get_ref().clone(),
        password_hash_file,
        password_hash_env: u.password_hash_env.clone(),
        ssh_authorized_keys: u
            .ssh_authorized_keys
            .iter()
            .map(|k| k.get_ref().clone())
            .collect(),
        ssh_authorized_keys_file: u
            .ssh_authorized_keys_file
            .as_ref()
            .map(|f| secrets_dir.join(f)),
        ssh_key_only: u.ssh_key_only,
        permit_root_login: u.permit_root_login,
        sudo: u.sudo,
        uid: u.uid,
    };

    // Nodes.
    let mut nodes: Vec<Node> = Vec::new();
    let mut hostnames: BTreeMap<String, String> = BTreeMap::new();
    hostnames.insert(controller.hostname.clone(), "the controller".into());
    for a in &controller.aliases {
        hostnames.insert(a.clone(), "the controller".into());
    }
    let mut slots: BTreeMap<u8, String> = BTreeMap::new();
    for rn in &raw.nodes {
        let nname = rn.name.get_ref().clone();
        let key = |k: &str| format!("node {nname}: {k}");
        if !valid_hostname(&nname) {
            return Err(ctx.err(rn.name.span(), &key("name"), "must be a valid host name"));
        }
        if nodes.iter().any(|n| n.name == nname) {
            return Err(ctx.err(rn.name.span(), &key("name"), "duplicate node name"));
        }
        if controller.is_named(&nname) {
            return Err(ctx.err(
                rn.name.span(),
                &key("name"),
                format!(
                    "`{nname}` is the controller: it is described by [controller], \
                     not as a [[node]]"
                ),
            ));
        }
        let kind = match rn.kind.get_ref().as_str() {
            "usbboot" => NodeKind::Usbboot,
            "sd" => NodeKind::Sd,
            other => {
                return Err(ctx.err(
                    rn.kind.span(),
                    &key("kind"),
                    format!("unknown kind `{other}` (expected usbboot or sd)"),
                ))
            }
        };
        let model = ctx.model(&rn.model, &key("model"))?;
        let address = ctx.addr(&rn.address, &key("address"))?;
        let net = match kind {
            NodeKind::Usbboot => zero_network,
            NodeKind::Sd => lan_network,
        };
        if !net.contains(&address) {
            return Err(ctx.err(
                rn.address.span(),
                &key("address"),
                format!("{address} is outside the node's network {net}"),
            ));
        }
        if !model.can_run(architecture) {
            return Err(ctx.err(
                rn.model.span(),
                &key("model"),
                format!(
                    "a {model} (ARMv{}) cannot boot a {architecture} base: use an armhf base",
                    model.arm_version()
                ),
            ));
        }
        let hostname = rn
            .hostname
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_else(|| nname.clone());
        let hspan = rn
            .hostname
            .as_ref()
            .map(|h| h.span())
            .unwrap_or(rn.name.span());
        if !valid_hostname(&hostname) {
            return Err(ctx.err(hspan, &key("hostname"), "must be a valid host name"));
        }
        if let Some(other) = hostnames.insert(hostname.clone(), format!("node {nname}")) {
            return Err(ctx.err(
                hspan,
                &key("hostname"),
                format!("host name `{hostname}` is already used by {other}"),
            ));
        }
        let slot = match (kind, &rn.slot) {
            (NodeKind::Usbboot, Some(s)) => {
                let n = *s.get_ref();
                if !(1..=252).contains(&n) {
                    return Err(ctx.err(s.span(), &key("slot"), "ClusterCTRL slots are 1..252"));
                }
                if let Some(other) = slots.insert(n, nname.clone()) {
                    return Err(ctx.err(
                        s.span(),
                        &key("slot"),
                        format!("slot {n} is already used by {other}"),
                    ));
                }
                Some(n)
            }
            (NodeKind::Usbboot, None) => {
                return Err(ctx.err(
                    rn.name.span(),
                    &key("slot"),
                    "a usbboot node needs `slot` (N of pN)",
                ))
            }
            (NodeKind::Sd, Some(s)) => {
                return Err(ctx.err(
                    s.span(),
                    &key("slot"),
                    "only usbboot nodes have a ClusterCTRL slot",
                ))
            }
            (NodeKind::Sd, None) => None,
        };
        let mut groups = BTreeSet::new();
        for g in &rn.groups {
            if !known.contains(g.get_ref()) {
                return Err(ctx.err(
                    g.span(),
                    &key("groups"),
                    format!("group `{}` does not exist", g.get_ref()),
                ));
            }
            groups.insert(g.get_ref().clone());
        }
        close_groups(&mut groups, &aggregates);
        nodes.push(Node {
            name: nname,
            kind,
            model,
            address,
            hostname,
            slot,
            groups,
            extra_packages: rn.overrides.packages.clone(),
            memory_mb: rn.overrides.memory_mb.unwrap_or(model.memory_mb()),
            cpus: rn.overrides.cpus.unwrap_or(model.cpus()),
            docker_override: rn.overrides.docker,
            vars: rn.overrides.vars.clone(),
        });
    }

    let mut packages_extra = BTreeMap::new();
    for (g, list) in &raw.packages.extra {
        if !known.contains(g.get_ref()) {
            return Err(ctx.err(
                g.span(),
                &format!("packages.extra.{}", g.get_ref()),
                format!("group `{}` does not exist", g.get_ref()),
            ));
        }
        packages_extra.insert(g.get_ref().clone(), list.clone());
    }

    let f = &raw.features;
    // A server is a node or the controller (under its host name).
    let node_ref = |v: &Option<Spanned<String>>,
                    key: &str|
     -> Result<Option<String>, ProfileError> {
        match v {
            None => Ok(None),
            Some(s) if nodes.iter().any(|n| &n.name == s.get_ref()) => {
                Ok(Some(s.get_ref().clone()))
            }
            Some(s) if controller.is_named(s.get_ref()) => Ok(Some(controller.hostname.clone())),
            Some(s) => Err(ctx.err(
                s.span(),
                key,
                format!(
                    "`{}` is neither a node nor the controller ({})",
                    s.get_ref(),
                    controller.hostname
                ),
            )),
        }
    };
    let slurm_partitions_extra = partitions_extra(&ctx, f, &controller, &nodes)?;
    let features = Features {
        slurm: f.slurm,
        slurm_include_picluster: f.slurm_include_picluster,
        slurm_partitions_extra,
        docker: f.docker,
        docker_on_zeros: f.docker_on_zeros,
        k3s: f.k3s,
        k3s_server: node_ref(&f.k3s_server, "features.k3s_server")?,
        k3s_airgap_dir: f.k3s_airgap_dir.as_ref().map(|d| rel(d.get_ref())),
        nfs_server: node_ref(&f.nfs_server, "features.nfs_server")?,
        nfs_export_path: f.nfs_export_path.clone(),
        nfs_mount_point: f.nfs_mount_point.clone(),
    };
    if f.k3s && features.k3s_server.is_none() {
        return Err(ctx.err(
            0..0,
            "features.k3s_server",
            "k3s is on but no `k3s_server` is named",
        ));
    }

    let mut link_dirs = Vec::new();
    for l in &raw.tree.link {
        let d = l.get_ref().trim_matches('/');
        if d.is_empty() || d.contains('/') || d == ".." || d == "." {
            return Err(ctx.err(
                l.span(),
                "tree.link",
                "expected a top-level directory name such as `usr`",
            ));
        }
        if ["etc", "var", "home", "root", "srv", "tmp", "boot"].contains(&d) {
            return Err(ctx.err(
                l.span(),
                "tree.link",
                format!(
                    "`{d}` is written in place by a running node: it must be copied, not linked"
                ),
            ));
        }
        link_dirs.push(d.to_string());
    }

    let profile = Profile {
        file: file.to_path_buf(),
        name,
        lan_network,
        zero_network,
        nfs_network,
        timezone: raw.cluster.timezone.clone(),
        domain: raw.cluster.domain.clone(),
        controller,
        base: Base {
            source,
            architecture,
            boot_dir,
        },
        user,
        features,
        packages_base: raw.packages.base.clone(),
        packages_extra,
        aggregates,
        link_dirs,
        secrets_dir,
        overlay_dir: raw.overlay_dir.as_ref().map(|d| rel(d.get_ref())),
        nodes,
    };

    // Features a node's model cannot run: k3s and Docker need ARMv7+.
    for (rn, node) in raw.nodes.iter().zip(&profile.nodes) {
        let vars = plan::NodePlan::new(&profile, node);
        if node.model.arm_version() < 7 {
            let what = if vars.docker {
                Some("Docker")
            } else if vars.k3s_role.is_some() {
                Some("k3s")
            } else {
                None
            };
            if let Some(what) = what {
                return Err(ctx.err(
                    rn.model.span(),
                    &format!("node {}: model", node.name),
                    format!(
                        "{what} needs ARMv7 or newer, but a {} is ARMv{}",
                        node.model,
                        node.model.arm_version()
                    ),
                ));
            }
        }
    }
    Ok(profile)
}

/// Extra Slurm partitions: every member must be a Slurm compute node (a
/// node in the `slurm` group, or the controller when it computes), named
/// by node name, host name or a controller name.
fn partitions_extra(
    ctx: &Ctx,
    f: &schema::RawFeatures,
    controller: &Controller,
    nodes: &[Node],
) -> Result<Vec<Partition>, ProfileError> {
    let mut reserved = vec![
        plan::ZERO_PARTITION.to_string(),
        plan::PI_PARTITION.to_string(),
        controller.slurm_partition.clone(),
    ];
    let mut out = Vec::new();
    for rp in &f.slurm_partitions_extra {
        let name = rp.name.get_ref();
        let key = format!("features.slurm_partitions_extra {name}");
        if !valid_hostname(name) {
            return Err(ctx.err(rp.name.span(), &key, "must be letters, digits or `-`"));
        }
        if reserved.contains(name) {
            return Err(ctx.err(
                rp.name.span(),
                &key,
                format!("partition `{name}` is already defined"),
            ));
        }
        reserved.push(name.clone());
        if rp.nodes.is_empty() {
            return Err(ctx.err(rp.name.span(), &key, "a partition needs `nodes`"));
        }
        let mut members = Vec::new();
        for m in &rp.nodes {
            let who = m.get_ref();
            let slurm_name = if controller.is_named(who) {
                if !(f.slurm && controller.slurm_compute) {
                    return Err(ctx.err(
                        m.span(),
                        &key,
                        "the controller is not a Slurm compute node (controller.slurm_compute)",
                    ));
                }
                controller.hostname.clone()
            } else {
                let Some(n) = nodes.iter().find(|n| &n.name == who || &n.hostname == who) else {
                    return Err(ctx.err(m.span(), &key, format!("node `{who}` does not exist")));
                };
                if !plan::slurm_compute(f.slurm, f.slurm_include_picluster, n) {
                    return Err(ctx.err(
                        m.span(),
                        &key,
                        format!("node `{who}` is not a Slurm compute node"),
                    ));
                }
                n.hostname.clone()
            };
            if !members.contains(&slurm_name) {
                members.push(slurm_name);
            }
        }
        out.push(Partition {
            name: name.clone(),
            nodes: members,
        });
    }
    Ok(out)
}

/// Add every aggregate that (transitively) contains one of the groups.
fn close_groups(groups: &mut BTreeSet<String>, aggregates: &BTreeMap<String, Vec<String>>) {
    loop {
        let before = groups.len();
        for (agg, members) in aggregates {
            if members.iter().any(|m| groups.contains(m)) {
                groups.insert(agg.clone());
            }
        }
        if groups.len() == before {
            break;
        }
    }
}

fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
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
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }

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
