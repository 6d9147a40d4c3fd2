//! The one first-boot unit: does what cannot be done offline. Every
//! package is baked into the image, so on the default profile that is
//! nothing but k3s without an air-gap bundle; it installs what the profile
//! lists in `packages.firstboot` (the only way a node installs anything),
//! and on a base that was not given its packages (a bare test tree) it
//! creates the munge user and enables what those packages bring. It runs until it succeeds once: a marker file is
//! written last, every step is idempotent, a failure is retried (and the
//! whole script runs again at the next boot). Output goes to the journal.
//! The unit and the script are `overlays/roles/firstboot/`.

use super::{enable_unit, Pending, Templates};
use crate::overlay::write::TreeWriter;
use anyhow::Result;
use serde_json::{json, Value};

pub const UNIT: &str = "chbuild-firstboot.service";
pub const SCRIPT: &str = "usr/local/sbin/chbuild-firstboot";
pub const MARKER: &str = "/var/lib/chbuild/firstboot.done";

/// k3s's official install script; only used without an air-gap bundle.
pub const K3S_INSTALL_URL: &str = "https://get.k3s.io";

fn sh_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+:/@=".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// What the templates read as `roles.firstboot`: the steps to take, every
/// name already quoted for the shell.
pub fn values(packages: &[String], p: &Pending) -> Value {
    let words = |v: &[String]| v.iter().map(|x| sh_word(x)).collect::<Vec<_>>();
    json!({
        "marker": MARKER,
        "marker_dir": MARKER.rsplit_once('/').map(|x| x.0).unwrap_or("/var/lib"),
        "needs_network": !packages.is_empty() || p.k3s_install.is_some(),
        "packages": words(packages),
        "munge_owner": p.munge_owner,
        "docker_group": p.docker_group.as_deref().map(sh_word),
        "k3s_install": p.k3s_install.as_deref().map(sh_word),
        "k3s_version": p.k3s_version.as_deref().map(sh_word),
        "k3s_install_url": K3S_INSTALL_URL,
        "enable": words(&p.enable),
    })
}

pub fn apply(
    t: &mut Templates,
    w: &mut TreeWriter,
    packages: &[String],
    p: &Pending,
) -> Result<()> {
    t.apply(w, "firstboot", values(packages, p))?;
    enable_unit(w, UNIT, "multi-user.target")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_only_when_needed() {
        let p = Pending::default();
        assert_eq!(values(&[], &p)["needs_network"], false);
        assert_eq!(values(&["htop".into()], &p)["needs_network"], true);
        assert_eq!(sh_word("a b'c"), "'a b'\\''c'");
    }

    #[test]
    fn k3s_install_pins_the_profile_version() {
        let mut p = Pending {
            k3s_install: Some("agent".into()),
            ..Pending::default()
        };
        assert_eq!(values(&[], &p)["k3s_version"], Value::Null);
        p.k3s_version = Some("v1.30.4+k3s1".into());
        assert_eq!(values(&[], &p)["k3s_version"], "v1.30.4+k3s1");
    }
}
