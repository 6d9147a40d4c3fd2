//! Deploy Zero trees into ClusterCTRL's NFS directories on the controller.

use crate::cli::{Cli, DeployArgs, RollbackArgs};
use crate::profile::Profile;
use anyhow::{bail, Result};

pub fn run(_profile: &Profile, _cli: &Cli, _args: &DeployArgs) -> Result<()> {
    bail!("`chbuild deploy` is not yet implemented")
}

pub fn rollback(_profile: &Profile, _args: &RollbackArgs) -> Result<()> {
    bail!("`chbuild rollback` is not yet implemented")
}
