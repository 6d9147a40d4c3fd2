//! The imported settings as profile text (TOML with comments).

use super::resolve::Settings;
use anyhow::Result;
use std::fmt::Write as _;
use std::path::Path;

fn s(v: &str) -> String {
    toml::Value::String(v.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    let v: Vec<String> = items.iter().map(|i| s(i)).collect();
    format!("[{}]", v.join(", "))
}

pub fn profile_text(st: &Settings, inventory: &Path, group_vars: &Path) -> Result<String> {
    let mut p = String::new();
    writeln!(
        p,
        "# Imported from {} and {} by `chbuild import-ansible`.",
        inventory.display(),
        group_vars.display()
    )?;
    writeln!(p, "\n[cluster]\nname = {}", s(&st.cluster))?;
    writeln!(p, "lan_network = {}", s(&st.lan_network))?;
    writeln!(
        p,
        "zero_network = \"172.19.181.0/24\"\nnfs_network = \"172.19.180.0/24\""
    )?;
    writeln!(p, "timezone = {}", s(&st.timezone))?;

    writeln!(p, "\n[controller]\nhostname = {}", s(&st.controller))?;
    writeln!(p, "aliases = [\"controller\", \"p0\"]")?;
    writeln!(p, "lan_address = {}", s(&st.controller_address.to_string()))?;
    writeln!(
        p,
        "zero_address = \"172.19.181.254\"\nnfs_address = \"172.19.180.254\""
    )?;
    writeln!(p, "model = {}", s(&st.controller_model))?;

    let b = &st.base;
    writeln!(p, "\n[base]\nsource = \"url\"\nurl = {}", s(&b.url))?;
    match &b.checksum {
        Some(c) => writeln!(p, "checksum = {}", s(c))?,
        None => writeln!(
            p,
            "# usbboot_img_checksum was empty. Every download says loudly that it is\n\
             # not verified; pin it with the sha256 chbuild prints after the download.\n\
             checksum = \"unverified\""
        )?,
    }
    writeln!(p, "architecture = {}", s(b.architecture))?;
    writeln!(p, "boot_dir = {}", s(&b.boot_dir))?;

    let u = &st.user;
    writeln!(p, "\n[user]\nname = {}", s(&u.name))?;
    if u.password_hash.is_some() {
        writeln!(
            p,
            "password_hash_file = {}",
            s(crate::secrets::PASSWORD_HASH)
        )?;
    }
    writeln!(p, "password_hash_env = \"CHBUILD_PASSWORD_HASH\"")?;
    writeln!(p, "ssh_authorized_keys = {}", list(&u.keys))?;
    writeln!(
        p,
        "ssh_key_only = true\npermit_root_login = false\nsudo = true"
    )?;

    writeln!(p, "\n[features]")?;
    for (key, v) in &st.features {
        writeln!(p, "{key} = {v}")?;
        if *key == "k3s_version" {
            // First boot installs exactly this release, checked: the sum
            // comes from chbuild's verified pins or from the user.
            let version = v.as_str().unwrap_or_default();
            match crate::profile::plan::known_k3s_sha256(version, b.architecture) {
                Some(sum) => writeln!(p, "k3s_sha256 = {}", s(sum))?,
                None => writeln!(
                    p,
                    "# chbuild knows no sha256 for k3s {version}: copy the line of the binary for\n\
                     # {} from the release's sha256sum-{}.txt, or give an air-gap bundle.\n\
                     # k3s_sha256 = \"<64 hex digits>\"",
                    b.architecture,
                    b.architecture
                )?,
            }
        }
    }

    writeln!(p, "\n[packages]\nbase = {}", list(&st.packages_base))?;
    writeln!(p, "\n[packages.extra]")?;
    for (g, pk) in &st.packages_extra {
        writeln!(p, "{g} = {}", list(pk))?;
    }

    writeln!(p, "\n[groups]")?;
    for (g, ch) in &st.aggregates {
        writeln!(p, "{g} = {}", list(ch))?;
    }

    if let Some(d) = &st.secrets_dir {
        writeln!(p, "\n[secrets]\ndir = {}", s(d))?;
    }

    for n in &st.nodes {
        writeln!(
            p,
            "\n[[node]]\nname = {}\nkind = \"{}\"",
            s(&n.name),
            n.kind
        )?;
        writeln!(p, "model = {}", s(&n.model))?;
        if let Some(slot) = n.slot {
            writeln!(p, "slot = {slot}")?;
        }
        writeln!(p, "address = {}", s(&n.address.to_string()))?;
        writeln!(p, "groups = {}", list(&n.groups))?;
        if !n.packages.is_empty() || n.docker.is_some() {
            writeln!(p, "[node.overrides]")?;
            if !n.packages.is_empty() {
                writeln!(p, "packages = {}", list(&n.packages))?;
            }
            if let Some(d) = n.docker {
                writeln!(p, "docker = {d}")?;
            }
        }
        if !n.vars.is_empty() {
            writeln!(p, "[node.overrides.vars]")?;
            for (k, v) in &n.vars {
                let bare = k
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let key = if bare { k.clone() } else { s(k) };
                writeln!(p, "{key} = {v}")?;
            }
        }
    }
    Ok(p)
}
