//! Slurm: `slurm.conf` and `cgroup.conf` for the compute nodes, generated
//! from the profile's nodes (identical on every node, as Slurm requires).
//! The controller is the `SlurmctldHost` under its one host name (Slurm
//! has no alias key; the aliases live in /etc/hosts) and, unless the
//! profile says otherwise, a compute node in its own partition. The Zeros
//! form the `zero` partition; the LAN Pis join (partition `picluster`)
//! only with `slurm_include_picluster`. The text is the template
//! `overlays/roles/slurm/etc/slurm/slurm.conf.j2`.

use super::{enable_or_defer, render_template, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::Result;

pub const CONF: &str = "etc/slurm/slurm.conf";
pub const CGROUP: &str = "etc/slurm/cgroup.conf";

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    if !ctx.plan.slurm {
        return Ok(());
    }
    for f in [CONF, CGROUP] {
        let text = render_template(ctx.overlays_dir, "slurm", f, ctx.plan)?;
        w.write(f, text.as_bytes(), 0o644, Owner::ROOT)?;
    }
    pending.packages.push("slurmd".into());
    enable_or_defer(w, pending, "slurmd.service", "multi-user.target")
}
