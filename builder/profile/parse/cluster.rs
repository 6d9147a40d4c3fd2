//! `[cluster]` and `[controller]`.

use super::Ctx;
use crate::profile::schema::{RawCluster, RawController};
use crate::profile::{Controller, Lan, ProfileError};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;

/// The cluster's name and networks.
pub(super) struct Cluster {
    pub name: String,
    pub lan_network: Ipv4Net,
    pub zero_network: Ipv4Net,
    pub nfs_network: Ipv4Net,
    pub lan: Lan,
}

pub(super) fn cluster(ctx: &Ctx, raw: &RawCluster) -> Result<Cluster, ProfileError> {
    let name = raw.name.get_ref().clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ctx.err(
            raw.name.span(),
            "cluster.name",
            "must be letters, digits, `-` or `_`",
        ));
    }
    let lan_network = ctx.net(&raw.lan_network, "cluster.lan_network")?;
    Ok(Cluster {
        name,
        lan: lan(ctx, raw, lan_network)?,
        lan_network,
        zero_network: ctx.net(&raw.zero_network, "cluster.zero_network")?,
        nfs_network: ctx.net(&raw.nfs_network, "cluster.nfs_network")?,
    })
}

/// The LAN gateway (a host of the LAN), its DNS servers and interface.
fn lan(ctx: &Ctx, raw: &RawCluster, net: Ipv4Net) -> Result<Lan, ProfileError> {
    let first_host = Ipv4Addr::from(u32::from(net.network()).saturating_add(1));
    let gateway = match &raw.lan_gateway {
        None if net.prefix_len() >= 31 => {
            return Err(ctx.err(
                raw.lan_network.span(),
                "cluster.lan_gateway",
                format!("{net} has no room for a router: set `lan_gateway`"),
            ))
        }
        None => first_host,
        Some(g) => {
            let a = ctx.addr(g, "cluster.lan_gateway")?;
            let is_host = net.prefix_len() >= 31 || (a != net.network() && a != net.broadcast());
            if !net.contains(&a) || !is_host {
                return Err(ctx.err(
                    g.span(),
                    "cluster.lan_gateway",
                    format!("{a} is not a host of the LAN {net}"),
                ));
            }
            a
        }
    };
    let dns = match &raw.lan_dns {
        None => vec![gateway],
        Some(list) if list.get_ref().is_empty() => {
            return Err(ctx.err(
                list.span(),
                "cluster.lan_dns",
                "name at least one DNS server (or leave `lan_dns` out: the gateway)",
            ))
        }
        Some(list) => list
            .get_ref()
            .iter()
            .map(|d| ctx.addr(d, "cluster.lan_dns"))
            .collect::<Result<_, _>>()?,
    };
    let interface = raw.lan_interface.get_ref();
    if !valid_interface(interface) {
        return Err(ctx.err(
            raw.lan_interface.span(),
            "cluster.lan_interface",
            format!(
                "`{interface}` is not a network interface name (1 to 15 letters, digits, `-`, `_` or `.`)"
            ),
        ));
    }
    Ok(Lan {
        gateway,
        dns,
        interface: interface.clone(),
    })
}

/// A Linux interface name (`IFNAMSIZ` - 1 bytes) that is also safe as a
/// file name and in every network stack's configuration syntax.
fn valid_interface(s: &str) -> bool {
    (1..=15).contains(&s.len())
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The controller, each address inside the network it is on.
pub(super) fn controller(
    ctx: &Ctx,
    c: &RawController,
    cluster: &Cluster,
) -> Result<Controller, ProfileError> {
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
        base: None,
    };
    let controller = Controller {
        cpus: c.cpus.unwrap_or(controller.model.cpus()),
        memory_mb: c.memory_mb.unwrap_or(controller.model.memory_mb()),
        ..controller
    };
    if !super::nodes::valid_hostname(&controller.hostname) {
        return Err(ctx.err(
            c.hostname.span(),
            "controller.hostname",
            "must be a valid host name",
        ));
    }
    for (addr, net, key, span) in [
        (
            controller.lan_address,
            cluster.lan_network,
            "controller.lan_address",
            c.lan_address.span(),
        ),
        (
            controller.zero_address,
            cluster.zero_network,
            "controller.zero_address",
            c.zero_address.span(),
        ),
        (
            controller.nfs_address,
            cluster.nfs_network,
            "controller.nfs_address",
            c.nfs_address.span(),
        ),
    ] {
        if !net.contains(&addr) {
            return Err(ctx.err(span, key, format!("{addr} is outside {net}")));
        }
    }
    Ok(controller)
}
