//! From the project's variables to profile settings, as Ansible would
//! resolve them (`vars/vars.yml` over `host_vars/` over `group_vars/` over
//! the inventory), recording what became of every variable.

use super::inventory::Inventory;
use super::nodes::{host_text, ipv4_of, nodes, CONTROLLER_DEFAULT};
use super::report::{report_global, report_groups};
use super::vars::{self, Sourced, Vars};
use super::{ImportReport, Outcome};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub struct Sources {
    pub inventory_file: PathBuf,
    pub inv: Inventory,
    pub group_files: BTreeMap<String, Vars>,
    pub host_files: BTreeMap<String, Vars>,
    pub play_vars: Vars,
    pub project: PathBuf,
}

impl Sources {
    /// Cluster-wide variables: inventory `all` < `group_vars/all` < vars.yml.
    pub fn global(&self) -> Vars {
        let mut v = self.inv.group_vars.get("all").cloned().unwrap_or_default();
        v.extend(self.group_files.get("all").cloned().unwrap_or_default());
        v.extend(self.play_vars.clone());
        v
    }

    pub fn group(&self, g: &str) -> Vars {
        let mut v = self.inv.group_vars.get(g).cloned().unwrap_or_default();
        v.extend(self.group_files.get(g).cloned().unwrap_or_default());
        v
    }

    pub fn host(&self, h: &str) -> Vars {
        let mut v = self.inv.host_vars.get(h).cloned().unwrap_or_default();
        v.extend(self.host_files.get(h).cloned().unwrap_or_default());
        v
    }

    pub fn scope(&self, s: &Sourced) -> String {
        s.file
            .strip_prefix(&self.project)
            .unwrap_or(&s.file)
            .display()
            .to_string()
    }
}

pub struct User {
    pub name: String,
    pub password_hash: Option<String>,
    pub keys: Vec<String>,
}

pub struct Base {
    pub url: String,
    /// `None`: the project verifies nothing (`usbboot_img_checksum: ''`).
    pub checksum: Option<String>,
    pub architecture: &'static str,
    pub boot_dir: String,
}

pub struct NodeOut {
    pub name: String,
    pub kind: &'static str,
    pub model: String,
    pub slot: Option<u8>,
    pub address: Ipv4Addr,
    pub groups: Vec<String>,
    pub packages: Vec<String>,
    pub docker: Option<bool>,
    pub vars: BTreeMap<String, toml::Value>,
}

pub struct Settings {
    pub cluster: String,
    pub lan_network: String,
    pub timezone: String,
    pub controller: String,
    pub controller_address: Ipv4Addr,
    pub controller_model: String,
    pub base: Base,
    pub user: User,
    /// `[features]` keys and values, in profile order.
    pub features: Vec<(&'static str, toml::Value)>,
    pub packages_base: Vec<String>,
    pub packages_extra: BTreeMap<String, Vec<String>>,
    pub aggregates: Vec<(String, Vec<String>)>,
    pub nodes: Vec<NodeOut>,
    pub secrets_dir: Option<String>,
}

pub(super) struct Ctx<'a> {
    pub src: &'a Sources,
    pub global: Vars,
    pub report: ImportReport,
}

impl Ctx<'_> {
    pub fn get(&self, k: &str) -> Option<&Sourced> {
        self.global.get(k).filter(|s| !s.value.is_null())
    }

    fn text(&mut self, k: &str) -> Option<String> {
        let s = self.get(k)?.clone();
        if vars::is_templated(&s.value) {
            self.report.variables.push(Outcome {
                scope: self.src.scope(&s),
                variable: k.into(),
                kind: "unmapped",
                note: "a Jinja expression cannot be evaluated offline: set its profile key by hand"
                    .into(),
            });
            return None;
        }
        vars::text(&s.value)
    }

    fn flag(&mut self, k: &str, profile_key: &str) -> Result<bool> {
        match self.get(k) {
            None => {
                self.report
                    .assumed
                    .push(format!("{profile_key} = false ({k} is not set)"));
                Ok(false)
            }
            Some(s) => vars::truthy(&s.value).with_context(|| {
                format!(
                    "{}: {k}: `{}` is not a boolean",
                    s.file.display(),
                    vars::text(&s.value).unwrap_or_default()
                )
            }),
        }
    }

    fn list(&self, k: &str) -> Vec<String> {
        self.get(k)
            .map(|s| vars::list(&s.value))
            .unwrap_or_default()
    }
}

