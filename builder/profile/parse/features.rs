//! `[features]`.

use super::nodes::valid_hostname;
use super::Ctx;
use crate::profile::plan::{self, is_slurm_compute};
use crate::profile::schema::RawFeatures;
use crate::profile::{Controller, Features, Node, Partition, ProfileError};
use toml::Spanned;

/// The features, each node they name one the profile has (a server may
/// also be the controller, under its host name).
pub(super) fn features(
    ctx: &Ctx,
    f: &RawFeatures,
    controller: &Controller,
    nodes: &[Node],
) -> Result<Features, ProfileError> {
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
    let features = Features {
        slurm: f.slurm,
        slurm_include_picluster: f.slurm_include_picluster,
        slurm_partitions_extra: partitions_extra(ctx, f, controller, nodes)?,
        docker: f.docker,
        docker_on_zeros: f.docker_on_zeros,
        k3s: f.k3s,
        k3s_server: node_ref(&f.k3s_server, "features.k3s_server")?,
        k3s_airgap_dir: f.k3s_airgap_dir.as_ref().map(|d| ctx.rel(d.get_ref())),
        k3s_version: f.k3s_version.clone(),
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
    Ok(features)
}

/// Extra Slurm partitions: every member must be a Slurm compute node (a
/// node in the `slurm` group, or the controller when it computes), named
/// by node name, host name or a controller name.
fn partitions_extra(
    ctx: &Ctx,
    f: &RawFeatures,
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
                if !is_slurm_compute(f.slurm, f.slurm_include_picluster, n) {
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
