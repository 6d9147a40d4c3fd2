//! `chbuild deploy` / `rollback` end to end under `--root`, with test
//! doubles of `clusterctrl` and `usbboot-init` on PATH.

mod deploy_support;

use deploy_support::*;
use std::fs;

fn out(
    env: &Env,
    name: &str,
    nodes: &[NodeSpec],
) -> (String, std::collections::BTreeMap<String, String>) {
    let dir = env.path(name);
    let ids = make_output(&dir, nodes, false);
    (dir.to_string_lossy().into_owned(), ids)
}

#[test]
fn first_deploy_then_unchanged() {
    let env = Env::new();
    let (a, ids) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    let log = env.ok(&["deploy", "z1", "--output", &a]);
    assert!(log.contains("usbboot-init skipped"), "{log}");
    assert_eq!(
        env.take_calls(),
        vec!["clusterctrl status", "clusterctrl on p1"]
    );
    let p1 = env.nfs().join("p1");
    assert_eq!(
        snapshot_without_marker(&p1),
        snapshot_without_marker(&env.path("a/z1"))
    );
    assert_eq!(
        read(&p1.join(".chbuild-build")),
        format!("build={}\nnode=z1\n", ids["z1"])
    );
    // usr/ is shared with the output tree, etc/ is not.
    let ino = |p: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    assert_eq!(
        ino(&p1.join("usr/bin/hello")),
        ino(&env.path("a/z1/usr/bin/hello"))
    );
    assert_ne!(
        ino(&p1.join("etc/hostname")),
        ino(&env.path("a/z1/etc/hostname"))
    );
    assert!(env.is_on("p1"));

    // The same build again changes nothing and says so.
    let before = snapshot(&env.root);
    let o = env.run(&["--json", "deploy", "z1", "--output", &a]);
    assert!(o.status.success());
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report[0]["action"], "unchanged");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unchanged"));
    assert_eq!(env.take_calls(), vec!["clusterctrl status"]);
    assert_eq!(snapshot(&env.root), before);

    // --force re-deploys.
    env.ok(&["deploy", "z1", "--output", &a, "--force"]);
    assert_eq!(
        env.take_calls(),
        vec![
            "clusterctrl status",
            "clusterctrl off p1",
            "clusterctrl on p1"
        ]
    );
    assert!(leftovers(&env.nfs()).is_empty());
}

