//! Shared helpers of the disk_* tests: a node tree from the minbase
//! fixture (extracted once per test binary, then hardlink-copied per test,
//! as node trees share files with the store), the p5 plan, tool runners.
#![allow(dead_code)] // each test binary uses a different subset

use chbuild::profile::plan::NodePlan;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

#[path = "../support/mod.rs"]
mod support;
pub use support::*;

pub const EPOCH: u64 = 1_700_000_000;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz")
}

/// Run a command, panic with its stderr on failure, return stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn sh(script: &str) -> String {
    run(Command::new("sh").args(["-ec", script]))
}

/// The fixture unpacked once (as root: owners and setuid kept).
pub fn base_tree() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("chbuild-disk-base-")
            .tempdir()
            .unwrap()
            .keep();
        let tree = dir.join("base");
        std::fs::create_dir(&tree).unwrap();
        run(Command::new("tar")
            .arg("-xpJf")
            .arg(fixture())
            .arg("-C")
            .arg(&tree));
        tree
    })
}

/// A node tree in `dir`: hardlinks to the base plus a boot/firmware
/// directory with a few files, like a Pi's boot partition.
pub fn node_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    run(Command::new("cp").arg("-al").arg(base_tree()).arg(&tree));
    let boot = tree.join("boot/firmware");
    std::fs::create_dir_all(boot.join("overlays")).unwrap();
    std::fs::write(boot.join("config.txt"), "arm_64bit=1\nenable_uart=1\n").unwrap();
    std::fs::write(
        boot.join("cmdline.txt"),
        "console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n",
    )
    .unwrap();
    // A fake kernel with content that is not all zeros, 3 MiB.
    let kernel: Vec<u8> = (0..3u32 << 18)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    std::fs::write(boot.join("kernel8.img"), kernel).unwrap();
    std::fs::write(
        boot.join("overlays/disable-bt-with-a-long-name.dtbo"),
        b"dtbo",
    )
    .unwrap();
    std::fs::write(boot.join("ssh"), b"").unwrap();
    tree
}

pub fn plan() -> NodePlan {
    let p = chbuild::profile::load_profile(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/clusterhat.toml"),
    )
    .unwrap();
    p.plan(p.node("p5").unwrap())
}

pub fn layout(name: &str) -> chbuild::disk::Layout {
    chbuild::disk::load_layout(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("images")
            .join(name),
    )
    .unwrap()
}

/// sfdisk's view of the image: (label, id, [(start sector, sectors, type)]).
pub fn sfdisk(img: &Path) -> serde_json::Value {
    let text = run(Command::new("sfdisk").arg("--json").arg(img));
    serde_json::from_str::<serde_json::Value>(&text).unwrap()["partitiontable"].clone()
}

/// Copy partition `n` (1-based) out of the image, sparse, for fsck/debugfs.
pub fn extract_partition(img: &Path, n: usize, dst: &Path) -> PathBuf {
    let t = sfdisk(img);
    let p = &t["partitions"][n - 1];
    let (start, size) = (p["start"].as_u64().unwrap(), p["size"].as_u64().unwrap());
    run(Command::new("dd")
        .arg(format!("if={}", img.display()))
        .arg(format!("of={}", dst.display()))
        .args([
            "bs=1M",
            "conv=sparse",
            "status=none",
            "iflag=skip_bytes,count_bytes",
        ])
        .arg(format!("skip={}", start * 512))
        .arg(format!("count={}", size * 512)));
    dst.to_path_buf()
}

pub fn sha256(path: &Path) -> String {
    run(Command::new("sha256sum").arg(path))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
