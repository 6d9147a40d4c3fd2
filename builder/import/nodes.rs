//! The inventory's hosts as profile nodes: kind by group, address from
//! `ansible_host` or ClusterCTRL's default, slot, and what each host
//! variable became.

use super::mapping;
use super::report::{cluster_wide, ANSIBLE_CONNECTION};
use super::resolve::{Ctx, NodeOut, Sources};
use super::vars::{self, Sourced};
use super::Outcome;
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The groups chbuild builds, with the node kind and the model assumed when
/// the inventory names none.
const BUILT_GROUPS: [(&str, &str, &str); 3] = [
    ("zerocluster", "usbboot", "zero2"),
    ("picluster", "sd", "pi4"),
    ("management", "sd", "pi5"),
];

/// ClusterCTRL (CNAT) gives Zero N the address 172.19.181.N; the reference
/// project documents its controller `clusterhat` at 172.16.2.200.
pub(super) const CONTROLLER_DEFAULT: (&str, Ipv4Addr) =
    ("clusterhat", Ipv4Addr::new(172, 16, 2, 200));

fn zero_default(slot: u8) -> Ipv4Addr {
    Ipv4Addr::new(172, 19, 181, slot)
}

pub(super) fn host_text(src: &Sources, host: &str, k: &str) -> Option<String> {
    src.host(host).get(k).and_then(|s| vars::text(&s.value))
}

/// The host's `ansible_host`, when it is an IPv4 address.
pub(super) fn ipv4_of(src: &Sources, host: &str) -> Result<Option<Ipv4Addr>> {
    let hv = src.host(host);
    let Some(s) = hv.get("ansible_host") else {
        return Ok(None);
    };
    let text = vars::text(&s.value).unwrap_or_default();
    text.parse().map(Some).with_context(|| {
        format!(
            "{}: ansible_host of {host} is `{text}`, not an IPv4 address: a profile needs the \
             address",
            s.file.display()
        )
    })
}

pub(super) fn nodes(c: &mut Ctx) -> Result<Vec<NodeOut>> {
    let src = c.src;
    let mut out = vec![];
    let mut seen = BTreeSet::new();
    for (group, kind, default_model) in BUILT_GROUPS {
        for h in src.inv.hosts.get(group).into_iter().flatten() {
            if !seen.insert(h.clone()) {
                continue;
            }
            out.push(node(c, h, group, kind, default_model)?);
        }
    }
    // Hosts chbuild does not build are said, not silently dropped.
    for (g, hosts) in &src.inv.hosts {
        for h in hosts {
            if g != "master" && !seen.contains(h) && !src.inv.hosts["master"].contains(h) {
                c.report.variables.push(Outcome {
                    scope: format!("{} [{g}]", src.inventory_file.display()),
                    variable: h.clone(),
                    kind: "unmapped",
                    note: "host in no group chbuild builds (zerocluster, picluster, management): \
                           left out"
                        .into(),
                });
                seen.insert(h.clone());
            }
        }
    }
    Ok(out)
}

fn node(
    c: &mut Ctx,
    h: &str,
    group: &str,
    kind: &'static str,
    default_model: &str,
) -> Result<NodeOut> {
    let src = c.src;
    let hv = src.host(h);
    let model = match host_text(src, h, "pi_model") {
        Some(m) => m,
        None => {
            c.report
                .assumed
                .push(format!("{h}: model {default_model} (no pi_model)"));
            default_model.to_string()
        }
    };
    let slot = if kind == "usbboot" {
        let s = host_text(src, h, "usbboot_slot")
            .or_else(|| {
                Some(
                    h.trim_start_matches(|ch: char| !ch.is_ascii_digit())
                        .to_string(),
                )
            })
            .filter(|s| !s.is_empty())
            .with_context(|| {
                format!(
                    "{}: cannot tell the ClusterCTRL slot of {h}: set usbboot_slot",
                    src.inventory_file.display()
                )
            })?;
        Some(s.parse::<u8>().with_context(|| {
            format!(
                "{}: {h}: slot `{s}` is not a number",
                src.inventory_file.display()
            )
        })?)
    } else {
        None
    };
    let address = match (ipv4_of(src, h)?, slot) {
        (Some(a), _) => a,
        (None, Some(n)) => {
            c.report.assumed.push(format!(
                "{h} at {} (no ansible_host; ClusterCTRL's address for slot {n})",
                zero_default(n)
            ));
            zero_default(n)
        }
        (None, None) => bail!(
            "{}: host {h} ({group}) has no ansible_host and no ClusterHAT default address: add \
             `{h} ansible_host=<its LAN address>`",
            src.inventory_file.display()
        ),
    };
    let groups: Vec<String> = src
        .inv
        .groups_of(h)
        .into_iter()
        .filter(|g| BUILT_GROUPS.iter().any(|b| b.0 == g) || !src.inv.children.contains_key(g))
        .collect();
    let mut n = NodeOut {
        name: h.to_string(),
        kind,
        model,
        slot,
        address,
        groups,
        packages: vec![],
        docker: None,
        vars: BTreeMap::new(),
    };
    for (k, s) in &hv {
        let scope = format!("{} ({h})", src.scope(s));
        let (kind, note) = host_var(&mut n, k, s);
        c.report.variables.push(Outcome {
            scope,
            variable: k.clone(),
            kind,
            note,
        });
    }
    Ok(n)
}

/// Apply one host variable to the node; say what it became.
fn host_var(n: &mut NodeOut, k: &str, s: &Sourced) -> (&'static str, String) {
    if let Some((_, key)) = mapping::HOST_KEYS.iter().find(|(v, _)| *v == k) {
        return ("profile", format!("[[node]] {key}"));
    }
    match k {
        "apt_pkg_extra" => {
            n.packages = vars::list(&s.value);
            ("profile", "[[node]] overrides.packages".into())
        }
        "docker_runtime_enable" if vars::truthy(&s.value) == Some(false) => {
            n.docker = Some(false);
            ("profile", "[[node]] overrides.docker = false".into())
        }
        k if k.starts_with("ansible_") => ("unmapped", ANSIBLE_CONNECTION.into()),
        k => {
            match mapping::known(k) {
                Some(m) => cluster_wide(m),
                None => match vars::to_toml(&s.value) {
                    Some(v) => {
                        n.vars.insert(k.to_string(), v);
                        (
                        "profile",
                        format!("[[node]] overrides.vars.{k} (for overlay templates; no role reads it)"),
                    )
                    }
                    None => ("unmapped", "empty value".into()),
                },
            }
        }
    }
}