#[test]
fn redeploy_keeps_prev_and_rollback_swaps_back() {
    let env = Env::new();
    let (a, ids_a) = out(
        &env,
        "a",
        &[NodeSpec::new("z1", 1, "A"), NodeSpec::new("z2", 2, "A")],
    );
    let (b, ids_b) = out(
        &env,
        "b",
        &[NodeSpec::new("z1", 1, "B"), NodeSpec::new("z2", 2, "B")],
    );
    // Default: every usbboot node of the profile that was built... z3 and z4
    // were not, so select explicitly.
    env.ok(&["deploy", "z1,z2", "--output", &a]);
    env.take_calls();
    let p1 = env.nfs().join("p1");
    let snap_a = snapshot(&p1);

    env.ok(&["deploy", "z1", "--output", &b]);
    assert_eq!(
        env.take_calls(),
        vec![
            "clusterctrl status",
            "clusterctrl off p1",
            "clusterctrl on p1"
        ]
    );
    let snap_b = snapshot(&p1);
    assert_eq!(snapshot(&env.nfs().join("p1.prev")), snap_a);
    assert!(read(&p1.join(".chbuild-build")).contains(&ids_b["z1"]));
    assert_eq!(read(&p1.join("etc/motd")), "build B\n");
    // z2 untouched.
    assert!(read(&env.nfs().join("p2/.chbuild-build")).contains(&ids_a["z2"]));

    let log = env.ok(&["rollback", "z1"]);
    assert!(log.contains("rolled back"), "{log}");
    assert_eq!(
        env.take_calls(),
        vec![
            "clusterctrl status",
            "clusterctrl off p1",
            "clusterctrl on p1"
        ]
    );
    assert_eq!(snapshot(&p1), snap_a);
    assert_eq!(snapshot(&env.nfs().join("p1.prev")), snap_b);

    // Rolling back a node without a previous tree fails and changes nothing.
    let o = env.run(&["rollback", "z3"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no previous tree"));
}

#[test]
fn official_tree_runs_usbboot_init_and_keeps_profile_hostname() {
    let env = Env::new();
    let mut spec = NodeSpec::new("z1", 1, "A");
    spec.reconfig = true;
    let (a, _) = out(&env, "a", &[spec]);
    env.set_power("p2", true);

    // Another Zero is running: clusterctrl init would drop its link.
    let o = env.run(&["deploy", "z1", "--output", &a]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("p2") && err.contains("--yes"), "{err}");
    assert!(!env.nfs().join("p1").exists());
    env.take_calls();

    env.ok(&["deploy", "z1", "--output", &a, "--yes"]);
    assert_eq!(
        env.take_calls(),
        vec![
            "clusterctrl status",
            "usbboot-init 1",
            "clusterctrl init",
            "clusterctrl on p1"
        ]
    );
    let p1 = env.nfs().join("p1");
    assert_eq!(read(&p1.join("etc/hostname")), "z1\n");
    assert_eq!(
        read(&p1.join("etc/hosts")),
        "127.0.0.1\tlocalhost\n127.0.1.1\tz1\n"
    );
    let cmdline = read(&p1.join("boot/firmware/cmdline.txt"));
    assert!(cmdline.contains("nfsroot=172.19.180.254:/var/lib/clusterctrl/nfs/p1 rw"));
    assert!(cmdline.contains("ip=172.19.180.1:172.19.180.254::255.255.255.0:p1:usb0.10:static"));
    assert!(read(&p1.join("etc/fstab")).contains("/var/lib/clusterctrl/nfs/p1/boot/firmware"));
    // The output tree was not edited through a hard link.
    assert!(read(&env.path("a/z1/etc/fstab")).contains("nfs/p253/"));
    assert_eq!(read(&env.path("a/z1/etc/hostname")), "z1\n");
}

#[test]
fn failing_usbboot_init_puts_old_tree_back_and_leaves_node_off() {
    let env = Env::new();
    let mut a = NodeSpec::new("z1", 1, "A");
    a.reconfig = true;
    let mut b = a.clone();
    b.label = "B";
    let (da, _) = out(&env, "a", &[a]);
    let (db, _) = out(&env, "b", &[b]);
    env.ok(&["deploy", "z1", "--output", &da]);
    let p1 = env.nfs().join("p1");
    let snap_a = snapshot(&p1);
    env.take_calls();

    let o = env
        .command(&["deploy", "z1", "--output", &db])
        .env("CHBUILD_TEST_FAIL", "usbboot-init")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("did not take effect"), "{err}");
    assert!(
        err.contains("Input/output error"),
        "the tool's output is shown: {err}"
    );
    assert!(err.contains("left powered off"), "{err}");
    assert_eq!(
        env.take_calls(),
        vec!["clusterctrl status", "clusterctrl off p1", "usbboot-init 1"]
    );
    assert_eq!(snapshot(&p1), snap_a);
    assert!(!env.is_on("p1"));
    assert!(!env.nfs().join("p1.prev").exists());
    assert!(leftovers(&env.nfs()).is_empty());

    // A failing power-on: back to the old tree, node off, error shown.
    env.set_power("p1", true);
    let o = env
        .command(&["deploy", "z1", "--output", &db])
        .env("CHBUILD_TEST_FAIL", "clusterctrl-on")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("I2C write"), "{err}");
    assert_eq!(snapshot(&p1), snap_a);
    assert!(!env.is_on("p1"));
}

