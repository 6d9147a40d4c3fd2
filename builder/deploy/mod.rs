//! Deploy Zero trees into ClusterCTRL's NFS directories on the controller,
//! never leaving a node half-written.
//!
//! Per node: prerequisites, power off, stage a hidden sibling of `pN`, swap
//! it into place (`renameat2(RENAME_EXCHANGE)`), run `usbboot-init N` when
//! the tree is an official usbboot tree, check its effects and put the
//! profile's hostname back, commit (old tree kept as `pN.prev`), power on,
//! optionally wait for SSH. The plan is computed first; `--dry-run` prints
//! it and stops.

pub mod clusterctrl;
pub mod controller;
pub mod listing;
pub mod lock;
mod remove;
pub mod source;
pub mod stage;
pub mod swap;
pub mod verify;

pub use remove::rollback;
use remove::uninstall;

use crate::error::UsageError;
use crate::profile::plan::NodePlan;
use crate::profile::{NodeKind, Profile};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use source::{Content, NodeSource};
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use swap::{NfsDir, Recovered, Txn};

/// ClusterCTRL's NFS directory, relative to the root.
pub const NFS_DIR: &str = "var/lib/clusterctrl/nfs";
/// Written into a deployed tree: the build id (tarball sha256) and node.
/// It stands in for the reference flow's `.usbboot_extracted`.
pub const MARKER: &str = ".chbuild-build";
/// Present only in official usbboot trees; `usbboot-init` needs it.
pub const RECONFIG: &str = "usr/share/clusterctrl/reconfig-usbboot";

/// What `deploy` does; the command line makes it from its arguments.
#[derive(Debug, Clone, Default)]
pub struct DeployOptions {
    /// Zero nodes to deploy (every usbboot node when empty).
    pub nodes: Vec<String>,
    /// Deploy under this prefix instead of `/`.
    pub root: PathBuf,
    /// Deploy a bundle built elsewhere (the output directory of `image`).
    pub bundle: Option<PathBuf>,
    /// Where `image` wrote the trees (default: the profile's output dir).
    pub from: Option<PathBuf>,
    /// Put each node's secrets back from this bundle.
    pub secrets_bundle: Option<PathBuf>,
    /// Tell what would happen, change nothing.
    pub dry_run: bool,
    /// List the files that would change against the deployed tree.
    pub diff: bool,
    /// Deploy even when the same build is already in place.
    pub force: bool,
    /// Remove the pN directories instead.
    pub uninstall: bool,
    /// Do not switch node power.
    pub no_power: bool,
    /// Leave the node powered off after deploying.
    pub no_power_on: bool,
    /// Wait this many seconds for SSH on the node after power-on.
    pub wait_for_ssh: u64,
    /// Do not wait for SSH.
    pub no_wait: bool,
    /// Go ahead even when running Zeros are disturbed.
    pub yes: bool,
}

/// What `rollback` does; the command line makes it from its arguments.
#[derive(Debug, Clone, Default)]
pub struct RollbackOptions {
    /// Zero nodes to roll back.
    pub nodes: Vec<String>,
    /// Deployed under this prefix instead of `/`.
    pub root: PathBuf,
    /// Do not switch node power.
    pub no_power: bool,
    /// Go ahead even when running Zeros are disturbed.
    pub yes: bool,
}

