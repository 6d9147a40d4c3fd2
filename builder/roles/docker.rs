//! Docker where the profile's flags say (Zeros only with
//! `docker_on_zeros`): a daemon config logging to the journal
//! (`overlays/roles/docker/`), the service enabled, the user in the
//! `docker` group.

use super::accounts::Accounts;
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
    // docker.io's postinst made the group in the package layer; a base
    // without it leaves the membership to the first boot.
    let mut acc = Accounts::load(w)?;
    if acc.gid("docker").is_some() {
        acc.add_to_group("docker", &ctx.plan.user.name);
        acc.save(w)?;
    } else {
        pending.docker_group = Some(ctx.plan.user.name.clone());
    }
    enable_or_defer(w, pending, "docker.service", "multi-user.target")
}
