//! Slurm: `slurm.conf` and `cgroup.conf` for the compute nodes, generated
//! from the profile's nodes (identical on every node, as Slurm requires).
//! The controller is the `SlurmctldHost` under its one host name (Slurm
//! has no alias key; the aliases live in /etc/hosts). The Zeros form the
//! `zero` partition; the LAN Pis join (partition `pi`) only with
//! `slurm_include_picluster`. The files are `overlays/roles/slurm/`.

use super::{enable_or_defer, Pending, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use crate::profile::plan::NodePlan;
use anyhow::Result;
use serde_json::{json, Value};

/// What the templates read as `roles.slurm`: the cluster name Slurm sees
/// and the partitions, the first non-empty one the default.
pub fn values(plan: &NodePlan) -> Value {
    let partitions: Vec<Value> = [
        ("zero", &plan.slurm_zero_nodes),
        ("pi", &plan.slurm_pi_nodes),
    ]
    .into_iter()
    .filter(|(_, nodes)| !nodes.is_empty())
    .enumerate()
    .map(|(i, (name, nodes))| json!({"name": name, "nodes": nodes, "default": i == 0}))
    .collect();
    json!({
        "cluster_name": plan.cluster.to_lowercase(),
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
    t.apply(w, "slurm", values(ctx.plan))?;
    pending.packages.push("slurmd".into());
    enable_or_defer(w, pending, "slurmd.service", "multi-user.target")
}
