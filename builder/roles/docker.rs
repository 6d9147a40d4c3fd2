//! Docker where the profile's flags say (Zeros only with
//! `docker_on_zeros`): a daemon config logging to the journal
//! (`overlays/roles/docker/`), the service enabled, the user in the
//! `docker` group.

use super::{enable_or_defer, Pending, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use anyhow::Result;
use serde_json::json;

pub fn apply(
    ctx: &RoleCtx,
    t: &mut Templates,
    w: &mut TreeWriter,
    pending: &mut Pending,
) -> Result<()> {
    if !ctx.plan.docker {
        return Ok(());
    }
    t.apply(w, "docker", json!({}))?;
    pending.packages.push("docker.io".into());
    pending.docker_group = Some(ctx.plan.user.name.clone());
    enable_or_defer(w, pending, "docker.service", "multi-user.target")
}
