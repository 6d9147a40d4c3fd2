//! Docker where the profile's flags say (Zeros only with
//! `docker_on_zeros`): a daemon config logging to the journal, the service
//! enabled, the user in the `docker` group.

use super::{enable_or_defer, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::Result;

pub const DAEMON_JSON: &str = "{\n  \"log-driver\": \"journald\",\n  \"live-restore\": true\n}\n";

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    if !ctx.plan.docker {
        return Ok(());
    }
    w.write(
        "etc/docker/daemon.json",
        DAEMON_JSON.as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    pending.packages.push("docker.io".into());
    pending.docker_group = Some(ctx.plan.user.name.clone());
    enable_or_defer(w, pending, "docker.service", "multi-user.target")
}
