//! `chbuild import-ansible`: turn the reference Ansible inventory and its
//! group variables into an equivalent chbuild profile, reporting every
//! variable that has no place in a profile.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

#[derive(Debug, Default)]
struct Inventory {
    /// group -> hosts, in file order.
    hosts: BTreeMap<String, Vec<String>>,
    /// group -> child groups.
    children: BTreeMap<String, Vec<String>>,
    /// host -> inline variables.
    host_vars: BTreeMap<String, BTreeMap<String, String>>,
    /// Group order as written.
    order: Vec<String>,
}

/// Parse an INI inventory (`[group]`, `[group:children]`, `[group:vars]`).
fn parse_inventory(text: &str, file: &Path) -> Result<Inventory> {
    let mut inv = Inventory::default();
    let mut section: Option<(String, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split(['#', ';']).next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(h) = line.strip_prefix('[') {
            let h = h.strip_suffix(']').with_context(|| {
                format!("{}:{}: unclosed section header", file.display(), i + 1)
            })?;
            let (g, kind) = h.split_once(':').unwrap_or((h, "hosts"));
            if !inv.order.iter().any(|o| o == g) {
                inv.order.push(g.to_string());
            }
            section = Some((g.to_string(), kind.to_string()));
            continue;
        }
        let Some((group, kind)) = &section else {
            bail!("{}:{}: host outside any [group]", file.display(), i + 1);
        };
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        match kind.as_str() {
            "children" => inv.children.entry(group.clone()).or_default().push(name),
            "vars" => {} // group vars inline: reported by the caller via group_vars
            _ => {
                inv.hosts
                    .entry(group.clone())
                    .or_default()
                    .push(name.clone());
                let vars = inv.host_vars.entry(name).or_default();
                for w in words {
                    let (k, v) = w.split_once('=').with_context(|| {
                        format!(
                            "{}:{}: expected key=value, found `{w}`",
                            file.display(),
                            i + 1
                        )
                    })?;
                    vars.insert(k.to_string(), v.trim_matches('"').to_string());
                }
            }
        }
    }
    Ok(inv)
}

/// Variables of one group file (`group_vars/<group>.yml` or `.yaml`).
fn load_group_vars(dir: &Path) -> Result<BTreeMap<String, serde_yaml::Mapping>> {
    let mut out = BTreeMap::new();
    if !dir.is_dir() {
        bail!("{} is not a directory of group variables", dir.display());
    }
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("reading {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let Some(stem) = p.file_stem().map(|s| s.to_string_lossy().into_owned()) else {
            continue;
        };
        if !matches!(p.extension().and_then(|x| x.to_str()), Some("yml" | "yaml")) {
            continue;
        }
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let map: serde_yaml::Mapping =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        out.insert(stem, map);
    }
    Ok(out)
}

