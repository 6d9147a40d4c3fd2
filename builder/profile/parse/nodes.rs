//! `[[node]]`: each node, its address, host name, slot and groups.

use super::cluster::Cluster;
use super::groups::{close_groups, Groups};
use super::Ctx;
use crate::profile::model::Arch;
use crate::profile::plan::NodePlan;
use crate::profile::schema::RawNode;
use crate::profile::{Controller, Node, NodeKind, Profile, ProfileError};
use std::collections::{BTreeMap, BTreeSet};

/// What must be unique across nodes: host names (the controller's
/// included) and ClusterCTRL slots, each with who has it.
struct Taken {
    hostnames: BTreeMap<String, String>,
    slots: BTreeMap<u8, String>,
    addresses: BTreeMap<std::net::Ipv4Addr, String>,
}

pub(super) fn nodes(
    ctx: &Ctx,
    raw: &[RawNode],
    cluster: &Cluster,
    controller: &Controller,
    architecture: Arch,
    groups: &Groups,
) -> Result<Vec<Node>, ProfileError> {
    let mut taken = Taken {
        hostnames: BTreeMap::new(),
        slots: BTreeMap::new(),
        addresses: BTreeMap::from([
            (
                controller.lan_address,
                "the controller (lan_address)".into(),
            ),
            (
                controller.zero_address,
                "the controller (zero_address)".into(),
            ),
            (
                controller.nfs_address,
                "the controller (nfs_address)".into(),
            ),
        ]),
    };
    taken
        .addresses
        .entry(cluster.lan.gateway)
        .or_insert_with(|| "the LAN gateway (cluster.lan_gateway)".into());
    taken
        .hostnames
        .insert(controller.hostname.clone(), "the controller".into());
    for a in &controller.aliases {
        taken.hostnames.insert(a.clone(), "the controller".into());
    }
    let mut nodes: Vec<Node> = Vec::new();
    for rn in raw {
        let node = node(ctx, rn, &nodes, &mut taken, cluster, architecture, groups)?;
        nodes.push(node);
    }
    Ok(nodes)
}

