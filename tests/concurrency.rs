//! Two chbuild runs at once: two `image` runs on the same store and output
//! directory, and an `image` during a `store gc`. Both finish correctly, the
//! later one waiting for the other and saying so; never a corrupted store
//! entry or a manifest that mixes two runs.

mod hostile_support;

use hostile_support::*;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn spawn(mut c: Command) -> Child {
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for a run; returns its log after checking it succeeded and leaked
/// no secret.
fn finish(env: &Env, child: Child, what: &str) -> String {
    let o = child.wait_with_output().unwrap();
    env.no_secrets(&o.stdout, what);
    env.no_secrets(&o.stderr, what);
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{what} failed:\n{log}");
    log
}

#[test]
fn two_images_on_one_store_and_output_take_turns() {
    if !ready() {
        return;
    }
    let env = Env::new("concurrent-image", 1000);
    let out = env.path("out");
    let o = out.to_str().unwrap().to_string();
    let mut waited = 0;
    // Round 0 starts on an empty store (both want to ingest); the others
    // on a stored base with inputs changed (both want to rebuild).
    for (round, epoch) in ["1600000000", "1650000000", "1660000000"]
        .iter()
        .enumerate()
    {
        let image = |nodes: &[&str]| {
            let mut args = vec!["image"];
            args.extend_from_slice(nodes);
            args.extend_from_slice(&["--output", &o]);
            let mut c = env.command(&args);
            c.env("SOURCE_DATE_EPOCH", epoch);
            c
        };
        let a = spawn(image(&["z1", "p1"]));
        let b = spawn(image(&["z1", "z2"]));
        let la = finish(&env, a, "first image");
        let lb = finish(&env, b, "second image");
        if [&la, &lb]
            .iter()
            .any(|l| l.contains("waiting for another chbuild"))
        {
            waited += 1;
        }
        // One manifest with every node either run built, all agreeing.
        let o2 = env.run(&["verify", &o]);
        assert!(
            o2.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o2.stderr)
        );
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        let mut names: Vec<&str> = m["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["name"].as_str().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["p1", "z1", "z2"], "round {round}");
        assert_eq!(m["source_date_epoch"].as_i64().unwrap().to_string(), *epoch);
        assert_eq!(store_entries_complete(&env.store).unwrap().len(), 1);
        let left: Vec<_> = names_in(&out);
        assert!(left.is_empty(), "round {round}: leftovers {left:?}");
    }
    assert!(waited > 0, "no run ever waited for the other");
}

fn names_in(dir: &std::path::Path) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| n.starts_with(".chbuild-") && n != ".chbuild-lock")
        .collect()
}

#[test]
fn image_and_store_gc_take_turns() {
    if !ready() {
        return;
    }
    let env = Env::new("concurrent-gc", 2000);
    let out = env.path("out");
    let o = out.to_str().unwrap().to_string();
    env.ok(&["store", "ingest"]);
    let mut seen = (0, 0);
    for (round, epoch) in ["1600000000", "1650000000", "1660000000", "1670000000"]
        .iter()
        .enumerate()
    {
        let mut img = env.command(&["image", "z1", "p1", "--output", &o]);
        img.env("SOURCE_DATE_EPOCH", epoch);
        let gc_first = round % 2 == 1;
        let (image, gc) = if gc_first {
            let gc = spawn(env.command(&["store", "gc", "--all"]));
            std::thread::sleep(Duration::from_millis(20));
            (spawn(img), gc)
        } else {
            let image = spawn(img);
            std::thread::sleep(Duration::from_millis(300));
            (image, spawn(env.command(&["store", "gc", "--all"])))
        };
        let li = finish(&env, image, "image");
        let lg = finish(&env, gc, "store gc");
        if lg.contains("waiting for other chbuild runs") {
            seen.0 += 1;
        }
        if li.contains("waiting for `chbuild store gc`") {
            seen.1 += 1;
        }
        // Whichever ran first, the output is whole and the store holds
        // only complete entries (gc may have removed the base after).
        let v = env.run(&["verify", &o]);
        assert!(
            v.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&v.stderr)
        );
        store_entries_complete(&env.store).unwrap_or_else(|e| panic!("round {round}: {e}"));
        let tmp: Vec<_> = names(&env.store)
            .into_iter()
            .filter(|n| n.starts_with(".tmp-"))
            .collect();
        assert!(tmp.is_empty(), "round {round}: {tmp:?}");
        // The trees are intact: their files are readable (a gc under a
        // build would have removed files the tree was being linked from).
        for node in ["z1", "p1"] {
            assert!(
                out.join(node).join("etc/passwd").is_file(),
                "round {round}: {node}"
            );
        }
    }
    eprintln!(
        "gc waited for image {} times, image waited for gc {} times",
        seen.0, seen.1
    );
    assert!(seen.0 > 0, "gc never waited for a running image");
}
