//! Writing images to block devices, as root on loop devices: the write and
//! its verification, and every refusal. Loop devices and mounts are
//! released by RAII guards.

mod disk_support;

use chbuild::device::{check_target, write_image, WriteOptions};
use chbuild::disk::{build_sd_image, parse_layout, SdImage};
use disk_support::*;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file, detached on drop, with the partition nodes
/// it had to make itself (machines without udev get none).
struct Loop(PathBuf, std::cell::RefCell<Vec<PathBuf>>);

impl Loop {
    fn new(file: &Path, partscan: bool) -> Loop {
        let mut cmd = Command::new("losetup");
        cmd.args(["-f", "--show"]);
        if partscan {
            cmd.arg("-P");
        }
        Loop(PathBuf::from(run(cmd.arg(file)).trim()), Default::default())
    }

    /// `/dev/loopNpK`, made from sysfs when udev did not make it.
    fn part(&self, n: u32) -> PathBuf {
        let node = PathBuf::from(format!("{}p{n}", self.0.display()));
        let name = node.file_name().unwrap().to_string_lossy().into_owned();
        let sys = PathBuf::from(format!("/sys/class/block/{name}/dev"));
        for i in 0..50 {
            if node.exists() || sys.exists() {
                break;
            }
            if i == 10 {
                // `losetup -P` does not always scan: ask explicitly.
                let _ = Command::new("partx").arg("-a").arg(&self.0).status();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        if !node.exists() {
            let dev =
                std::fs::read_to_string(&sys).unwrap_or_else(|e| panic!("{}: {e}", sys.display()));
            let (maj, min) = dev.trim().split_once(':').unwrap();
            run(Command::new("mknod").arg(&node).args(["b", maj, min]));
            self.1.borrow_mut().push(node.clone());
        }
        node
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        for n in self.1.borrow().iter() {
            let _ = std::fs::remove_file(n);
        }
    }
}

/// A mount, unmounted on drop (before its loop device is detached).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn sparse_file(path: &Path, len: u64) -> PathBuf {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
    path.to_path_buf()
}

/// A small node tree: enough for a real image, quick to build.
fn small_image(dir: &Path) -> SdImage {
    let tree = dir.join("tree");
    for d in ["etc", "usr/bin", "boot/firmware/overlays"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/fstab"), "proc /proc proc defaults 0 0\n").unwrap();
    std::fs::write(tree.join("etc/hostname"), "p5\n").unwrap();
    std::fs::write(tree.join("usr/bin/tool"), vec![7u8; 3 << 20]).unwrap();
    std::fs::write(tree.join("boot/firmware/config.txt"), "arm_64bit=1\n").unwrap();
    std::fs::write(
        tree.join("boot/firmware/cmdline.txt"),
        "console=serial0,115200 root=/dev/mmcblk0p2 rootwait\n",
    )
    .unwrap();
    std::fs::write(tree.join("boot/firmware/kernel8.img"), vec![9u8; 2 << 20]).unwrap();
    let layout = parse_layout(
        "table='mbr'\nalignment_mib=4\nboot_size_mib=64\nroot_margin_mib=16\n",
        Path::new("small.toml"),
    )
    .unwrap();
    build_sd_image(&plan(), &tree, &layout, &dir.join("small.img"), EPOCH).unwrap()
}

/// True (after saying why) when loop devices cannot be used here.
fn no_loop_devices() -> bool {
    if !is_root() {
        disk_support::skip("loop devices need root");
        return true;
    }
    false
}

fn yes_force() -> WriteOptions {
    WriteOptions {
        yes: true,
        force: true,
    }
}

#[test]
fn write_and_verify_on_a_loop_device() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    // The "card" holds old data everywhere: blocks the bmap skips keep it,
    // and the file systems must still check clean.
    let card = dir.path().join("card");
    let mut f = std::fs::File::create(&card).unwrap();
    let junk = vec![0xa5u8; 1 << 20];
    for _ in 0..(img.size >> 20) + 8 {
        f.write_all(&junk).unwrap();
    }
    drop(f);
    let lo = Loop::new(&card, true);
    let map =
        chbuild::disk::bmap::parse_bmap(&std::fs::read_to_string(&img.bmap).unwrap()).unwrap();
    let report = write_image(&img.image, &img.bmap, &lo.0, &yes_force()).unwrap();
    assert_eq!(report.bytes_written, map.mapped_bytes());
    assert!(report.bytes_written < img.size);
    assert_eq!(report.ranges_verified, map.ranges.len());
    eprintln!(
        "wrote {} of {} bytes ({} ranges) in {:.2} s",
        report.bytes_written, img.size, report.ranges_verified, report.seconds
    );
    // The device's mapped blocks equal the image's.
    let (card_f, img_f) = (
        std::fs::File::open(&lo.0).unwrap(),
        std::fs::File::open(&img.image).unwrap(),
    );
    for r in &map.ranges {
        let (off, len) = (r.offset(4096), r.len(4096) as usize);
        let (mut a, mut b) = (vec![0u8; len], vec![0u8; len]);
        card_f.read_exact_at(&mut a, off).unwrap();
        img_f.read_exact_at(&mut b, off).unwrap();
        assert!(a == b, "blocks {}-{} differ", r.first, r.last);
    }
    // The re-read table shows the partitions; the tools accept them.
    let t = sfdisk(&lo.0);
    assert_eq!(t["partitions"].as_array().unwrap().len(), 2);
    run(Command::new("fsck.vfat").arg("-n").arg(lo.part(1)));
    run(Command::new("e2fsck").arg("-fn").arg(lo.part(2)));
}

#[test]
fn refuses_a_regular_file() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let target = sparse_file(&dir.path().join("target"), img.size * 2);
    let e = write_image(&img.image, &img.bmap, &target, &yes_force()).unwrap_err();
    assert!(format!("{e:#}").contains("not a block device"), "{e:#}");
}

