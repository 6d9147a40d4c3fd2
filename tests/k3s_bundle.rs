//! The k3s air-gap bundle end to end: the test makes a bundle (a stand-in
//! binary and an images tarball), serves it over HTTP from a thread, and
//! `chbuild image` fetches it into the store (checked against the
//! profile's sha256), bakes binary, images, unit and config into the k3s
//! nodes, enabled. A wrong sha256 is refused and leaves nothing in the
//! store. Without a bundle, the first-boot script downloads exactly the
//! pinned release and checks it, and `check` says which nodes need the
//! network for it.

mod cli_support;

use cli_support::{fixture_present, profile, Chbuild, MINBASE};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const BINARY: &[u8] = b"#!/bin/sh\necho stand-in k3s \"$@\"\n";
const IMAGES_NAME: &str = "k3s-airgap-images-arm64.tar";

/// A real (small) images tarball: one OCI-layout-ish file.
fn images_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let data = b"{\"imageLayoutVersion\": \"1.0.0\"}";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append_data(&mut h, "oci-layout", &data[..]).unwrap();
    b.into_inner().unwrap()
}

fn sha256(d: &[u8]) -> String {
    hex::encode(Sha256::digest(d))
}

/// Serve `files` (URL path -> body) on 127.0.0.1 until the test ends;
/// returns the base URL and the count of requests answered.
fn serve(files: Vec<(String, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            counter.fetch_add(1, Ordering::SeqCst);
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let _ = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
                .and_then(|_| s.write_all(body)),
                None => write!(
                    s,
                    "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                ),
            };
        }
    });
    (url, hits)
}

