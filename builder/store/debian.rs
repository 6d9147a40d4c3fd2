//! Bases built from Debian packages: an mmdebstrap recipe becomes a tar
//! that is then ingested like any archive. The store key is the sha256 of
//! the recipe's canonical JSON and of the hooks below, known before any
//! work.
//!
//! Where the time goes: a foreign architecture runs every maintainer script
//! under qemu-user, where each process start costs tens of milliseconds.
//! The costliest work is `mkinitramfs` (hundreds of modules with
//! `MODULES=most`, thousands of processes), and plain mmdebstrap runs it
//! more than once for one kernel: linux-image's postinst calls
//! `update-initramfs -c`, and the initramfs-tools trigger, fired again by
//! every later package that ships an initramfs hook (udev, kmod, busybox,
//! ...), calls `update-initramfs -u`. The hooks below divert
//! `update-initramfs` to a no-op while packages are installed, and build
//! each kernel's initramfs once at the end, with the real program, so the
//! result is what a plain run leaves (raspi-firmware's post-update hook
//! then copies kernel, initramfs and device trees to `boot/firmware` and
//! writes its `config.txt`, as it does on any update).

use crate::profile::DebianRecipe;
use crate::tools;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::path::Path;

/// Runs (as `sh -c HOOK exec ROOT`) once the essential packages are in,
/// before the rest is installed: while the diversion stands every call of
/// `update-initramfs` (postinst, kernel hook, trigger) does nothing.
/// `dpkg-divert --rename` on a file no package has unpacked yet only
/// records the diversion; initramfs-tools then unpacks its program as
/// `update-initramfs.distrib`.
const DEFER_INITRAMFS: &str = r#"set -e
chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
printf '#!/bin/sh\n# chbuild: deferred, the initramfs is built once at the end\nexit 0\n' >"$1/usr/sbin/update-initramfs"
chmod 0755 "$1/usr/sbin/update-initramfs"
"#;

/// Runs after every package is installed and configured: put the real
/// `update-initramfs` back (leaving no trace in dpkg's diversions) and
/// build one initramfs per installed kernel (`-k all` with `-c` means every
/// kernel `linux-version list` finds). Its post-update hooks run as on a
/// live system. Nothing happens when no kernel or no initramfs-tools is
/// installed.
///
/// Under qemu-user every process start costs tens of milliseconds, and
/// mkinitramfs with `MODULES=most` starts several per module (`realpath`,
/// `mkdir`, `cp`, `modinfo`...), thousands in all: most of the first run's
/// time (32 of 42 minutes on a loaded 2-core machine). The tools that only
/// copy files into mkinitramfs' staging directory run natively instead
/// (2.7 minutes): the build machine's own, bind-mounted over the chroot's
/// in a private mount namespace that ends with the build, each only when
/// the machine has the very same package version as the base (same
/// program, same output), and none that an initramfs hook copies into the
/// image (kmod, udev, klibc, fsck... stay the base's). Their ELF
/// interpreter is rewritten (same length) to `/run/chbuild-ld.so`, the
/// machine's loader mounted there, because mkinitramfs mirrors every
/// top-level `/lib*` of the chroot into the image and a `/lib64` would
/// show up in it; their libraries are mounted on the machine's multiarch
/// directory, which an arm64 base does not have. What the build creates
/// for the mounts is removed after it and the parents' times put back.
/// Without any of that (another layout, other versions, no perl) it all
/// runs under emulation, as before.
const BUILD_INITRAMFS_PRELUDE: &str = r#"set -e
root=$1
rm -f "$root/usr/sbin/update-initramfs"
chroot "$root" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
[ -x "$root/usr/sbin/update-initramfs" ] || exit 0
ls "$root"/boot/vmlinuz-* >/dev/null 2>&1 || exit 0
"#;

/// The hook that builds every kernel's initramfs at the end: the prelude
/// above, then `initramfs-native.sh` running `update-initramfs -c -k all`
/// in the tree (the same text as before the native part was shared with
/// the Zero boot layer, so existing bases keep their digest).
fn build_initramfs() -> String {
    format!(
        "{BUILD_INITRAMFS_PRELUDE}{}",
        native_initramfs(&[], "update-initramfs -c -k all")
    )
}

/// `initramfs-native.sh` with its command: it expects `$root` set and
/// runs `chroot "$root" COMMAND`, with the native copying tools when it
/// can, else all under emulation. `COMMAND` is shell text, expanded in
/// a `sh -c '...'` (single quotes: no single quote in it). `also` adds
/// packages whose same-named program may run natively: only ones no
/// initramfs hook copies into the image, since the machine's program is
/// what the tree shows while the command runs.
pub fn native_initramfs(also: &[&str], command: &str) -> String {
    assert!(
        !command.contains('\''),
        "the command goes between single quotes"
    );
    let pkgs: String = also.iter().map(|p| format!(" {p}")).collect();
    // The file's first paragraph is its header comment.
    let body = NATIVE_INITRAMFS
        .split_once("\n\n")
        .map_or(NATIVE_INITRAMFS, |(_, b)| b);
    body.replace("@PKGS@", &pkgs).replace("@COMMAND@", command)
}

const NATIVE_INITRAMFS: &str = include_str!("initramfs-native.sh");

