//! The build pipeline: profile -> store -> tree -> artifact. Each stage
//! takes the previous stage's value; none reaches back.

use crate::artifact::commit::{self, Move};
use crate::artifact::public::{self, SecretFile};
use crate::artifact::{self, Manifest, NodeArtifact};
use crate::disk::Compress;
use crate::error::UsageError;
use crate::overlay::Overlays;
use crate::profile::{plan::NodePlan, Profile};
use crate::secrets::Secrets;
use crate::store::zero_boot::ZeroBoot;
use crate::store::{BaseTree, Store};
use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `image` writes for each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Only the node tree directory.
    Dir,
    /// The tree and a deterministic `<node>.tar.zst`.
    TarZst,
}

#[derive(Debug, Serialize)]
pub struct ImageReport {
    pub output: PathBuf,
    pub base_digest: String,
    pub built: Vec<String>,
    pub unchanged: Vec<String>,
}

/// SOURCE_DATE_EPOCH when set; otherwise a time derived from the inputs
/// (the newest mtime in the base), so default builds are reproducible too.
pub fn source_date_epoch(base: &BaseTree) -> Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"));
    }
    let m = std::fs::metadata(base.root.join("etc"))
        .or_else(|_| std::fs::metadata(&base.root))
        .with_context(|| format!("reading {}", base.root.display()))?;
    use std::os::unix::fs::MetadataExt;
    Ok(m.mtime().max(0))
}

