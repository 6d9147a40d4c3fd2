//! Checks of a Zero's NFS-boot files, because `usbboot-init` exits 0 even
//! when it did nothing; and the hostname fix-up after it, because it
//! renames every Zero to `pN` while chbuild takes the name from the profile.

use super::stage::write_file_atomic;
use crate::profile::plan::{NodePlan, UsbbootPlan};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// `boot/firmware` on Bookworm, `boot` on older releases (as
/// `reconfig-usbboot` decides).
pub fn boot_dir(tree: &Path) -> PathBuf {
    if tree.join("boot/firmware").is_dir() {
        tree.join("boot/firmware")
    } else {
        tree.join("boot")
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Problems with the kernel command line: it must hold the NFS root of
/// this slot and the `ip=` whose `:pN:usb0.10:static` the initramfs parses.
pub fn cmdline_problems(text: &str, ub: &UsbbootPlan, nfs_server: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if text.trim_end().lines().count() > 1 {
        problems.push("cmdline.txt must be a single line".to_string());
    }
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let want_root = format!("{nfs_server}:{}", ub.nfs_dir);
    match tokens.iter().find_map(|t| t.strip_prefix("nfsroot=")) {
        None => problems.push("cmdline.txt has no nfsroot=".into()),
        Some(v) => {
            let path = v.split(',').next().unwrap_or(v);
            if path != want_root {
                problems.push(format!("cmdline.txt has nfsroot={v}, expected {want_root}"));
            }
        }
    }
    let want_ip = ub
        .cmdline_nfsroot
        .split_whitespace()
        .find_map(|t| t.strip_prefix("ip="))
        .expect("the plan's cmdline has ip=");
    match tokens.iter().find_map(|t| t.strip_prefix("ip=")) {
        None => problems.push("cmdline.txt has no ip=".into()),
        Some(v) if v != want_ip => {
            problems.push(format!("cmdline.txt has ip={v}, expected ip={want_ip}"))
        }
        Some(_) => {}
    }
    problems
}

/// Problems with fstab: every ClusterCTRL NFS path must name this slot
/// (the official archive ships the placeholder `p253`), and the boot
/// directory must be mounted from it.
pub fn fstab_problems(text: &str, ub: &UsbbootPlan, nfs_server: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let prefix = "/var/lib/clusterctrl/nfs/";
    let mut mounts_boot = false;
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(i) = rest.find(prefix) {
            let after = &rest[i + prefix.len()..];
            let slot: String = after
                .chars()
                .take_while(|c| *c != '/' && !c.is_whitespace())
                .collect();
            if slot != ub.pname {
                problems.push(format!(
                    "fstab mounts {prefix}{slot}, expected {}",
                    ub.pname
                ));
            }
            rest = after;
        }
        let source = line.split_whitespace().next().unwrap_or("");
        if source.starts_with(&format!("{nfs_server}:{}/boot", ub.nfs_dir)) {
            mounts_boot = true;
        }
    }
    if !mounts_boot {
        problems.push(format!(
            "fstab does not mount {nfs_server}:{}/boot... (the boot files)",
            ub.nfs_dir
        ));
    }
    problems
}

/// Problems with the hostname: `etc/hostname` and the `127.0.1.1` line.
pub fn hostname_problems(tree: &Path, hostname: &str) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let h = read(&tree.join("etc/hostname"))?;
    if h.trim() != hostname {
        problems.push(format!(
            "etc/hostname is `{}`, expected `{hostname}`",
            h.trim()
        ));
    }
    let hosts = read(&tree.join("etc/hosts"))?;
    let ok = hosts.lines().any(|l| {
        let mut f = l.split_whitespace();
        f.next() == Some("127.0.1.1") && f.any(|n| n == hostname)
    });
    if !ok {
        problems.push(format!("etc/hosts has no `127.0.1.1 ... {hostname}` line"));
    }
    Ok(problems)
}