/// What a deploy tells as it goes, for the command line to show.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    /// Dry run: the interrupted deploy of this slot would be recovered.
    WouldRecover(&'a str),
    /// Dry run: this leftover of an interrupted run would be removed.
    WouldRemove(&'a str),
    /// Dry run: a prerequisite that is missing (a real run fails on it).
    Missing(&'a str),
    /// `--diff`: the files that differ for one node.
    Diff {
        node: &'a str,
        pname: &'a str,
        lines: &'a [String],
    },
    /// Dry run: what would happen to one node.
    Planned {
        node: &'a str,
        pname: &'a str,
        action: &'a str,
        steps: &'a [String],
    },
}

/// What happened (or would happen) to one node.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub slot: u8,
    /// `deployed`, `unchanged`, `uninstalled`, `rolled-back`; with
    /// `--dry-run`, `would-deploy`, `would-fail` (a prerequisite is
    /// missing), `would-uninstall` or `unchanged`.
    pub action: String,
    pub build: Option<String>,
    pub previous: Option<String>,
    /// `ran`, or why it was skipped.
    pub usbboot_init: Option<String>,
    pub steps: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<Vec<String>>,
}

/// The usbboot nodes selected (every one when `nodes` is empty).
fn usbboot_plans(profile: &Profile, nodes: &[String]) -> Result<Vec<NodePlan>> {
    let names: Vec<String> = if nodes.is_empty() {
        profile
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Usbboot)
            .map(|n| n.name.clone())
            .collect()
    } else {
        crate::profile::select_nodes(profile, nodes).map_err(|e| UsageError(format!("{e:#}")))?
    };
    let mut plans = Vec::new();
    for name in names {
        let node = profile.node(&name).expect("selected nodes exist");
        if node.kind != NodeKind::Usbboot {
            return Err(UsageError(format!(
                "`{name}` boots from an SD card: deploy installs ClusterCTRL Zeros (usbboot nodes) only"
            ))
            .into());
        }
        plans.push(profile.plan(node));
    }
    if plans.is_empty() {
        return Err(UsageError(format!("{} has no usbboot nodes", profile.file.display())).into());
    }
    Ok(plans)
}

fn marker_text(build: &str, node: &str) -> String {
    format!("build={build}\nnode={node}\n")
}

/// The build id recorded in a deployed tree, if any.
pub fn deployed_build(tree: &Path) -> Option<String> {
    let text = std::fs::read_to_string(tree.join(MARKER)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("build="))
        .map(str::to_string)
}

fn short(build: &str) -> &str {
    &build[..build.len().min(12)]
}

/// Bring every `pN` back to a complete tree and delete what dead runs left.
fn recover_all(d: &NfsDir) -> Result<()> {
    for pname in d.pending()? {
        match d.recover(&pname)? {
            Some(Recovered::NotSwapped) => tracing::warn!(
                "{pname}: an interrupted deploy had not swapped yet; its staged tree was removed"
            ),
            Some(Recovered::SwappedBack) => tracing::warn!(
                "{pname}: an interrupted deploy was undone; the previous tree is back in place"
            ),
            Some(Recovered::Finished) => {
                tracing::warn!("{pname}: finished an interrupted deploy that had been committed")
            }
            None => {}
        }
    }
    for name in d.stale()? {
        tracing::info!("removing {name} left by an interrupted run");
        d.remove_stale(&name)?;
    }
    Ok(())
}

