//! `chbuild deploy --controller`: put the files chbuild owns on the live
//! controller, the one live host chbuild changes, on the admin's command.
//!
//! Order, so a failure leaves the controller as it was: plan and compare
//! every owned file; install the missing packages (they create the munge
//! and slurm users the owners name); save the files about to change in a
//! rollback set; replace each file atomically (new inode, rename); enable
//! the units; restart those whose configuration changed. Nothing changed
//! means nothing touched, not even the rollback set, so `chbuild rollback
//! clusterhat` always returns to the state before the last real change.

use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::controller::ControllerNodePlan;
use crate::profile::Profile;
use crate::roles::accounts::Accounts;
use crate::roles::controller::{owned_files, Owned};
use crate::secrets::Secrets;
use crate::tools;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the previous versions live, under the root.
pub const ROLLBACK_DIR: &str = "var/lib/chbuild/controller/rollback";
const STATE: &str = "state.json";

/// Options of a controller deploy (from `chbuild deploy --controller`).
#[derive(Debug, Clone)]
pub struct Options {
    pub root: PathBuf,
    /// `--root` named a prefix: no ClusterCTRL needed, no unit started.
    pub prefixed: bool,
    pub dry_run: bool,
    pub diff: bool,
    pub overlays: crate::overlay::Overlays,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub root: PathBuf,
    pub packages_installed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: Vec<String>,
    pub enabled: Vec<String>,
    pub restarted: Vec<String>,
    /// Units whose package provides no unit file (k3s without its installer).
    pub not_installed: Vec<String>,
    /// Line diffs of changed files (secrets shown only by name).
    pub diff: Vec<String>,
    pub dry_run: bool,
}

impl Report {
    pub fn is_unchanged(&self) -> bool {
        self.packages_installed.is_empty() && self.changed.is_empty() && self.enabled.is_empty()
    }
}

/// One saved entry of a rollback set.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    path: String,
    /// False: the file did not exist before; rollback removes it.
    existed: bool,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Units to restart when this file changes back.
    #[serde(default)]
    restarts: Vec<String>,
}

/// Refuse a machine that is not a ClusterCTRL controller, unless a prefix
/// was named.
fn check_clusterctrl(opts: &Options) -> Result<()> {
    if opts.prefixed {
        return Ok(());
    }
    let has_dir = opts.root.join("var/lib/clusterctrl").is_dir();
    if has_dir || tools::which(tools::CLUSTERCTRL.program).is_some() {
        return Ok(());
    }
    Err(crate::error::UsageError(
        "this machine has no ClusterCTRL (no `clusterctrl` on PATH and no /var/lib/clusterctrl): \
         run deploy --controller on the controller, or give --root DIR to write under a prefix"
            .into(),
    )
    .into())
}

fn resolve(acc: &Accounts, f: &Owned) -> Result<Owner> {
    acc.owner(&f.owner, &f.group)
        .with_context(|| format!("owner of {}", f.path))
}

/// Whether the file at `f.path` already is what the plan says.
fn up_to_date(w: &TreeWriter, acc: &Accounts, f: &Owned) -> Result<bool> {
    let host = w.host_path(&f.path)?;
    let Ok(m) = fs::symlink_metadata(&host) else {
        return Ok(false);
    };
    let Ok(owner) = resolve(acc, f) else {
        return Ok(false);
    };
    let attrs = m.mode() & 0o7777 == f.mode && m.uid() == owner.uid && m.gid() == owner.gid;
    Ok(match &f.content {
        None => m.is_dir() && attrs,
        Some(data) => {
            m.is_file()
                && attrs
                && &fs::read(&host).with_context(|| format!("reading {}", host.display()))? == data
        }
    })
}

fn is_secret(f: &Owned) -> bool {
    f.mode & 0o044 == 0
}

fn line_diff(path: &str, old: &str, new: &str) -> String {
    let mut s = format!("--- /{path}\n+++ /{path} (chbuild)\n");
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    for l in &old_lines {
        if !new_lines.contains(l) {
            s.push_str(&format!("-{l}\n"));
        }
    }
    for l in &new_lines {
        if !old_lines.contains(l) {
            s.push_str(&format!("+{l}\n"));
        }
    }
    s
}

fn enabled(w: &TreeWriter, unit: &str) -> bool {
    w.exists(format!(
        "etc/systemd/system/{}.wants/{unit}",
        crate::roles::controller::unit_target(unit)
    ))
}

