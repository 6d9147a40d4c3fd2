//! SD images built from the minbase fixture, checked by the real tools:
//! sfdisk, fsck.vfat, mtools, e2fsck, debugfs, bmaptool.

mod disk_support;

use chbuild::disk::build_sd_image;
use disk_support::*;
use std::path::Path;
use std::process::Command;

fn mdir_type(img: &Path, offset: u64, path: &str) -> String {
    run(Command::new("mtype")
        .arg("-i")
        .arg(format!("{}@@{offset}", img.display()))
        .arg(format!("::{path}")))
}

#[test]
fn mbr_image_passes_the_tools() {
    if !is_root() {
        disk_support::skip("unpacking the fixture with its owners needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = node_tree(dir.path());
    let img = dir.path().join("out/p5.img");
    let r = build_sd_image(&plan(), &tree, &layout("sd-mbr.toml"), &img, EPOCH).unwrap();
    assert_eq!(r.image, img);
    assert_eq!(r.size, std::fs::metadata(&img).unwrap().len());
    assert_eq!(r.sha256, sha256(&img));
    assert_eq!(
        std::fs::read_to_string(&r.sha256_file).unwrap(),
        format!("{}  p5.img\n", r.sha256)
    );
    // The tree is the caller's: its files are hardlinks to the base, which
    // must be unchanged, and the boot directory is back in place.
    assert!(tree.join("boot/firmware/kernel8.img").is_file());
    let base_fstab = std::fs::read_to_string(base_tree().join("etc/fstab")).unwrap();
    assert!(!base_fstab.contains("PARTUUID"), "{base_fstab}");
    assert!(!std::fs::read_to_string(base_tree().join("etc/fstab"))
        .unwrap()
        .contains("PARTUUID"));

    // Partition table.
    let t = sfdisk(&img);
    assert_eq!(t["label"], "dos");
    let sig = t["id"]
        .as_str()
        .unwrap()
        .trim_start_matches("0x")
        .to_string();
    assert_eq!(sig.len(), 8);
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type"], "c");
    assert_eq!(parts[0]["start"], 8192);
    assert_eq!(parts[0]["size"], 512 * 2048);
    assert_eq!(parts[1]["type"], "83");
    assert_eq!(parts[1]["start"], 8192 + 512 * 2048);
    let root_end = (parts[1]["start"].as_u64().unwrap() + parts[1]["size"].as_u64().unwrap()) * 512;
    assert_eq!(root_end, r.size);

    // FAT: fsck-clean, files and their contents, cmdline.txt points at the
    // root partition of this very table.
    let fat = extract_partition(&img, 1, &dir.path().join("boot.fat"));
    run(Command::new("fsck.vfat").arg("-n").arg(&fat));
    let label = run(Command::new("fatlabel").arg(&fat));
    assert_eq!(label.trim(), "BOOTFS");
    let off = 8192 * 512;
    let listing = run(Command::new("mdir")
        .arg("-i")
        .arg(format!("{}@@{off}", img.display()))
        .args(["-/", "-b", "::"]));
    for f in [
        "config.txt",
        "cmdline.txt",
        "kernel8.img",
        "ssh",
        "overlays/disable-bt-with-a-long-name.dtbo",
    ] {
        assert!(listing.contains(f), "{f} missing from the FAT:\n{listing}");
    }
    assert_eq!(
        mdir_type(&img, off, "config.txt"),
        "arm_64bit=1\nenable_uart=1\n"
    );
    assert_eq!(
        mdir_type(&img, off, "cmdline.txt"),
        format!("console=serial0,115200 root=PARTUUID={sig}-02 rootfstype=ext4 rootwait\n")
    );
    let kernel = dir.path().join("kernel8.img");
    run(Command::new("mcopy")
        .arg("-i")
        .arg(format!("{}@@{off}", img.display()))
        .arg("::kernel8.img")
        .arg(&kernel));
    assert_eq!(
        std::fs::read(&kernel).unwrap(),
        std::fs::read(tree.join("boot/firmware/kernel8.img")).unwrap()
    );

    // ext4: e2fsck-clean, owners and setuid kept, boot dir empty, fstab.
    let root = extract_partition(&img, 2, &dir.path().join("root.ext4"));
    run(Command::new("e2fsck").arg("-fn").arg(&root));
    let dumpe2fs = run(Command::new("dumpe2fs").arg("-h").arg(&root));
    assert!(
        dumpe2fs.contains("Filesystem volume name:   rootfs"),
        "{dumpe2fs}"
    );
    assert!(!dumpe2fs.contains("orphan_file"), "{dumpe2fs}");
    let debugfs = |req: &str| run(Command::new("debugfs").arg("-R").arg(req).arg(&root));
    let passwd = debugfs("stat /usr/bin/passwd");
    assert!(passwd.contains("Mode:  04755"), "{passwd}");
    assert!(passwd.contains("User:     0   Group:     0"), "{passwd}");
    let shadow = debugfs("stat /etc/shadow");
    assert!(shadow.contains("Group:    42"), "{shadow}");
    let boot_ls = debugfs("ls -l /boot/firmware");
    assert_eq!(
        boot_ls.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "{boot_ls}"
    );
    let fstab = debugfs("cat /etc/fstab");
    assert!(
        fstab.starts_with(&format!(
            "PARTUUID={sig}-02  /  ext4  defaults,noatime  0  1\nPARTUUID={sig}-01  /boot/firmware  vfat  defaults  0  2\n"
        )),
        "{fstab}"
    );
    let unit = debugfs("cat /etc/systemd/system/chbuild-grow-rootfs.service");
    assert!(
        unit.contains("ExecStart=/usr/local/sbin/chbuild-grow-rootfs"),
        "{unit}"
    );
    let wants =
        debugfs("stat /etc/systemd/system/multi-user.target.wants/chbuild-grow-rootfs.service");
    assert!(wants.contains("Type: symlink"), "{wants}");
    let script = debugfs("stat /usr/local/sbin/chbuild-grow-rootfs");
    assert!(script.contains("Mode:  0755"), "{script}");
    let root_dir = debugfs("stat /");
    assert!(
        root_dir.contains("User:     0   Group:     0"),
        "{root_dir}"
    );

    // The bmap: valid for bmaptool, and its copy equals the image.
    let bmap_text = std::fs::read_to_string(&r.bmap).unwrap();
    let map = chbuild::disk::bmap::parse_bmap(&bmap_text).unwrap();
    assert!(
        map.mapped_bytes() < r.size / 2,
        "bmap maps {} of {}",
        map.mapped_bytes(),
        r.size
    );
    if chbuild::tools::which("bmaptool").is_some() {
        let copy = dir.path().join("copy.img");
        run(Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(&r.bmap)
            .arg(&img)
            .arg(&copy));
        assert_eq!(sha256(&copy), r.sha256);
    } else {
        disk_support::skip("bmaptool is not installed (Debian package bmap-tools)");
    }
}

#[test]
fn gpt_image_passes_the_tools() {
    if !is_root() {
        disk_support::skip("unpacking the fixture with its owners needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tree = node_tree(dir.path());
    let img = dir.path().join("p5-gpt.img");
    build_sd_image(&plan(), &tree, &layout("sd-gpt.toml"), &img, EPOCH).unwrap();
    let t = sfdisk(&img);
    assert_eq!(t["label"], "gpt");
    let parts = t["partitions"].as_array().unwrap();
    assert_eq!(parts[0]["type"], "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7");
    assert_eq!(parts[1]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[0]["start"], 8192);
    let root_uuid = parts[1]["uuid"].as_str().unwrap().to_lowercase();
    if chbuild::tools::which("sgdisk").is_some() {
        let v = run(Command::new("sgdisk").arg("-v").arg(&img));
        assert!(v.contains("No problems found"), "{v}");
    }
    let cmdline = mdir_type(&img, 8192 * 512, "cmdline.txt");
    assert!(
        cmdline.contains(&format!("root=PARTUUID={root_uuid} ")),
        "{cmdline}"
    );
    let fat = extract_partition(&img, 1, &dir.path().join("boot.fat"));
    run(Command::new("fsck.vfat").arg("-n").arg(&fat));
    let root = extract_partition(&img, 2, &dir.path().join("root.ext4"));
    run(Command::new("e2fsck").arg("-fn").arg(&root));
    let fstab = run(Command::new("debugfs")
        .args(["-R", "cat /etc/fstab"])
        .arg(&root));
    assert!(
        fstab.starts_with(&format!("PARTUUID={root_uuid}  /  ext4")),
        "{fstab}"
    );
}

#[test]
fn two_builds_are_byte_identical() {
    if !is_root() {
        disk_support::skip("unpacking the fixture with its owners needs root");
        return;
    }
    // Two different staging trees of the same content, as two runs make.
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let lay = layout("sd-mbr.toml");
    let ra = build_sd_image(
        &plan(),
        &node_tree(a.path()),
        &lay,
        &a.path().join("p5.img"),
        EPOCH,
    )
    .unwrap();
    let rb = build_sd_image(
        &plan(),
        &node_tree(b.path()),
        &lay,
        &b.path().join("p5.img"),
        EPOCH,
    )
    .unwrap();
    assert_eq!(ra.sha256, rb.sha256);
    assert_eq!(
        std::fs::read(&ra.bmap).unwrap(),
        std::fs::read(&rb.bmap).unwrap()
    );
}
