//! munge: the cluster's shared key, 0400 and owned by the tree's own munge
//! user. A base without that user gets the key owned by root, and the
//! first-boot unit creates the user and hands it the key.

use super::accounts::Accounts;
use super::{enable_or_defer, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::Result;

pub const KEY: &str = "etc/munge/munge.key";

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, pending: &mut Pending) -> Result<()> {
    if !ctx.plan.munge {
        return Ok(());
    }
    let acc = Accounts::load(w)?;
    let owner = match (acc.uid("munge"), acc.user_gid("munge")) {
        (Some(uid), Some(gid)) => Owner { uid, gid },
        _ => {
            pending.munge_owner = true;
            Owner::ROOT
        }
    };
    if !w.exists("etc/munge") {
        w.mkdir("etc/munge", 0o700, owner)?;
    }
    w.write(KEY, &ctx.secrets.munge_key, 0o400, owner)?;
    enable_or_defer(w, pending, "munge.service", "multi-user.target")
}