pub fn deploy(profile: &Profile, opts: &Options) -> Result<Report> {
    check_clusterctrl(opts)?;
    let secrets = Secrets::load(profile)?;
    let plan = profile.controller_plan();
    let files = owned_files(profile, &plan, &secrets, &opts.overlays)?;
    if !opts.root.is_dir() {
        bail!("{} is not a directory", opts.root.display());
    }
    let lock_dir = opts.root.join("var/lib/chbuild");
    if !opts.dry_run {
        fs::create_dir_all(&lock_dir)
            .with_context(|| format!("creating {}", lock_dir.display()))?;
    }
    let _lock = if opts.dry_run {
        None
    } else {
        Some(super::lock::acquire(&lock_dir)?)
    };
    let mut w = TreeWriter::new(&opts.root)?;
    let mut report = Report {
        root: opts.root.clone(),
        dry_run: opts.dry_run,
        ..Report::default()
    };

    let status = w.read_string("var/lib/dpkg/status")?.unwrap_or_default();
    let have = crate::store::layer::installed(&status);
    let missing: Vec<String> = plan
        .packages
        .iter()
        .filter(|p| !have.contains(*p))
        .cloned()
        .collect();

    let acc = Accounts::load(&w)?;
    let mut changed: Vec<&Owned> = Vec::new();
    for f in &files {
        if up_to_date(&w, &acc, f)? {
            report.unchanged.push(f.path.clone());
        } else {
            report.changed.push(f.path.clone());
            changed.push(f);
            if opts.diff {
                report.diff.push(match (&f.content, is_secret(f)) {
                    (None, _) => format!("directory /{} ({:04o})\n", f.path, f.mode),
                    (Some(_), true) => format!("secret /{} (content not shown)\n", f.path),
                    (Some(new), false) => {
                        let old = w.read_string(&f.path)?.unwrap_or_default();
                        line_diff(&f.path, &old, &String::from_utf8_lossy(new))
                    }
                });
            }
        }
    }
    if opts.dry_run {
        report.packages_installed = missing;
        report.enabled = plan
            .units
            .iter()
            .filter(|u| !enabled(&w, u))
            .cloned()
            .collect();
        return Ok(report);
    }

    // Packages first: a failure here leaves every file as it was.
    if !missing.is_empty() {
        tools::apt_install(&opts.root, &missing)
            .with_context(|| format!("installing {} on the controller", missing.join(" ")))?;
        report.packages_installed = missing;
    }

    if !changed.is_empty() {
        // Every owner resolves (the packages made their users) before the
        // first file is touched.
        let acc = Accounts::load(&w)?;
        let owners = changed
            .iter()
            .map(|f| resolve(&acc, f))
            .collect::<Result<Vec<Owner>>>()?;
        save_rollback(&opts.root, &w, &changed)?;
        for (f, owner) in changed.iter().zip(owners) {
            match &f.content {
                None => w.mkdir(&f.path, f.mode, owner)?,
                Some(data) => w.write(&f.path, data, f.mode, owner)?,
            }
        }
        sync_written(&w, &changed)?;
    }

    let mut restart: Vec<String> = Vec::new();
    for f in &changed {
        for u in &f.restarts {
            if !restart.contains(u) {
                restart.push(u.clone());
            }
        }
    }
    for unit in &plan.units {
        if enabled(&w, unit) {
            continue;
        }
        if crate::roles::enable_unit(&mut w, unit, crate::roles::controller::unit_target(unit))? {
            report.enabled.push(unit.clone());
            if !restart.contains(unit) {
                restart.push(unit.clone());
            }
        } else {
            report.not_installed.push(unit.clone());
        }
    }
    restart.retain(|u| !report.not_installed.contains(u) && plan.units.contains(u));
    let touched = !changed.is_empty() || !report.enabled.is_empty();
    if !opts.prefixed && touched {
        tools::systemctl(&["daemon-reload"])?;
        for u in &restart {
            tools::systemctl(&["restart", u])?;
        }
    }
    report.restarted = restart;
    Ok(report)
}

/// A live controller may lose power: each replaced file and the directory
/// holding its new name reach the disk before units restart.
fn sync_written(w: &TreeWriter, changed: &[&Owned]) -> Result<()> {
    for f in changed {
        let host = w.host_path(&f.path)?;
        let parent = host.parent().unwrap_or(Path::new("/"));
        for p in [host.as_path(), parent] {
            fs::File::open(p)
                .and_then(|h| h.sync_all())
                .with_context(|| format!("syncing {}", p.display()))?;
        }
    }
    Ok(())
}

