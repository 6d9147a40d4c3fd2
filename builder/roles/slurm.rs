//! Slurm: `slurm.conf` and `cgroup.conf` for the compute nodes, generated
//! from the profile's nodes (identical on every node, as Slurm requires).
//! The controller is the `SlurmctldHost` under its one host name (Slurm
//! has no alias key; the aliases live in /etc/hosts) and, unless the
//! profile says otherwise, a compute node in its own partition. The Zeros
//! form the `zero` partition; the LAN Pis join (partition `picluster`)
//! only with `slurm_include_picluster`. The files are
//! `overlays/roles/slurm/`; the controller renders the same ones.

use super::{enable_or_defer, Pending, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use crate::profile::plan::SlurmPartition;
use anyhow::Result;
use serde_json::{json, Value};

/// What the templates read as `roles.slurm`: the cluster name Slurm sees
/// and the partitions (the first non-empty one the default), the same for
/// the nodes and the controller.
pub fn values(cluster: &str, partitions: &[SlurmPartition]) -> Value {
    json!({
        "cluster_name": cluster.to_lowercase(),
        "partitions": partitions,
    })
}

pub fn apply(
    ctx: &RoleCtx,
    t: &mut Templates,
    w: &mut TreeWriter,
    pending: &mut Pending,
) -> Result<()> {
    if !ctx.plan.slurm {
        return Ok(());
    }
    t.apply(
        w,
        "slurm",
        values(&ctx.plan.cluster, &ctx.plan.slurm_partitions),
    )?;
    enable_or_defer(w, pending, "slurmd.service", "multi-user.target")
}
