//! Package layers, end to end with real Debian packages from the minbase
//! fixture's own apt sources, installed by apt and dpkg under qemu-user:
//! one layer per package set, shared by the nodes that need it and by
//! inode with the base; a changed group builds one new layer and rebuilds
//! only that group's nodes; an unknown package names its group and node
//! and leaves the store and the output as they were.
//!
//! Needs root, binfmt_misc for arm64 and the Debian mirror the machine's
//! apt configuration uses.

mod cli_support;
use cli_support::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

fn ready() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("package layers keep owners: needs root");
        return false;
    }
    if let Err(e) = chbuild::tools::check_foreign_arch("aarch64") {
        skip(&format!("arm64 binaries cannot run here: {e:#}"));
        return false;
    }
    fixture_present()
}

fn env(name: &str, profile_text: Option<String>) -> Chbuild {
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let profile = match profile_text {
        Some(text) => write_profile(&root, "profile.toml", &text),
        None => profile("layers.toml"),
    };
    Chbuild {
        profile,
        store: root.join("store"),
        secrets: root.join("secrets"),
    }
}

/// A variant of layers.toml in `dir`, its base named by absolute path.
fn write_profile(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let text = text.replace(
        "../../../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz",
        MINBASE,
    );
    std::fs::write(&p, text).unwrap();
    p
}

