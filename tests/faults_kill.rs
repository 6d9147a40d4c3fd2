//! SIGKILL `store ingest`, `image` and `sd --output` (the whole process
//! group, as a crash or a cancelled CI job would) at random points, and
//! check each time that the store holds only complete entries, that the
//! output holds the complete old or the complete new artifacts (manifest,
//! SHA256SUMS, tarballs, trees and image sidecars agree), and that the next
//! run recovers without manual cleanup. The delays come from a fixed seed
//! (printed; `CHBUILD_KILL_SEED` replays another).

mod hostile_support;

use hostile_support::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn rng(test: &str) -> Lcg {
    let seed = std::env::var("CHBUILD_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_u64);
    eprintln!("{test}: kill delays from seed {seed} (CHBUILD_KILL_SEED)");
    Lcg(seed)
}

/// Start `c` in its own process group, kill the group after `delay`;
/// returns the captured output for the secrets check.
fn kill_after(env: &Env, mut c: Command, delay: Duration) {
    let logs = env.path("killed.log");
    let log = std::fs::File::create(&logs).unwrap();
    c.stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0);
    let mut child = c.spawn().unwrap();
    std::thread::sleep(delay);
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(20));
    env.no_secrets(&std::fs::read(&logs).unwrap(), "output of a killed run");
}

fn timed(env: &Env, c: &mut Command) -> Duration {
    let t = Instant::now();
    let o = c.output().unwrap();
    env.no_secrets(&o.stderr, "stderr");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}

fn delay(full: Duration, rng: &mut Lcg, i: usize, rounds: usize) -> Duration {
    match i {
        0 => Duration::ZERO,
        i if i == rounds - 1 => full + Duration::from_millis(500),
        _ => full.mul_f64(rng.next_f64() * 1.05),
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".chbuild-") && n != ".chbuild-lock")
        .collect()
}