/// Nearest existing directory at or above `path` (for file system checks
/// before the NFS directory exists).
fn existing_ancestor(path: &Path) -> PathBuf {
    let mut p = path.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

/// Everything missing for the run, each said exactly.
fn prerequisites(
    nfs: &Path,
    need_clusterctrl: bool,
    need_usbboot_init: bool,
    bytes: u64,
    inodes: u64,
) -> Vec<String> {
    use nix::sys::statfs;
    let mut missing = Vec::new();
    for (need, tool) in [
        (need_clusterctrl, crate::tools::CLUSTERCTRL),
        (need_usbboot_init, crate::tools::USBBOOT_INIT),
    ] {
        if need {
            if let Err(e) = tool.require() {
                missing.push(format!("{e:#}"));
            }
        }
    }
    let at = existing_ancestor(nfs);
    match statfs::statfs(&at) {
        Ok(s) => {
            let t = s.filesystem_type();
            if t == statfs::MSDOS_SUPER_MAGIC || t == statfs::NFS_SUPER_MAGIC {
                missing.push(format!(
                    "{} is on a {} file system: the trees need a local POSIX file system (owners, device nodes, renameat2)",
                    at.display(),
                    if t == statfs::NFS_SUPER_MAGIC { "NFS" } else { "FAT" }
                ));
            }
        }
        Err(e) => missing.push(format!(
            "cannot read the file system of {}: {e}",
            at.display()
        )),
    }
    match nix::sys::statvfs::statvfs(&at) {
        // The casts matter on 32-bit (armhf) controllers, where these
        // counters are 32-bit and their product overflows.
        #[allow(clippy::unnecessary_cast)]
        Ok(v) => {
            let free = v.blocks_available() as u64 * v.fragment_size() as u64;
            // Some room beyond the data itself: directories and metadata.
            let want = bytes + bytes / 20 + (16 << 20);
            if free < want {
                missing.push(format!(
                    "{} has {} MiB free, the new trees need about {} MiB",
                    at.display(),
                    free >> 20,
                    want >> 20
                ));
            }
            let files = v.files_available() as u64;
            if v.files() > 0 && files < inodes {
                missing.push(format!(
                    "{} has {files} free inodes, the new trees need {inodes}",
                    at.display()
                ));
            }
        }
        Err(e) => missing.push(format!(
            "cannot read the free space of {}: {e}",
            at.display()
        )),
    }
    missing
}

/// Power state of every slot, when `clusterctrl` can tell.
fn power_status(required: bool) -> Result<Option<BTreeMap<u8, bool>>> {
    if crate::tools::which(crate::tools::CLUSTERCTRL.program).is_none() {
        return Ok(None);
    }
    match clusterctrl::status() {
        Ok(s) => Ok(Some(s)),
        Err(e) if required => Err(e.context("reading node power with `clusterctrl status`")),
        Err(e) => {
            tracing::warn!("could not read node power: {e:#}");
            Ok(None)
        }
    }
}

/// One node's deploy, decided before anything runs.
struct Job<'a> {
    plan: &'a NodePlan,
    src: &'a NodeSource,
    slot: u8,
    pname: String,
    previous: Option<String>,
    exists: bool,
    unchanged: bool,
    run_init: bool,
    link: bool,
    was_on: bool,
    /// Stage by refreshing `pN.prev` in place (a tarball, and a previous
    /// tree to refresh).
    refresh_prev: bool,
}

impl Job<'_> {
    fn init_note(&self) -> String {
        if self.run_init {
            "ran".into()
        } else {
            format!("skipped: the tree has no {RECONFIG} (not an official usbboot tree), so chbuild's own NFS-boot files for {} are used", self.pname)
        }
    }

    fn steps(&self, args: &DeployOptions) -> Vec<String> {
        let p = &self.pname;
        let mut s = Vec::new();
        if self.unchanged {
            s.push(format!(
                "{p} already has build {}: nothing to do (--force re-deploys)",
                short(&self.src.build)
            ));
            return s;
        }
        if self.was_on {
            s.push(format!("power off {p} (it is on)"));
        }
        let how = match &self.src.content {
            Content::Tree(_) if self.link => "hard links to the tree (copies of etc, var, boot...)",
            Content::Tree(_) => "a copy of the tree",
            Content::Tarball { .. } if self.refresh_prev => &format!(
                "refreshing the old tree (renamed from {p}.prev) to the tarball's content, writing only what differs,"
            ),
            Content::Tarball { .. } => "unpacking the tarball",
        };
        // The pid belongs to the run, not the plan: two dry runs must
        // print the same.
        s.push(format!(
            "stage .{p}.staging-<pid> by {how} from {}",
            self.src.describe()
        ));
        if self.exists {
            s.push(format!("swap it with {p}; keep the old tree as {p}.prev"));
        } else {
            s.push(format!("rename it to {p} (first deploy)"));
        }
        if self.run_init {
            s.push(format!(
                "run usbboot-init {}, check its effects, set hostname {}",
                self.slot, self.plan.hostname
            ));
        } else {
            s.push(format!("usbboot-init {}", self.init_note()));
        }
        if !args.no_power && !args.no_power_on {
            s.push(format!("power on {p}"));
            if !args.no_wait {
                s.push(format!(
                    "wait up to {} s for SSH on {}:22",
                    args.wait_for_ssh,
                    self.plan.reach()
                ));
            }
        }
        s
    }
}