fn layers(c: &Chbuild) -> Vec<serde_json::Value> {
    let o = c.ok(&["--json", "store", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "layer")
        .cloned()
        .collect()
}

fn packages(l: &serde_json::Value) -> Vec<String> {
    l["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn image(c: &Chbuild, out: &Path, nodes: &str) -> serde_json::Value {
    let o = c.ok(&[
        "--json",
        "image",
        nodes,
        "--format",
        "dir",
        "-o",
        out.to_str().unwrap(),
    ]);
    serde_json::from_slice(&o.stdout).unwrap()
}

fn ino(p: PathBuf) -> u64 {
    std::fs::symlink_metadata(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

fn names(v: &serde_json::Value) -> Vec<&str> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

#[test]
fn one_layer_per_set_shared_and_rebuilt_only_where_changed() {
    if !ready() {
        return;
    }
    let c = env("layers-reuse", None);
    c.ok(&["secrets", "init"]);
    let out = c.store.parent().unwrap().join("out");
    let r = image(&c, &out, "z1,z2,p1");
    assert_eq!(names(&r["built"]), ["z1", "z2", "p1"]);

    // Two sets, two layers; the larger built on the smaller. exa comes
    // with every node: the shell role's `ll` on a bookworm base.
    let ls = layers(&c);
    assert_eq!(ls.len(), 2, "{ls:#?}");
    let zero = ls
        .iter()
        .find(|l| packages(l) == ["exa", "tree"])
        .expect("the Zeros' layer");
    let pi = ls
        .iter()
        .find(|l| packages(l) == ["exa", "lsof", "tree"])
        .expect("the LAN Pi's layer");
    assert_eq!(pi["parent"], zero["key"]);
    let installed = names(&pi["installed"]);
    assert!(
        installed.iter().any(|p| p.starts_with("lsof=")),
        "{installed:?}"
    );

    // The packages are in the trees, and shared: the Zeros' `tree` is one
    // inode (the layer's), and a base file is still the base's inode.
    let (z1, z2, p1) = (out.join("z1"), out.join("z2"), out.join("p1"));
    assert!(p1.join("usr/bin/lsof").is_file());
    assert!(!z1.join("usr/bin/lsof").exists());
    assert_eq!(ino(z1.join("usr/bin/tree")), ino(z2.join("usr/bin/tree")));
    assert_eq!(ino(z1.join("usr/bin/tree")), ino(p1.join("usr/bin/tree")));
    let store_base = std::fs::read_dir(&c.store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("meta.json").exists())
        .expect("the stored base");
    assert_eq!(
        ino(z1.join("usr/bin/dpkg")),
        ino(store_base.join("tree/usr/bin/dpkg"))
    );
    // dpkg in the tree knows the package, and the first boot has nothing
    // to install.
    let status = std::fs::read_to_string(z1.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Package: tree\nStatus: install ok installed"));
    let fb = std::fs::read_to_string(z1.join("usr/local/sbin/chbuild-firstboot")).unwrap();
    assert!(fb.contains("nothing to install"), "{fb}");
    assert!(!fb.contains("apt-get install"), "{fb}");

    // Unchanged: nothing rebuilt, no new layer.
    let r = image(&c, &out, "z1,z2,p1");
    assert_eq!(names(&r["unchanged"]), ["z1", "z2", "p1"]);
    assert_eq!(layers(&c).len(), 2);

    // One group's extras change: one new layer, only its node rebuilt.
    let text = std::fs::read_to_string(profile("layers.toml"))
        .unwrap()
        .replace(
            r#"picluster = ["tree", "lsof"]"#,
            r#"picluster = ["tree", "lsof", "bc"]"#,
        );
    let p = write_profile(c.store.parent().unwrap(), "changed.toml", &text);
    let c2 = Chbuild {
        profile: p,
        store: c.store.clone(),
        secrets: c.secrets.clone(),
    };
    let r = image(&c2, &out, "z1,z2,p1");
    assert_eq!(names(&r["built"]), ["p1"]);
    assert_eq!(names(&r["unchanged"]), ["z1", "z2"]);
    let ls = layers(&c2);
    assert_eq!(ls.len(), 3, "{ls:#?}");
    assert!(out.join("p1/usr/bin/bc").is_file());

    // gc keeps what the profile's nodes start from (and the layer they
    // share), drops the rest; `--all` drops every layer.
    c2.ok(&["store", "gc"]);
    let mut kept: Vec<String> = layers(&c2).iter().map(|l| packages(l).join(" ")).collect();
    kept.sort();
    assert_eq!(kept, ["bc exa lsof tree", "exa tree"]);
    c2.ok(&["store", "gc", "--all"]);
    assert!(layers(&c2).is_empty());
}

/// `image z1` fails: returns its stderr, after checking that it names z1
/// and its group, and that neither the output nor the store changed.
fn image_z1_fails(c: &Chbuild, out: &Path) -> String {
    c.ok(&["secrets", "init"]);
    let o = c.run(&[
        "image",
        "z1",
        "--format",
        "dir",
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the build was accepted: {err}");
    assert!(
        err.contains("packages.extra.zerocluster on node z1"),
        "{err}"
    );
    assert!(!out.join("z1").exists(), "a tree was written");
    assert!(layers(c).is_empty(), "a layer was stored");
    let leftovers: Vec<_> = std::fs::read_dir(&c.store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    err
}

#[test]
fn an_unknown_package_names_its_group_and_node_and_changes_nothing() {
    if !ready() {
        return;
    }
    let text = std::fs::read_to_string(profile("layers.toml"))
        .unwrap()
        .replace(
            r#"zerocluster = ["tree"]"#,
            r#"zerocluster = ["tree", "chbuild-no-such-package"]"#,
        );
    let c = env("layers-unknown", Some(text));
    let out = c.store.parent().unwrap().join("out");
    let err = image_z1_fails(&c, &out);
    assert!(err.contains("chbuild-no-such-package"), "{err}");
}

/// A flat apt repository in `dir` with one package whose postinst fails.
fn failing_repo(dir: &Path) {
    use sha2::Digest;
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
    std::fs::write(
        pkg.join("DEBIAN/control"),
        "Package: chbuild-test-fail\nVersion: 1\nArchitecture: all\nMaintainer: chbuild tests <root@localhost>\nDescription: fails in its postinst, on purpose\n",
    )
    .unwrap();
    let postinst = pkg.join("DEBIAN/postinst");
    std::fs::write(
        &postinst,
        "#!/bin/sh\necho 'chbuild-test-fail: this postinst fails on purpose' >&2\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&postinst, std::fs::Permissions::from_mode(0o755)).unwrap();
    let repo = dir.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let deb = repo.join("chbuild-test-fail_1_all.deb");
    chbuild::tools::run(
        std::process::Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&pkg)
            .arg(&deb),
    )
    .unwrap();
    let bytes = std::fs::read(&deb).unwrap();
    let packages = format!(
        "Package: chbuild-test-fail\nVersion: 1\nArchitecture: all\nMaintainer: chbuild tests <root@localhost>\nFilename: ./chbuild-test-fail_1_all.deb\nSize: {}\nSHA256: {}\nDescription: fails in its postinst, on purpose\n",
        bytes.len(),
        hex::encode(sha2::Sha256::digest(&bytes))
    );
    std::fs::write(repo.join("Packages"), &packages).unwrap();
    std::fs::write(
        repo.join("Release"),
        format!(
            "Origin: chbuild-tests\nLabel: chbuild-tests\nDate: Tue, 14 Nov 2023 22:13:20 UTC\nSHA256:\n {} {} Packages\n",
            hex::encode(sha2::Sha256::digest(packages.as_bytes())),
            packages.len()
        ),
    )
    .unwrap();
}

#[test]
fn a_failing_package_shows_its_lines_and_changes_nothing() {
    if !ready() {
        return;
    }
    let c = env("layers-dpkg-fails", None);
    let root = c.store.parent().unwrap().to_path_buf();
    failing_repo(&root);
    // The minbase fixture with one more apt source: the repository above.
    let base = root.join("base.tar");
    let tar = std::fs::File::create(&base).unwrap();
    let st = std::process::Command::new("xz")
        .args(["-dc", MINBASE])
        .stdout(tar)
        .status()
        .unwrap();
    assert!(st.success());
    let extra = root.join("extra");
    std::fs::create_dir_all(extra.join("etc/apt/sources.list.d")).unwrap();
    std::fs::write(
        extra.join("etc/apt/sources.list.d/chbuild-test.list"),
        format!(
            "deb [trusted=yes] file:{} ./\n",
            root.join("repo").display()
        ),
    )
    .unwrap();
    chbuild::tools::run(
        std::process::Command::new("tar")
            .arg("--append")
            .arg("-f")
            .arg(&base)
            .arg("-C")
            .arg(&extra)
            .arg("./etc/apt/sources.list.d/chbuild-test.list"),
    )
    .unwrap();
    let text = std::fs::read_to_string(profile("layers.toml"))
        .unwrap()
        .replace(
            "../../../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz",
            &base.display().to_string(),
        )
        .replace(
            r#"zerocluster = ["tree"]"#,
            r#"zerocluster = ["tree", "chbuild-test-fail"]"#,
        );
    let c = Chbuild {
        profile: write_profile(&root, "profile.toml", &text),
        ..c
    };
    let err = image_z1_fails(&c, &root.join("out"));
    assert!(err.contains("failing package chbuild-test-fail"), "{err}");
    assert!(err.contains("this postinst fails on purpose"), "{err}");
    assert!(err.contains("the store is unchanged"), "{err}");
}
