//! Artifacts: node trees as deterministic tar.zst, manifest.json, SHA256SUMS.

use crate::profile::Profile;
use std::path::PathBuf;

/// `images/out/<cluster>`.
pub fn default_output_dir(profile: &Profile) -> PathBuf {
    PathBuf::from("images/out").join(&profile.name)
}