/// Deploy the selected Zeros (or uninstall them); `on` hears what a dry
/// run would do and the `--diff` of every node as the run goes.
pub fn run(
    profile: &Profile,
    args: &DeployOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Vec<NodeReport>> {
    let plans = usbboot_plans(profile, &args.nodes)?;
    let nfs = args.root.join(NFS_DIR);
    if args.uninstall {
        return uninstall(args, &plans, &nfs, on);
    }
    let (dir, bundle) = match (&args.bundle, &args.from) {
        (Some(b), _) => (b.clone(), true),
        (None, Some(o)) => (o.clone(), false),
        (None, None) => (crate::artifact::default_output_dir(profile), false),
    };
    // Checksums first: a corrupt bundle is refused before anything changes.
    let sources = source::open(&dir, bundle, &profile.name, &plans)?;
    let nfs_server = profile.controller.nfs_address.to_string();

    if !args.dry_run {
        std::fs::create_dir_all(&nfs).with_context(|| format!("creating {}", nfs.display()))?;
    }
    let _lock = if args.dry_run {
        None
    } else {
        Some(lock::acquire(&nfs)?)
    };
    let d = if nfs.is_dir() {
        Some(NfsDir::open(&nfs)?)
    } else {
        None
    };
    if let Some(d) = &d {
        if args.dry_run {
            for p in d.pending()? {
                on(Event::WouldRecover(&p));
            }
            for s in d.stale()? {
                on(Event::WouldRemove(&s));
            }
        } else {
            recover_all(d)?;
        }
    }

    let power = power_status(!args.no_power && !args.dry_run)?;
    let jobs = plan_jobs(&plans, &sources, &nfs, args, power.as_ref());
    let work: Vec<&Job> = jobs.iter().filter(|j| !j.unchanged).collect();
    let missing = missing_prerequisites(&work, &nfs, args)?;
    for m in &missing {
        on(Event::Missing(m));
    }
    check_power(&work, args, power.as_ref())?;

    let mut reports = Vec::new();
    for j in &jobs {
        let blocked = !missing.is_empty();
        reports.push(run_job(
            j,
            d.as_ref(),
            &nfs,
            args,
            &nfs_server,
            blocked,
            on,
        )?);
    }
    Ok(reports)
}

/// Deploy one node (or, in a dry run, say what would happen to it).
fn run_job(
    j: &Job,
    d: Option<&NfsDir>,
    nfs: &Path,
    args: &DeployOptions,
    nfs_server: &str,
    blocked: bool,
    on: &mut dyn FnMut(Event),
) -> Result<NodeReport> {
    let diff = if args.diff {
        let lines = diff_against_deployed(j, nfs)?;
        on(Event::Diff {
            node: &j.plan.name,
            pname: &j.pname,
            lines: &lines,
        });
        Some(lines)
    } else {
        None
    };
    let steps = j.steps(args);
    // A dry run says what the real run would do, failing included.
    let action = match (j.unchanged, args.dry_run, blocked) {
        (true, _, _) => "unchanged",
        (false, false, _) => "deployed",
        (false, true, false) => "would-deploy",
        (false, true, true) => "would-fail",
    };
    if args.dry_run {
        on(Event::Planned {
            node: &j.plan.name,
            pname: &j.pname,
            action,
            steps: &steps,
        });
    } else if j.unchanged {
        tracing::info!(
            "{} ({}): unchanged, build {} is in place",
            j.plan.name,
            j.pname,
            short(&j.src.build)
        );
    } else {
        let d = d.expect("the NFS directory exists in a real run");
        deploy_node(d, j, args, nfs_server).with_context(|| {
            format!(
                "deploying {} to {}",
                j.plan.name,
                nfs.join(&j.pname).display()
            )
        })?;
    }
    Ok(NodeReport {
        node: j.plan.name.clone(),
        slot: j.slot,
        action: action.into(),
        build: Some(j.src.build.clone()),
        previous: j.previous.clone(),
        usbboot_init: (!j.unchanged).then(|| j.init_note()),
        steps,
        diff,
    })
}

/// Decide every node's deploy before anything runs.
fn plan_jobs<'a>(
    plans: &'a [NodePlan],
    sources: &'a [NodeSource],
    nfs: &Path,
    args: &DeployOptions,
    power: Option<&BTreeMap<u8, bool>>,
) -> Vec<Job<'a>> {
    let nfs_dev = std::fs::metadata(existing_ancestor(nfs))
        .map(|m| m.dev())
        .ok();
    let mut jobs = Vec::new();
    for (plan, src) in plans.iter().zip(sources) {
        let ub = plan.usbboot.as_ref().expect("usbboot plans");
        let target = nfs.join(&ub.pname);
        let previous = deployed_build(&target);
        let link = match &src.content {
            Content::Tree(t) => std::fs::metadata(t)
                .map(|m| Some(m.dev()) == nfs_dev)
                .unwrap_or(false),
            Content::Tarball { .. } => false,
        };
        jobs.push(Job {
            plan,
            src,
            slot: ub.slot,
            pname: ub.pname.clone(),
            unchanged: !args.force && previous.as_deref() == Some(src.build.as_str()),
            previous,
            exists: target.symlink_metadata().is_ok(),
            run_init: src.has_file(RECONFIG),
            link,
            refresh_prev: matches!(src.content, Content::Tarball { .. })
                && nfs
                    .join(format!("{}.prev", ub.pname))
                    .symlink_metadata()
                    .is_ok_and(|m| m.is_dir()),
            was_on: power
                .and_then(|p| p.get(&ub.slot))
                .copied()
                .unwrap_or(false),
        });
    }
    jobs
}

