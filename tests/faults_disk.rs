//! A disk that fills up part-way: `store ingest`, `image`, `sd` and `deploy` run
//! against a size-limited tmpfs. Each fails with a "No space left" error
//! that names a path there, leaves no partial store entry, tree, image or
//! deployed node (the previous complete one stays as it was), and the next run after
//! space is freed succeeds.

mod deploy_support;
mod hostile_support;

use hostile_support::*;
use std::path::Path;

/// Fill `dir` so that about `free_kib` KiB stay free.
fn fill_to(dir: &Path, free_kib: u64) -> std::path::PathBuf {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    let free = st.blocks_available() as u64 * st.fragment_size() as u64 / 1024;
    let filler = dir.join("filler");
    if free > free_kib {
        let data = vec![0x5au8; ((free - free_kib) * 1024) as usize];
        std::fs::write(&filler, data).unwrap();
    }
    filler
}

fn assert_no_space(log: &str, place: &Path) {
    // Deploy measures first and refuses before writing ("has N MiB free,
    // the new trees need about M MiB"); the others meet the full disk.
    assert!(
        log.contains("No space left on device") || log.contains("MiB free, the new trees need"),
        "no clear no-space error:\n{log}"
    );
    let error = log
        .lines()
        .skip_while(|l| !l.starts_with("error") && !l.contains("Error"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        error.contains(&place.display().to_string()),
        "the error does not name a path under {}:\n{log}",
        place.display()
    );
}

#[test]
fn ingest_on_a_full_disk_stores_nothing_and_works_once_freed() {
    if !ready() {
        return;
    }
    let env = Env::new("disk-ingest", 2000);
    // The base unpacks to about 12 MiB: 4 MiB of room is not enough.
    let fs = Tmpfs::new(&env.store, 4096);
    let log = env.fails(&["store", "ingest"]);
    assert_no_space(&log, &env.store);
    assert!(store_entries_complete(&env.store).unwrap().is_empty());
    let left: Vec<_> = names(&env.store)
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(left.is_empty(), "a partial ingest stayed: {left:?}");
    fs.resize(200 * 1024);
    env.ok(&["store", "ingest"]);
    assert_eq!(store_entries_complete(&env.store).unwrap().len(), 1);
}

#[test]
fn image_on_a_full_disk_keeps_the_old_output_and_works_once_freed() {
    if !ready() {
        return;
    }
    let mut env = Env::new("disk-image", 300);
    // Trees are hardlinked from the store: both on the small disk.
    let out_fs = env.path("outfs");
    let fs = Tmpfs::new(&out_fs, 200 * 1024);
    env.store = out_fs.join("store");
    env.ok(&["store", "ingest"]);
    let out = out_fs.join("out");
    let o = out.to_str().unwrap().to_string();
    let image = |epoch: &str| {
        let mut c = env.command(&["image", "z1", "p1", "--output", &o]);
        c.env("SOURCE_DATE_EPOCH", epoch);
        c
    };
    let ok = |mut c: std::process::Command| {
        let o = c.output().unwrap();
        env.no_secrets(&o.stderr, "image");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    ok(image("1600000000"));
    let old = snapshot(&out);
    // Room for part of one node, not for two trees and tarballs.
    for free in [512, 3 * 1024] {
        let filler = fill_to(&out_fs, free);
        let o2 = image("1650000000").output().unwrap();
        env.no_secrets(&o2.stderr, "image on a full disk");
        let log = String::from_utf8_lossy(&o2.stderr);
        assert!(
            !o2.status.success(),
            "image succeeded with {free} KiB free:\n{log}"
        );
        assert_no_space(&log, &out);
        assert_eq!(
            snapshot(&out),
            old,
            "the output changed after an error ({free} KiB free)"
        );
        std::fs::remove_file(&filler).unwrap();
    }
    ok(image("1650000000"));
    assert_ne!(snapshot(&out), old);
    let v = env.run(&["verify", &o]);
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    drop(fs);
}

#[test]
fn sd_on_a_full_disk_keeps_the_old_image_and_works_once_freed() {
    if !ready() {
        return;
    }
    let mut env = Env::new("disk-sd", 300);
    let layout = env.path("small.toml");
    std::fs::write(
        &layout,
        "table = \"mbr\"\nalignment_mib = 4\nboot_size_mib = 64\nroot_margin_mib = 16\n",
    )
    .unwrap();
    let out_fs = env.path("outfs");
    let fs = Tmpfs::new(&out_fs, 300 * 1024);
    env.store = out_fs.join("store");
    env.ok(&["store", "ingest"]);
    let img = out_fs.join("p1.img");
    let (i, l) = (img.to_str().unwrap(), layout.to_str().unwrap());
    let sd = |epoch: &str| {
        let mut c = env.command(&["sd", "p1", "--output", i, "--layout", l]);
        c.env("SOURCE_DATE_EPOCH", epoch);
        c.output().unwrap()
    };
    let o = sd("1600000000");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut old = snapshot(&out_fs);
    old.retain(|k, _| !k.starts_with("store"));
    for free in [1024, 8 * 1024] {
        let filler = fill_to(&out_fs, free);
        let o = sd("1650000000");
        env.no_secrets(&o.stderr, "sd on a full disk");
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "sd succeeded with {free} KiB free:\n{log}"
        );
        assert_no_space(&log, &out_fs);
        let mut now = snapshot(&out_fs);
        now.retain(|k, _| !k.starts_with("store") && k != "filler");
        // The stamp of the old image goes first (so it is rebuilt next
        // time); image and sidecars stay.
        now.retain(|k, _| !k.ends_with(".inputs"));
        old.retain(|k, _| !k.ends_with(".inputs"));
        assert_eq!(
            now, old,
            "the image changed after an error ({free} KiB free)"
        );
        std::fs::remove_file(&filler).unwrap();
    }
    let o = sd("1650000000");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    drop(fs);
}

#[test]
fn deploy_on_a_full_disk_keeps_the_old_node_and_works_once_freed() {
    if !ready() {
        return;
    }
    let env = deploy_support::Env::new();
    let nfs = env.nfs();
    std::fs::create_dir_all(&nfs).unwrap();
    let fs = Tmpfs::new(&nfs, 64 * 1024);
    let (a, b) = (env.path("a"), env.path("b"));
    let spec = |label| deploy_support::NodeSpec {
        filler: 1500,
        ..deploy_support::NodeSpec::new("z1", 1, label)
    };
    deploy_support::make_output(&a, &[spec("A")], false);
    deploy_support::make_output(&b, &[spec("B")], false);
    let (a, b) = (a.to_str().unwrap(), b.to_str().unwrap());
    env.ok(&["deploy", "z1", "--output", a]);
    let p1 = nfs.join("p1");
    let old = deploy_support::snapshot(&p1);
    for free in [256, 2 * 1024] {
        let filler = fill_to(&nfs, free);
        let o = env.run(&["deploy", "z1", "--output", b, "--force"]);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "deploy succeeded with {free} KiB free:\n{log}"
        );
        assert_no_space(&log, &nfs);
        assert_eq!(
            deploy_support::snapshot(&p1),
            old,
            "p1 changed ({free} KiB free)"
        );
        let left = deploy_support::leftovers(&nfs);
        assert!(left.is_empty(), "a partial deploy stayed: {left:?}");
        std::fs::remove_file(&filler).unwrap();
    }
    env.ok(&["deploy", "z1", "--output", b, "--force"]);
    assert_ne!(deploy_support::snapshot(&p1), old);
    assert!(deploy_support::leftovers(&nfs).is_empty());
    drop(fs);
}