fn node(
    ctx: &Ctx,
    rn: &RawNode,
    before: &[Node],
    taken: &mut Taken,
    cluster: &Cluster,
    architecture: Arch,
    groups: &Groups,
) -> Result<Node, ProfileError> {
    let nname = rn.name.get_ref().clone();
    let key = |k: &str| format!("node {nname}: {k}");
    if !valid_hostname(&nname) {
        return Err(ctx.err(rn.name.span(), &key("name"), "must be a valid host name"));
    }
    if before.iter().any(|n| n.name == nname) {
        return Err(ctx.err(rn.name.span(), &key("name"), "duplicate node name"));
    }
    if taken.hostnames.get(&nname).map(String::as_str) == Some("the controller") {
        return Err(ctx.err(
            rn.name.span(),
            &key("name"),
            format!(
                "`{nname}` is the controller: it is described by [controller], not as a [[node]]"
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
    let address = address(ctx, rn, kind, cluster, taken, &key)?;
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
    let hostname = hostname(ctx, rn, taken, &key)?;
    let slot = slot(ctx, rn, kind, taken, &key)?;
    let mut node_groups = BTreeSet::new();
    for g in &rn.groups {
        if !groups.known.contains(g.get_ref()) {
            return Err(ctx.err(
                g.span(),
                &key("groups"),
                format!("group `{}` does not exist", g.get_ref()),
            ));
        }
        node_groups.insert(g.get_ref().clone());
    }
    close_groups(&mut node_groups, &groups.aggregates);
    Ok(Node {
        name: nname,
        kind,
        model,
        address,
        hostname,
        slot,
        groups: node_groups,
        extra_packages: rn.overrides.packages.clone(),
        memory_mb: rn.overrides.memory_mb.unwrap_or(model.memory_mb()),
        cpus: rn.overrides.cpus.unwrap_or(model.cpus()),
        docker_override: rn.overrides.docker,
        vars: rn.overrides.vars.clone(),
    })
}

/// The node's address, inside its network and used by no one else, or
/// `None` for `dhcp` (SD nodes only: ClusterCTRL gives each Zero the
/// address of its slot).
fn address(
    ctx: &Ctx,
    rn: &RawNode,
    kind: NodeKind,
    cluster: &Cluster,
    taken: &mut Taken,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<std::net::Ipv4Addr>, ProfileError> {
    let span = rn.address.span();
    if rn.address.get_ref() == DHCP {
        return match kind {
            NodeKind::Sd => Ok(None),
            NodeKind::Usbboot => Err(ctx.err(
                span,
                &key("address"),
                "a usbboot Zero cannot use `dhcp`: ClusterCTRL routes it by a static \
                 address on the Zero network",
            )),
        };
    }
    let address = ctx.addr(&rn.address, &key("address"))?;
    let net = match kind {
        NodeKind::Usbboot => cluster.zero_network,
        NodeKind::Sd => cluster.lan_network,
    };
    if !net.contains(&address) {
        return Err(ctx.err(
            span,
            &key("address"),
            format!("{address} is outside the node's network {net}"),
        ));
    }
    if let Some(owner) = taken.addresses.get(&address) {
        return Err(ctx.err(
            span,
            &key("address"),
            format!("{address} is already used by {owner}"),
        ));
    }
    taken
        .addresses
        .insert(address, format!("node {}", rn.name.get_ref()));
    Ok(Some(address))
}

/// `address = "dhcp"`.
pub(super) const DHCP: &str = "dhcp";

/// The node's host name (its name unless given), used by no one else.
fn hostname(
    ctx: &Ctx,
    rn: &RawNode,
    taken: &mut Taken,
    key: &dyn Fn(&str) -> String,
) -> Result<String, ProfileError> {
    let nname = rn.name.get_ref();
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
    if let Some(other) = taken
        .hostnames
        .insert(hostname.clone(), format!("node {nname}"))
    {
        return Err(ctx.err(
            hspan,
            &key("hostname"),
            format!("host name `{hostname}` is already used by {other}"),
        ));
    }
    Ok(hostname)
}

/// The ClusterCTRL slot: required and unique for a Zero, absent otherwise.
fn slot(
    ctx: &Ctx,
    rn: &RawNode,
    kind: NodeKind,
    taken: &mut Taken,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<u8>, ProfileError> {
    match (kind, &rn.slot) {
        (NodeKind::Usbboot, Some(s)) => {
            let n = *s.get_ref();
            if !(1..=252).contains(&n) {
                return Err(ctx.err(s.span(), &key("slot"), "ClusterCTRL slots are 1..252"));
            }
            if let Some(other) = taken.slots.insert(n, rn.name.get_ref().clone()) {
                return Err(ctx.err(
                    s.span(),
                    &key("slot"),
                    format!("slot {n} is already used by {other}"),
                ));
            }
            Ok(Some(n))
        }
        (NodeKind::Usbboot, None) => Err(ctx.err(
            rn.name.span(),
            &key("slot"),
            "a usbboot node needs `slot` (N of pN)",
        )),
        (NodeKind::Sd, Some(s)) => Err(ctx.err(
            s.span(),
            &key("slot"),
            "only usbboot nodes have a ClusterCTRL slot",
        )),
        (NodeKind::Sd, None) => Ok(None),
    }
}

/// Features a node's model cannot run: k3s and Docker need ARMv7+.
pub(super) fn check_features_run(
    ctx: &Ctx,
    raw: &[RawNode],
    profile: &Profile,
) -> Result<(), ProfileError> {
    for (rn, node) in raw.iter().zip(&profile.nodes) {
        if node.model.arm_version() >= 7 {
            continue;
        }
        let vars = NodePlan::new(profile, node);
        let what = if vars.docker {
            "Docker"
        } else if vars.k3s_role.is_some() {
            "k3s"
        } else {
            continue;
        };
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
    Ok(())
}

pub(super) fn valid_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}