#[test]
fn dry_run_changes_nothing_and_diff_lists_files() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    let (b, _) = out(&env, "b", &[NodeSpec::new("z1", 1, "B")]);
    env.ok(&["deploy", "z1", "--output", &a]);
    env.take_calls();
    fs::create_dir(env.nfs().join(".p1.staging-999999")).unwrap();
    let before = snapshot(&env.root);

    let o = env.run(&["deploy", "z1", "--output", &b, "--dry-run", "--diff"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for want in [
        "would remove .p1.staging-999999",
        "z1 (p1): would be deployed",
        "power off p1 (it is on)",
        "swap it with p1; keep the old tree as p1.prev",
        "+ usr/share/doc/B.txt",
        "- usr/share/doc/A.txt",
        "~ etc/motd",
        "~ usr/bin/hello",
    ] {
        assert!(stdout.contains(want), "missing `{want}` in:\n{stdout}");
    }
    assert!(!stdout.contains("etc/hostname"), "{stdout}");
    assert_eq!(snapshot(&env.root), before);
    assert_eq!(env.take_calls(), vec!["clusterctrl status"]);
    assert!(env.is_on("p1"));

    // The real run removes the stale staging directory.
    env.ok(&["deploy", "z1", "--output", &b]);
    assert!(leftovers(&env.nfs()).is_empty());
}

#[test]
fn uninstall_powers_off_and_removes_trees() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    let (b, _) = out(&env, "b", &[NodeSpec::new("z1", 1, "B")]);
    env.ok(&["deploy", "z1", "--output", &a]);
    env.ok(&["deploy", "z1", "--output", &b]);
    env.take_calls();
    let o = env.run(&["deploy", "--uninstall", "z1", "--dry-run"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("remove p1.prev"));
    assert!(env.nfs().join("p1").exists());
    env.take_calls();
    env.ok(&["deploy", "--uninstall", "z1"]);
    assert_eq!(
        env.take_calls(),
        vec!["clusterctrl status", "clusterctrl off p1"]
    );
    assert!(!env.nfs().join("p1").exists());
    assert!(!env.nfs().join("p1.prev").exists());
    assert!(leftovers(&env.nfs()).is_empty());
}

#[test]
fn bundle_is_verified_before_anything_changes() {
    let env = Env::new();
    let dir = env.path("bundle-a");
    make_output(&dir, &[NodeSpec::new("z1", 1, "A")], true);
    assert!(!dir.join("z1").exists());
    env.ok(&["deploy", "z1", "--bundle", &dir.to_string_lossy()]);
    // Unpacked with owners, modes, hard links, FIFOs and device nodes.
    let reference = env.path("ref");
    make_tree(&reference, &NodeSpec::new("z1", 1, "A"));
    let p1 = env.nfs().join("p1");
    assert_eq!(
        snapshot_without_marker(&p1),
        snapshot_without_marker(&reference)
    );
    let ino = |p: &str| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p1.join(p)).unwrap());
    assert_eq!(ino("usr/bin/hello"), ino("usr/bin/hello-again"));
    env.take_calls();

    let bad = env.path("bundle-b");
    make_output(&bad, &[NodeSpec::new("z1", 1, "B")], true);
    let tarball = bad.join("z1.tar.zst");
    let mut bytes = fs::read(&tarball).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&tarball, bytes).unwrap();
    let before = snapshot(&env.root);
    let o = env.run(&["deploy", "z1", "--bundle", &bad.to_string_lossy()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("z1.tar.zst"), "{err}");
    assert_eq!(snapshot(&env.root), before);
    assert!(env.take_calls().is_empty(), "nothing was run");
}

#[test]
fn lock_stops_a_second_deploy() {
    use fs4::fs_std::FileExt;
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    fs::create_dir_all(env.nfs()).unwrap();
    let f = fs::File::create(env.nfs().join(".chbuild-deploy.lock")).unwrap();
    f.lock_exclusive().unwrap();
    let o = env.run(&["deploy", "z1", "--output", &a]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("another chbuild deploy"));
    assert!(!env.nfs().join("p1").exists());
    FileExt::unlock(&f).unwrap();
    env.ok(&["deploy", "z1", "--output", &a]);
}

