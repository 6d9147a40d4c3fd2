//! Where deployed trees come from: the output directory of `chbuild image`
//! (tree directories next to their tarballs) or a bundle built elsewhere
//! (tarballs only). Both carry `manifest.json` and `SHA256SUMS`; a node's
//! build id is its tarball's sha256. Everything is checked here, before
//! anything on the controller is touched.

use super::listing::{self, Listing};
use crate::profile::plan::NodePlan;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// The part of `manifest.json` deploy reads (other keys are ignored).
#[derive(Debug, Deserialize)]
pub struct Manifest {
    pub cluster: String,
    pub nodes: Vec<ManifestNode>,
}

#[derive(Debug, Deserialize)]
pub struct ManifestNode {
    pub name: String,
    pub hostname: String,
    pub kind: String,
    pub slot: Option<u8>,
    pub tree: String,
    /// Absent when the node was built with `--format dir`.
    pub tarball: Option<String>,
    pub sha256: Option<String>,
}

#[derive(Debug)]
pub enum Content {
    /// A tree directory made by `chbuild image`.
    Tree(PathBuf),
    /// A verified tarball, with the listing read while verifying it.
    Tarball { path: PathBuf, listing: Listing },
}

#[derive(Debug)]
pub struct NodeSource {
    pub node: String,
    /// The tarball's sha256, recorded in the deployed tree's marker.
    pub build: String,
    pub content: Content,
}

impl NodeSource {
    /// Whether the tree holds `rel` (a file, not a directory).
    pub fn has_file(&self, rel: &str) -> bool {
        match &self.content {
            Content::Tree(dir) => dir
                .join(rel)
                .symlink_metadata()
                .map(|m| !m.is_dir())
                .unwrap_or(false),
            Content::Tarball { listing, .. } => listing.get(rel).is_some_and(|e| e.kind != 'd'),
        }
    }

    /// The listing with file hashes, for `--diff`.
    pub fn listing(&self) -> Result<Listing> {
        match &self.content {
            Content::Tree(dir) => listing::of_dir(dir, true),
            Content::Tarball { listing, .. } => Ok(listing.clone()),
        }
    }

    pub fn describe(&self) -> String {
        match &self.content {
            Content::Tree(d) => format!("tree {}", d.display()),
            Content::Tarball { path, .. } => format!("tarball {}", path.display()),
        }
    }
}

/// Parse `sha256sum` output: `<hex>  <name>` or `<hex> *<name>`.
pub fn parse_sha256sums(text: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (hex, name) = line
            .split_once(' ')
            .filter(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| anyhow::anyhow!("line {}: expected `<sha256>  <file>`", i + 1))?;
        let name = name.strip_prefix([' ', '*']).unwrap_or(name);
        out.insert(name.to_string(), hex.to_ascii_lowercase());
    }
    Ok(out)
}

/// A manifest file name must be one plain component of the directory.
fn plain_name(name: &str, what: &str) -> Result<()> {
    let mut c = Path::new(name).components();
    match (c.next(), c.next()) {
        (Some(Component::Normal(_)), None) => Ok(()),
        _ => bail!("manifest {what} `{name}` is not a plain file name"),
    }
}

/// Read and check the sources of `plans` from `dir`. With `bundle`, only
/// tarballs are used; otherwise a node's tree directory is preferred and
/// its tarball is the fallback. Every tarball used is verified against both
/// the manifest and SHA256SUMS.
pub fn open(
    dir: &Path,
    bundle: bool,
    cluster: &str,
    plans: &[NodePlan],
) -> Result<Vec<NodeSource>> {
    crate::artifact::commit::finish_pending(dir)?;
    let mpath = dir.join("manifest.json");
    let text = std::fs::read_to_string(&mpath).with_context(|| {
        format!(
            "reading {} (build the trees with `chbuild image` or pass --bundle/--output)",
            mpath.display()
        )
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", mpath.display()))?;
    if manifest.cluster != cluster {
        bail!(
            "{} is for cluster `{}`, but the profile is for `{cluster}`",
            mpath.display(),
            manifest.cluster
        );
    }
    let spath = dir.join("SHA256SUMS");
    let sums =
        std::fs::read_to_string(&spath).with_context(|| format!("reading {}", spath.display()))?;
    let sums = parse_sha256sums(&sums).with_context(|| format!("parsing {}", spath.display()))?;

    let mut out = Vec::new();
    for plan in plans {
        let ub = plan
            .usbboot
            .as_ref()
            .expect("deploy plans are usbboot nodes");
        let m = manifest
            .nodes
            .iter()
            .find(|n| n.name == plan.name)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{} has no node `{}`: build it with `chbuild image {}`",
                    mpath.display(),
                    plan.name,
                    plan.name
                )
            })?;
        if m.kind != "usbboot" || m.slot != Some(ub.slot) {
            bail!(
                "{}: node `{}` was built as {} slot {:?}, the profile says usbboot slot {}",
                mpath.display(),
                m.name,
                m.kind,
                m.slot,
                ub.slot
            );
        }
        if m.hostname != plan.hostname {
            bail!(
                "{}: node `{}` was built with hostname `{}`, the profile says `{}`: rebuild it",
                mpath.display(),
                m.name,
                m.hostname,
                plan.hostname
            );
        }
        let (Some(tarball), Some(sha256)) = (&m.tarball, &m.sha256) else {
            bail!(
                "{}: node `{}` has no tarball, so no build id (built with --format dir?): rebuild it with `chbuild image {}`",
                mpath.display(),
                m.name,
                m.name
            );
        };
        plain_name(&m.tree, "tree")?;
        plain_name(tarball, "tarball")?;
        let listed = sums
            .get(tarball)
            .ok_or_else(|| anyhow::anyhow!("{} has no line for {tarball}", spath.display()))?;
        if !listed.eq_ignore_ascii_case(sha256) {
            bail!(
                "{} and {} disagree on the sha256 of {tarball}",
                mpath.display(),
                spath.display(),
            );
        }
        let tree = dir.join(&m.tree);
        let content = if !bundle && tree.is_dir() {
            Content::Tree(tree)
        } else {
            let path = dir.join(tarball);
            let (sha, listing) = listing::of_tarball(&path)
                .with_context(|| format!("verifying {}", path.display()))?;
            if !sha.eq_ignore_ascii_case(sha256) {
                bail!(
                    "{} is corrupt: its sha256 is {sha}, SHA256SUMS says {sha256}; nothing was changed",
                    path.display(),
                );
            }
            Content::Tarball { path, listing }
        };
        out.push(NodeSource {
            node: plan.name.clone(),
            build: sha256.to_ascii_lowercase(),
            content,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256sums_both_modes() {
        let h = "a".repeat(64);
        let s = parse_sha256sums(&format!("{h}  z1.tar.zst\n{h} *z2.tar.zst\n")).unwrap();
        assert_eq!(s["z1.tar.zst"], h);
        assert_eq!(s["z2.tar.zst"], h);
        assert!(parse_sha256sums("nothex  z1\n").is_err());
    }

    #[test]
    fn names_are_plain() {
        assert!(plain_name("z1.tar.zst", "tarball").is_ok());
        assert!(plain_name("../z1", "tree").is_err());
        assert!(plain_name("/etc", "tree").is_err());
        assert!(plain_name("a/b", "tree").is_err());
    }
}
