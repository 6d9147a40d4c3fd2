//! The login user, written offline: `etc/passwd`, `shadow` (the
//! sha512crypt hash), `group`, `gshadow`, sudo membership with a
//! password-less sudoers drop-in, the home directory from `etc/skel`, and
//! `userconf.txt` in the boot directory for Raspberry Pi OS's first boot.
//!
//! The account databases are edited here in code, not templated: they are
//! the base's own files, and chbuild only decides which rows change. The
//! files chbuild adds are `overlays/roles/{sudo,users}/`.

use super::accounts::Accounts;
use super::{RoleCtx, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use walkdir::WalkDir;

/// Groups Raspberry Pi OS gives its first user; each is added when the
/// base has it.
const PI_GROUPS: [&str; 14] = [
    "adm", "dialout", "cdrom", "audio", "video", "plugdev", "games", "users", "input", "render",
    "netdev", "spi", "i2c", "gpio",
];

/// Debian's fixed gid of `sudo` (base-passwd).
const SUDO_GID: u32 = 27;

/// The shadow file's "last changed" day: the build's time, so the same
/// inputs give the same file.
fn days_since_epoch(epoch: i64) -> u64 {
    epoch.max(0) as u64 / 86400
}

/// Raspberry Pi OS ships a first user at the profile's uid under another
/// name: rename it (as its `userconfig` would) rather than clash.
fn rename_user(acc: &mut Accounts, w: &mut TreeWriter, old: &str, new: &str) -> Result<()> {
    for r in acc.passwd.rows.iter_mut().filter(|r| r[0] == old) {
        r[0] = new.to_string();
        if r.len() > 5 {
            r[5] = format!("/home/{new}");
        }
    }
    for r in acc.shadow.rows.iter_mut().filter(|r| r[0] == old) {
        r[0] = new.to_string();
    }
    for (table, fields) in [
        (&mut acc.group, &[3usize][..]),
        (&mut acc.gshadow, &[2, 3][..]),
    ] {
        for r in table.rows.iter_mut() {
            if r[0] == old {
                r[0] = new.to_string();
            }
            for &i in fields {
                if let Some(f) = r.get_mut(i) {
                    *f = f
                        .split(',')
                        .map(|m| if m == old { new } else { m })
                        .collect::<Vec<_>>()
                        .join(",");
                }
            }
        }
    }
    let (from, to) = (
        w.host_path(format!("home/{old}"))?,
        w.host_path(format!("home/{new}"))?,
    );
    if from.is_dir() && !to.exists() {
        std::fs::rename(&from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    }
    Ok(())
}

pub fn apply(ctx: &RoleCtx, t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    let u = &ctx.plan.user;
    let hash = &ctx.secrets.password_hash;
    let mut acc = Accounts::load(w)?;
    let uid_s = u.uid.to_string();
    let holder = acc
        .passwd
        .rows
        .iter()
        .find(|r| r.get(2) == Some(&uid_s) && r[0] != u.name)
        .map(|r| r[0].clone());
    if let Some(old) = holder {
        if acc.passwd.find(&u.name).is_some() {
            bail!(
                "uid {} belongs to `{old}` in the base while `{}` exists with another uid",
                u.uid,
                u.name
            );
        }
        rename_user(&mut acc, w, &old, &u.name)?;
    }

    let gid = match acc.gid(&u.name) {
        Some(g) => g,
        None if !acc.group.rows.iter().any(|r| r.get(2) == Some(&uid_s)) => u.uid,
        None => acc.free_id(1000)?,
    };
    let shell = if w.exists("usr/bin/bash") || w.exists("bin/bash") {
        "/bin/bash"
    } else {
        "/bin/sh"
    };
    let home = format!("/home/{}", u.name);
    let row = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    acc.passwd.upsert(row(&[
        &u.name,
        "x",
        &uid_s,
        &gid.to_string(),
        ",,,",
        &home,
        shell,
    ]));
    acc.shadow.upsert(row(&[
        &u.name,
        hash,
        &days_since_epoch(ctx.epoch).to_string(),
        "0",
        "99999",
        "7",
        "",
        "",
        "",
    ]));
    if acc.group.find(&u.name).is_none() {
        acc.group.upsert(row(&[&u.name, "x", &gid.to_string(), ""]));
    }
    if acc.gshadow.find(&u.name).is_none() {
        acc.gshadow.upsert(row(&[&u.name, "!", "", ""]));
    }
    let mut groups: Vec<&str> = PI_GROUPS.to_vec();
    if u.sudo {
        if acc.group.find("sudo").is_none() {
            let g = if acc
                .group
                .rows
                .iter()
                .any(|r| r.get(2) == Some(&SUDO_GID.to_string()))
            {
                acc.free_id(100)?
            } else {
                SUDO_GID
            };
            acc.group.upsert(row(&["sudo", "x", &g.to_string(), ""]));
        }
        if acc.gshadow.find("sudo").is_none() {
            acc.gshadow.upsert(row(&["sudo", "*", "", ""]));
        }
        groups.push("sudo");
    }
    for g in groups {
        acc.group.add_member(g, 3, &u.name);
        acc.gshadow.add_member(g, 3, &u.name);
    }
    acc.save(w)?;
    let owner = Owner { uid: u.uid, gid };

    if u.sudo {
        t.apply(w, "sudo", json!({}))?;
    }

    let home_rel = format!("home/{}", u.name);
    w.mkdir(&home_rel, 0o700, owner)?;
    let skel = w.host_path("etc/skel")?;
    if skel.is_dir() {
        for e in WalkDir::new(&skel)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
        {
            let e = e.with_context(|| format!("walking {}", skel.display()))?;
            let rel = Path::new(&home_rel).join(e.path().strip_prefix(&skel).unwrap());
            if w.exists(&rel) {
                continue; // never overwrite what the base's user already has
            }
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &e.metadata()
                    .with_context(|| format!("reading {}", e.path().display()))?
                    .permissions(),
            ) & 0o777;
            if e.file_type().is_dir() {
                w.mkdir(&rel, mode, owner)?;
            } else if e.file_type().is_file() {
                let data = std::fs::read(e.path())
                    .with_context(|| format!("reading {}", e.path().display()))?;
                w.write(&rel, &data, mode, owner)?;
            }
        }
    }

    // userconf.txt for Raspberry Pi OS's first boot.
    t.apply(w, "users", json!({}))
}