#[test]
fn refuses_a_partition() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    // A copy of the image as a partitioned disk; aim at its partition 2.
    let disk = dir.path().join("disk");
    std::fs::copy(&img.image, &disk).unwrap();
    let lo = Loop::new(&disk, true);
    let e = check_target(&lo.part(2), 1, true).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("is a partition") && text.contains(&lo.0.display().to_string()),
        "{text}"
    );
}

#[test]
fn refuses_a_device_smaller_than_the_image() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let lo = Loop::new(
        &sparse_file(&dir.path().join("small"), img.size - (4 << 20)),
        false,
    );
    let e = write_image(&img.image, &img.bmap, &lo.0, &yes_force()).unwrap_err();
    assert!(format!("{e:#}").contains("smaller than the image"), "{e:#}");
}

#[test]
fn refuses_a_device_with_a_mounted_file_system() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let backing = sparse_file(&dir.path().join("fs"), img.size * 2);
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4"])
        .arg(&backing));
    let lo = Loop::new(&backing, false);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount").arg(&lo.0).arg(&mnt));
    let _m = Mount(mnt.clone());
    let e = write_image(&img.image, &img.bmap, &lo.0, &yes_force()).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("in use") && text.contains("mounted on"),
        "{text}"
    );
}

#[test]
fn refuses_a_disk_whose_partition_is_mounted() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let disk = dir.path().join("disk");
    std::fs::copy(&img.image, &disk).unwrap();
    let lo = Loop::new(&disk, true);
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run(Command::new("mount")
        .args(["-o", "ro"])
        .arg(lo.part(2))
        .arg(&mnt));
    let _m = Mount(mnt.clone());
    let e = check_target(&lo.0, 1, true).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains(&format!("{} is mounted on", lo.part(2).display())),
        "{text}"
    );
}

#[test]
fn refuses_a_non_removable_device_without_force() {
    if no_loop_devices() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = small_image(dir.path());
    let lo = Loop::new(&sparse_file(&dir.path().join("big"), img.size * 2), false);
    let opts = WriteOptions {
        yes: true,
        force: false,
    };
    let e = write_image(&img.image, &img.bmap, &lo.0, &opts).unwrap_err();
    assert!(format!("{e:#}").contains("not a removable device"), "{e:#}");
    // Nothing was written.
    let mut head = vec![0u8; 512];
    std::fs::File::open(&lo.0)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|&b| b == 0));
}

#[test]
fn refuses_the_disk_of_the_running_system() {
    if no_loop_devices() {
        return;
    }
    // Only the read-only checks run here: never anything that writes.
    let root = run(Command::new("findmnt").args(["-no", "SOURCE", "/"]));
    let root = root.trim();
    if !root.starts_with("/dev/") {
        disk_support::skip(&format!("/ is not on a block device here ({root})"));
        return;
    }
    let disk = run(Command::new("lsblk").args(["-no", "PKNAME"]).arg(root));
    let disk = match disk.lines().next().map(str::trim) {
        Some(d) if !d.is_empty() => format!("/dev/{d}"),
        _ => root.to_string(),
    };
    let e = check_target(Path::new(&disk), 1, true).unwrap_err();
    let text = format!("{e:#}");
    assert!(
        text.contains("running system") || text.contains("in use"),
        "{text}"
    );
}