pub fn resolve(
    src: &Sources,
    cluster: &str,
    secrets_dir: Option<String>,
) -> Result<(Settings, ImportReport)> {
    let mut c = Ctx {
        src,
        global: src.global(),
        report: ImportReport::default(),
    };
    let inv_file = &src.inventory_file;

    let controller = src
        .inv
        .hosts
        .get("master")
        .and_then(|h| h.first())
        .cloned()
        .with_context(|| {
            format!(
                "{}: no host in group [master] (the controller)",
                inv_file.display()
            )
        })?;
    let controller_address = match ipv4_of(src, &controller)? {
        Some(a) => a,
        None if controller == CONTROLLER_DEFAULT.0 => {
            c.report.assumed.push(format!(
                "{controller} at {} (no ansible_host; the reference project's address)",
                CONTROLLER_DEFAULT.1
            ));
            CONTROLLER_DEFAULT.1
        }
        None => bail!(
            "{}: host {controller} (the controller) has no ansible_host: add \
             `{controller} ansible_host=<its LAN address>`",
            inv_file.display()
        ),
    };
    let o = controller_address.octets();
    let lan_network = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    c.report.assumed.push(format!(
        "LAN network {lan_network} (a /24 around the controller)"
    ));
    c.report.assumed.push(
        "ClusterCTRL networks 172.19.181.0/24 (usb0) and 172.19.180.0/24 (NFS VLAN), \
         controller aliases controller and p0"
            .into(),
    );
    let controller_model = host_text(src, &controller, "pi_model").unwrap_or_else(|| "pi4".into());

    let base = base(&mut c)?;
    let user = User {
        name: c.text("pi_user").unwrap_or_else(|| "pi".into()),
        password_hash: c.text("pi_pwhash").filter(|h| !h.is_empty()),
        keys: c.list("cluster_public_ssh_key"),
    };
    let features = features(&mut c)?;
    let timezone = c.text("timezone").unwrap_or_else(|| "Etc/UTC".into());
    let packages_base = c.list("apt_pkg_base");

    let mut packages_extra = BTreeMap::new();
    for g in group_names(src) {
        if let Some(s) = src.group(&g).get("apt_pkg_extra") {
            packages_extra.insert(g.clone(), vars::list(&s.value));
        }
    }
    let aggregates = src
        .inv
        .order
        .iter()
        .filter(|g| g.as_str() != "all")
        .filter_map(|g| Some((g.clone(), src.inv.children.get(g)?.clone())))
        .collect();

    let nodes = nodes(&mut c)?;
    report_global(&mut c);
    report_groups(&mut c);

    let settings = Settings {
        cluster: cluster.to_string(),
        lan_network,
        timezone,
        controller,
        controller_address,
        controller_model,
        base,
        user,
        features,
        packages_base,
        packages_extra,
        aggregates,
        nodes,
        secrets_dir,
    };
    Ok((settings, c.report))
}

/// Feature flags and hosts: Ansible variable -> `[features]` key.
const FLAGS: [(&str, &str); 5] = [
    ("slurmstack_enable", "slurm"),
    ("slurmstack_include_picluster", "slurm_include_picluster"),
    ("docker_runtime_enable", "docker"),
    ("docker_runtime_on_zeros", "docker_on_zeros"),
    ("k3s_cluster_enable", "k3s"),
];
const HOSTS: [(&str, &str); 4] = [
    ("k3s_cluster_server_host", "k3s_server"),
    ("k3s_version", "k3s_version"),
    ("nfs_server_host", "nfs_server"),
    ("nfs_export_path", "nfs_export_path"),
];

fn features(c: &mut Ctx) -> Result<Vec<(&'static str, toml::Value)>> {
    let mut f = vec![];
    for (var, key) in FLAGS {
        let on = c.flag(var, &format!("features.{key}"))?;
        f.push((key, toml::Value::Boolean(on)));
    }
    for (var, key) in HOSTS {
        if let Some(v) = c.text(var) {
            f.push((key, toml::Value::String(v)));
        }
    }
    // The reference project names the client mount point twice.
    if let Some(v) = c.text("nfs_client_mount").or_else(|| c.text("clhat_mpnt")) {
        f.push(("nfs_mount_point", toml::Value::String(v)));
    }
    if let Some(s) = c.get("slurm_partitions_extra") {
        let parts = partitions(s)?;
        if !parts.is_empty() {
            f.push(("slurm_partitions_extra", toml::Value::Array(parts)));
        }
    }
    Ok(f)
}