#[derive(Debug, Serialize)]
pub struct Unmapped {
    pub scope: String,
    pub variable: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct ImportReport {
    pub profile: String,
    pub secrets: Vec<String>,
    pub assumed: Vec<String>,
    pub unmapped: Vec<Unmapped>,
}

fn as_str(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn as_list(v: &serde_yaml::Value) -> Vec<String> {
    match v {
        serde_yaml::Value::Sequence(s) => s.iter().filter_map(as_str).collect(),
        other => as_str(other).into_iter().collect(),
    }
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|s| toml_str(s)).collect();
    format!("[{}]", v.join(", "))
}

/// Read the inventory and variables; return the profile text and a report.
/// The password hash is written to `secrets_dir` (0600), never inline.
pub fn import_ansible(
    inventory: &Path,
    vars_dir: &Path,
    cluster: &str,
    secrets_dir: &Path,
) -> Result<(String, ImportReport)> {
    let text = std::fs::read_to_string(inventory)
        .with_context(|| format!("reading {}", inventory.display()))?;
    let inv = parse_inventory(&text, inventory)?;
    let group_vars = load_group_vars(vars_dir)?;
    let all = group_vars.get("all").cloned().unwrap_or_default();
    let get = |k: &str| all.get(k);
    let flag = |k: &str| {
        get(k)
            .and_then(as_str)
            .map(|s| s == "true")
            .unwrap_or(false)
    };
    let mut report = ImportReport {
        profile: String::new(),
        secrets: vec![],
        assumed: vec![],
        unmapped: vec![],
    };

    let master = inv
        .hosts
        .get("master")
        .and_then(|h| h.first())
        .cloned()
        .with_context(|| {
            format!(
                "{}: no host in group [master] (the controller)",
                inventory.display()
            )
        })?;
    let addr = |h: &str| -> Result<String> {
        inv.host_vars
            .get(h)
            .and_then(|v| v.get("ansible_host"))
            .cloned()
            .with_context(|| format!("{}: host {h} has no ansible_host", inventory.display()))
    };
    let ctl_addr = addr(&master)?;
    let lan: std::net::Ipv4Addr = ctl_addr.parse().with_context(|| {
        format!(
            "{}: ansible_host of {master} is not an IPv4 address",
            inventory.display()
        )
    })?;
    let o = lan.octets();
    let lan_net = format!("{}.{}.{}.0/24", o[0], o[1], o[2]);
    report.assumed.push(format!(
        "LAN network {lan_net} (a /24 around the controller)"
    ));
    report.assumed.push("ClusterCTRL networks 172.19.181.0/24 (usb0) and 172.19.180.0/24 (NFS VLAN), controller aliases controller and p0".into());

    let mut p = String::new();
    writeln!(
        p,
        "# Imported from {} and {} by `chbuild import-ansible`.",
        inventory.display(),
        vars_dir.display()
    )?;
    writeln!(p, "\n[cluster]\nname = {}", toml_str(cluster))?;
    writeln!(
        p,
        "lan_network = {}\nzero_network = \"172.19.181.0/24\"\nnfs_network = \"172.19.180.0/24\"",
        toml_str(&lan_net)
    )?;
    writeln!(
        p,
        "timezone = {}",
        toml_str(
            &get("timezone")
                .and_then(as_str)
                .unwrap_or_else(|| "Etc/UTC".into())
        )
    )?;
    let ctl_model = inv
        .host_vars
        .get(&master)
        .and_then(|v| v.get("pi_model"))
        .cloned()
        .unwrap_or_else(|| "pi4".into());
    writeln!(
        p,
        "\n[controller]\nhostname = {}\naliases = [\"controller\", \"p0\"]",
        toml_str(&master)
    )?;
    writeln!(p, "lan_address = {}\nzero_address = \"172.19.181.254\"\nnfs_address = \"172.19.180.254\"\nmodel = {}", toml_str(&ctl_addr), toml_str(&ctl_model))?;

    // Base: the usbboot archive by URL and checksum.
    writeln!(p, "\n[base]")?;
    match (
        get("usbboot_img").and_then(as_str),
        get("usbboot_img_checksum").and_then(as_str),
    ) {
        (Some(url), Some(sum)) => {
            let arch = if url.contains("armhf") {
                "armhf"
            } else {
                "arm64"
            };
            writeln!(p, "source = \"url\"\nurl = {}\nchecksum = {}\narchitecture = \"{arch}\"\nboot_dir = \"boot/firmware\"", toml_str(&url), toml_str(&sum))?;
        }
        _ => bail!(
            "{}: usbboot_img and usbboot_img_checksum are needed for the base",
            vars_dir.join("all.yml").display()
        ),
    }

    // User, with the hash moved into the secrets directory.
    let user = get("pi_user")
        .and_then(as_str)
        .unwrap_or_else(|| "pi".into());
    writeln!(p, "\n[user]\nname = {}", toml_str(&user))?;
    if let Some(hash) = get("pi_pwhash").and_then(as_str) {
        let file = secrets_dir.join(crate::secrets::PASSWORD_HASH);
        crate::secrets::write_private(&file, format!("{hash}\n").as_bytes())?;
        report.secrets.push(file.display().to_string());
        writeln!(
            p,
            "password_hash_file = {}",
            toml_str(crate::secrets::PASSWORD_HASH)
        )?;
    }
    writeln!(p, "password_hash_env = \"CHBUILD_PASSWORD_HASH\"")?;
    let keys = get("cluster_public_ssh_key")
        .map(as_list)
        .unwrap_or_default();
    writeln!(
        p,
        "ssh_authorized_keys = {}\nssh_key_only = true\npermit_root_login = false\nsudo = true",
        toml_list(&keys)
    )?;

    writeln!(p, "\n[features]")?;
    for f in [
        "slurm",
        "slurm_include_picluster",
        "docker",
        "docker_on_zeros",
        "k3s",
    ] {
        writeln!(p, "{f} = {}", flag(f))?;
    }
    for (var, key) in [
        ("k3s_server", "k3s_server"),
        ("nfs_server_host", "nfs_server"),
        ("nfs_export_path", "nfs_export_path"),
        ("nfs_mount_point", "nfs_mount_point"),
    ] {
        if let Some(v) = get(var).and_then(as_str) {
            writeln!(p, "{key} = {}", toml_str(&v))?;
        }
    }

    writeln!(
        p,
        "\n[packages]\nbase = {}",
        toml_list(&get("apt_pkg_base").map(as_list).unwrap_or_default())
    )?;
    writeln!(p, "\n[packages.extra]")?;
    for (g, vars) in &group_vars {
        if let Some(extra) = vars.get("apt_pkg_extra") {
            writeln!(p, "{g} = {}", toml_list(&as_list(extra)))?;
        }
    }

    writeln!(p, "\n[groups]")?;
    for g in &inv.order {
        if let Some(ch) = inv.children.get(g) {
            writeln!(p, "{g} = {}", toml_list(ch))?;
        }
    }

    for (group, kind, default_model) in [
        ("zerocluster", "usbboot", "zero2"),
        ("picluster", "sd", "pi4"),
        ("management", "sd", "pi5"),
    ] {
        for h in inv.hosts.get(group).into_iter().flatten() {
            let hv = inv.host_vars.get(h).cloned().unwrap_or_default();
            let model = match hv.get("pi_model") {
                Some(m) => m.clone(),
                None => {
                    report
                        .assumed
                        .push(format!("{h}: model {default_model} (no pi_model)"));
                    default_model.to_string()
                }
            };
            writeln!(
                p,
                "\n[[node]]\nname = {}\nkind = \"{kind}\"\nmodel = {}",
                toml_str(h),
                toml_str(&model)
            )?;
            if kind == "usbboot" {
                let slot = hv
                    .get("usbboot_slot")
                    .cloned()
                    .or_else(|| {
                        Some(
                            h.trim_start_matches(|c: char| !c.is_ascii_digit())
                                .to_string(),
                        )
                        .filter(|s| !s.is_empty())
                    })
                    .with_context(|| {
                        format!(
                            "{}: cannot tell the ClusterCTRL slot of {h}: set usbboot_slot",
                            inventory.display()
                        )
                    })?;
                writeln!(p, "slot = {slot}")?;
            }
            writeln!(
                p,
                "address = {}\ngroups = [{}]",
                toml_str(&addr(h)?),
                toml_str(group)
            )?;
            for k in hv
                .keys()
                .filter(|k| !["ansible_host", "pi_model", "usbboot_slot"].contains(&k.as_str()))
            {
                report.unmapped.push(Unmapped {
                    scope: h.clone(),
                    variable: k.clone(),
                    note: "host variable with no profile key".into(),
                });
            }
        }
    }

    // Every variable that did not find a place, with what to do instead.
    let mapped = [
        "pi_user",
        "pi_pwhash",
        "cluster_public_ssh_key",
        "nfs_server_host",
        "nfs_export_path",
        "nfs_mount_point",
        "slurm",
        "slurm_include_picluster",
        "docker",
        "docker_on_zeros",
        "k3s",
        "k3s_server",
        "timezone",
        "usbboot_img",
        "usbboot_img_checksum",
        "apt_pkg_base",
        "apt_pkg_extra",
    ];
    for (g, vars) in &group_vars {
        for k in vars.keys().filter_map(as_str) {
            if mapped.contains(&k.as_str()) && (g == "all" || k == "apt_pkg_extra") {
                continue;
            }
            let note = match k.as_str() {
                "usbboot_force_reextract" => "use `chbuild deploy --force`",
                "usbboot_uninstall" => "use `chbuild deploy --uninstall`",
                k if k.starts_with("ansible_") => "Ansible connection setting, not needed offline",
                _ => "no profile key: set it in a host override `vars` or an overlay",
            };
            report.unmapped.push(Unmapped {
                scope: format!("group_vars/{g}"),
                variable: k,
                note: note.into(),
            });
        }
    }
    report.profile = p.clone();
    Ok((p, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_sections_children_and_host_vars() {
        let inv = parse_inventory(
            "[master]\nc ansible_host=1.2.3.4\n[x:children]\nmaster\n# comment\n",
            Path::new("hosts"),
        )
        .unwrap();
        assert_eq!(inv.hosts["master"], ["c"]);
        assert_eq!(inv.children["x"], ["master"]);
        assert_eq!(inv.host_vars["c"]["ansible_host"], "1.2.3.4");
        let e = parse_inventory("c ansible_host=1\n", Path::new("hosts")).unwrap_err();
        assert!(e.to_string().contains("hosts:1: host outside any [group]"));
    }
}
