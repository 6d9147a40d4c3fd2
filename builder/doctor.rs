//! `chbuild doctor`: on the controller, find what keeps a Zero from
//! booting, each finding with its fix. Reads files only (under a root, so
//! it can be pointed at a copy), and returns findings; the CLI prints them.

use crate::artifact::Manifest;
use crate::deploy::{MARKER, NFS_DIR};
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

const BOOT_DIR: &str = "var/lib/clusterctrl/boot";
const RPIBOOT: &str = "clusterctrl-rpiboot.service";
const NFS_SERVER: &str = "172.19.180.254";

pub struct DoctorOptions {
    /// The controller's root (`/`, or a copy for tests).
    pub root: PathBuf,
    /// A release or output directory whose build ids should be deployed.
    pub release: Option<PathBuf>,
    /// Free space the NFS directory needs (one more tree), bytes.
    pub min_free: u64,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Problem,
}

/// One thing checked: what, on what, and for a problem, the fix.
#[derive(Debug, Serialize, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub subject: String,
    pub status: Status,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn ok(check: &'static str, subject: impl Into<String>, message: impl Into<String>) -> Finding {
    Finding {
        check,
        subject: subject.into(),
        status: Status::Ok,
        message: message.into(),
        fix: None,
    }
}

fn problem(
    check: &'static str,
    subject: impl Into<String>,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        check,
        subject: subject.into(),
        status: Status::Problem,
        message: message.into(),
        fix: Some(fix.into()),
    }
}

/// Every check, in the order a Zero needs things while booting.
pub fn diagnose(o: &DoctorOptions) -> Result<Vec<Finding>> {
    let slots = deployed_slots(&o.root)?;
    let mut f = vec![rpiboot_service(&o.root)];
    f.extend(boot_links(&o.root, &slots)?);
    for n in &slots {
        f.extend(node_tree(&o.root, *n));
    }
    f.extend(exports(&o.root, &slots)?);
    f.push(free_space(&o.root, o.min_free));
    if let Some(r) = &o.release {
        f.extend(builds(&o.root, &slots, r)?);
    }
    Ok(f)
}