/// Prerequisites of the work, all at once: a real run fails on any, a dry
/// run returns them to be shown.
fn missing_prerequisites(work: &[&Job], nfs: &Path, args: &DeployOptions) -> Result<Vec<String>> {
    if work.is_empty() {
        return Ok(Vec::new());
    }
    let (mut bytes, mut inodes) = (0, 0);
    for j in work {
        let (b, i) = match &j.src.content {
            Content::Tree(t) => stage::needed_space(t, j.link)?,
            Content::Tarball { listing, .. } => (
                listing.values().map(|e| e.size).sum(),
                listing.len() as u64 + 1,
            ),
        };
        bytes += b;
        inodes += i;
    }
    let missing = prerequisites(
        nfs,
        !args.no_power,
        work.iter().any(|j| j.run_init),
        bytes,
        inodes,
    );
    if !missing.is_empty() && !args.dry_run {
        bail!("cannot deploy:\n  {}", missing.join("\n  "));
    }
    Ok(missing)
}

/// Refuse to disturb running Zeros without `--yes`, and never swap a
/// running Zero's tree.
fn check_power(
    work: &[&Job],
    args: &DeployOptions,
    power: Option<&BTreeMap<u8, bool>>,
) -> Result<()> {
    // usbboot-init runs `clusterctrl init`, which resets the HAT's USB hub.
    let deploying: Vec<u8> = work.iter().map(|j| j.slot).collect();
    let others_on: Vec<String> = power
        .into_iter()
        .flatten()
        .filter(|(n, on)| **on && !deploying.contains(n))
        .map(|(n, _)| format!("p{n}"))
        .collect();
    if work.iter().any(|j| j.run_init) && !others_on.is_empty() {
        let msg = format!(
            "usbboot-init runs `clusterctrl init`, which switches the Cluster HAT's USB hub off and on: the running Zeros {} will lose their USB link for a moment",
            others_on.join(", ")
        );
        if args.dry_run || args.yes {
            tracing::warn!("{msg}");
        } else {
            return Err(UsageError(format!("{msg}; pass --yes to go ahead")).into());
        }
    }
    for j in work {
        if j.was_on && args.no_power {
            bail!(
                "{} is powered on: a running Zero is never swapped underneath; drop --no-power (which is for slots whose Zero is off)",
                j.pname
            );
        }
    }
    Ok(())
}

