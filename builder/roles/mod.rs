//! Roles baked into node trees (placeholder until the roles land).

use crate::profile::{plan::NodePlan, Profile};
use crate::secrets::Secrets;
use anyhow::Result;
use std::path::{Path, PathBuf};

pub struct RoleCtx<'a> {
    pub profile: &'a Profile,
    pub plan: &'a NodePlan,
    pub secrets: &'a Secrets,
    pub overlays_dir: &'a Path,
}

pub fn apply_roles(ctx: &RoleCtx, tree: &Path) -> Result<Vec<PathBuf>> {
    let _ = (ctx.profile, ctx.plan, ctx.secrets, ctx.overlays_dir, tree);
    Ok(vec![])
}

pub fn known_hosts(profile: &Profile, secrets: &Secrets) -> Result<String> {
    let _ = (profile, secrets);
    Ok(String::new())
}