#[test]
fn prerequisites_and_refusals_are_explained() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    // No test doubles on PATH: clusterctrl is missing.
    let o = env
        .command(&["deploy", "z1", "--output", &a])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("`clusterctrl` is needed"), "{err}");
    assert!(!env.nfs().join("p1").exists());
    // With --no-power it is not needed.
    let o = env
        .command(&["deploy", "z1", "--output", &a, "--no-power"])
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(env.take_calls().is_empty());

    // An SD node is refused as bad usage.
    let o = env.run(&["deploy", "p1", "--output", &a]);
    assert_eq!(o.status.code(), Some(2));
    // A running node is not swapped with --no-power.
    env.set_power("p1", true);
    let (b, _) = out(&env, "b", &[NodeSpec::new("z1", 1, "B")]);
    let o = env.run(&["deploy", "z1", "--output", &b, "--no-power"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("powered on"));
    assert_eq!(read(&env.nfs().join("p1/etc/motd")), "build A\n");
}

#[test]
fn wait_for_ssh_gives_up_after_its_timeout() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    let t = std::time::Instant::now();
    let o = env.run(&["deploy", "z1", "--output", &a, "--wait-for-ssh", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("did not answer on 172.19.181.1:22 within 1 s"),
        "{err}"
    );
    assert!(t.elapsed().as_secs() < 20);
    // The deploy itself stands.
    assert!(env.is_on("p1"));
    assert!(env.nfs().join("p1/.chbuild-build").exists());
}

#[test]
fn dry_run_json_is_pure_repeatable_and_fails_as_the_real_run_would() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    // clusterctrl is missing: the dry run shows the plan, then fails.
    let dry = || {
        env.command(&["--json", "deploy", "z1", "--from", &a, "--dry-run"])
            .env("PATH", "/usr/bin:/bin")
            .output()
            .unwrap()
    };
    let (o1, o2) = (dry(), dry());
    let err = String::from_utf8_lossy(&o1.stderr);
    assert_eq!(o1.status.code(), Some(1), "{err}");
    assert!(err.contains("a real deploy would stop here"), "{err}");
    assert!(err.contains("`clusterctrl` is needed"), "{err}");
    // stdout is the JSON report and nothing else.
    let v: serde_json::Value = serde_json::from_slice(&o1.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o1.stdout)));
    assert_eq!(v[0]["action"], "would-fail");
    // No pid or other per-run detail: two dry runs print the same.
    assert_eq!(o1.stdout, o2.stdout);
    assert!(String::from_utf8_lossy(&o1.stdout).contains(".p1.staging-<pid>"));

    // With what it needs, the action is `would-deploy`.
    let o = env.run(&["--json", "deploy", "z1", "--from", &a, "--dry-run"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["action"], "would-deploy");
}

#[test]
fn deploy_waits_for_ssh_by_default() {
    let env = Env::new();
    let (a, _) = out(&env, "a", &[NodeSpec::new("z1", 1, "A")]);
    let o = env.run(&["deploy", "z1", "--from", &a, "--dry-run"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("wait up to 300 s for SSH on 172.19.181.1:22"),
        "{stdout}"
    );
    let o = env.run(&["deploy", "z1", "--from", &a, "--dry-run", "--no-wait"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("wait up to"));
}

#[test]
fn bundle_redeploy_refreshes_prev_and_rewrites_only_what_changed() {
    let env = Env::new();
    // Three builds of one node that differ in one overlay file, as
    // tarball bundles (the trees are kept beside them to compare with).
    let spec = |site| NodeSpec {
        filler: 300,
        site: Some(site),
        ..NodeSpec::new("z1", 1, "A")
    };
    let outs: Vec<String> = ["one", "two", "three"]
        .iter()
        .map(|site| {
            let dir = env.path(site);
            make_output(&dir, &[spec(site)], false);
            dir.to_string_lossy().into_owned()
        })
        .collect();
    let deploy = |i: usize| env.ok(&["deploy", "z1", "--bundle", &outs[i]]);
    let nfs = env.nfs();
    let (p1, prev) = (nfs.join("p1"), nfs.join("p1.prev"));

    deploy(0);
    // No previous tree yet: staged from the tarball alone.
    let log = deploy(1);
    assert!(!log.contains("from p1.prev"), "{log}");
    let snap_two = snapshot(&p1);
    let ino = |p: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&fs::symlink_metadata(p).unwrap())
    };
    // Each old entry held open (O_PATH), so that an inode freed by the
    // deploy cannot come back under the same number for a new file.
    let before: std::collections::BTreeMap<_, _> = walkdir::WalkDir::new(&prev)
        .into_iter()
        .map(|e| e.unwrap().path().to_path_buf())
        .filter(|p| !fs::symlink_metadata(p).unwrap().is_dir())
        .map(|p| {
            use std::os::unix::fs::OpenOptionsExt;
            let held = fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
                .open(&p)
                .unwrap();
            let rel = p.strip_prefix(&prev).unwrap().to_path_buf();
            (rel, (ino(&p), held))
        })
        .collect();
    assert!(before.len() > 300);

    // The third refreshes the first tree (p1.prev) in place.
    let log = deploy(2);
    assert!(log.contains("from p1.prev"), "{log}");
    assert_eq!(
        snapshot_without_marker(&p1),
        snapshot_without_marker(&env.path("three/z1"))
    );
    assert_eq!(snapshot(&prev), snap_two);
    assert_eq!(read(&p1.join("etc/site")), "three");
    let mut rewritten = vec![];
    for (rel, (old, _held)) in &before {
        if ino(&p1.join(rel)) != *old {
            rewritten.push(rel.display().to_string());
        }
    }
    // The changed file and the deploy marker, nothing else.
    assert_eq!(rewritten, [".chbuild-build", "etc/site"]);
    assert!(leftovers(&nfs).is_empty(), "{:?}", leftovers(&nfs));

    // Rollback still swaps the trees.
    env.ok(&["rollback", "z1"]);
    assert_eq!(snapshot(&p1), snap_two);
}