/// The store key of a recipe.
pub fn recipe_digest(r: &DebianRecipe) -> String {
    // serde_json writes struct fields in declaration order and the package
    // list is sorted by the profile loader: the same recipe, the same bytes.
    let json = serde_json::to_vec(r).expect("a recipe always serializes");
    let mut h = Sha256::new();
    h.update(&json);
    // The hooks shape the result as much as the package list: a base built
    // by other hooks is another base.
    if runs_foreign_code(&r.variant) {
        for hook in [DEFER_INITRAMFS.to_string(), build_initramfs()] {
            h.update(b"\0hook\0");
            h.update(hook.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

pub fn describe(r: &DebianRecipe) -> String {
    format!(
        "debian {} {} {} ({} packages)",
        r.suite,
        r.architecture,
        r.variant,
        r.packages.len()
    )
}

/// Variants that only unpack packages and run none of their scripts, so a
/// foreign architecture needs no emulation.
fn runs_foreign_code(variant: &str) -> bool {
    !matches!(variant, "extract" | "custom")
}

/// Check what the recipe needs before any work starts.
pub fn check_tools(r: &DebianRecipe) -> Result<()> {
    tools::MMDEBSTRAP.require()?;
    if runs_foreign_code(&r.variant) {
        tools::check_foreign_arch(r.architecture.qemu())?;
    }
    Ok(())
}

/// mmdebstrap's arguments for the recipe, writing the tar file `out`.
fn mmdebstrap_args(r: &DebianRecipe, out: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--variant={}", r.variant).into(),
        format!("--architectures={}", r.architecture.debian()).into(),
        "--format=tar".into(),
    ];
    if !r.components.is_empty() {
        args.push(format!("--components={}", r.components.join(",")).into());
    }
    if !r.packages.is_empty() {
        args.push(format!("--include={}", r.packages.join(",")).into());
    }
    // Variants that run no maintainer scripts build no initramfs.
    if runs_foreign_code(&r.variant) {
        args.push(format!("--essential-hook={DEFER_INITRAMFS}").into());
        args.push(format!("--customize-hook={}", build_initramfs()).into());
    }
    args.push(r.suite.clone().into());
    args.push(out.into());
    // Without a mirror mmdebstrap follows the machine's apt configuration.
    if let Some(m) = &r.mirror {
        args.push(m.into());
    }
    args
}

/// Build the recipe into the tar file `out`.
pub fn build_tar(r: &DebianRecipe, out: &Path) -> Result<()> {
    check_tools(r)?;
    let mut cmd = tools::MMDEBSTRAP.command()?;
    cmd.args(mmdebstrap_args(r, out));
    tracing::info!("building {} with mmdebstrap", describe(r));
    tools::run(&mut cmd).with_context(|| format!("building the base {}", describe(r)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::model::Arch;

    fn recipe() -> DebianRecipe {
        DebianRecipe {
            suite: "bookworm".into(),
            architecture: Arch::Arm64,
            variant: "minbase".into(),
            components: vec!["main".into()],
            mirror: None,
            packages: vec!["sudo".into()],
        }
    }

    #[test]
    fn digest_follows_the_recipe() {
        let a = recipe();
        let mut b = recipe();
        assert_eq!(recipe_digest(&a), recipe_digest(&b));
        b.packages.push("vim-tiny".into());
        assert_ne!(recipe_digest(&a), recipe_digest(&b));
        assert_eq!(recipe_digest(&a).len(), 64);
    }

    #[test]
    fn digest_follows_the_hooks() {
        // The same recipe under the hooks (minbase) and without them
        // (extract, which runs no scripts) are different bases; the
        // extract digest stays the plain recipe's.
        let a = recipe();
        let json = serde_json::to_vec(&a).unwrap();
        assert_ne!(recipe_digest(&a), hex::encode(Sha256::digest(&json)));
        let mut e = recipe();
        e.variant = "extract".into();
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(recipe_digest(&e), hex::encode(Sha256::digest(&json)));
    }

    #[test]
    fn initramfs_is_deferred_to_one_build_at_the_end() {
        let args = |variant: &str| {
            let mut r = recipe();
            r.variant = variant.into();
            mmdebstrap_args(&r, Path::new("/tmp/base.tar"))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect::<Vec<_>>()
        };
        let a = args("minbase");
        let hook = |prefix: &str| a.iter().find(|x| x.starts_with(prefix)).cloned();
        let defer = hook("--essential-hook=").expect("an essential hook");
        assert!(
            defer.contains("dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs")
        );
        let build = hook("--customize-hook=").expect("a customize hook");
        // The diversion goes before the one real run, so dpkg keeps no trace.
        let (remove, run) = (
            build.find("--remove /usr/sbin/update-initramfs").unwrap(),
            build.find("update-initramfs -c -k all").unwrap(),
        );
        assert!(remove < run, "{build}");
        assert_eq!(&a[a.len() - 2..], ["bookworm", "/tmp/base.tar"]);
        assert!(!args("extract").iter().any(|x| x.contains("-hook=")));
    }

    #[test]
    fn the_shared_native_part_keeps_the_hook_and_the_digest() {
        // sha256 of the hook's text before its native part moved to
        // initramfs-native.sh: stored bases keep their digest.
        assert_eq!(
            hex::encode(Sha256::digest(build_initramfs())),
            "862032d5e8d3a52fd0f742f058f5bb62b1431f9974dcd917d2c61ce24be3328b"
        );
    }

    #[test]
    fn more_native_packages_for_one_caller_only() {
        let zero = native_initramfs(&["gzip"], "mkinitramfs");
        assert!(zero.contains("pkgs=\"coreutils findutils zstd gzip\"\n"));
        assert_eq!(zero.matches("chroot \"$root\" mkinitramfs\n").count(), 2);
        assert!(!zero.contains('@'), "{zero}");
    }

    #[test]
    fn extract_needs_no_emulation() {
        assert!(runs_foreign_code("minbase"));
        assert!(!runs_foreign_code("extract"));
    }
}
