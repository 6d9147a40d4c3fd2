//! `[cluster]` and `[controller]`.

use super::Ctx;
use crate::profile::schema::{RawCluster, RawController};
use crate::profile::{Controller, ProfileError};
use ipnet::Ipv4Net;

/// The cluster's name and networks.
pub(super) struct Cluster {
    pub name: String,
    pub lan_network: Ipv4Net,
    pub zero_network: Ipv4Net,
    pub nfs_network: Ipv4Net,
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
    Ok(Cluster {
        name,
        lan_network: ctx.net(&raw.lan_network, "cluster.lan_network")?,
        zero_network: ctx.net(&raw.zero_network, "cluster.zero_network")?,
        nfs_network: ctx.net(&raw.nfs_network, "cluster.nfs_network")?,
    })
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