#[test]
fn refreshing_a_hostile_prev_tree_writes_nothing_outside_it() {
    let env = Env::new();
    let spec = |site| NodeSpec {
        site: Some(site),
        ..NodeSpec::new("z1", 1, "A")
    };
    let (one, two) = (env.path("one"), env.path("two"));
    make_output(&one, &[spec("one")], false);
    make_output(&two, &[spec("two")], false);
    env.ok(&["deploy", "z1", "--bundle", &one.to_string_lossy()]);
    // A p1.prev a node (or anyone with its root over NFS) could have left:
    // symlinks out of the tree where the tarball has directories and
    // files, a directory where it has a file, a FIFO where it has a file.
    let prev = env.nfs().join("p1.prev");
    let outside = env.path("outside");
    fs::create_dir_all(outside.join("etc")).unwrap();
    fs::write(outside.join("etc/site"), "outside, untouched").unwrap();
    fs::write(outside.join("hello"), "outside, untouched").unwrap();
    let out_snap = snapshot(&outside);
    std::process::Command::new("cp")
        .args(["-a"])
        .arg(env.nfs().join("p1"))
        .arg(&prev)
        .status()
        .unwrap();
    fs::remove_dir_all(prev.join("etc")).unwrap();
    std::os::unix::fs::symlink(outside.join("etc"), prev.join("etc")).unwrap();
    fs::remove_file(prev.join("usr/bin/hello")).unwrap();
    std::os::unix::fs::symlink(outside.join("hello"), prev.join("usr/bin/hello")).unwrap();
    fs::remove_file(prev.join("usr/bin/su")).unwrap();
    fs::create_dir_all(prev.join("usr/bin/su/deep")).unwrap();
    fs::remove_file(prev.join("usr/bin/hello-again")).unwrap();
    nix::unistd::mkfifo(
        &prev.join("usr/bin/hello-again"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink(&outside, prev.join("var/log/escape")).unwrap();

    let log = env.ok(&["deploy", "z1", "--bundle", &two.to_string_lossy()]);
    assert!(log.contains("from p1.prev"), "{log}");
    assert_eq!(snapshot(&outside), out_snap);
    let p1 = env.nfs().join("p1");
    assert_eq!(
        snapshot_without_marker(&p1),
        snapshot_without_marker(&env.path("two/z1"))
    );
    assert!(
        leftovers(&env.nfs()).is_empty(),
        "{:?}",
        leftovers(&env.nfs())
    );
}
