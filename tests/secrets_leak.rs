//! Secrets under stress: every output of the fault tests goes through
//! `Env::run`, which fails on any test secret (munge key bytes as raw, hex
//! or base64, private key lines, password, password hash, k3s token). This
//! file adds the runs most likely to leak one: trace logging of normal
//! runs, and every secret broken in the ways that make chbuild complain
//! about it (wrong mode, truncated, garbled, misplaced), plus a killed run.

mod hostile_support;

use hostile_support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn trace(env: &Env, args: &[&str]) -> std::process::Output {
    let o = env.command(args).env("RUST_LOG", "trace").output().unwrap();
    env.no_secrets(&o.stdout, &format!("stdout of {args:?} (trace)"));
    env.no_secrets(&o.stderr, &format!("stderr of {args:?} (trace)"));
    o
}

/// Break `file` with `how`, run `args` expecting a failure that names the
/// file, restore it.
fn broken(env: &Env, file: &str, how: impl Fn(&Path), args: &[&str]) {
    let p = env.secrets.join(file);
    let saved = std::fs::read(&p).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions().mode();
    how(&p);
    let o = trace(env, args);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success(),
        "{file} broken, yet {args:?} succeeded:\n{log}"
    );
    assert!(
        log.contains(&p.display().to_string()) || log.contains(file),
        "the error does not name {file}:\n{log}"
    );
    std::fs::write(&p, saved).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn write(p: &Path, data: &[u8]) {
    std::fs::write(p, data).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn no_secret_in_any_output_even_when_secrets_are_broken() {
    if !ready() {
        return;
    }
    let env = Env::new("secrets-leak", 100);
    let out = env.path("out");
    let o = out.to_str().unwrap();

    // Everything a user runs, at the most verbose level.
    for args in [
        vec!["check"],
        vec!["check", "--json"],
        vec!["show", "z1"],
        vec!["show", "p5", "--json"],
        vec!["store", "ingest"],
        vec!["image", "z1", "p5", "--output", o],
        vec!["store", "list"],
        vec!["verify", o],
    ] {
        let r = trace(&env, &args);
        assert!(
            r.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }

    let munge = std::fs::read(env.secrets.join("munge.key")).unwrap();
    let host =
        std::fs::read_to_string(env.secrets.join("hostkeys/z1/ssh_host_ed25519_key")).unwrap();
    let admin = std::fs::read_to_string(env.secrets.join("admin_ed25519")).unwrap();
    let hash = std::fs::read_to_string(env.secrets.join("password.sha512crypt")).unwrap();
    let image = ["image", "z1", "--output", o];

    broken(
        &env,
        "munge.key",
        |p| std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap(),
        &image,
    );
    broken(&env, "munge.key", |p| write(p, &munge[..31]), &image);
    broken(
        &env,
        "hostkeys/z1/ssh_host_ed25519_key",
        |p| write(p, &host.as_bytes()[..host.len() / 2]),
        &image,
    );
    broken(
        &env,
        "hostkeys/z1/ssh_host_ed25519_key",
        |p| {
            // One character changed inside the key body.
            let mut b = host.clone().into_bytes();
            let i = b.len() / 2;
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            write(p, &b)
        },
        &image,
    );
    broken(
        &env,
        "hostkeys/z1/ssh_host_ed25519_key",
        |p| write(p, &munge),
        &image,
    );
    broken(
        &env,
        "password.sha512crypt",
        |p| write(p, format!("{}:x\n", hash.trim()).as_bytes()),
        &image,
    );
    broken(
        &env,
        "password.sha512crypt",
        |p| write(p, hash.trim().replace("$6$", "$5$").as_bytes()),
        &image,
    );
    // The admin's private key where the public one belongs.
    broken(
        &env,
        "admin_ed25519.pub",
        |p| write(p, admin.as_bytes()),
        &image,
    );

    // The hash in the environment, garbled.
    let r = env
        .command(&image)
        .env("CHBUILD_PASSWORD_HASH", format!("{} trailing", hash.trim()))
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    assert!(!r.status.success());
    env.no_secrets(&r.stderr, "bad CHBUILD_PASSWORD_HASH");
}
