//! Package layers: a base plus the packages a set of nodes needs,
//! installed at build time with the base's own apt sources, so a node
//! boots with every package it uses and needs no network for them.
//!
//! A layer is keyed by the base digest, the architecture, the digest of
//! the base's apt sources and the sorted set of packages the base lacks;
//! it is built once and shared by every node with the same set. It is
//! built in an overlayfs mount over its parent (the base, or the largest
//! stored layer whose set it contains), with apt running natively and
//! dpkg in the tree (`DPkg::Chroot-Directory`, under qemu-user when the
//! architecture is foreign), no daemon started. The upper directory is
//! then folded into a tree whose untouched files are the parent's inodes
//! (hardlinks), so layers and node trees keep sharing the base's `usr/`.
//!
//! ```text
//! <store>/layers/<key>/tree/         the base plus the layer's packages
//! <store>/layers/<key>/layer.json    base, parent, packages, sizes
//! <store>/apt/archives-<arch>/       downloaded packages, shared
//! <store>/apt/lists-<arch>-<src>/    package indexes per apt sources
//! ```

use super::{BaseTree, Store};
use crate::fs::{copy_tree, merge_upper, remove_tree, sync_dir, LinkPolicy};
use crate::profile::model::Arch;
use crate::tools;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

const LAYERS: &str = "layers";
const APT: &str = "apt";
pub(super) const LAYER_META: &str = "layer.json";
pub(super) const TREE: &str = "tree";
/// Bumped when the way a layer is built changes what it holds.
const FORMAT: &str = "chbuild-layer-1";

const MOUNT_SCRIPT: &str = include_str!("layer-mount.sh");
const APT_CONF: &str = include_str!("layer-apt.conf");

/// What `store list` shows of a layer, and what later builds read.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerMeta {
    pub key: String,
    /// Digest of the base the layer was built on.
    pub base: String,
    /// The layer it was built on, when not the base itself.
    pub parent: Option<String>,
    pub architecture: String,
    /// Digest of the base's apt sources.
    pub sources: String,
    /// The packages asked for (those the base lacks), sorted.
    pub packages: Vec<String>,
    /// Every package the layer installed, with its version.
    pub installed: Vec<String>,
    /// Bytes of the files the layer added or replaced, without those it
    /// shares with other layers.
    pub size: u64,
    pub seconds: f64,
    /// Set on a Zero boot layer (see [`super::zero_boot`]), which adds
    /// no packages but a rebuilt initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<InitramfsLayer>,
}

/// What a Zero boot layer rebuilt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitramfsLayer {
    /// Kernel versions whose initramfs was rebuilt.
    pub kernels: Vec<String>,
    /// The boot directory its images were put in (besides `boot/`).
    pub boot_dir: String,
    /// The initramfs-tools files it added.
    pub files: Vec<String>,
}

/// Names of the packages a dpkg status file lists as installed.
pub fn installed(status: &str) -> BTreeSet<String> {
    installed_versions(status).into_keys().collect()
}

/// Installed packages and their versions.
fn installed_versions(status: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for para in status.split("\n\n") {
        let (mut name, mut version, mut ok) = (None, String::new(), false);
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Version:") {
                version = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("Status:") {
                ok = v.split_whitespace().last() == Some("installed");
            }
        }
        if let (Some(n), true) = (name, ok) {
            out.insert(n, version);
        }
    }
    out
}