/// Check the NFS-boot files and hostname of a tree for `plan`; fail with
/// every problem found.
pub fn check_tree(tree: &Path, plan: &NodePlan, nfs_server: &str) -> Result<()> {
    let ub = plan.usbboot.as_ref().expect("a usbboot node");
    let cmdline = boot_dir(tree).join("cmdline.txt");
    let mut problems = cmdline_problems(&read(&cmdline)?, ub, nfs_server);
    problems.extend(fstab_problems(
        &read(&tree.join("etc/fstab"))?,
        ub,
        nfs_server,
    ));
    problems.extend(hostname_problems(tree, &plan.hostname)?);
    if !problems.is_empty() {
        bail!(
            "{} is not ready to boot as {} ({}):\n  {}",
            tree.display(),
            plan.name,
            ub.pname,
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// What must hold right after `usbboot-init N`: it renamed the node to
/// `pN` (so `reconfig-usbboot` really ran) and the boot files name slot N.
pub fn usbboot_init_problems(
    tree: &Path,
    plan: &NodePlan,
    nfs_server: &str,
) -> Result<Vec<String>> {
    let ub = plan.usbboot.as_ref().expect("a usbboot node");
    let mut problems = Vec::new();
    let h = read(&tree.join("etc/hostname"))?;
    if h.trim() != ub.pname {
        problems.push(format!(
            "etc/hostname is `{}`, but usbboot-init sets it to `{}`: reconfig-usbboot did not run",
            h.trim(),
            ub.pname
        ));
    }
    let cmdline = boot_dir(tree).join("cmdline.txt");
    problems.extend(cmdline_problems(&read(&cmdline)?, ub, nfs_server));
    problems.extend(fstab_problems(
        &read(&tree.join("etc/fstab"))?,
        ub,
        nfs_server,
    ));
    Ok(problems)
}

/// The `127.0.1.1` line of a tree's etc/hosts, if any.
pub fn loopback_line(tree: &Path) -> Result<Option<String>> {
    let path = tree.join("etc/hosts");
    if !path.exists() {
        return Ok(None);
    }
    Ok(read(&path)?
        .lines()
        .find(|l| l.split_whitespace().next() == Some("127.0.1.1"))
        .map(str::to_string))
}

/// Put chbuild's hostname back after `usbboot-init` renamed the node to
/// `pN`: etc/hostname, and the `127.0.1.1` line as the built tree had it.
pub fn restore_hostname(tree: &Path, hostname: &str, loopback: Option<&str>) -> Result<()> {
    write_file_atomic(
        &tree.join("etc/hostname"),
        format!("{hostname}\n").as_bytes(),
    )?;
    let hosts_path = tree.join("etc/hosts");
    let hosts = read(&hosts_path)?;
    let line = loopback
        .filter(|l| l.split_whitespace().skip(1).any(|n| n == hostname))
        .map(str::to_string)
        .unwrap_or_else(|| format!("127.0.1.1\t{hostname}"));
    let mut out = String::new();
    let mut done = false;
    for l in hosts.lines() {
        if l.split_whitespace().next() == Some("127.0.1.1") {
            if !done {
                out.push_str(&line);
                out.push('\n');
                done = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !done {
        out.push_str(&line);
        out.push('\n');
    }
    write_file_atomic(&hosts_path, out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ub(n: u8) -> UsbbootPlan {
        UsbbootPlan {
            slot: n,
            pname: format!("p{n}"),
            nfs_dir: format!("/var/lib/clusterctrl/nfs/p{n}"),
            nfs_address: Ipv4Addr::new(172, 19, 180, n),
            cmdline_nfsroot: format!("nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p{n} rw ip=172.19.180.{n}:172.19.180.254::255.255.255.0:p{n}:usb0.10:static"),
        }
    }

    const S: &str = "172.19.180.254";

    #[test]
    fn cmdline_must_name_this_slot() {
        let good = format!("console=serial0 {} rootwait\n", ub(2).cmdline_nfsroot);
        assert!(cmdline_problems(&good, &ub(2), S).is_empty());
        let placeholder = good.replace("p2", "p252").replace(".180.2:", ".180.252:");
        let p = cmdline_problems(&placeholder, &ub(2), S);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(!cmdline_problems("root=/dev/mmcblk0p2", &ub(2), S).is_empty());
    }

    #[test]
    fn fstab_placeholder_is_caught() {
        let line = |p: &str| {
            format!(
                "{S}:/var/lib/clusterctrl/nfs/{p}/boot/firmware /boot/firmware nfs defaults 0 0\n"
            )
        };
        assert!(fstab_problems(&line("p1"), &ub(1), S).is_empty());
        assert_eq!(fstab_problems(&line("p253"), &ub(1), S).len(), 2);
        assert_eq!(
            fstab_problems("proc /proc proc defaults 0 0\n", &ub(1), S).len(),
            1
        );
    }

    #[test]
    fn hostname_restored_with_original_line() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(t.path().join("etc/hostname"), "p1\n").unwrap();
        std::fs::write(
            t.path().join("etc/hosts"),
            "127.0.0.1\tlocalhost\n127.0.1.1\tp1\n",
        )
        .unwrap();
        assert_eq!(hostname_problems(t.path(), "z1").unwrap().len(), 2);
        restore_hostname(t.path(), "z1", Some("127.0.1.1\tz1.lan z1")).unwrap();
        assert!(hostname_problems(t.path(), "z1").unwrap().is_empty());
        assert_eq!(
            std::fs::read_to_string(t.path().join("etc/hosts")).unwrap(),
            "127.0.0.1\tlocalhost\n127.0.1.1\tz1.lan z1\n"
        );
    }
}