/// The slots N with a `pN` directory under ClusterCTRL's NFS directory.
fn deployed_slots(root: &Path) -> Result<Vec<u8>> {
    let nfs = root.join(NFS_DIR);
    let mut slots = vec![];
    let Ok(rd) = std::fs::read_dir(&nfs) else {
        return Ok(slots);
    };
    for e in rd {
        let e = e.with_context(|| format!("reading {}", nfs.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name.strip_prefix('p').and_then(|d| d.parse::<u8>().ok()) {
            if e.path().is_dir() && n > 0 {
                slots.push(n);
            }
        }
    }
    slots.sort();
    Ok(slots)
}

fn rpiboot_service(root: &Path) -> Finding {
    let installed = [
        "etc/systemd/system",
        "lib/systemd/system",
        "usr/lib/systemd/system",
    ]
    .iter()
    .any(|d| root.join(d).join(RPIBOOT).exists());
    if !installed {
        return problem(
            "rpiboot",
            RPIBOOT,
            "not installed: nothing answers a Zero's USB boot request",
            "install ClusterCTRL (`apt install clusterctrl`) or use a ClusterCTRL controller image",
        );
    }
    let enabled = std::fs::read_dir(root.join("etc/systemd/system"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_string_lossy().ends_with(".wants")
                && e.path().join(RPIBOOT).symlink_metadata().is_ok()
        });
    if enabled {
        ok("rpiboot", RPIBOOT, "installed and enabled")
    } else {
        problem(
            "rpiboot",
            RPIBOOT,
            "installed but not enabled: Zeros boot only after someone starts it",
            format!("systemctl enable --now {RPIBOOT}"),
        )
    }
}

/// A path a symlink on the controller names, read under `root`.
fn under(root: &Path, target: &Path) -> PathBuf {
    root.join(target.strip_prefix("/").unwrap_or(target))
}

/// Whether `path` (under `root`) exists, its absolute symlink read as the
/// controller would, under `root`.
fn exists_under(root: &Path, path: &Path) -> bool {
    match std::fs::read_link(path) {
        Ok(t) if t.is_absolute() => under(root, &t).exists(),
        _ => path.exists(),
    }
}

fn boot_links(root: &Path, slots: &[u8]) -> Result<Vec<Finding>> {
    let dir = root.join(BOOT_DIR);
    let mut f = vec![];
    if !exists_under(root, &dir.join("bootcode.bin")) {
        f.push(problem(
            "boot-links",
            format!("/{BOOT_DIR}/bootcode.bin"),
            "missing: rpiboot has no first-stage loader to send",
            "clusterctrl init (it links the controller's bootcode.bin)",
        ));
    }
    let mut linked = vec![];
    if let Ok(rd) = std::fs::read_dir(&dir) {
        for e in rd {
            let e = e.with_context(|| format!("reading {}", dir.display()))?;
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let name = format!("/{BOOT_DIR}/{}", e.file_name().to_string_lossy());
            if name.ends_with("bootcode.bin") {
                continue;
            }
            let abs = if target.is_absolute() {
                target.clone()
            } else {
                Path::new("/").join(BOOT_DIR).join(&target)
            };
            if !under(root, &abs).exists() {
                f.push(problem(
                    "boot-links",
                    name,
                    format!("points to {}, which does not exist", target.display()),
                    "clusterctrl init (it remakes the links for the deployed pN)",
                ));
                continue;
            }
            let t = target.to_string_lossy();
            if let Some(n) = slots.iter().find(|n| t.contains(&format!("/nfs/p{n}/"))) {
                linked.push(*n);
            }
        }
    }
    for n in slots {
        if linked.contains(n) {
            f.push(ok(
                "boot-links",
                format!("p{n}"),
                format!("/{BOOT_DIR} links to its boot files"),
            ));
        } else {
            f.push(problem(
                "boot-links",
                format!("p{n}"),
                format!(
                    "no link in /{BOOT_DIR} points to p{n}'s boot files: rpiboot cannot find them"
                ),
                format!("usbboot-init {n} (or clusterctrl init)"),
            ));
        }
    }
    Ok(f)
}

fn node_tree(root: &Path, n: u8) -> Vec<Finding> {
    let tree = root.join(NFS_DIR).join(format!("p{n}"));
    let subject = format!("p{n}");
    let boot = crate::deploy::verify::boot_dir(&tree);
    let cmdline = boot.join("cmdline.txt");
    let fix = format!("usbboot-init {n}, or `chbuild deploy zN --force` of a chbuild tree");
    let mut f = vec![];
    match std::fs::read_to_string(&cmdline) {
        Err(_) => f.push(problem(
            "cmdline",
            subject.clone(),
            format!(
                "{} is missing: the Zero has no kernel command line",
                cmdline.display()
            ),
            fix.clone(),
        )),
        Ok(text) => {
            let want_root = format!("{NFS_SERVER}:/{NFS_DIR}/p{n}");
            let want_ip = format!("172.19.180.{n}:{NFS_SERVER}::255.255.255.0:p{n}:usb0.10:static");
            let tok = |k: &str| {
                text.split_whitespace()
                    .find_map(|t| t.strip_prefix(k).map(str::to_string))
            };
            let root_ok = tok("nfsroot=").is_some_and(|v| v.split(',').next() == Some(&want_root));
            let ip_ok = tok("ip=").as_deref() == Some(want_ip.as_str());
            if !root_ok {
                f.push(problem(
                    "cmdline",
                    subject.clone(),
                    format!(
                        "cmdline.txt has nfsroot={}, expected {want_root}",
                        tok("nfsroot=").unwrap_or_default()
                    ),
                    fix.clone(),
                ));
            }
            if !ip_ok {
                f.push(problem(
                    "cmdline",
                    subject.clone(),
                    format!(
                        "cmdline.txt has ip={}, expected ip={want_ip}",
                        tok("ip=").unwrap_or_default()
                    ),
                    fix.clone(),
                ));
            }
            if root_ok && ip_ok {
                f.push(ok(
                    "cmdline",
                    subject.clone(),
                    "nfsroot= and ip= name this slot",
                ));
            }
        }
    }
    f.push(vlan(&tree, n));
    f
}

/// The Zero's initramfs must create `usb0.10` before it mounts its root:
/// Debian's initramfs-tools cannot, so the tree needs the 8021q module in
/// its initramfs and a script that brings the VLAN up.
fn vlan(tree: &Path, n: u8) -> Finding {
    let modules =
        std::fs::read_to_string(tree.join("etc/initramfs-tools/modules")).unwrap_or_default();
    let has_module = modules.lines().any(|l| l.trim() == "8021q");
    let has_script = [
        "etc/initramfs-tools/scripts/nfs-top",
        "usr/share/initramfs-tools/scripts/nfs-top",
    ]
    .iter()
    .flat_map(|d| {
        std::fs::read_dir(tree.join(d))
            .into_iter()
            .flatten()
            .flatten()
    })
    .any(|e| {
        std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("usb0.10") || t.contains(".10 "))
    });
    if has_module && has_script {
        ok("vlan", format!("p{n}"), "its initramfs brings up usb0.10")
    } else {
        problem(
            "vlan",
            format!("p{n}"),
            format!(
                "nothing in its initramfs creates the usb0.10 VLAN ({}): the NFS root is unreachable",
                if has_module { "no nfs-top script for it" } else { "8021q is not in etc/initramfs-tools/modules" }
            ),
            "deploy a tree from the official usbboot archive (its initramfs has both), or give the \
             tree 8021q in etc/initramfs-tools/modules and an nfs-top script that creates usb0.10, \
             then rebuild its initramfs",
        )
    }
}

fn exports(root: &Path, slots: &[u8]) -> Result<Vec<Finding>> {
    let mut text = std::fs::read_to_string(root.join("etc/exports")).unwrap_or_default();
    let d = root.join("etc/exports.d");
    if let Ok(rd) = std::fs::read_dir(&d) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().ends_with(".exports") {
                text.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
    }
    let mut f = vec![];
    for n in slots {
        let path = format!("/{NFS_DIR}/p{n}");
        let client = format!("172.19.180.{n}(");
        let line = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .find(|l| l.split_whitespace().next() == Some(path.as_str()));
        let want = format!("{path} 172.19.180.{n}(rw,sync,no_subtree_check,no_root_squash)");
        match line {
            Some(l) if l.contains(&client) && l.contains("no_root_squash") && l.contains("rw") => f
                .push(ok(
                    "exports",
                    format!("p{n}"),
                    "exported read-write to its Zero",
                )),
            Some(l) => f.push(problem(
                "exports",
                format!("p{n}"),
                format!(
                    "/etc/exports has `{}`, which does not let 172.19.180.{n} mount its root",
                    l.trim()
                ),
                format!("make the line `{want}`, then exportfs -ra"),
            )),
            None => f.push(problem(
                "exports",
                format!("p{n}"),
                format!("{path} is not exported: the Zero cannot mount its root"),
                format!("add `{want}` to /etc/exports, then exportfs -ra"),
            )),
        }
    }
    Ok(f)
}

fn free_space(root: &Path, min_free: u64) -> Finding {
    let mut at = root.join(NFS_DIR);
    while !at.exists() && at.pop() {}
    match nix::sys::statvfs::statvfs(&at) {
        Err(e) => problem(
            "free-space",
            format!("/{NFS_DIR}"),
            format!("cannot read free space of {}: {e}", at.display()),
            "check that the file system is mounted",
        ),
        Ok(s) => {
            // u32 on some 32-bit targets (the armhf controller build).
            #[allow(clippy::unnecessary_cast)]
            let free = s.blocks_available() as u64 * s.fragment_size() as u64;
            let mib = |b: u64| b >> 20;
            if free >= min_free {
                ok(
                    "free-space",
                    format!("/{NFS_DIR}"),
                    format!("{} MiB free", mib(free)),
                )
            } else {
                problem(
                    "free-space",
                    format!("/{NFS_DIR}"),
                    format!(
                        "{} MiB free, {} MiB needed for one more tree: a deploy would stop",
                        mib(free),
                        mib(min_free)
                    ),
                    "remove old pN.prev trees (`chbuild deploy --uninstall` for unused slots) or grow the file system",
                )
            }
        }
    }
}

fn builds(root: &Path, slots: &[u8], release: &Path) -> Result<Vec<Finding>> {
    let m = Manifest::load(release)?.with_context(|| {
        format!(
            "{}: no {} (is it a release directory?)",
            release.display(),
            crate::artifact::MANIFEST
        )
    })?;
    let mut f = vec![];
    for node in m.nodes.iter().filter(|n| n.slot.is_some()) {
        let (Some(n), Some(want)) = (node.slot, &node.sha256) else {
            continue;
        };
        let subject = format!("p{n} ({})", node.name);
        let fix = format!(
            "chbuild deploy {} --bundle {}",
            node.name,
            release.display()
        );
        if !slots.contains(&n) {
            f.push(problem("build", subject, "not deployed", fix));
            continue;
        }
        let tree = root.join(NFS_DIR).join(format!("p{n}"));
        match crate::deploy::deployed_build(&tree) {
            Some(b) if &b == want => f.push(ok(
                "build",
                subject,
                format!("build {} as released", &b[..12.min(b.len())]),
            )),
            Some(b) => f.push(problem(
                "build",
                subject,
                format!(
                    "deployed build {} is not the release's {}",
                    &b[..12.min(b.len())],
                    &want[..12.min(want.len())]
                ),
                fix,
            )),
            None => f.push(problem(
                "build",
                subject,
                format!("has no {MARKER}: not deployed by chbuild"),
                fix,
            )),
        }
    }
    Ok(f)
}
