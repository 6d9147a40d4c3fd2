//! The build pipeline: profile -> store -> tree -> artifact. Each stage
//! takes the previous stage's value; none reaches back.

use crate::cli::{Format, SdArgs};
use crate::profile::Profile;
use crate::store::Store;
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub nodes: Vec<String>,
}

pub fn image(
    _profile: &Profile,
    _store: &Store,
    _nodes: &[String],
    _out: &Path,
    _format: Format,
) -> Result<ImageReport> {
    bail!("`chbuild image` is not yet implemented")
}

pub fn sd(
    _profile: &Profile,
    _store: &Store,
    _node: &str,
    _args: &SdArgs,
    _json: bool,
) -> Result<()> {
    bail!("`chbuild sd` is not yet implemented")
}
