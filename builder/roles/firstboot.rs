//! The one first-boot unit: does what cannot be done offline. Every
//! package is baked into the image, so on the default profile that is
//! only the pinned k3s binary without an air-gap bundle (downloaded and
//! checked against its sha256); it installs what the profile lists in
//! `packages.firstboot` (the only way a node installs anything), and on a
//! base that was not given its packages (a bare test tree) it creates the
//! munge user and enables what those packages bring. It runs until it succeeds once: a marker file is
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

fn sh_word(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+:/@=%".contains(c))
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
        "needs_network": !packages.is_empty() || p.k3s.is_some(),
        "packages": words(packages),
        "munge_owner": p.munge_owner,
        "docker_group": p.docker_group.as_deref().map(sh_word),
        // The URL and sum are checked by the profile parser; quoted anyway.
        "k3s": p.k3s.as_ref().map(|k| json!({
            "version": sh_word(&k.download.version),
            "url": sh_word(&k.download.url),
            "sha256": sh_word(&k.download.sha256),
            "binary": format!("/{}", super::k3s::BINARY),
            "unit": sh_word(&k.unit),
        })),
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
    fn k3s_download_is_the_pinned_binary() {
        let mut p = Pending::default();
        assert_eq!(values(&[], &p)["k3s"], Value::Null);
        p.k3s = Some(super::super::k3s::PendingK3s {
            download: crate::profile::plan::K3sDownload::new(
                "v1.36.4+k3s1",
                "c920706346d5ad4e5cd3c7bf1bb09ce71ebe07fec829e513e40f1caf98aed8bb",
                crate::profile::model::Arch::Arm64,
            ),
            unit: "k3s-agent.service".into(),
        });
        let v = values(&[], &p);
        assert_eq!(v["needs_network"], true);
        assert_eq!(
            v["k3s"]["url"],
            "https://github.com/k3s-io/k3s/releases/download/v1.36.4%2Bk3s1/k3s-arm64"
        );
        assert_eq!(v["k3s"]["unit"], "k3s-agent.service");
    }
}