fn read_status(root: &Path) -> Result<String> {
    let p = root.join("var/lib/dpkg/status");
    match fs::read_to_string(&p) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The packages of `wanted` the tree at `root` does not have, sorted.
pub fn missing(root: &Path, wanted: &[String]) -> Result<Vec<String>> {
    let have = installed(&read_status(root)?);
    let set: BTreeSet<&String> = wanted.iter().filter(|p| !have.contains(*p)).collect();
    Ok(set.into_iter().cloned().collect())
}

/// Digest of the apt sources a tree carries: a layer built from other
/// sources is another layer.
pub fn sources_digest(root: &Path) -> Result<String> {
    let mut h = Sha256::new();
    let mut files = vec![root.join("etc/apt/sources.list")];
    let d = root.join("etc/apt/sources.list.d");
    if d.is_dir() {
        let mut more: Vec<PathBuf> = fs::read_dir(&d)
            .with_context(|| format!("reading {}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        if let Ok(bytes) = fs::read(&f) {
            h.update(
                f.strip_prefix(root)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update([0]);
            h.update(&bytes);
            h.update([0]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The key of the layer with `packages` (sorted, all missing from the
/// base) on `base`.
pub fn key(base: &BaseTree, arch: Arch, sources: &str, packages: &[String]) -> String {
    let mut h = Sha256::new();
    for part in [FORMAT, &base.digest, arch.debian(), sources] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for p in packages {
        h.update(p.as_bytes());
        h.update([b'\n']);
    }
    hex::encode(h.finalize())
}

/// Why each package is wanted (`packages.extra.slurm on z1`), for errors
/// that name the group and the node that asked.
pub type Origins = BTreeMap<String, Vec<String>>;

fn origin_of(origins: &Origins, package: &str) -> String {
    match origins.get(package) {
        Some(o) if !o.is_empty() => o.join(", "),
        _ => "the profile".into(),
    }
}

impl Store {
    pub(super) fn layers_dir(&self) -> PathBuf {
        self.root.join(LAYERS)
    }

    /// Every complete layer in the store.
    pub fn layers(&self) -> Result<Vec<LayerMeta>> {
        let dir = self.layers_dir();
        let mut out = vec![];
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(out);
        };
        for e in rd {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let meta = e.path().join(LAYER_META);
            if let Ok(text) = fs::read_to_string(&meta) {
                out.push(
                    serde_json::from_str(&text)
                        .with_context(|| format!("reading {}", meta.display()))?,
                );
            }
        }
        out.sort_by(|a: &LayerMeta, b| a.key.cmp(&b.key));
        Ok(out)
    }

    pub(super) fn layer_tree(&self, key: &str) -> Option<BaseTree> {
        let dir = self.layers_dir().join(key);
        dir.join(LAYER_META).is_file().then(|| BaseTree {
            digest: key.to_string(),
            root: dir.join(TREE),
        })
    }

    /// The key of the layer a node with `wanted` packages is built from,
    /// or none when the base has them all.
    pub fn layer_key(
        &self,
        base: &BaseTree,
        arch: Arch,
        wanted: &[String],
    ) -> Result<Option<String>> {
        let packages = missing(&base.root, wanted)?;
        if packages.is_empty() {
            return Ok(None);
        }
        Ok(Some(key(
            base,
            arch,
            &sources_digest(&base.root)?,
            &packages,
        )))
    }

    /// The tree with `wanted` installed on `base`: the base itself when it
    /// has them all, else the stored layer, built first when needed.
    pub fn ensure_layer(
        &self,
        base: &BaseTree,
        arch: Arch,
        wanted: &[String],
        origins: &Origins,
    ) -> Result<BaseTree> {
        let packages = missing(&base.root, wanted)?;
        if packages.is_empty() {
            return Ok(base.clone());
        }
        let sources = sources_digest(&base.root)?;
        let key = key(base, arch, &sources, &packages);
        if let Some(t) = self.layer_tree(&key) {
            return Ok(t);
        }
        let _lock = self.lock()?;
        if let Some(t) = self.layer_tree(&key) {
            return Ok(t);
        }
        // Build on the largest stored layer this one contains: its
        // packages are installed once, and their files shared.
        let want: BTreeSet<&String> = packages.iter().collect();
        let parent = self
            .layers()?
            .into_iter()
            .filter(|l| l.initramfs.is_none())
            .filter(|l| l.base == base.digest && l.sources == sources)
            .filter(|l| l.architecture == arch.debian())
            .filter(|l| l.packages.iter().all(|p| want.contains(p)))
            .max_by_key(|l| l.packages.len());
        let parent_tree = match &parent {
            Some(l) => self.layer_tree(&l.key).expect("listed layers are complete"),
            None => base.clone(),
        };
        let build = LayerBuild {
            store: self,
            key: &key,
            base,
            parent: parent.as_ref().map(|l| l.key.clone()),
            parent_tree: &parent_tree,
            arch,
            sources: &sources,
            packages: &packages,
            origins,
        };
        build.run()
    }

    /// Remove every layer whose key is not in `keep`; returns their keys.
    /// Called by `gc` with the store locked.
    pub(super) fn gc_layers(&self, keep: &[String]) -> Result<Vec<String>> {
        let mut removed = vec![];
        let dir = self.layers_dir();
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(removed);
        };
        for e in rd {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) {
                continue;
            }
            // Renamed first so a half-removed layer never looks whole.
            let doomed = self
                .root
                .join(format!("{}gc-layer-{name}", super::TMP_PREFIX));
            fs::rename(e.path(), &doomed)
                .with_context(|| format!("renaming {}", e.path().display()))?;
            remove_tree(&doomed)?;
            removed.push(name);
        }
        // The download cache is only a cache.
        remove_tree(&self.root.join(APT))?;
        Ok(removed)
    }
}

struct LayerBuild<'a> {
    store: &'a Store,
    key: &'a str,
    base: &'a BaseTree,
    parent: Option<String>,
    parent_tree: &'a BaseTree,
    arch: Arch,
    sources: &'a str,
    packages: &'a [String],
    origins: &'a Origins,
}

impl LayerBuild<'_> {
    fn run(&self) -> Result<BaseTree> {
        let started = std::time::Instant::now();
        if !crate::fs::is_root() {
            bail!(
                "installing {} into a package layer needs root (an overlay mount, and \
                 the packages' owners): run chbuild as root",
                self.packages.join(" ")
            );
        }
        tools::APT_GET.require()?;
        tools::APT_CACHE.require()?;
        tools::check_foreign_arch(self.arch.qemu())?;
        let tmp = self.store.tempdir()?;
        let (upper, work, merged) = (
            tmp.path().join("upper"),
            tmp.path().join("work"),
            tmp.path().join("merged"),
        );
        let apt = self.store.root.join(APT);
        let archives = apt.join(format!("archives-{}", self.arch.debian()));
        let lists = apt.join(format!(
            "lists-{}-{}",
            self.arch.debian(),
            &self.sources[..16]
        ));
        for d in [
            &upper,
            &work,
            &merged,
            &archives.join("partial"),
            &lists.join("partial"),
        ] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let sources = tmp.path().join("sources");
        copy_sources(&self.parent_tree.root, &sources)?;
        let conf = tmp.path().join("apt.conf");
        fs::write(
            &conf,
            APT_CONF
                .replace("@ARCH@", self.arch.debian())
                .replace("@ROOT@", &merged.to_string_lossy())
                .replace("@SOURCES@", &sources.to_string_lossy()),
        )
        .with_context(|| format!("writing {}", conf.display()))?;
        let mounts = [
            self.parent_tree.root.as_path(),
            &upper,
            &work,
            &merged,
            &archives,
            &lists,
        ];
        let run = |argv: Vec<OsString>| -> Result<(bool, String)> {
            let env = [
                ("DEBIAN_FRONTEND", "noninteractive"),
                ("DEBCONF_NONINTERACTIVE_SEEN", "true"),
                ("LC_ALL", "C.UTF-8"),
                ("APT_LISTCHANGES_FRONTEND", "none"),
            ];
            let out = tools::run_with_private_mounts(MOUNT_SCRIPT, &mounts, &argv, &env)?;
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            Ok((out.status.success(), text))
        };
        let apt_argv = |tool: &str, args: &[&str]| -> Vec<OsString> {
            let mut v: Vec<OsString> = vec![tool.into(), "-c".into(), conf.clone().into()];
            v.extend(args.iter().map(OsString::from));
            v
        };
        tracing::info!(
            "layer {}: installing {} on {}",
            &self.key[..12],
            self.packages.join(" "),
            self.parent.as_deref().unwrap_or(&self.base.digest)
        );

        let progress = crate::progress::Progress::steps(&format!("layer {}", &self.key[..12]));
        progress.step("apt-get update (the base's sources)");
        let (ok, log) = run(apt_argv("apt-get", &["update"]))?;
        if !ok {
            bail!(
                "apt-get update for a package layer failed (the base's apt sources, {}):\n{}",
                self.parent_tree.root.join("etc/apt/sources.list").display(),
                last_lines(&log, 20)
            );
        }
        progress.step("checking that every package exists");
        self.check_candidates(&run, &apt_argv)?;
        progress.step(&format!(
            "installing {} packages (dpkg under emulation)",
            self.packages.len()
        ));

        let mut args = vec!["install", "--"];
        args.extend(self.packages.iter().map(String::as_str));
        let (ok, log) = run(apt_argv("apt-get", &args))?;
        if !ok {
            bail!("{}", install_failure(&log, self.packages, self.origins));
        }
        let (ok, audit) = run(vec![
            "chroot".into(),
            merged.clone().into(),
            "dpkg".into(),
            "--audit".into(),
        ])?;
        if !ok || !audit.trim().is_empty() {
            bail!(
                "dpkg --audit found problems after installing {}:\n{}",
                self.packages.join(" "),
                last_lines(&audit, 30)
            );
        }

        // What the layer's dpkg database says is installed now.
        let status = fs::read_to_string(upper.join("var/lib/dpkg/status"))
            .with_context(|| format!("reading the layer's dpkg status in {}", upper.display()))?;
        let now = installed_versions(&status);
        let before = installed_versions(&read_status(&self.parent_tree.root)?);
        for p in self.packages {
            if !now.contains_key(p) {
                bail!(
                    "the package {p} (asked by {}) is not installed after apt-get install: \
                     is it a virtual package? name the package that provides it",
                    origin_of(self.origins, p)
                );
            }
        }
        let installed: Vec<String> = now
            .iter()
            .filter(|(n, v)| before.get(*n) != Some(*v))
            .map(|(n, v)| format!("{n}={v}"))
            .collect();

        progress.step("folding the layer into a tree");
        let tree = tmp.path().join(TREE);
        copy_tree(&self.parent_tree.root, &tree, &LinkPolicy::link_all())
            .with_context(|| format!("linking the layer's parent into {}", tree.display()))?;
        let stats = merge_upper(
            &upper,
            &tree,
            &["var/cache/apt/archives", "var/lib/apt/lists"],
        )
        .with_context(|| format!("folding the layer into {}", tree.display()))?;
        // Another layer of this base may have installed the same packages
        // on another parent: share its files instead of storing them twice.
        let donors: Vec<PathBuf> = self
            .store
            .layers()?
            .into_iter()
            .filter(|l| l.base == self.base.digest && l.initramfs.is_none())
            .map(|l| self.store.layers_dir().join(&l.key).join(TREE))
            .collect();
        let shared = crate::fs::link_identical(&tree, &stats.files, &donors)?;
        for d in [&upper, &work, &merged, &sources] {
            remove_tree(d)?;
        }
        fs::remove_file(&conf).with_context(|| format!("removing {}", conf.display()))?;
        let meta = LayerMeta {
            key: self.key.to_string(),
            base: self.base.digest.clone(),
            parent: self.parent.clone(),
            architecture: self.arch.debian().into(),
            sources: self.sources.to_string(),
            packages: self.packages.to_vec(),
            installed,
            size: stats.moved_bytes - shared,
            seconds: started.elapsed().as_secs_f64(),
            initramfs: None,
        };
        progress.finish();
        let meta_path = tmp.path().join(LAYER_META);
        crate::fs::write_new(
            &meta_path,
            &serde_json::to_vec_pretty(&meta)?,
            crate::fs::Inode::new(0o644, crate::fs::Durability::Publish),
        )?;
        crate::fs::Dir::open(tmp.path())?.syncfs()?;
        let layers = self.store.layers_dir();
        fs::create_dir_all(&layers).with_context(|| format!("creating {}", layers.display()))?;
        let dest = layers.join(self.key);
        fs::rename(tmp.path(), &dest)
            .with_context(|| format!("renaming {} to {}", tmp.path().display(), dest.display()))?;
        let _ = tmp.keep();
        sync_dir(&layers)?;
        tracing::info!(
            "layer {}: {} packages, {} MiB added, in {:.0} s",
            &self.key[..12],
            meta.installed.len(),
            meta.size >> 20,
            meta.seconds
        );
        Ok(BaseTree {
            digest: self.key.to_string(),
            root: dest.join(TREE),
        })
    }

    /// Every package must exist in the base's sources: an unknown one is
    /// named with the group and node that asked for it, before anything
    /// is installed.
    fn check_candidates(
        &self,
        run: &dyn Fn(Vec<OsString>) -> Result<(bool, String)>,
        apt_argv: &dyn Fn(&str, &[&str]) -> Vec<OsString>,
    ) -> Result<()> {
        let mut args = vec!["policy", "--"];
        args.extend(self.packages.iter().map(String::as_str));
        let (ok, out) = run(apt_argv("apt-cache", &args))?;
        if !ok {
            bail!("apt-cache policy failed:\n{}", last_lines(&out, 20));
        }
        let found = candidates(&out);
        let unknown: Vec<String> = self
            .packages
            .iter()
            .filter(|p| !found.contains(*p))
            .map(|p| format!("  {p} (asked by {})", origin_of(self.origins, p)))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "no such package in the base's apt sources ({}):\n{}",
                self.parent_tree.root.join("etc/apt/sources.list").display(),
                unknown.join("\n")
            );
        }
        Ok(())
    }
}

/// The tree's apt sources, copied to `dest` (`sources.list` and
/// `sources.list.d/`) for apt to read in their place, with `file:`
/// repositories read through apt's `copy:` method: apt hands dpkg a
/// `file:` repository's packages where they lie, a path on this machine
/// that dpkg in the tree cannot see, while `copy:` puts them in the
/// archive cache, which the tree has.
fn copy_sources(root: &Path, dest: &Path) -> Result<()> {
    let parts = dest.join("sources.list.d");
    fs::create_dir_all(&parts).with_context(|| format!("creating {}", parts.display()))?;
    let rewrite = |text: &str| {
        text.lines()
            .map(|l| {
                l.replace(" file:/", " copy:/")
                    .replace("\tfile:/", "\tcopy:/")
                    .replace("]file:/", "] copy:/")
            })
            .collect::<Vec<_>>()
            .join("\n")
            + "\n"
    };
    let list = root.join("etc/apt/sources.list");
    let text = match fs::read_to_string(&list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", list.display())),
    };
    let out = dest.join("sources.list");
    fs::write(&out, rewrite(&text)).with_context(|| format!("writing {}", out.display()))?;
    let d = root.join("etc/apt/sources.list.d");
    if let Ok(rd) = fs::read_dir(&d) {
        for e in rd {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let name = e.file_name();
            let n = name.to_string_lossy();
            if !(n.ends_with(".list") || n.ends_with(".sources")) {
                continue;
            }
            let text = fs::read_to_string(e.path())
                .with_context(|| format!("reading {}", e.path().display()))?;
            let out = parts.join(&name);
            fs::write(&out, rewrite(&text))
                .with_context(|| format!("writing {}", out.display()))?;
        }
    }
    Ok(())
}

/// Packages `apt-cache policy` shows with an installation candidate.
fn candidates(policy: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            let name = line.trim_end_matches(':');
            current = Some(name.split(':').next().unwrap_or(name).to_string());
        } else if let (Some(name), Some(c)) = (&current, line.trim().strip_prefix("Candidate:")) {
            if c.trim() != "(none)" {
                out.insert(name.clone());
            }
        }
    }
    out
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The error of a failed `apt-get install`: the packages dpkg could not
/// process and their log lines, else apt's last lines.
fn install_failure(log: &str, asked: &[String], origins: &Origins) -> String {
    let mut failing: Vec<String> = vec![];
    let mut in_list = false;
    for line in log.lines() {
        if line.starts_with("Errors were encountered while processing:") {
            in_list = true;
        } else if in_list && line.starts_with(' ') {
            failing.push(line.trim().to_string());
        } else {
            in_list = false;
        }
        if let Some(rest) = line.strip_prefix("dpkg: error processing package ") {
            if let Some(name) = rest.split_whitespace().next() {
                let name = name.split(':').next().unwrap_or(name).to_string();
                if !failing.contains(&name) {
                    failing.push(name);
                }
            }
        }
    }
    failing.dedup();
    let mut msg = format!(
        "installing the package layer ({}) failed; the store is unchanged",
        asked.join(" ")
    );
    if failing.is_empty() {
        msg.push_str(&format!(":\n{}", last_lines(log, 25)));
        return msg;
    }
    for p in &failing {
        let p = p.split(':').next().unwrap_or(p);
        msg.push_str(&format!("\n\nfailing package {p}"));
        if asked.iter().any(|a| a == p) {
            msg.push_str(&format!(" (asked by {})", origin_of(origins, p)));
        }
        msg.push_str(":\n");
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(p)).collect();
        msg.push_str(&lines[lines.len().saturating_sub(15)..].join("\n"));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_repositories_are_copied() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("etc/apt/sources.list.d")).unwrap();
        fs::write(
            root.join("etc/apt/sources.list"),
            "deb http://mirror/debian bookworm main\ndeb [trusted=yes] file:/srv/repo ./\n",
        )
        .unwrap();
        fs::write(
            root.join("etc/apt/sources.list.d/local.sources"),
            "Types: deb\nURIs: file:/srv/other\nSuites: ./\n",
        )
        .unwrap();
        let dest = t.path().join("out");
        copy_sources(&root, &dest).unwrap();
        let list = fs::read_to_string(dest.join("sources.list")).unwrap();
        assert!(list.contains("http://mirror/debian") && list.contains(" copy:/srv/repo"));
        let s = fs::read_to_string(dest.join("sources.list.d/local.sources")).unwrap();
        assert!(s.contains("URIs: copy:/srv/other"), "{s}");
    }

    #[test]
    fn policy_output_names_candidates() {
        let out = "slurmd:\n  Installed: (none)\n  Candidate: 22.05.8-4\n  Version table:\n     22.05.8-4 500\nvirt:\n  Installed: (none)\n  Candidate: (none)\n";
        let c = candidates(out);
        assert!(c.contains("slurmd"));
        assert!(!c.contains("virt"));
    }

    #[test]
    fn install_failure_names_the_package_and_its_lines() {
        let log = "Setting up ok (1) ...\nSetting up bad (1) ...\nbad: postinst says no\ndpkg: error processing package bad (--configure):\n installed bad package post-installation script subprocess returned error exit status 1\nErrors were encountered while processing:\n bad\nE: Sub-process /usr/bin/dpkg returned an error code (1)\n";
        let mut o = Origins::new();
        o.insert("bad".into(), vec!["packages.extra.g on z1".into()]);
        let m = install_failure(log, &["bad".into(), "ok".into()], &o);
        assert!(
            m.contains("failing package bad (asked by packages.extra.g on z1)"),
            "{m}"
        );
        assert!(m.contains("bad: postinst says no"), "{m}");
        assert!(!m.contains("Setting up ok"), "{m}");
    }

    #[test]
    fn keys_follow_base_sources_and_set() {
        let b = BaseTree {
            digest: "a".repeat(64),
            root: PathBuf::from("/nonexistent"),
        };
        let k = key(&b, Arch::Arm64, "s", &["x".into()]);
        assert_ne!(k, key(&b, Arch::Arm64, "t", &["x".into()]));
        assert_ne!(k, key(&b, Arch::Arm64, "s", &["x".into(), "y".into()]));
        assert_ne!(k, key(&b, Arch::Armhf, "s", &["x".into()]));
        assert_eq!(k, key(&b, Arch::Arm64, "s", &["x".into()]));
    }
}
