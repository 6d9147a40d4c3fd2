//! Slurm: `slurm.conf` and `cgroup.conf` for the compute nodes, generated
//! from the profile's nodes (identical on every node, as Slurm requires).
//! The controller is the `SlurmctldHost` under its one host name (Slurm
//! has no alias key; the aliases live in /etc/hosts). The Zeros form the
//! `zero` partition; the LAN Pis join (partition `pi`) only with
//! `slurm_include_picluster`.

use super::{enable_or_defer, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::NodePlan;
use anyhow::Result;

pub fn slurm_conf(plan: &NodePlan) -> String {
    let mut s = format!(
        "# Written by chbuild from the profile; identical on every node.\n\
         ClusterName={cluster}\n\
         SlurmctldHost={ctl}\n\
         AuthType=auth/munge\n\
         CredType=cred/munge\n\
         MpiDefault=none\n\
         MailProg=/bin/true\n\
         ProctrackType=proctrack/cgroup\n\
         TaskPlugin=task/affinity,task/cgroup\n\
         ReturnToService=2\n\
         SlurmctldPidFile=/run/slurmctld.pid\n\
         SlurmdPidFile=/run/slurmd.pid\n\
         SlurmctldPort=6817\n\
         SlurmdPort=6818\n\
         SlurmdSpoolDir=/var/lib/slurm/slurmd\n\
         StateSaveLocation=/var/lib/slurm/slurmctld\n\
         SlurmUser=slurm\n\
         SwitchType=switch/none\n\
         SchedulerType=sched/backfill\n\
         SelectType=select/cons_tres\n\
         SelectTypeParameters=CR_Core_Memory\n\
         JobAcctGatherType=jobacct_gather/none\n\
         AccountingStorageType=accounting_storage/none\n\
         SlurmctldLogFile=/var/log/slurm/slurmctld.log\n\
         SlurmdLogFile=/var/log/slurm/slurmd.log\n\
         \n",
        cluster = plan.cluster.to_lowercase(),
        ctl = plan.controller.hostname,
    );
    for n in &plan.slurm_nodes {
        s.push_str(&format!(
            "NodeName={} NodeAddr={} CPUs={} RealMemory={} State=UNKNOWN\n",
            n.name, n.address, n.cpus, n.memory_mb
        ));
    }
    s.push('\n');
    let mut default = true;
    for (name, nodes) in [
        ("zero", &plan.slurm_zero_nodes),
        ("pi", &plan.slurm_pi_nodes),
    ] {
        if nodes.is_empty() {
            continue;
        }
        s.push_str(&format!(
            "PartitionName={name} Nodes={} Default={} MaxTime=INFINITE State=UP\n",
            nodes.join(","),
            if default { "YES" } else { "NO" }
        ));
        default = false;
    }
    s
}

pub const CGROUP_CONF: &str = "# Written by chbuild.\n\
ConstrainCores=yes\n\
ConstrainRAMSpace=yes\n";

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    if !ctx.plan.slurm {
        return Ok(());
    }
    w.write(
        "etc/slurm/slurm.conf",
        slurm_conf(ctx.plan).as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    w.write(
        "etc/slurm/cgroup.conf",
        CGROUP_CONF.as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    pending.packages.push("slurmd".into());
    enable_or_defer(w, pending, "slurmd.service", "multi-user.target")
}