/// The files that differ between a node's new tree and its deployed one.
fn diff_against_deployed(j: &Job, nfs: &Path) -> Result<Vec<String>> {
    let current = nfs.join(&j.pname);
    let cur = if current.is_dir() {
        listing::of_dir(&current, true)?
    } else {
        Default::default()
    };
    Ok(listing::diff(&cur, &j.src.listing()?, &[MARKER]))
}

fn deploy_node(d: &NfsDir, j: &Job, args: &DeployOptions, nfs_server: &str) -> Result<()> {
    let p = j.pname.as_str();
    let t0 = Instant::now();
    if j.was_on {
        clusterctrl::power(p, false).context("powering the node off before the swap")?;
        tracing::info!("{p}: powered off");
    }

    let staging = format!(".{p}.staging-{}", std::process::id());
    let staged = d.join(&staging);
    let stats = match &j.src.content {
        Content::Tree(t) => stage::from_tree(t, &staged, j.link),
        Content::Tarball { path, .. } => {
            // The tree before the live one becomes the staging tree and
            // is refreshed in place: on the controller's SD card a
            // redeploy writes what changed. The rollback copy is given up
            // for it; the commit makes the live tree `pN.prev`, as ever.
            let refresh = j.refresh_prev;
            if refresh {
                d.rename(&format!("{p}.prev"), &staging)?;
            }
            stage::from_tarball(
                path,
                &staged,
                &d.trees(p)?,
                j.src.has_file(stage::UNSHARE_BOOT),
                refresh,
            )
        }
    };
    let prepared = stats.and_then(|stats| {
        if j.refresh_prev {
            tracing::info!(
                "{p}: staged {} entries from {p}.prev: {} unchanged, {} hard-linked, {} removed, {} MiB written",
                stats.entries,
                stats.kept,
                stats.linked,
                stats.pruned,
                stats.copied_bytes >> 20
            );
        } else {
            tracing::info!(
                "{p}: staged {} entries ({} hard-linked, {} MiB copied)",
                stats.entries,
                stats.linked,
                stats.copied_bytes >> 20
            );
        }
        if let Some(bundle) = &args.secrets_bundle {
            // A public release carries no secrets: they join the staged
            // tree here, before the swap, so the node never runs without.
            let files = crate::artifact::public::read_bundle(bundle, j.plan)?;
            if files.is_empty() {
                anyhow::bail!("{} holds no secrets for {}", bundle.display(), j.plan.name);
            }
            crate::artifact::public::apply_secrets(&staged, &files)?;
            tracing::info!(
                "{p}: {} secrets applied from {}",
                files.len(),
                bundle.display()
            );
        }
        let loopback = verify::loopback_line(&staged)?;
        if !j.run_init {
            // Nothing will edit this tree after the swap: check it now and
            // make the marker part of it, so the swap is the only change.
            verify::check_tree(&staged, j.plan, nfs_server)?;
            stage::write_file_atomic(
                &staged.join(MARKER),
                marker_text(&j.src.build, &j.plan.name).as_bytes(),
            )?;
        }
        d.syncfs()?;
        Ok(loopback)
    });
    let loopback = match prepared {
        Ok(l) => l,
        Err(e) => {
            swap::remove_tree(&staged)?;
            return Err(e);
        }
    };

    let mut txn = Txn {
        staging: staging.clone(),
        new_ino: d.ino(&staging).context("the staged tree vanished")?,
        had_old: j.exists,
        build: j.src.build.clone(),
        committed: false,
    };
    d.write_txn(p, &txn)?;
    d.swap_into_place(p, &txn)?;
    tracing::info!("{p}: new tree in place");

    if j.run_init {
        let tree = d.join(p);
        let finished = (|| -> Result<()> {
            let out = clusterctrl::usbboot_init(j.slot)?;
            let problems = verify::usbboot_init_problems(&tree, j.plan, nfs_server)?;
            if !problems.is_empty() {
                bail!(
                    "usbboot-init {} did not take effect (it exits 0 even when it fails):\n  {}\nits output:\n{}",
                    j.slot,
                    problems.join("\n  "),
                    out.trim_end()
                );
            }
            verify::restore_hostname(&tree, &j.plan.hostname, loopback.as_deref())?;
            verify::check_tree(&tree, j.plan, nfs_server)?;
            stage::write_file_atomic(
                &tree.join(MARKER),
                marker_text(&j.src.build, &j.plan.name).as_bytes(),
            )?;
            d.syncfs()
        })();
        if let Err(e) = finished {
            d.swap_back(p, &txn)?;
            return Err(e.context(format!(
                "{p} was put back on the tree it had before and is left powered off"
            )));
        }
        tracing::info!(
            "{p}: usbboot-init {} done, hostname {} restored",
            j.slot,
            j.plan.hostname
        );
    } else {
        tracing::info!("{p}: usbboot-init {}", j.init_note());
    }
    d.commit(p, &mut txn)?;
    tracing::info!(
        "{p}: deployed build {} in {:.1} s",
        short(&j.src.build),
        t0.elapsed().as_secs_f64()
    );

    if args.no_power || args.no_power_on {
        return Ok(());
    }
    if let Err(e) = clusterctrl::power(p, true) {
        let _ = clusterctrl::power(p, false);
        let prev = format!("{p}.prev");
        if d.exists(&prev) {
            d.exchange(p, &prev)?;
            d.sync()?;
            return Err(e.context(format!(
                "powering on {p} failed: it was put back on the tree it had before (the new one is {prev}) and left powered off"
            )));
        }
        return Err(e.context(format!("powering on {p} failed: it is left powered off")));
    }
    tracing::info!("{p}: powered on");
    if !args.no_wait {
        wait_for_ssh(j.plan, args.wait_for_ssh)?;
    }
    Ok(())
}