/// Everything a node's tree depends on, hashed: rebuilding after a change
/// touches only the nodes whose inputs changed. `shared` is what all nodes
/// share ([`shared_inputs`]); secrets enter as a hash.
fn inputs_hash(
    shared: &str,
    plan: &NodePlan,
    start: &str,
    epoch: i64,
    secrets: &Secrets,
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(shared.as_bytes());
    // The base's digest, or the key of the package layer the node's tree
    // starts from.
    h.update(start.as_bytes());
    h.update(epoch.to_le_bytes());
    h.update(serde_json::to_vec(plan)?);
    h.update(&secrets.munge_key);
    h.update(secrets.k3s_token.as_bytes());
    h.update(secrets.password_hash.as_bytes());
    for k in &secrets.authorized_keys {
        h.update(k.as_bytes());
    }
    if let Ok(k) = secrets.host_key(&plan.name) {
        h.update(k.private.as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// The inputs every node of the profile shares, hashed once per build:
/// chbuild itself (its version, the running executable and the overlays
/// it renders), the profile's overlay directory, the `[tree] link`
/// setting and the k3s air-gap bundle's files.
pub fn shared_inputs(profile: &Profile, overlays: &Overlays) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION"));
    h.update(build_id()?.as_bytes());
    h.update(overlays.digest()?.as_bytes());
    if let Some(dir) = &profile.overlay_dir {
        if dir.exists() {
            h.update(b"profile overlay");
            crate::overlay::hash_dir(&mut h, dir)?;
        }
    }
    h.update(b"link");
    for d in &profile.link_dirs {
        h.update(d.as_bytes());
        h.update([0]);
    }
    if let Some(dir) = &profile.features.k3s_airgap_dir {
        h.update(b"k3s bundle");
        h.update(airgap_digest(dir)?.as_bytes());
    }
    if let Some(b) = &profile.features.k3s_bundle {
        // The store keeps them by these sums: they are their content.
        h.update(b"k3s blobs");
        for blob in [&b.binary, &b.images] {
            h.update(blob.sha256.as_bytes());
            h.update(blob.name.as_bytes());
            h.update([0]);
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// The profile with its k3s bundle in the store when one of `nodes` (or
/// the controller, among them) runs k3s: building only other nodes needs
/// neither the files nor the network to fetch them.
fn with_k3s_bundle(profile: &Profile, store: &Store, nodes: &[String]) -> Result<Profile> {
    let runs_k3s = |name: &String| {
        if profile.controller.is_named(name) {
            profile.controller_plan().k3s_role.is_some()
        } else {
            profile
                .node(name)
                .is_some_and(|n| profile.plan(n).k3s_role.is_some())
        }
    };
    if profile.features.k3s_bundle.is_none() || !nodes.iter().any(runs_k3s) {
        return Ok(profile.clone());
    }
    store.with_k3s_bundle(profile)
}

/// Hash of the running chbuild executable: a chbuild built from newer code
/// with the same version number rebuilds what an older one built.
fn build_id() -> Result<String> {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(id) = ID.get() {
        return Ok(id.clone());
    }
    let exe = std::env::current_exe().context("finding the running chbuild")?;
    let mut f = std::fs::File::open(&exe).with_context(|| format!("opening {}", exe.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", exe.display()))?;
    Ok(ID.get_or_init(|| hex::encode(h.finalize())).clone())
}

/// Hash of the air-gap bundle's files (large: hashed once per process).
fn airgap_digest(dir: &Path) -> Result<String> {
    static CACHE: std::sync::Mutex<Vec<(PathBuf, String)>> = std::sync::Mutex::new(vec![]);
    let mut cache = CACHE
        .lock()
        .expect("the bundle hash cache is never poisoned");
    if let Some((_, d)) = cache.iter().find(|(p, _)| p == dir) {
        return Ok(d.clone());
    }
    let mut h = Sha256::new();
    if dir.exists() {
        crate::overlay::hash_dir(&mut h, dir)?;
    }
    let d = hex::encode(h.finalize());
    cache.push((dir.to_path_buf(), d.clone()));
    Ok(d)
}

/// The base's os-release text (empty when it has none).
fn os_release(base: &BaseTree) -> String {
    // usr/lib first: etc/os-release is often a symlink, maybe absolute.
    ["usr/lib/os-release", "etc/os-release"]
        .iter()
        .find_map(|p| std::fs::read_to_string(base.root.join(p)).ok())
        .unwrap_or_default()
}

/// The plans of `names`, completed with what only the stored base tells.
fn plans_on(profile: &Profile, base: &BaseTree, names: &[String]) -> Vec<NodePlan> {
    let os = os_release(base);
    names
        .iter()
        .map(|name| {
            let mut plan = profile.plan(profile.node(name).expect("selection returns known nodes"));
            plan.add_base_packages(&os);
            plan
        })
        .collect()
}

/// Who asked for each of the plans' packages, for layer errors.
fn package_origins(plans: &[&NodePlan]) -> crate::store::layer::Origins {
    let mut out = crate::store::layer::Origins::new();
    for plan in plans {
        for (pk, origin) in &plan.package_origins {
            let v = out.entry(pk.clone()).or_default();
            let who = format!("{origin} on node {}", plan.name);
            if v.len() < 4 && !v.contains(&who) {
                v.push(who);
            }
        }
    }
    out
}

/// The key of the package layer each plan needs: the base's digest when
/// it has every package the node needs, else the layer's (which may not
/// be built yet).
fn package_keys(store: &Store, base: &BaseTree, plans: &[&NodePlan]) -> Result<Vec<String>> {
    plans
        .iter()
        .map(|p| {
            Ok(store
                .layer_key(base, p.architecture, &p.packages)?
                .unwrap_or_else(|| base.digest.clone()))
        })
        .collect()
}

/// What the Zero boot layer of a plan is built from, when its tree gets
/// one: a Zero on a base without ClusterCTRL's own USB-boot setup, with
/// initramfs-tools and an initramfs to rebuild (see
/// [`crate::store::zero_boot`]). Decided on the base, so the key is known
/// before any layer is built.
fn zero_boot(base: &BaseTree, plan: &NodePlan) -> Result<Option<ZeroBoot>> {
    if plan.usbboot.is_none()
        || base
            .root
            .join(crate::roles::network::RECONFIG_USBBOOT)
            .exists()
        || !crate::store::zero_boot::applies(&base.root, &plan.boot_dir)?
    {
        return Ok(None);
    }
    let files = crate::roles::network::initramfs_files(plan, &Overlays::builtin()?, &base.root)?;
    Ok(Some(ZeroBoot {
        files,
        boot_dir: plan.boot_dir.clone(),
    }))
}

/// Where a plan's tree starts, decided before anything is built.
struct Start {
    /// Its Zero boot layer's key, else its package layer's, else the
    /// base's digest.
    key: String,
    /// What its Zero boot layer is built from (rendered once, here).
    zero_boot: Option<ZeroBoot>,
}

/// Where each plan's tree starts ([`start_trees`] builds it).
fn start_keys(store: &Store, base: &BaseTree, plans: &[&NodePlan]) -> Result<Vec<Start>> {
    let packages = package_keys(store, base, plans)?;
    plans
        .iter()
        .zip(packages)
        .map(|(p, parent)| {
            let zero_boot = zero_boot(base, p)?;
            let key = match &zero_boot {
                Some(zb) => crate::store::zero_boot::key(&parent, zb),
                None => parent,
            };
            Ok(Start { key, zero_boot })
        })
        .collect()
}

/// The tree each plan starts from: the base when it has every package the
/// node needs, else the package layer that adds them, built now when the
/// store lacks it. Every layer is ready before any node tree is written,
/// so an unknown package stops the build with nothing half-done. When the
/// plans need different sets, what they all share is built first, as a
/// layer the others are built on: installed once, its files shared. A
/// Zero's tree then starts from its Zero boot layer on that tree (see
/// [`crate::store::zero_boot`]).
fn start_trees(
    store: &Store,
    base: &BaseTree,
    plans: &[(&NodePlan, &Start)],
) -> Result<Vec<BaseTree>> {
    let plans_only: Vec<&NodePlan> = plans.iter().map(|(p, _)| *p).collect();
    if let Some(common) = shared_set(base, &plans_only)? {
        let arch = plans_only[0].architecture;
        store.ensure_layer(base, arch, &common, &package_origins(&plans_only))?;
    }
    // Package layers are built one after another (they share apt's cache
    // and its lock). A Zero boot layer needs no apt: it is built on its own
    // thread as soon as its package layer is there, while the other nodes'
    // layers install (mkinitramfs under emulation and dpkg under emulation
    // each keep one core busy). One thread per key: every Zero of a profile
    // shares one boot layer, and no key is ever built twice at once.
    std::thread::scope(|scope| {
        let mut boots = std::collections::BTreeMap::new();
        // Each plan's package layer, and its boot layer's key if it has one.
        let mut starts: Vec<(BaseTree, Option<String>)> = vec![];
        let mut first_error = None;
        for (p, start) in plans {
            let tree =
                match store.ensure_layer(base, p.architecture, &p.packages, &package_origins(&[p]))
                {
                    Ok(t) => t,
                    Err(e) => {
                        first_error = Some(e);
                        break;
                    }
                };
            let boot = start.zero_boot.as_ref().map(|zb| {
                let key = crate::store::zero_boot::key(&tree.digest, zb);
                let (arch, layer) = (p.architecture, tree.clone());
                boots.entry(key.clone()).or_insert_with(|| {
                    scope.spawn(move || store.ensure_zero_boot(&layer, &base.digest, arch, zb))
                });
                key
            });
            starts.push((tree, boot));
        }
        let mut booted = std::collections::BTreeMap::new();
        for (key, h) in boots {
            let r = h.join().expect("a Zero boot layer thread panicked");
            match r {
                Ok(t) => {
                    booted.insert(key, t);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        Ok(starts
            .into_iter()
            .map(|(tree, boot)| match boot {
                Some(key) => booted[&key].clone(),
                None => tree,
            })
            .collect())
    })
}

/// The packages every plan needs and `base` lacks, when the plans need
/// different sets and that shared part is a layer of its own (none is
/// one of the plans' sets).
fn shared_set(base: &BaseTree, plans: &[&NodePlan]) -> Result<Option<Vec<String>>> {
    let mut sets: Vec<Vec<String>> = plans
        .iter()
        .map(|p| crate::store::layer::missing(&base.root, &p.packages))
        .collect::<Result<_>>()?;
    sets.retain(|s| !s.is_empty());
    sets.sort();
    sets.dedup();
    if sets.len() < 2 {
        return Ok(None);
    }
    let common: Vec<String> = sets[0]
        .iter()
        .filter(|p| sets.iter().all(|s| s.contains(p)))
        .cloned()
        .collect();
    Ok((!common.is_empty() && !sets.contains(&common)).then_some(common))
}

/// What `store gc` keeps for a profile: its bases, the package layers of
/// its nodes (and of the controller's card) and its Zeros' boot layers.
pub fn store_keep(profile: &Profile, store: &Store) -> Result<Vec<String>> {
    let mut keep = vec![];
    let mut add = |base: &crate::profile::Base,
                   plans_of: &dyn Fn(&BaseTree) -> Vec<NodePlan>|
     -> Result<()> {
        let Some(d) = store.digest_of(base) else {
            return Ok(());
        };
        keep.push(d.clone());
        if let Some(tree) = store.stored(&d) {
            let plans = plans_of(&tree);
            let refs: Vec<&NodePlan> = plans.iter().collect();
            keep.extend(package_keys(store, &tree, &refs)?);
            keep.extend(start_keys(store, &tree, &refs)?.into_iter().map(|s| s.key));
            // The shared layer the nodes' layers were built on.
            if let Some(common) = shared_set(&tree, &refs)? {
                if let Some(k) = store.layer_key(&tree, refs[0].architecture, &common)? {
                    keep.push(k);
                }
            }
        }
        Ok(())
    };
    let names: Vec<String> = profile.nodes.iter().map(|n| n.name.clone()).collect();
    add(&profile.base, &|base| plans_on(profile, base, &names))?;
    if let Some(b) = &profile.controller.base {
        add(b, &|base| {
            let mut plan = profile
                .controller_sd_plan()
                .expect("the controller has a base");
            plan.add_base_packages(&os_release(base));
            vec![plan]
        })?;
    }
    keep.sort();
    keep.dedup();
    Ok(keep)
}

/// Compose one node's tree at `dest` (a temporary path) and bake every
/// role into it. `base` is what the tree starts from ([`start_trees`]).
/// Returns the number of regular files in the tree.
pub fn build_tree(
    profile: &Profile,
    plan: &NodePlan,
    base: &BaseTree,
    secrets: &Secrets,
    dest: &Path,
    epoch: i64,
    public: Option<&mut Vec<SecretFile>>,
) -> Result<u64> {
    let started = Instant::now();
    crate::fs::remove_tree(dest)?;
    let stats = crate::tree::compose(&base.root, dest, &profile.link_dirs)
        .with_context(|| format!("composing the tree of {}", plan.name))?;
    let missing = crate::store::layer::missing(dest, &plan.packages)?;
    if !missing.is_empty() {
        anyhow::bail!(
            "the tree of {} lacks packages its plan needs: {}",
            plan.name,
            missing.join(" ")
        );
    }
    let overlays = Overlays::builtin()?;
    let ctx = crate::roles::RoleCtx {
        profile,
        plan,
        secrets,
        overlays: &overlays,
        epoch,
    };
    crate::roles::apply_roles(&ctx, dest)
        .with_context(|| format!("baking roles into {}", plan.name))?;
    // The controller is never a node's name: this is its card.
    if profile.controller.is_named(&plan.name) {
        crate::roles::controller::bake(profile, secrets, &overlays, dest)
            .with_context(|| format!("baking the controller's files into {}", plan.name))?;
    }
    if let Some(collected) = public {
        collected.extend(public::strip_secrets(dest, plan)?);
    }
    let files = crate::tree::clamp_mtimes(dest, epoch)?;
    tracing::info!(
        "{}: tree composed ({} linked, {} copied, {} MiB copied) in {:.1?}",
        plan.name,
        stats.linked,
        stats.copied,
        stats.copied_bytes >> 20,
        started.elapsed()
    );
    Ok(files)
}

/// Build node trees and artifacts into `out`. With `public`, every node is
/// rebuilt, its secrets are taken out of the tree and collected there.
pub fn image(
    profile: &Profile,
    store: &Store,
    nodes: &[String],
    out: &Path,
    format: Format,
    public: Option<&mut Vec<SecretFile>>,
) -> Result<ImageReport> {
    create_private_dir(out)?;
    let _lock = commit::lock(out)?;
    commit::prepare(out)?;
    let r = image_locked(profile, store, nodes, out, format, public);
    if r.is_err() {
        // Nothing half-built stays behind (a full disk must be usable
        // again once the error is read).
        let _ = commit::clean(out);
    }
    r
}

/// `image` with the output directory locked and recovered.
fn image_locked(
    profile: &Profile,
    store: &Store,
    nodes: &[String],
    out: &Path,
    format: Format,
    mut public: Option<&mut Vec<SecretFile>>,
) -> Result<ImageReport> {
    // The k3s bundle's files come from the store, as the base does.
    let profile = &with_k3s_bundle(profile, store, nodes)?;
    let secrets = Secrets::load(profile)?;
    let base = store.ensure_base(&profile.base)?;
    let epoch = source_date_epoch(&base)?;
    let mut manifest = Manifest::load(out)?
        .filter(|m| m.cluster == profile.name)
        .unwrap_or(Manifest {
            cluster: profile.name.clone(),
            profile: profile.file.display().to_string(),
            base_digest: base.digest.clone(),
            source_date_epoch: epoch,
            nodes: vec![],
            controller: None,
        });
    if manifest.base_digest != base.digest || manifest.source_date_epoch != epoch {
        // Another base or epoch: every entry describes stale trees.
        manifest.nodes.clear();
        manifest.base_digest = base.digest.clone();
        manifest.source_date_epoch = epoch;
    }
    let mut report = ImageReport {
        output: out.to_path_buf(),
        base_digest: base.digest.clone(),
        built: vec![],
        unchanged: vec![],
    };
    // Decide first which nodes need work, then build those in parallel:
    // composing is mostly file-system metadata calls, which overlap well.
    let want_tar = format == Format::TarZst;
    let shared = shared_inputs(profile, &Overlays::builtin()?)?;
    let plans = plans_on(profile, &base, nodes);
    let starts = start_keys(store, &base, &plans.iter().collect::<Vec<_>>())?;
    let mut todo: Vec<(NodePlan, String)> = vec![];
    let mut todo_starts = vec![];
    for (plan, start) in plans.into_iter().zip(starts) {
        let name = &plan.name;
        let inputs = format!(
            "{}{}",
            inputs_hash(&shared, &plan, &start.key, epoch, &secrets)?,
            if public.is_some() { "-public" } else { "" }
        );
        if let Some(prev) = manifest.nodes.iter().find(|n| &n.name == name) {
            let tar_ok = !want_tar
                || (prev.tarball.is_some() && out.join(format!("{name}.tar.zst")).exists());
            if prev.inputs == inputs && out.join(name).is_dir() && tar_ok && public.is_none() {
                tracing::info!("{name}: unchanged, not rebuilt");
                report.unchanged.push(name.clone());
                continue;
            }
        }
        todo.push((plan, inputs));
        todo_starts.push(start);
    }
    let starts = start_trees(
        store,
        &base,
        &todo
            .iter()
            .zip(&todo_starts)
            .map(|((p, _), s)| (p, s))
            .collect::<Vec<_>>(),
    )?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let workers = cores.min(todo.len().max(1));
    // The cores go to the tarballs being compressed at once, not to each:
    // memory stays that of one tarball per core, whatever the core count.
    let zstd_workers = (cores / workers).max(1) as u32;
    let next = std::sync::atomic::AtomicUsize::new(0);
    type Built = (usize, (NodeArtifact, Vec<Move>), Vec<SecretFile>);
    let results: Vec<Result<Built>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = vec![];
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (Some((plan, inputs)), Some(start)) = (todo.get(i), starts.get(i))
                        else {
                            break;
                        };
                        let mut stripped = vec![];
                        let collect = public.is_some().then_some(&mut stripped);
                        let tar = want_tar.then_some(zstd_workers);
                        let r = build_node(
                            profile, plan, inputs, start, &secrets, out, epoch, tar, collect,
                        )
                        .map(|a| (i, a, stripped));
                        let failed = r.is_err();
                        done.push(r);
                        if failed {
                            break;
                        }
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a build thread panicked"))
            .collect()
    });
    let mut built: Vec<Built> = results.into_iter().collect::<Result<_>>()?;
    built.sort_by_key(|(i, _, _)| *i);
    let mut moves = vec![];
    for (_, (artifact, node_moves), stripped) in built {
        moves.extend(node_moves);
        if let Some(collected) = public.as_deref_mut() {
            collected.extend(stripped);
        }
        report.built.push(artifact.name.clone());
        manifest.nodes.retain(|n| n.name != artifact.name);
        manifest.nodes.push(artifact);
    }
    // Keep the manifest in profile order, whatever was rebuilt.
    manifest.nodes.sort_by_key(|n| {
        profile
            .nodes
            .iter()
            .position(|p| p.name == n.name)
            .unwrap_or(usize::MAX)
    });
    moves.extend(manifest.stage(out)?);
    let hosts = commit::staged("known_hosts");
    let hosts_path = out.join(&hosts);
    std::fs::write(
        &hosts_path,
        crate::roles::known_hosts(profile, &secrets)?.as_bytes(),
    )
    .with_context(|| format!("writing {}", hosts_path.display()))?;
    moves.push(Move::rename(hosts, "known_hosts"));
    // Trees, tarballs, manifest and sums change together or not at all.
    commit::commit(out, &moves)?;
    tracing::info!(
        "{} built, {} unchanged, in {}",
        report.built.len(),
        report.unchanged.len(),
        out.display()
    );
    Ok(report)
}

/// The output directory holds node trees and tarballs with secrets in
/// them: only its owner may enter it.
fn create_private_dir(dir: &Path) -> Result<()> {
    artifact::create_dir_private(dir)
}

/// Build one node's tree and tarball under staged names; return its entry
/// and the renames that put them in place.
#[allow(clippy::too_many_arguments)]
fn build_node(
    profile: &Profile,
    plan: &NodePlan,
    inputs: &str,
    base: &BaseTree,
    secrets: &Secrets,
    out: &Path,
    epoch: i64,
    tar_workers: Option<u32>,
    public: Option<&mut Vec<SecretFile>>,
) -> Result<(NodeArtifact, Vec<Move>)> {
    let name = &plan.name;
    let staged_tree = commit::staged(name);
    let tmp = out.join(&staged_tree);
    let files_in_tree = build_tree(profile, plan, base, secrets, &tmp, epoch, public)?;
    let tarball_name = format!("{name}.tar.zst");
    let mut moves = vec![];
    let (tarball, sha256, size) = if let Some(workers) = tar_workers {
        let started = Instant::now();
        let staged_tar = commit::staged(&tarball_name);
        let info = artifact::write_tar_zst(&tmp, &out.join(&staged_tar), epoch, workers)?;
        moves.push(Move::rename(staged_tar, tarball_name.clone()));
        tracing::info!(
            "{name}: {tarball_name} ({} MiB) in {:.1?}",
            info.size >> 20,
            started.elapsed()
        );
        (Some(tarball_name), Some(info.sha256), Some(info.size))
    } else {
        moves.push(Move::remove(tarball_name));
        (None, None, None)
    };
    moves.push(Move::rename(staged_tree, name.clone()));
    let artifact = NodeArtifact {
        name: name.clone(),
        hostname: plan.hostname.clone(),
        kind: plan.kind,
        slot: plan.usbboot.as_ref().map(|u| u.slot),
        tree: name.clone(),
        tarball,
        sha256,
        size,
        files: files_in_tree,
        inputs: inputs.to_string(),
        files_extra: vec![],
        needs_network: plan.needs_network(),
    };
    Ok((artifact, moves))
}

/// Where `sd` puts the image and what it does with it.
#[derive(Debug, Clone, Default)]
pub struct SdOptions {
    /// The image file (default: `<output dir>/<node>.img`).
    pub output: Option<PathBuf>,
    /// Write the image to this whole block device.
    pub dev: Option<PathBuf>,
    /// Disk layout (default: the shipped `images/sd-mbr.toml`).
    pub layout: Option<PathBuf>,
    /// Also write a compressed copy of the image.
    pub compress: Option<Compress>,
    /// How the device is written.
    pub write: crate::device::WriteOptions,
}

#[derive(Debug, Serialize)]
pub struct SdReport {
    pub node: String,
    pub image: crate::disk::SdImage,
    pub reused: bool,
    pub compressed: Option<PathBuf>,
    pub written: Option<crate::device::WriteReport>,
}

/// Build (or reuse) the SD card image of an SD-booted node; optionally
/// compress it and write it to a card.
pub fn sd(profile: &Profile, store: &Store, node: &str, args: &SdOptions) -> Result<SdReport> {
    let image_path = match &args.output {
        Some(p) => p.clone(),
        None => {
            let dir = artifact::default_output_dir(profile);
            create_private_dir(&dir)?;
            dir.join(format!("{node}.img"))
        }
    };
    if let Some(dev) = &args.dev {
        // Refuse a wrong device before spending minutes on the image; the
        // size is checked again against the image actually built.
        let at_least = match std::fs::metadata(&image_path) {
            Ok(m) => m.len(),
            // No image yet: its layout's fixed part is a lower bound.
            Err(_) => {
                let (l, _) = crate::disk::resolve_layout(args.layout.as_deref())?;
                l.alignment + l.boot_size + l.root_margin
            }
        };
        crate::device::check_target(dev, at_least, args.write.force)?;
        if !args.write.yes && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            return Err(crate::error::UsageError(format!(
                "writing {} needs a confirmation, and there is no terminal to ask on: pass --yes",
                dev.display()
            ))
            .into());
        }
    }
    let dir = image_dir(&image_path);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = commit::lock(dir)?;
    commit::prepare(dir)?;
    let built = sd_image(
        profile,
        store,
        node,
        &image_path,
        args.layout.as_deref(),
        None,
    );
    if built.is_err() {
        let _ = commit::clean(dir);
    }
    let (image, reused) = built?;
    let compressed = match args.compress {
        Some(kind) => Some(crate::disk::compress_image(&image_path, kind)?),
        None => None,
    };
    let written = match &args.dev {
        Some(dev) => Some(crate::device::write_image(
            &image.image,
            &image.bmap,
            dev,
            &args.write,
        )?),
        None => None,
    };
    Ok(SdReport {
        node: node.to_string(),
        image,
        reused,
        compressed,
        written,
    })
}

/// The SD image of one node at `image_path`, reused when its inputs are
/// unchanged (never for a public build, whose secrets are collected).
pub fn sd_image(
    profile: &Profile,
    store: &Store,
    node: &str,
    image_path: &Path,
    layout: Option<&Path>,
    public: Option<&mut Vec<SecretFile>>,
) -> Result<(crate::disk::SdImage, bool)> {
    let profile = &with_k3s_bundle(profile, store, std::slice::from_ref(&node.to_string()))?;
    let (mut plan, base_spec, shared_extra) = if profile.controller.is_named(node) {
        let plan = profile.controller_sd_plan().ok_or_else(|| {
            UsageError(format!(
                "the profile {} gives the controller {} no base, so there is no card to build: \
                 add a [controller.base] table with the keys of [base] (for example \
                 `source = \"archive\"`, `path = \"clusterctrl-cnat-root.tar.xz\"` (a ClusterCTRL \
                 CNAT image's root filesystem), `architecture = \"arm64\"`), or put the owned files \
                 on a running controller with `chbuild image {node}` / `chbuild deploy --controller`",
                profile.file.display(),
                profile.controller.hostname
            ))
        })?;
        let base = profile
            .controller
            .base
            .clone()
            .expect("the plan has a base");
        // Its owned files follow the controller's plan.
        let extra = serde_json::to_string(&profile.controller_plan())?;
        (plan, base, extra)
    } else {
        let n = profile.node(node).expect("selection returns known nodes");
        (profile.plan(n), profile.base.clone(), String::new())
    };
    let node = plan.name.clone();
    let node = node.as_str();
    if plan.kind != crate::profile::NodeKind::Sd {
        return Err(UsageError(format!(
            "{node} is a usbboot Zero, booted over NFS by ClusterCTRL: it has no SD card image (use `chbuild image {node}` and `chbuild deploy {node}`)"
        ))
        .into());
    }
    let (layout, layout_text) = crate::disk::resolve_layout(layout)?;
    let dir = image_dir(image_path);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

    let secrets = Secrets::load(profile)?;
    let base = store.ensure_base(&base_spec)?;
    plan.add_base_packages(&os_release(&base));
    let epoch = source_date_epoch(&base)?;
    let planned = start_keys(store, &base, &[&plan])?.remove(0);
    let inputs = format!(
        "{}-{}",
        inputs_hash(
            &format!(
                "{}{shared_extra}",
                shared_inputs(profile, &Overlays::builtin()?)?
            ),
            &plan,
            &planned.key,
            epoch,
            &secrets
        )?,
        hex::encode(Sha256::digest(&layout_text))
    );
    let stamp = sd_stamp(image_path);
    let sha_file = crate::disk::sha256_path(image_path);
    let reused = public.is_none()
        && image_path.exists()
        && sha_file.exists()
        && std::fs::read_to_string(&stamp)
            .map(|s| s == inputs)
            .unwrap_or(false);
    if reused {
        tracing::info!("{node}: {} is up to date, reused", image_path.display());
        return Ok((crate::disk::SdImage::existing(image_path)?, true));
    }
    let _ = std::fs::remove_file(&stamp);
    let tree = dir.join(commit::staged(&format!("{node}.sd-tree")));
    let is_public = public.is_some();
    let start = start_trees(store, &base, &[(&plan, &planned)])?.remove(0);
    build_tree(profile, &plan, &start, &secrets, &tree, epoch, public)?;
    let started = Instant::now();
    // Built under a staged name, then image, bmap and checksum file are
    // put in place together: never a new image with an old checksum.
    let name = image_path
        .file_name()
        .context("the image path has no file name")?
        .to_string_lossy()
        .into_owned();
    let staged_image = dir.join(commit::staged(&name));
    let built =
        crate::disk::build_sd_image_from(&plan, &tree, &layout, &staged_image, epoch as u64, true);
    // Already gone when the image was built; not on an error.
    crate::fs::remove_tree(&tree)?;
    let built = built?;
    let sums = crate::disk::sha256_path(&staged_image);
    std::fs::write(&sums, format!("{}  {name}\n", built.sha256))
        .with_context(|| format!("writing {}", sums.display()))?;
    commit::commit(
        dir,
        &[
            Move::rename(commit::staged(&name), name.clone()),
            Move::rename(
                commit::staged(&format!("{name}.bmap")),
                format!("{name}.bmap"),
            ),
            Move::rename(
                commit::staged(&format!("{name}.sha256")),
                format!("{name}.sha256"),
            ),
        ],
    )?;
    let built = crate::disk::SdImage::existing(image_path)?;
    tracing::info!(
        "{node}: {} ({} MiB) in {:.1?}",
        image_path.display(),
        built.size >> 20,
        started.elapsed()
    );
    if !is_public {
        artifact::write_atomic(&stamp, inputs.as_bytes())?;
    }
    Ok((built, false))
}

/// The directory an image is written to.
fn image_dir(image_path: &Path) -> &Path {
    image_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.<image>.inputs`: what the image at that path was built from.
fn sd_stamp(image: &Path) -> PathBuf {
    image.with_file_name(format!(
        ".{}.inputs",
        image.file_name().unwrap_or_default().to_string_lossy()
    ))
}

#[derive(Debug, Serialize)]
pub struct ReleaseReport {
    pub output: PathBuf,
    pub files: Vec<String>,
    pub secrets_bundle: Option<PathBuf>,
}

/// Every artifact of the profile in one release directory: Zero tarballs,
/// compressed SD images with their bmaps, manifest.json, SHA256SUMS and
/// known_hosts. With `secrets_bundle`, the artifacts carry no secrets and
/// the bundle (outside the release) holds them for deploy time.
pub fn release(
    profile: &Profile,
    store: &Store,
    out: &Path,
    compress: Compress,
    secrets_bundle: Option<&Path>,
) -> Result<ReleaseReport> {
    let all: Vec<String> = profile.nodes.iter().map(|n| n.name.clone()).collect();
    let mut collected: Vec<SecretFile> = vec![];
    let public = secrets_bundle.is_some();
    create_private_dir(out)?;
    let _lock = commit::lock(out)?;
    commit::prepare(out)?;
    image_locked(
        profile,
        store,
        &all,
        out,
        Format::TarZst,
        public.then_some(&mut collected),
    )?;
    let mut manifest = Manifest::load(out)?.context("the image step wrote no manifest")?;
    for node in profile
        .nodes
        .iter()
        .filter(|n| n.kind == crate::profile::NodeKind::Sd)
    {
        let img = out.join(format!("{}.img", node.name));
        let (image, _) = sd_image(
            profile,
            store,
            &node.name,
            &img,
            None,
            public.then_some(&mut collected),
        )?;
        let packed = crate::disk::compress_image(&img, compress)?;
        // The release ships the compressed image and its bmap only.
        for f in [&img, &image.sha256_file, &sd_stamp(&img)] {
            let _ = std::fs::remove_file(f);
        }
        let names = [
            packed.file_name().unwrap().to_string_lossy().into_owned(),
            image
                .bmap
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ];
        let entry = manifest
            .nodes
            .iter_mut()
            .find(|n| n.name == node.name)
            .expect("image built every node");
        entry.files_extra = names
            .iter()
            .map(|n| artifact::ArtifactFile::of(out, n))
            .collect::<Result<_>>()?;
    }
    // Trees are for local deploys; a release ships tarballs.
    for n in &mut manifest.nodes {
        crate::fs::remove_tree(&out.join(&n.tree))?;
    }
    manifest.save(out)?;
    if let Some(bundle) = secrets_bundle {
        public::write_bundle(bundle, &collected, manifest.source_date_epoch)?;
        tracing::info!(
            "secrets of {} nodes in {} (keep it private)",
            profile.nodes.len(),
            bundle.display()
        );
    }
    let files = artifact::verify(out)?;
    tracing::info!("release of {} files in {}", files.len(), out.display());
    Ok(ReleaseReport {
        output: out.to_path_buf(),
        files,
        secrets_bundle: secrets_bundle.map(Path::to_path_buf),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_key_changes_with_templates_link_setting_and_k3s_bundle() {
        let t = tempfile::tempdir().unwrap();
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/clusterhat.toml");
        let text = include_str!("../profiles/clusterhat.toml");
        let mut profile = crate::profile::parse_profile(text, &file).unwrap();
        let ov = t.path().join("overlays");
        let tmpl = ov.join("roles/slurm/etc/slurm/cgroup.conf");
        std::fs::create_dir_all(tmpl.parent().unwrap()).unwrap();
        std::fs::write(&tmpl, "ConstrainCores=yes\n").unwrap();
        let overlays = Overlays::Dir(ov.clone());
        let key = |p: &Profile| shared_inputs(p, &overlays).unwrap();

        let first = key(&profile);
        assert_eq!(first, key(&profile), "the key is stable");
        std::fs::write(&tmpl, "ConstrainCores=no\n").unwrap();
        let edited = key(&profile);
        assert_ne!(edited, first, "a template's content");

        profile.link_dirs.push("srv".into());
        let linked = key(&profile);
        assert_ne!(linked, edited, "the [tree] link setting");

        // The bundle's hash is cached per path in one process: each state
        // gets its own directory.
        let bundle = |name: &str, binary: &str| {
            let d = t.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("k3s"), binary).unwrap();
            std::fs::write(d.join("k3s-airgap-images-arm64.tar.zst"), "images").unwrap();
            d
        };
        profile.features.k3s_airgap_dir = Some(bundle("a", "k3s v1"));
        let with_a = key(&profile);
        assert_ne!(with_a, linked, "an air-gap bundle");
        profile.features.k3s_airgap_dir = Some(bundle("b", "k3s v2"));
        assert_ne!(key(&profile), with_a, "the bundle's contents");

        let embedded = shared_inputs(&profile, &Overlays::Embedded).unwrap();
        assert_ne!(embedded, key(&profile), "where the templates come from");
    }
}