/// Save the current state of `changed` as the rollback set: built in a
/// temporary sibling, then renamed over the previous set.
fn save_rollback(root: &Path, w: &TreeWriter, changed: &[&Owned]) -> Result<()> {
    let dir = root.join(ROLLBACK_DIR);
    let parent = dir.parent().expect("has a parent");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = parent.join(".rollback.new");
    crate::fs::remove_tree(&tmp)?;
    fs::create_dir(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    // The set holds the munge key and the k3s token.
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    let mut saved = Vec::new();
    for f in changed {
        let host = w.host_path(&f.path)?;
        let meta = fs::symlink_metadata(&host).ok();
        match &meta {
            Some(m) if m.is_file() && f.content.is_some() => {
                let copy = tmp.join("files").join(&f.path);
                fs::create_dir_all(copy.parent().expect("has a parent"))
                    .with_context(|| format!("creating {}", copy.display()))?;
                fs::copy(&host, &copy)
                    .with_context(|| format!("saving {} to {}", host.display(), copy.display()))?;
            }
            Some(m) if m.is_dir() && f.content.is_none() => {}
            Some(_) => bail!(
                "{} exists but is not a {}",
                host.display(),
                if f.is_dir() { "directory" } else { "file" }
            ),
            None => {}
        }
        let entry = Saved {
            path: f.path.clone(),
            existed: meta.is_some(),
            mode: meta.as_ref().map_or(0, |m| m.mode() & 0o7777),
            uid: meta.as_ref().map_or(0, |m| m.uid()),
            gid: meta.as_ref().map_or(0, |m| m.gid()),
            restarts: f.restarts.clone(),
        };
        saved.push((entry, f.is_dir()));
    }
    let state: Vec<(Saved, bool)> = saved;
    let json = serde_json::to_vec_pretty(&state)?;
    fs::write(tmp.join(STATE), json)
        .with_context(|| format!("writing {}", tmp.join(STATE).display()))?;
    crate::fs::remove_tree(&dir)?;
    fs::rename(&tmp, &dir).with_context(|| format!("renaming {} into place", dir.display()))?;
    Ok(())
}

#[derive(Debug, Default, Serialize)]
pub struct RollbackReport {
    pub restored: Vec<String>,
    pub removed: Vec<String>,
}

/// Put back the files the last deploy (or rollback) replaced. The files it
/// replaces become the new rollback set, so a second rollback undoes the
/// first.
pub fn rollback(root: &Path, prefixed: bool) -> Result<RollbackReport> {
    let dir = root.join(ROLLBACK_DIR);
    let state_path = dir.join(STATE);
    let text = match fs::read(&state_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "nothing to roll back: {} does not exist (no deploy --controller changed anything yet)",
            state_path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_path.display())),
    };
    let state: Vec<(Saved, bool)> = serde_json::from_slice(&text)
        .with_context(|| format!("parsing {}", state_path.display()))?;
    let lock_dir = root.join("var/lib/chbuild");
    let _lock = super::lock::acquire(&lock_dir)?;
    let mut w = TreeWriter::new(root)?;
    // The current state, to become the next rollback set.
    let current: Vec<Owned> = state
        .iter()
        .map(|(s, is_dir)| Owned {
            path: s.path.clone(),
            content: (!is_dir).then(Vec::new),
            mode: 0,
            owner: String::new(),
            group: String::new(),
            restarts: s.restarts.clone(),
        })
        .collect();
    let refs: Vec<&Owned> = current.iter().collect();
    // Read the saved files before the set is replaced.
    let mut data = Vec::new();
    for (s, is_dir) in &state {
        data.push(if s.existed && !is_dir {
            let p = dir.join("files").join(&s.path);
            Some(fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        } else {
            None
        });
    }
    save_rollback(root, &w, &refs)?;
    let mut report = RollbackReport::default();
    // Put back first, parents before children; then remove what was not
    // there, children before parents.
    for ((s, is_dir), data) in state.iter().zip(data) {
        if !s.existed {
            continue;
        }
        let owner = Owner {
            uid: s.uid,
            gid: s.gid,
        };
        match data {
            Some(d) => w.write(&s.path, &d, s.mode, owner)?,
            None if *is_dir => w.mkdir(&s.path, s.mode, owner)?,
            None => bail!("{}: the saved copy is missing", s.path),
        }
        report.restored.push(s.path.clone());
    }
    for (s, is_dir) in state.iter().rev() {
        if s.existed {
            continue;
        }
        if *is_dir {
            // Only an empty directory goes: a daemon's state stays.
            let host = w.host_path(&s.path)?;
            if fs::remove_dir(&host).is_ok() {
                report.removed.push(s.path.clone());
            }
        } else if w.remove(&s.path)? {
            report.removed.push(s.path.clone());
        }
    }
    if !prefixed {
        tools::systemctl(&["daemon-reload"])?;
        let mut units: Vec<&String> = Vec::new();
        for u in state.iter().flat_map(|(s, _)| &s.restarts) {
            if !units.contains(&u) {
                units.push(u);
            }
        }
        for u in units {
            // A unit whose package is gone (or never came) has nothing to
            // restart.
            if let Err(e) = tools::systemctl(&["try-restart", u]) {
                tracing::warn!("{u}: {e:#}");
            }
        }
    }
    Ok(report)
}

/// The plan `chbuild check` prints for the controller.
pub fn describe(plan: &ControllerNodePlan) -> String {
    let mut s = format!(
        "{} (controller, {}): slurmctld={} slurm-compute={} nfs={} k3s={} packages: {}",
        plan.hostname,
        plan.address,
        plan.slurmctld,
        plan.slurm,
        plan.nfs_role.as_deref().unwrap_or("-"),
        plan.k3s_role.as_deref().unwrap_or("-"),
        plan.packages.join(" ")
    );
    if !plan.units.is_empty() {
        s.push_str(&format!("; units: {}", plan.units.join(" ")));
    }
    s
}