fn wait_for_ssh(plan: &NodePlan, secs: u64) -> Result<()> {
    // Deployed nodes are Zeros, which never use DHCP.
    let ip = plan
        .address
        .with_context(|| format!("{} has no static address to wait on", plan.name))?;
    let addr = std::net::SocketAddr::from((ip, 22));
    let deadline = Instant::now() + Duration::from_secs(secs);
    tracing::info!("{}: waiting up to {secs} s for SSH on {addr}", plan.name);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "{} did not answer on {addr} within {secs} s: it is deployed and powered on; watch it boot on its serial console (ttyGS0) or with `clusterctrl status`",
                plan.name
            );
        }
        if probe_ssh(addr, left.min(Duration::from_secs(2))) {
            tracing::info!("{}: SSH is up", plan.name);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500).min(left));
    }
}

/// Whether an SSH server answers at `addr`: a connection alone is not
/// enough (a proxy or a half-up network stack accepts connections too), the
/// server's `SSH-` greeting must arrive.
fn probe_ssh(addr: std::net::SocketAddr, timeout: Duration) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut greeting = [0u8; 4];
    s.read_exact(&mut greeting).is_ok() && &greeting == b"SSH-"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_probe_needs_the_greeting() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut silent, _) = l.accept().unwrap();
            let (mut ssh, _) = l.accept().unwrap();
            ssh.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
            silent.write_all(b"").unwrap();
        });
        assert!(!probe_ssh(addr, Duration::from_millis(200)));
        assert!(probe_ssh(addr, Duration::from_secs(2)));
        t.join().unwrap();
    }

    #[test]
    fn marker_round_trip() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join(MARKER), marker_text("abc", "z1")).unwrap();
        assert_eq!(deployed_build(t.path()).as_deref(), Some("abc"));
        assert_eq!(deployed_build(&t.path().join("none")), None);
    }
}
