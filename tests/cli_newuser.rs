//! What a new user trips over in a first sitting (issue 17), each through
//! the real binary: exit codes, hints, node selection, names the README
//! writes, man pages, and the setup the README's main command runs.

mod loop_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn default_profile() -> PathBuf {
    Path::new(ROOT).join("profiles/clusterhat.toml")
}

fn chbuild_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chbuild"))
        .args(args)
        .current_dir(cwd)
        .env("NO_COLOR", "1")
        .env_remove("CHBUILD_PROFILE")
        .env_remove("CHBUILD_SECRETS")
        .env_remove("CHBUILD_STORE")
        .env_remove("CHBUILD_PASSWORD_HASH")
        .output()
        .expect("running chbuild")
}

fn chbuild(args: &[&str]) -> Output {
    chbuild_in(Path::new(ROOT), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_missing_profile_is_bad_usage_with_a_hint() {
    let t = tempfile::tempdir().unwrap();
    let o = chbuild_in(t.path(), &["check"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("no profile at profiles/clusterhat.toml"),
        "{err}"
    );
    assert!(err.contains("-p FILE or CHBUILD_PROFILE"), "{err}");
    let o = chbuild(&["check", "-p", "/nonexistent/mine.toml"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn the_default_secrets_directory_follows_the_profile_not_the_cwd() {
    let t = tempfile::tempdir().unwrap();
    let p = default_profile();
    let o = chbuild_in(t.path(), &["--json", "check", "-p", p.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["secrets_dir"].as_str().unwrap(),
        Path::new(ROOT).join("secrets/clusterhat").to_str().unwrap()
    );
}

#[test]
fn the_readme_format_name_is_accepted() {
    // Parsing must pass: the error is then about the missing profile.
    for f in ["tar.zst", "tar-zst", "dir"] {
        let o = chbuild(&["image", "z1", "--format", f, "-p", "/nonexistent.toml"]);
        let err = text(&o.stderr);
        assert!(err.contains("no profile at"), "--format {f}: {err}");
    }
}

#[test]
fn check_is_quiet_with_q_and_takes_a_node_selection() {
    let p = default_profile();
    let p = p.to_str().unwrap();
    let o = chbuild(&["check", "-q", "-p", p]);
    assert!(o.status.success());
    assert_eq!(text(&o.stdout), "");

    let o = chbuild(&["check", "z1", "-p", p]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(out.contains("\nz1 [usbboot]"), "{out}");
    assert!(!out.contains("\np5 [sd]"), "{out}");
    // Only layers that exist are listed (the repository ships `common`).
    assert!(out.contains("  overlays:  common\n"), "{out}");
    assert!(!out.contains("kind/usbboot"), "{out}");
}

#[test]
fn selection_errors_list_the_known_names() {
    let p = default_profile();
    let p = p.to_str().unwrap();
    let o = chbuild(&["show", "z9", "-p", p]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("its nodes: z1, z2, z3, z4, p1"), "{err}");
    assert!(err.contains("the controller: clusterhat"), "{err}");
    let o = chbuild(&["check", "@nope", "-p", p]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("known groups: @containers"), "{err}");
    assert!(err.contains("@zerocluster"), "{err}");
}

/// `show` of a node, and of the controller by its name or an alias, with
/// the keys of the authorized keys file.
#[test]
fn show_prints_nodes_and_the_controller_with_the_authorized_keys() {
    let t = tempfile::tempdir().unwrap();
    let s = t.path().join("s");
    let p = default_profile();
    let (p, s) = (p.to_str().unwrap(), s.to_str().unwrap());
    let o = chbuild(&["secrets", "init", "-p", p, "--secrets", s]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let key = std::fs::read_to_string(Path::new(s).join("admin_ed25519.pub")).unwrap();
    for (name, hostname) in [
        ("z1", "z1"),
        ("clusterhat", "clusterhat"),
        ("p0", "clusterhat"),
    ] {
        let o = chbuild(&["show", name, "-p", p, "--secrets", s]);
        let out = text(&o.stdout);
        assert!(o.status.success(), "{name}: {}", text(&o.stderr));
        assert!(out.contains(&format!("hostname = {hostname}\n")), "{out}");
        assert!(
            out.contains(&format!("user.ssh_authorized_keys = [{}]", key.trim())),
            "{out}"
        );
    }
    let o = chbuild(&["show", "p0", "-p", p, "--secrets", s]);
    assert!(text(&o.stdout).contains("slurmctld = true\n"));
}

#[test]
fn verify_of_a_missing_folder_says_so() {
    let o = chbuild(&["verify", "/nonexistent/release"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2));
    assert!(err.contains("/nonexistent/release does not exist"), "{err}");
}

#[test]
fn an_empty_store_says_it_is_empty() {
    let t = tempfile::tempdir().unwrap();
    let o = chbuild(&["store", "list", "--store", t.path().to_str().unwrap()]);
    assert!(o.status.success());
    assert!(text(&o.stderr).contains("is empty"), "{}", text(&o.stderr));
    let o = chbuild(&[
        "--json",
        "store",
        "list",
        "--store",
        t.path().to_str().unwrap(),
    ]);
    assert_eq!(text(&o.stdout).trim(), "[]");
}

#[test]
fn verb_man_pages_carry_the_global_options_and_the_real_synopsis() {
    let t = tempfile::tempdir().unwrap();
    let o = chbuild(&["man", t.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let page = std::fs::read_to_string(t.path().join("chbuild-deploy.1")).unwrap();
    assert!(page.contains("\\-\\-profile"), "{page}");
    let synopsis = page.split(".SH SYNOPSIS").nth(1).unwrap();
    assert!(synopsis.contains("chbuild deploy"), "{synopsis}");
    assert!(!synopsis.contains("chbuild\\-deploy"), "{synopsis}");
}

#[test]
fn output_means_where_a_command_writes_and_deploy_reads_from_from() {
    let o = chbuild(&["deploy", "--help"]);
    let help = text(&o.stdout);
    assert!(help.contains("--from <FROM>"), "{help}");
    assert!(!help.contains("-o,"), "{help}");
    for verb in ["image", "sd", "release", "import-ansible"] {
        let help = text(&chbuild(&[verb, "--help"]).stdout);
        assert!(help.contains("-o, --output"), "{verb}: {help}");
    }
}

#[test]
fn sd_checks_the_device_before_building_anything() {
    let t = tempfile::tempdir().unwrap();
    // A base that cannot be built: if the build came first, the error
    // would be about the archive.
    let text_in = std::fs::read_to_string(default_profile()).unwrap();
    let a = text_in.find("[base]").unwrap();
    let b = text_in.find("[user]").unwrap();
    let profile = format!(
        "{}[base]\nsource = \"archive\"\npath = \"/nonexistent/base.tar.xz\"\narchitecture = \"arm64\"\nboot_dir = \"boot/firmware\"\n\n{}",
        &text_in[..a],
        &text_in[b..]
    );
    let pf = t.path().join("profiles/p.toml");
    std::fs::create_dir_all(pf.parent().unwrap()).unwrap();
    std::fs::write(&pf, profile).unwrap();
    let sd_to = |dev: &str| {
        chbuild(&[
            "sd",
            "p5",
            "--dev",
            dev,
            "--yes",
            "--force",
            "-p",
            pf.to_str().unwrap(),
            "--secrets",
            t.path().join("s").to_str().unwrap(),
            "--store",
            t.path().join("store").to_str().unwrap(),
        ])
    };
    let not_a_disk = t.path().join("card.img");
    std::fs::write(&not_a_disk, b"").unwrap();
    let o = sd_to(not_a_disk.to_str().unwrap());
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("it is not a block device"), "{err}");
    assert!(!err.contains("base.tar.xz"), "{err}");

    // A card too small for even the layout's fixed part, on a loop device.
    if !nix::unistd::geteuid().is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIP: the loop device part needs root (runs in CI)");
        return;
    }
    let card = t.path().join("small-card");
    std::fs::File::create(&card)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let card_dev = loop_support::Loop::attach(&card);
    let o = sd_to(&card_dev.dev);
    let err = text(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("the device is smaller than the image"),
        "{err}"
    );
    assert!(!err.contains("base.tar.xz"), "{err}");
}

#[test]
fn the_readme_main_command_installs_only_what_chbuild_drives() {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let main = readme
        .split("<!-- main-command -->")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .unwrap();
    assert!(!main.contains(".ci/setup"), "{main}");
    let script = main.split_whitespace().nth(1).unwrap();
    let setup = std::fs::read_to_string(Path::new(ROOT).join(script)).unwrap();
    for daemon in [
        "openssh-server",
        "slurm",
        "munge",
        "nfs-kernel-server",
        "policy-rc.d",
    ] {
        assert!(!setup.contains(daemon), "{script} installs {daemon}");
    }
    // CI's script guards its daemons and always removes the guard.
    let ci = std::fs::read_to_string(Path::new(ROOT).join(".ci/setup")).unwrap();
    assert!(
        ci.contains("trap 'rm -f /usr/sbin/policy-rc.d' EXIT"),
        "{ci}"
    );
    // The bash syntax of both is valid.
    for s in [script, ".ci/setup"] {
        let o = Command::new("bash")
            .arg("-n")
            .arg(Path::new(ROOT).join(s))
            .output()
            .unwrap();
        assert!(o.status.success(), "{s}: {}", text(&o.stderr));
    }
    // Output trees hold hardlinks: every rsync in the README keeps them.
    for l in readme.lines().filter(|l| l.contains("rsync ")) {
        assert!(l.contains("rsync -aH"), "{l}");
    }
}
