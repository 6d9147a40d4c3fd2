//! The controller's side of the Zeros' USB links, on a controller card
//! whose base lacks ClusterCTRL: what the ClusterCTRL image does for its
//! Zeros, written by chbuild so a plain Debian controller serves them too.
//!
//! - each Zero's link is named `ethupiN` (a udev rule on the address the
//!   Zero's gadget gives the controller's side);
//! - systemd-networkd puts the links in bridge `br0` (the untagged Zero
//!   network) and their VLAN 10 in bridge `brint` (the NFS network), with
//!   the controller's addresses on both, whichever stack runs the LAN;
//! - forwarding on, so the LAN nodes reach the Zeros through it;
//! - each Zero's root exported to its VLAN address, by the kernel NFS
//!   server baked into the card.
//!
//! The files are `overlays/roles/usbhost/` and, per Zero,
//! `overlays/roles/usbhost_link/`.

use super::{enable_unit, Templates};
use crate::overlay::write::{Owner, TreeWriter};
use crate::profile::plan::UsbHostPlan;
use anyhow::Result;
use serde_json::json;

/// ClusterCTRL's program: a base that has it configures the Zeros' side
/// (and the LAN) itself.
pub const CLUSTERCTRL: &str = "usr/sbin/clusterctrl";

pub const NFS_SERVER_PACKAGE: &str = "nfs-kernel-server";
const NFS_SERVER_UNIT: &str = "nfs-server.service";
const NETWORKD_UNIT: &str = "systemd-networkd.service";

/// True when the tree's own ClusterCTRL sets up the controller's network.
pub fn clusterctrl_owns_network(w: &TreeWriter) -> bool {
    w.exists(CLUSTERCTRL)
}

pub fn apply(u: &UsbHostPlan, t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    t.apply(w, "usbhost", serde_json::to_value(u)?)?;
    for link in &u.links {
        t.apply(w, "usbhost_link", serde_json::to_value(link)?)?;
    }
    // Where `chbuild deploy` puts the Zeros' trees.
    w.mkdir(u.nfs_root.trim_start_matches('/'), 0o755, Owner::ROOT)?;
    // Both come with the card's packages (systemd; nfs-kernel-server from
    // the plan, which the build checks is in the tree).
    for unit in [NETWORKD_UNIT, NFS_SERVER_UNIT] {
        if !enable_unit(w, unit, "multi-user.target")? {
            tracing::warn!(
                "the controller's tree has no {unit}: the Zeros' side is written, \
                 but nothing will bring it up"
            );
        }
    }
    tracing::debug!(
        "controller: the Zeros' side for {} link(s) ({})",
        u.links.len(),
        json!(u.links.iter().map(|l| &l.interface).collect::<Vec<_>>())
    );
    Ok(())
}