/// The fixture profile, written to `dir` with the base at its absolute
/// path and `features` lines added.
fn profile_with(dir: &Path, features: &str) -> PathBuf {
    let text = std::fs::read_to_string(profile("fixture.toml"))
        .unwrap()
        .replace(
            "path = \"../../../shared/fixtures/debian-bookworm-arm64-minbase.tar.xz\"",
            &format!("path = \"{MINBASE}\""),
        )
        .replacen("[features]\n", &format!("[features]\n{features}"), 1);
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join("k3s.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn cli(profile: PathBuf) -> Chbuild {
    let mut c = Chbuild::new("k3s_bundle", "fixture.toml");
    c.profile = profile;
    c
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn blobs(c: &Chbuild) -> Vec<String> {
    match std::fs::read_dir(c.store.join("blobs")) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

#[test]
fn a_served_bundle_is_fetched_checked_and_baked() {
    if !fixture_present() {
        return;
    }
    let images = images_tar();
    let (url, hits) = serve(vec![
        ("/k3s-arm64".into(), BINARY.to_vec()),
        (format!("/{IMAGES_NAME}"), images.clone()),
    ]);
    let t = tempfile::tempdir().unwrap();
    let p = profile_with(
        t.path(),
        &format!(
            "k3s_binary = \"{url}/k3s-arm64\"\nk3s_binary_sha256 = \"{}\"\n\
             k3s_images = \"{url}/{IMAGES_NAME}\"\nk3s_images_sha256 = \"{}\"\n",
            sha256(BINARY),
            sha256(&images)
        ),
    );
    let c = cli(p);
    c.init_secrets();
    // Fetched by this run, not found from an earlier one.
    let _ = std::fs::remove_dir_all(c.store.join("blobs"));
    // With a bundle, no node needs the network for k3s.
    let o = c.ok(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for n in v["nodes"].as_array().unwrap() {
        assert_eq!(n["needs_network"], serde_json::json!([]), "{n}");
    }
    let out = t.path().join("out");
    // A Zero runs no k3s: building it alone fetches nothing.
    c.ok(&["image", "z1", "--output", out.to_str().unwrap()]);
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    c.ok(&["image", "p5", "p1", "--output", out.to_str().unwrap()]);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "each file fetched once");
    let mut stored = blobs(&c);
    stored.sort();
    let mut want = [sha256(BINARY), sha256(&images)];
    want.sort();
    assert!(want.iter().all(|w| stored.contains(w)), "{stored:?}");

    for (node, role, unit) in [
        ("p5", "server", "k3s.service"),
        ("p1", "agent", "k3s-agent.service"),
    ] {
        let tree = out.join(node);
        let bin = tree.join("usr/local/bin/k3s");
        assert_eq!(std::fs::read(&bin).unwrap(), BINARY, "{node}");
        assert_eq!(mode(&bin), 0o755);
        let img = tree
            .join("var/lib/rancher/k3s/agent/images")
            .join(IMAGES_NAME);
        assert_eq!(std::fs::read(&img).unwrap(), images, "{node}");
        let unit_text =
            std::fs::read_to_string(tree.join("etc/systemd/system").join(unit)).unwrap();
        assert!(
            unit_text.contains(&format!("ExecStart=/usr/local/bin/k3s {role}\n")),
            "{unit_text}"
        );
        assert!(unit_text.contains("ConditionPathExists=/usr/local/bin/k3s\n"));
        let link = tree
            .join("etc/systemd/system/multi-user.target.wants")
            .join(unit);
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("/etc/systemd/system").join(unit)
        );
        // The config holds the token: root only.
        let config = tree.join("etc/rancher/k3s/config.yaml");
        assert_eq!(mode(&config), 0o600, "{node}");
        assert!(std::fs::read_to_string(&config)
            .unwrap()
            .contains("token: "));
        // Nothing left for first boot to fetch.
        let fb = std::fs::read_to_string(tree.join("usr/local/sbin/chbuild-firstboot")).unwrap();
        assert!(!fb.contains("k3s"), "{fb}");
    }
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["nodes"].as_array().unwrap().len(), 3);
    for n in m["nodes"].as_array().unwrap() {
        assert_eq!(n["needs_network"], serde_json::json!([]), "{n}");
    }

    // gc keeps what the profile's bundle names, and only that.
    c.ok(&["store", "gc"]);
    let mut kept = blobs(&c);
    kept.sort();
    assert_eq!(kept, want);
    cli(profile("fixture.toml")).ok(&["store", "gc"]);
    assert!(blobs(&c).is_empty(), "{:?}", blobs(&c));
}

#[test]
fn a_wrong_sha256_is_refused_and_not_stored() {
    if !fixture_present() {
        return;
    }
    let images = images_tar();
    let (url, _) = serve(vec![
        ("/k3s-arm64".into(), BINARY.to_vec()),
        (format!("/{IMAGES_NAME}"), images.clone()),
    ]);
    let wrong = sha256(b"not the images");
    let t = tempfile::tempdir().unwrap();
    // Served: the images' sum is wrong (the binary's is right).
    let p = profile_with(
        t.path(),
        &format!(
            "k3s_binary = \"{url}/k3s-arm64\"\nk3s_binary_sha256 = \"{}\"\n\
             k3s_images = \"{url}/{IMAGES_NAME}\"\nk3s_images_sha256 = \"{wrong}\"\n",
            sha256(BINARY)
        ),
    );
    // A store of its own: nothing else writes to it meanwhile.
    let mut c = cli(p);
    c.init_secrets();
    c.store = t.path().join("store");
    let out = t.path().join("out");
    let o = c.run(&["image", "p5", "--output", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("features.k3s_images"), "{e}");
    assert!(e.contains(&wrong) && e.contains(&sha256(&images)), "{e}");
    assert!(e.contains("deleted"), "{e}");
    // Only the binary, whose sum is right, is stored.
    assert_eq!(blobs(&c), [sha256(BINARY)]);
    let downloads: Vec<_> = std::fs::read_dir(c.store.join("downloads"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(downloads.is_empty(), "{downloads:?}");
    assert!(!out.join("p5").exists());

    // A local file with a wrong sum: refused the same way.
    let bin = t.path().join("k3s-local");
    std::fs::write(&bin, b"another binary").unwrap();
    let wrong_bin = sha256(b"not this binary");
    let p = profile_with(
        &t.path().join("local"),
        &format!(
            "k3s_binary = \"{}\"\nk3s_binary_sha256 = \"{wrong_bin}\"\n\
             k3s_images = \"{url}/{IMAGES_NAME}\"\nk3s_images_sha256 = \"{}\"\n",
            bin.display(),
            sha256(&images)
        ),
    );
    let mut c = cli(p);
    c.store = t.path().join("store");
    let o = c.run(&["image", "p5", "--output", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("features.k3s_binary"), "{e}");
    assert!(
        e.contains(&wrong_bin) && e.contains(&sha256(b"another binary")),
        "{e}"
    );
    assert_eq!(blobs(&c), [sha256(BINARY)]);
}

#[test]
fn without_a_bundle_first_boot_fetches_exactly_the_pinned_release() {
    if !fixture_present() {
        return;
    }
    let c = cli(profile("fixture.toml"));
    c.init_secrets();
    let o = c.ok(&["check", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let needs = |name: &str| {
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap()["needs_network"]
            .clone()
    };
    assert_eq!(needs("p5"), serde_json::json!(["k3s"]));
    assert_eq!(needs("p1"), serde_json::json!(["k3s"]));
    assert_eq!(needs("z1"), serde_json::json!([]));
    let o = c.ok(&["check"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("first boot downloads k3s v1.36.4+k3s1"),
        "{text}"
    );

    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    c.ok(&["image", "p5", "--output", out.to_str().unwrap()]);
    let tree = out.join("p5");
    let fb = std::fs::read_to_string(tree.join("usr/local/sbin/chbuild-firstboot")).unwrap();
    let sum = "c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb";
    assert!(
        fb.contains(
            "curl -fsSL --retry 5 -o \"$part\" \
             https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s-arm64\n"
        ),
        "{fb}"
    );
    assert!(
        fb.contains(&format!("echo \"{sum}  $part\" | sha256sum -c -")),
        "{fb}"
    );
    // Checked before it is installed, then the baked unit is started.
    let check = fb.find("sha256sum -c").unwrap();
    assert!(check < fb.find("mv \"$part\" /usr/local/bin/k3s").unwrap());
    assert!(
        fb.contains("systemctl start --no-block k3s.service"),
        "{fb}"
    );
    assert!(
        !fb.contains("get.k3s.io") && !fb.contains("INSTALL_K3S"),
        "{fb}"
    );
    // The unit and config are baked, the unit enabled and waiting for its
    // binary; the binary itself is not in the image.
    let unit = std::fs::read_to_string(tree.join("etc/systemd/system/k3s.service")).unwrap();
    assert!(
        unit.contains("ConditionPathExists=/usr/local/bin/k3s\n"),
        "{unit}"
    );
    assert!(tree
        .join("etc/systemd/system/multi-user.target.wants/k3s.service")
        .symlink_metadata()
        .is_ok());
    assert!(tree.join("etc/rancher/k3s/config.yaml").is_file());
    assert!(!tree.join("usr/local/bin/k3s").exists());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(m["nodes"][0]["needs_network"], serde_json::json!(["k3s"]));

    run_k3s_step(&fb, sum, t.path());
}

/// Run the script's k3s step against a scratch directory, with `curl`
/// and `systemctl` stand-ins: a download with another sum is refused and
/// removed; one with the pinned sum is installed and its unit started.
fn run_k3s_step(script: &str, pinned: &str, scratch: &Path) {
    let start = script.find("# k3s v").unwrap();
    let end = script
        .find("systemctl start --no-block k3s.service\n")
        .unwrap();
    let step = &script[start..end + "systemctl start --no-block k3s.service\n".len()];
    let root = scratch.join("step");
    let fake = root.join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    let payload = root.join("payload");
    // curl -fsSL --retry 5 -o FILE URL: copy the payload to FILE, log URL.
    let urls = root.join("curl.log");
    std::fs::write(
        fake.join("curl"),
        format!(
            "#!/bin/sh\necho \"$6\" >> {}\ncp {} \"$5\"\n",
            urls.display(),
            payload.display()
        ),
    )
    .unwrap();
    let log = root.join("systemctl.log");
    std::fs::write(
        fake.join("systemctl"),
        format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
    )
    .unwrap();
    for f in ["curl", "systemctl"] {
        std::fs::set_permissions(fake.join(f), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let bin = root.join("usr/local/bin/k3s");
    let run = |step: &str| {
        let step = step.replace("/usr/local/bin/k3s", bin.to_str().unwrap());
        std::process::Command::new("sh")
            .arg("-eu")
            .arg("-c")
            .arg(step)
            .env(
                "PATH",
                format!("{}:{}", fake.display(), std::env::var("PATH").unwrap()),
            )
            .output()
            .unwrap()
    };
    std::fs::write(&payload, b"not the release").unwrap();
    let o = run(step);
    assert!(!o.status.success(), "a wrong binary was accepted");
    assert!(
        stderr(&o).contains("does not have the profile's sha256"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        std::fs::read_to_string(&urls).unwrap(),
        "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s-arm64\n"
    );
    assert!(!bin.exists() && !root.join("usr/local/bin/k3s.download").exists());
    assert!(!log.exists(), "the unit was started without its binary");
    // The same step, pinned to the payload's sum, installs it.
    let o = run(&step.replace(pinned, &sha256(b"not the release")));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&bin).unwrap(), b"not the release");
    assert_eq!(mode(&bin), 0o755);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "start --no-block k3s.service\n"
    );
}
