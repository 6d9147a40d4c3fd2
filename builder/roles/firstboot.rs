//! The one first-boot unit: does what cannot be done offline (install the
//! packages the base lacks, create the munge user and give it the key,
//! install k3s without an air-gap bundle, enable the services those
//! packages bring). It runs until it succeeds once: a marker file is
//! written last, every step is idempotent, a failure is retried (and the
//! whole script runs again at the next boot). Output goes to the journal.

use super::{enable_unit, Pending, RoleCtx};
use crate::overlay::write::{Owner, TreeWriter};
use anyhow::Result;

pub const UNIT: &str = "chbuild-firstboot.service";
pub const SCRIPT: &str = "usr/local/sbin/chbuild-firstboot";
pub const MARKER: &str = "/var/lib/chbuild/firstboot.done";

/// k3s's official install script; only used without an air-gap bundle.
pub const K3S_INSTALL_URL: &str = "https://get.k3s.io";

fn needs_network(packages: &[String], p: &Pending) -> bool {
    !packages.is_empty() || p.k3s_install.is_some()
}

pub fn unit(packages: &[String], p: &Pending) -> String {
    let net = if needs_network(packages, p) {
        "Wants=network-online.target\nAfter=network-online.target\n"
    } else {
        ""
    };
    format!(
        "[Unit]\n\
         Description=chbuild first boot: finish what the image could not bake in\n\
         ConditionPathExists=!{MARKER}\n\
         {net}\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/{SCRIPT}\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         TimeoutStartSec=2h\n\
         Restart=on-failure\n\
         RestartSec=60s\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

fn sh_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+:/@=".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub fn script(hostname: &str, packages: &[String], p: &Pending) -> String {
    let mut s = format!(
        "#!/bin/sh\n\
         # chbuild first boot of {hostname}. Idempotent: safe to run again after a\n\
         # failure; {MARKER} is written only when every step succeeded.\n\
         set -eux\n\
         [ -e {MARKER} ] && exit 0\n\
         export DEBIAN_FRONTEND=noninteractive\n"
    );
    if !packages.is_empty() {
        let list: Vec<String> = packages.iter().map(|x| sh_word(x)).collect();
        s.push_str(&format!(
            "\n# Packages the base lacks. Files chbuild wrote are kept (confold).\n\
             apt-get update\n\
             apt-get install -y --no-install-recommends \\\n  \
             -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \\\n  \
             {}\n",
            list.join(" ")
        ));
    }
    if p.munge_owner {
        s.push_str(
            "\n# The base had no munge user: create it, then hand it the baked key.\n\
             getent group munge >/dev/null || groupadd --system munge\n\
             getent passwd munge >/dev/null || useradd --system --gid munge \\\n  \
             --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin munge\n\
             chown munge:munge /etc/munge /etc/munge/munge.key\n\
             chmod 0700 /etc/munge\n\
             chmod 0400 /etc/munge/munge.key\n\
             if systemctl cat munge.service >/dev/null 2>&1; then systemctl restart munge.service; fi\n",
        );
    }
    if let Some(user) = &p.docker_group {
        s.push_str(&format!(
            "\nif getent group docker >/dev/null; then usermod -aG docker {}; fi\n",
            sh_word(user)
        ));
    }
    if let Some(role) = &p.k3s_install {
        let version = match &p.k3s_version {
            Some(v) => format!("INSTALL_K3S_VERSION={} ", sh_word(v)),
            None => String::new(),
        };
        s.push_str(&format!(
            "\n# k3s reads /etc/rancher/k3s/config.yaml (server URL, token).\n\
             if [ ! -x /usr/local/bin/k3s ]; then\n  \
             curl -sfL {K3S_INSTALL_URL} -o /run/k3s-install.sh\n  \
             {version}INSTALL_K3S_EXEC={role} sh /run/k3s-install.sh\n\
             fi\n"
        ));
    }
    for u in &p.enable {
        s.push_str(&format!(
            "\nif systemctl cat {u} >/dev/null 2>&1; then systemctl enable {u}; systemctl restart {u}; fi\n",
            u = sh_word(u)
        ));
    }
    s.push_str(&format!(
        "\nmkdir -p {dir}\ntouch {MARKER}\n",
        dir = MARKER.rsplit_once('/').map(|x| x.0).unwrap_or("/var/lib")
    ));
    s
}

pub fn apply(ctx: &RoleCtx, w: &mut TreeWriter, packages: &[String], p: &Pending) -> Result<()> {
    w.write(
        SCRIPT,
        script(&ctx.plan.hostname, packages, p).as_bytes(),
        0o755,
        Owner::ROOT,
    )?;
    w.write(
        format!("etc/systemd/system/{UNIT}"),
        unit(packages, p).as_bytes(),
        0o644,
        Owner::ROOT,
    )?;
    enable_unit(w, UNIT, "multi-user.target")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_only_when_needed() {
        let p = Pending::default();
        assert!(!unit(&[], &p).contains("network-online"));
        assert!(unit(&["htop".into()], &p).contains("After=network-online.target"));
        let s = script("z1", &["htop".into()], &p);
        assert!(s.contains("apt-get install") && s.ends_with(&format!("touch {MARKER}\n")));
        assert_eq!(sh_word("a b'c"), "'a b'\\''c'");
    }

    #[test]
    fn k3s_install_pins_the_profile_version() {
        let mut p = Pending {
            k3s_install: Some("agent".into()),
            ..Pending::default()
        };
        assert!(script("p1", &[], &p).contains("\n  INSTALL_K3S_EXEC=agent sh"));
        p.k3s_version = Some("v1.30.4+k3s1".into());
        assert!(script("p1", &[], &p)
            .contains("INSTALL_K3S_VERSION=v1.30.4+k3s1 INSTALL_K3S_EXEC=agent sh"));
    }
}