/// `slurm_partitions_extra`: a list of `{name, nodes}`, `nodes` a list or
/// a comma-separated string in which Slurm's `z[1-4]` ranges are expanded
/// (the profile names every node; the loader checks that each exists).
fn partitions(s: &Sourced) -> Result<Vec<toml::Value>> {
    let what = || format!("{}: slurm_partitions_extra", s.file.display());
    let items = match &s.value {
        serde_yaml_ng::Value::Sequence(items) => items,
        _ => bail!("{}: expected a list of {{name, nodes}}", what()),
    };
    let mut out = vec![];
    for (i, it) in items.iter().enumerate() {
        let field = |k: &str| it.get(k).filter(|v| !v.is_null());
        let name = field("name")
            .and_then(vars::text)
            .with_context(|| format!("{}[{i}]: a partition needs a `name`", what()))?;
        let mut nodes = vec![];
        for n in field("nodes").map(vars::list).unwrap_or_default() {
            for part in n.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                nodes
                    .extend(expand_hostlist(part).with_context(|| {
                        format!("{}[{i}] ({name}): node list `{part}`", what())
                    })?);
            }
        }
        if nodes.is_empty() {
            bail!("{}[{i}] ({name}): a partition needs `nodes`", what());
        }
        let mut t = toml::map::Map::new();
        t.insert("name".into(), toml::Value::String(name));
        t.insert(
            "nodes".into(),
            toml::Value::Array(nodes.into_iter().map(toml::Value::String).collect()),
        );
        out.push(toml::Value::Table(t));
    }
    Ok(out)
}

/// `z[1-4]` -> z1, z2, z3, z4 (one range or list in brackets, as Slurm
/// writes node lists); a plain name stays as it is.
fn expand_hostlist(s: &str) -> Result<Vec<String>> {
    let Some((prefix, rest)) = s.split_once('[') else {
        return Ok(vec![s.to_string()]);
    };
    let Some((inner, suffix)) = rest.split_once(']') else {
        bail!("unclosed `[`");
    };
    let mut out = vec![];
    for item in inner.split(',') {
        match item.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().context("not a number")?,
                    b.trim().parse().context("not a number")?,
                );
                if a > b || b - a > 1024 {
                    bail!("range {a}-{b} is empty or too large");
                }
                out.extend((a..=b).map(|n| format!("{prefix}{n}{suffix}")));
            }
            None => out.push(format!("{prefix}{}{suffix}", item.trim())),
        }
    }
    Ok(out)
}

fn base(c: &mut Ctx) -> Result<Base> {
    let Some(url) = c.text("usbboot_img") else {
        bail!(
            "usbboot_img is needed for the base (looked in {}, group_vars/all and the \
             inventory's [all:vars])",
            c.src.project.join("vars/vars.yml").display()
        );
    };
    let checksum = c
        .text("usbboot_img_checksum")
        .filter(|s| !s.trim().is_empty());
    if checksum.is_none() {
        c.report.warnings.push(format!(
            "usbboot_img_checksum is empty: the profile says checksum = \"unverified\", so {url} \
             is downloaded WITHOUT verification; pin it with checksum = \"sha256:<hex>\" \
             (chbuild prints the digest after the first download)"
        ));
    }
    let architecture = if url.contains("armhf") {
        "armhf"
    } else {
        "arm64"
    };
    let boot_dir = c
        .text("usbboot_boot_firmware_dir")
        .map(|d| d.trim_matches('/').to_string())
        .unwrap_or_else(|| "boot/firmware".into());
    Ok(Base {
        url,
        checksum,
        architecture,
        boot_dir,
    })
}

/// Groups named anywhere: in the inventory or by a group_vars file.
pub(super) fn group_names(src: &Sources) -> BTreeSet<String> {
    src.inv
        .order
        .iter()
        .chain(src.group_files.keys())
        .chain(src.inv.group_vars.keys())
        .filter(|g| g.as_str() != "all")
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::expand_hostlist;

    #[test]
    fn slurm_node_ranges_expand() {
        assert_eq!(expand_hostlist("z[1-3]").unwrap(), ["z1", "z2", "z3"]);
        assert_eq!(expand_hostlist("p[1,5]").unwrap(), ["p1", "p5"]);
        assert_eq!(expand_hostlist("clusterhat").unwrap(), ["clusterhat"]);
        assert!(expand_hostlist("z[3-1]").is_err());
        assert!(expand_hostlist("z[1-").is_err());
    }
}