#[test]
fn sigkill_during_store_ingest_leaves_only_complete_entries() {
    if !ready() {
        return;
    }
    let env = Env::new("kill-ingest", 3000);
    let ingest = || env.command(&["store", "ingest"]);
    let full = timed(&env, &mut ingest());
    let digest = String::from_utf8(ingest().output().unwrap().stdout).unwrap();
    let whole = snapshot(&env.store.join(digest.trim()).join("tree"));
    env.ok(&["store", "gc", "--all"]);

    let rounds = 12;
    let mut r = rng("ingest");
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..rounds {
        let d = delay(full, &mut r, i, rounds);
        kill_after(&env, ingest(), d);
        let entries = store_entries_complete(&env.store)
            .unwrap_or_else(|e| panic!("round {i}, killed after {d:?}: {e}"));
        *seen
            .entry(if entries.is_empty() {
                "nothing stored"
            } else {
                "stored"
            })
            .or_default() += 1;
        // The next run finishes the job and leaves nothing half-done.
        let o = env.run(&["store", "ingest"]);
        assert!(
            o.status.success(),
            "round {i}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&o.stdout), digest, "round {i}");
        assert_eq!(
            store_entries_complete(&env.store).unwrap(),
            vec![digest.trim().to_string()]
        );
        assert_eq!(
            snapshot(&env.store.join(digest.trim()).join("tree")),
            whole,
            "round {i}"
        );
        let tmp: Vec<_> = names(&env.store)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(
            tmp.is_empty(),
            "round {i}: abandoned ingests left behind: {tmp:?}"
        );
        env.ok(&["store", "gc", "--all"]);
    }
    eprintln!("ingest: outcomes over {rounds} kills (full run {full:?}): {seen:?}");
    assert!(seen.contains_key("nothing stored"), "{seen:?}");
}

/// What an output directory holds, tree contents included (by their
/// epoch-clamped times and sizes, cheap and different per epoch).
fn output_state(out: &Path) -> BTreeMap<String, String> {
    let mut m = output_files(out);
    for node in ["z1", "p1"] {
        let etc = out.join(node).join("etc");
        if etc.is_dir() {
            use std::os::unix::fs::MetadataExt;
            let mut acc = String::new();
            for e in walkdir::WalkDir::new(&etc).sort_by_file_name() {
                let e = e.unwrap();
                let md = e.path().symlink_metadata().unwrap();
                acc.push_str(&format!(
                    "{} {} {}\n",
                    e.path().display(),
                    md.mtime(),
                    md.len()
                ));
            }
            m.insert(format!("{node}/"), acc);
        }
    }
    m
}

fn verify(env: &Env, out: &Path) -> Result<(), String> {
    let o = env.run(&["verify", out.to_str().unwrap()]);
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn sigkill_during_image_leaves_old_or_new_output() {
    if !ready() {
        return;
    }
    let env = Env::new("kill-image", 1000);
    let out = env.path("out");
    let o = out.to_str().unwrap().to_string();
    let epochs = ["1600000000", "1650000000"];
    let image = |epoch: &str| {
        let mut c = env.command(&["image", "z1", "p1", "--output", &o]);
        c.env("SOURCE_DATE_EPOCH", epoch);
        c
    };
    env.ok(&["store", "ingest"]);
    let mut states = vec![];
    let mut fulls = vec![];
    for e in epochs {
        fulls.push(timed(&env, &mut image(e)));
        states.push(output_state(&out));
    }
    assert_ne!(states[0], states[1]);
    // Now at epochs[1]; each round goes to the other one.
    let rounds = 10;
    let mut r = rng("image");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut at = 1;
    for i in 0..rounds {
        let to = 1 - at;
        let d = delay(fulls[to], &mut r, i, rounds);
        kill_after(&env, image(epochs[to]), d);
        let pending = out.join(".chbuild-commit").exists();
        let now = output_state(&out);
        let st = if now == states[at] {
            "old"
        } else if now == states[to] {
            "new"
        } else if pending {
            "committed, renames pending"
        } else {
            panic!(
                "round {i}: killed after {d:?}: the output is neither old nor new, and no commit is pending; leftovers {:?}",
                leftovers(&out)
            );
        };
        if !pending {
            verify(&env, &out).unwrap_or_else(|e| panic!("round {i} ({st}): {e}"));
        } else {
            // Any reader finishes the commit first.
            verify(&env, &out).unwrap_or_else(|e| panic!("round {i} ({st}): {e}"));
            assert_eq!(
                output_state(&out),
                states[to],
                "round {i}: after finishing the commit"
            );
        }
        *seen.entry(st.to_string()).or_default() += 1;
        let mut c = image(epochs[to]);
        let o2 = c.output().unwrap();
        env.no_secrets(&o2.stderr, "recovery run");
        assert!(
            o2.status.success(),
            "round {i}: {}",
            String::from_utf8_lossy(&o2.stderr)
        );
        // The directory is the complete new state, nothing left over.
        assert_eq!(output_state(&out), states[to], "round {i}: after recovery");
        assert!(
            leftovers(&out).is_empty(),
            "round {i}: {:?}",
            leftovers(&out)
        );
        verify(&env, &out).unwrap();
        at = to;
    }
    eprintln!("image: outcomes over {rounds} kills (full runs {fulls:?}): {seen:?}");
    assert!(
        seen.contains_key("old") && seen.contains_key("new"),
        "{seen:?}"
    );
}

/// The image's checksum and bmap, when the image matches its checksum
/// file.
fn sd_state(img: &Path) -> Option<(String, String)> {
    let sums = std::fs::read_to_string(img.with_extension("img.sha256")).ok()?;
    let want = sums.split_whitespace().next()?.to_string();
    let bmap = std::fs::read_to_string(img.with_extension("img.bmap")).ok()?;
    let actual = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        let mut f = std::fs::File::open(img).ok()?;
        std::io::copy(&mut f, &mut h).ok()?;
        hex::encode(h.finalize())
    };
    (actual == want).then_some((want, bmap))
}

#[test]
fn sigkill_during_sd_output_leaves_old_or_new_image() {
    if !ready() {
        return;
    }
    let env = Env::new("kill-sd", 500);
    let layout = env.path("small.toml");
    std::fs::write(
        &layout,
        "table = \"mbr\"\nalignment_mib = 4\nboot_size_mib = 64\nroot_margin_mib = 16\n",
    )
    .unwrap();
    let img = env.path("out/p1.img");
    let (i, l) = (img.to_str().unwrap(), layout.to_str().unwrap());
    let sd = |epoch: &str| {
        let mut c = env.command(&["sd", "p1", "--output", i, "--layout", l]);
        c.env("SOURCE_DATE_EPOCH", epoch);
        c
    };
    env.ok(&["store", "ingest"]);
    let epochs = ["1600000000", "1650000000"];
    let mut shas = vec![];
    let mut fulls = vec![];
    for e in epochs {
        fulls.push(timed(&env, &mut sd(e)));
        shas.push(sd_state(&img).expect("a complete image"));
    }
    assert_ne!(shas[0], shas[1]);
    let rounds = 10;
    let mut r = rng("sd");
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    let mut at = 1;
    let dir = img.parent().unwrap().to_path_buf();
    for k in 0..rounds {
        let to = 1 - at;
        let d = delay(fulls[to], &mut r, k, rounds);
        kill_after(&env, sd(epochs[to]), d);
        let pending = dir.join(".chbuild-commit").exists();
        let st = match sd_state(&img) {
            Some(s) if s == shas[at] => "old",
            Some(s) if s == shas[to] => "new",
            _ if pending => "committed, renames pending",
            other => panic!(
                "round {k}: killed after {d:?}: image, checksum and bmap disagree ({:?}); leftovers {:?}",
                other.map(|o| o.0),
                leftovers(&dir)
            ),
        };
        *seen.entry(st.to_string()).or_default() += 1;
        let o = sd(epochs[to]).output().unwrap();
        env.no_secrets(&o.stderr, "recovery run");
        assert!(
            o.status.success(),
            "round {k}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            sd_state(&img) == Some(shas[to].clone()),
            "round {k}: not the new image"
        );
        assert!(
            leftovers(&dir).is_empty(),
            "round {k}: {:?}",
            leftovers(&dir)
        );
        at = to;
    }
    eprintln!("sd: outcomes over {rounds} kills (full runs {fulls:?}): {seen:?}");
    assert!(seen.contains_key("old"), "{seen:?}");
}
