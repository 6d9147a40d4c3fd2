//! SIGKILL `chbuild deploy` (with its test doubles: the whole process
//! group, as a crash or power loss would) at many points, and check each
//! time that `p1` is the complete old tree or the complete new one, and
//! that the next deploy recovers.

mod deploy_support;

use deploy_support::*;
use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Small deterministic generator: failures must be reproducible.
struct Lcg(u64);

impl Lcg {
    fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// When a round kills the deploy.
enum KillAt {
    /// This long after the start.
    After(Duration),
    /// As soon as a staging directory shows in this NFS directory: a kill
    /// in the middle of staging, whatever the machine's speed.
    Staging(std::path::PathBuf),
}

fn kill_at(env: &Env, args: &[&str], sleep: &str, at: &KillAt) {
    let mut c = env.command(args);
    c.env("CHBUILD_TEST_SLEEP", sleep)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = c.spawn().unwrap();
    match at {
        KillAt::After(delay) => std::thread::sleep(*delay),
        KillAt::Staging(nfs) => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !leftovers(nfs).iter().any(|n| n.contains(".staging-")) {
                assert!(
                    Instant::now() < deadline,
                    "the deploy made no staging directory in {}",
                    nfs.display()
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    // The process group: chbuild and whatever double it is running.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    child.wait().unwrap();
    // Doubles in the group die with it; give the kernel a moment to reap.
    std::thread::sleep(Duration::from_millis(20));
}

fn timed(env: &Env, args: &[&str], sleep: &str) -> Duration {
    let t = Instant::now();
    let o = env
        .command(args)
        .env("CHBUILD_TEST_SLEEP", sleep)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    t.elapsed()
}

fn state(
    p1: &std::path::Path,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> &'static str {
    let s = snapshot(p1);
    if &s == old {
        "old"
    } else if &s == new {
        "new"
    } else {
        "mixed"
    }
}

#[test]
fn sigkill_anywhere_leaves_old_or_new_tree() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    let spec = |label| NodeSpec {
        filler: 1500,
        ..NodeSpec::new("z1", 1, label)
    };
    make_output(&a, &[spec("A")], false);
    make_output(&b, &[spec("B")], true);
    let (a, b) = (
        a.to_string_lossy().into_owned(),
        b.to_string_lossy().into_owned(),
    );
    let deploy_a = ["deploy", "z1", "--output", a.as_str()];
    let deploy_b = ["deploy", "z1", "--bundle", b.as_str(), "--force"];
    let sleep = "0.05";

    // The complete trees, and how long an uninterrupted A -> B deploy takes
    // here (the same path as every round below).
    env.ok(&deploy_a);
    let p1 = env.nfs().join("p1");
    // The fastest of three: a first, cold run would put the random kills
    // below past the end of a warm deploy.
    let full = (0..3).map(|_| timed(&env, &deploy_b, sleep)).min().unwrap();
    let new = snapshot(&p1);
    env.ok(&deploy_a);
    let old = snapshot(&p1);
    assert_ne!(old, new);

    let mut rng = Lcg(0x5eed);
    let rounds = 24;
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..rounds {
        // First round kills at once, last round after the deploy is done;
        // the others anywhere in between (staging is most of the time).
        let frac = match i {
            0 => 0.0,
            i if i == rounds - 1 => 4.0,
            // Every other round near the end, where the swap and the
            // power steps are.
            i if i % 2 == 1 => 0.75 + rng.next_f64() * 0.35,
            _ => rng.next_f64() * 1.1,
        };
        let delay = full.mul_f64(frac)
            + if frac > 1.5 {
                Duration::from_secs(1)
            } else {
                Duration::ZERO
            };
        // One round waits for staging to begin, so that a kill while
        // staging is certain to be tried, however fast this machine is.
        let at = if i == 2 {
            KillAt::Staging(env.nfs())
        } else {
            KillAt::After(delay)
        };
        kill_at(&env, &deploy_b, sleep, &at);
        let left = leftovers(&env.nfs());
        let st = match state(&p1, &old, &new) {
            "old"
                if left.iter().any(|n| n.contains(".staging-"))
                    && !left.iter().any(|n| n.ends_with(".chbuild-txn")) =>
            {
                "old (killed while staging)"
            }
            other => other,
        };
        assert_ne!(
            st,
            "mixed",
            "round {i}: killed after {delay:?} (of {full:?}), p1 is neither tree; leftovers {:?}",
            leftovers(&env.nfs())
        );
        *seen.entry(st).or_default() += 1;

        // The next deploy recovers: back to A, nothing left over.
        let log = env.ok(&deploy_a);
        assert_eq!(snapshot(&p1), old, "round {i}: recovery deploy\n{log}");
        assert!(
            leftovers(&env.nfs()).is_empty(),
            "round {i}: {:?}",
            leftovers(&env.nfs())
        );
    }
    eprintln!("outcomes after SIGKILL over {rounds} rounds (full deploy {full:?}): {seen:?}");
    assert!(
        seen.contains_key("old (killed while staging)") && seen.contains_key("new"),
        "{seen:?}"
    );
}

#[test]
fn sigkill_during_usbboot_init_is_undone_by_the_next_run() {
    let env = Env::new();
    let (a, b) = (env.path("a"), env.path("b"));
    let spec = |label| NodeSpec {
        reconfig: true,
        ..NodeSpec::new("z1", 1, label)
    };
    make_output(&a, &[spec("A")], false);
    make_output(&b, &[spec("B")], false);
    let (a, b) = (
        a.to_string_lossy().into_owned(),
        b.to_string_lossy().into_owned(),
    );
    let deploy_a = ["deploy", "z1", "--output", a.as_str()];
    let deploy_b = ["deploy", "z1", "--output", b.as_str(), "--force"];
    // usbboot-init sleeps between its hostname and cmdline edits.
    let sleep = "0.3";

    let reference = Env::new();
    let full = timed(&reference, &deploy_b, sleep);
    let new = snapshot(&reference.nfs().join("p1"));

    env.ok(&deploy_a);
    let p1 = env.nfs().join("p1");
    let old = snapshot(&p1);

    let mut rng = Lcg(0xc1a5);
    let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
    for i in 0..12 {
        let delay = full.mul_f64(rng.next_f64());
        kill_at(&env, &deploy_b, sleep, &KillAt::After(delay));
        let pending = leftovers(&env.nfs())
            .iter()
            .any(|n| n.ends_with(".chbuild-txn"));
        let st = match state(&p1, &old, &new) {
            // The swapped-in tree is being edited by usbboot-init: only
            // allowed while the journal says the next run must undo it.
            "mixed" if pending => "in usbboot-init",
            other => other,
        };
        assert_ne!(
            st, "mixed",
            "round {i}: killed after {delay:?}: p1 is neither tree and no journal"
        );
        *seen.entry(st).or_default() += 1;

        let log = env.ok(&deploy_a);
        assert_eq!(snapshot(&p1), old, "round {i}\n{log}");
        if st == "in usbboot-init" {
            assert!(log.contains("interrupted deploy was undone"), "{log}");
        }
        assert!(
            leftovers(&env.nfs()).is_empty(),
            "round {i}: {:?}",
            leftovers(&env.nfs())
        );
    }
    eprintln!("outcomes after SIGKILL (full deploy {full:?}): {seen:?}");
    assert!(
        seen.contains_key("in usbboot-init"),
        "no kill landed in usbboot-init: {seen:?}"
    );
}
