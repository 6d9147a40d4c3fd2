//! Shared by the roles tests: the fixture base extracted once (cached under
//! the target directory, so every test binary reuses it) and node trees
//! built from it as the pipeline does, with every file hardlinked to the
//! base so any in-place write would show up in the base.

#![allow(dead_code)] // each test binary uses its own part of this module

use chbuild::overlay::Overlays;
use chbuild::profile::{parse_profile_with_secrets, Profile};
use chbuild::roles::{apply_roles, known_hosts, RoleCtx};
use chbuild::secrets::{self, Secrets};
use chbuild::tools;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use walkdir::WalkDir;

#[path = "../support/mod.rs"]
mod support;
pub use support::*;

pub const PI_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/debian-bookworm-arm64-pi.tar.xz"
);
pub const MINBASE_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz"
);
pub const PROFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/profiles/clusterhat.toml");

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The fixture extracted with owners and xattrs (needs root). Extracted
/// beside, then renamed, so a half-extracted tree is never reused.
pub fn extracted(fixture: &str, name: &str) -> Option<PathBuf> {
    if !is_root() {
        skip("extracting the fixture with its owners needs root");
        return None;
    }
    if !Path::new(fixture).exists() {
        skip(&format!("fixture {fixture} is missing"));
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("roles-{name}"));
    if dir.join(".complete").exists() {
        return Some(dir);
    }
    // Unique per thread too: tests of one binary extract in parallel.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.with_extension(format!("tmp{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    tools::run(
        Command::new("tar")
            .arg("--xattrs")
            .arg("--xattrs-include=*")
            .arg("-xpJf")
            .arg(fixture)
            .arg("-C")
            .arg(&tmp),
    )
    .expect("extracting the fixture");
    std::fs::write(tmp.join(".complete"), b"").unwrap();
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another test binary won the race: use its tree.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Some(dir)
}

pub struct Built {
    pub dir: PathBuf,
    pub profile: Profile,
    pub secrets: Secrets,
    pub trees: BTreeMap<String, PathBuf>,
    pub written: BTreeMap<String, Vec<PathBuf>>,
    pub known_hosts: String,
}

impl Built {
    pub fn tree(&self, node: &str) -> &Path {
        &self.trees[node]
    }
    pub fn read(&self, node: &str, rel: &str) -> String {
        let p = self.tree(node).join(rel);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
    }
    pub fn meta(&self, node: &str, rel: &str) -> std::fs::Metadata {
        let p = self.tree(node).join(rel);
        std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }
}

/// Build node trees from `base` with the default profile; `setup` may
/// change the profile (overlay directory, air-gap bundle) given a scratch
/// directory. The work directory (named by `label`) is kept for a look
/// after a failure and replaced by the next run.
pub fn build(
    base: &Path,
    label: &str,
    nodes: &[&str],
    setup: impl Fn(&mut Profile, &Path),
) -> Built {
    build_with_secrets(base, label, nodes, None, setup)
}

/// [`build`], with the secrets copied (0600, in 0700 directories) from
/// `fixed` instead of made at random, so the output is deterministic.
pub fn build_with_secrets(
    base: &Path,
    label: &str,
    nodes: &[&str],
    fixed: Option<&Path>,
    setup: impl Fn(&mut Profile, &Path),
) -> Built {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("roles-build-{label}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let secrets_dir = dir.join("secrets");
    if let Some(src) = fixed {
        copy_private(src, &secrets_dir);
    }
    let text = std::fs::read_to_string(PROFILE).unwrap();
    let mut profile = parse_profile_with_secrets(&text, Path::new(PROFILE), &secrets_dir).unwrap();
    profile.secrets_dir = secrets_dir.clone();
    let scratch = dir.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    setup(&mut profile, &scratch);
    secrets::init(&profile, &secrets_dir, false).unwrap();
    let secrets = Secrets::load(&profile).unwrap();
    let overlays = Overlays::builtin().unwrap();
    // As the pipeline: SOURCE_DATE_EPOCH, else the base's time.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or_else(|_| std::fs::metadata(base.join("etc")).unwrap().mtime());
    let mut trees = BTreeMap::new();
    let mut written = BTreeMap::new();
    for name in nodes {
        let tree = dir.join(name);
        tools::run(Command::new("cp").arg("-al").arg(base).arg(&tree)).unwrap();
        // The controller's card, when the setup gave it a base.
        let plan = if profile.controller.is_named(name) {
            profile
                .controller_sd_plan()
                .expect("the controller has a base")
        } else {
            profile.plan(profile.node(name).unwrap())
        };
        let ctx = RoleCtx {
            profile: &profile,
            plan: &plan,
            secrets: &secrets,
            overlays: &overlays,
            epoch,
        };
        written.insert(name.to_string(), apply_roles(&ctx, &tree).unwrap());
        trees.insert(name.to_string(), tree);
    }
    let known_hosts = known_hosts(&profile, &secrets).unwrap();
    Built {
        dir,
        profile,
        secrets,
        trees,
        written,
        known_hosts,
    }
}

fn copy_private(src: &Path, dest: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in WalkDir::new(src).sort_by_file_name() {
        let e = e.unwrap();
        let to = dest.join(e.path().strip_prefix(src).unwrap());
        let mode = if e.file_type().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            0o700
        } else {
            std::fs::copy(e.path(), &to).unwrap();
            0o600
        };
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// Inode, mode, owner, size and mtime of every entry: a write through a
/// hardlink, a chmod or a chown in place would change one of them.
pub type Snapshot = BTreeMap<PathBuf, (u64, u32, u32, u32, u64, i64)>;

pub fn snapshot(root: &Path) -> Snapshot {
    WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| !e.file_type().is_dir())
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.path().strip_prefix(root).unwrap().to_path_buf(),
                (m.ino(), m.mode(), m.uid(), m.gid(), m.size(), m.mtime()),
            )
        })
        .collect()
}
