//! Host identity and network: hostname, `/etc/hosts` (every node, the
//! controller with its aliases), time zone, an empty machine-id, the
//! Zero's USB/NFS boot files when the base cannot make them itself, the
//! SD nodes' LAN interface (static or DHCP, for the network stack the
//! base uses) and their route to the Zero network through the controller.
//! The files are `overlays/roles/{network,usbboot,usbboot_firmware,
//! usbboot_initramfs,lan_*,zero_route}/`.

use super::{enable_unit, RoleCtx, Templates};
use crate::overlay::write::TreeWriter;
use crate::overlay::Overlays;
use crate::profile::plan::{LanPlan, NodePlan};
use crate::store::zero_boot::BootFile;
use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

/// ClusterCTRL's own script: a base carrying it gets its NFS-boot files
/// from `usbboot-init` on the controller, not from chbuild.
pub const RECONFIG_USBBOOT: &str = "usr/share/clusterctrl/reconfig-usbboot";

/// raspi-firmware's settings, read by its kernel and initramfs hooks.
pub const RASPI_FIRMWARE_DEFAULT: &str = "etc/default/raspi-firmware";

/// The base's raspi-firmware defaults without any ROOTPART setting (the
/// template sets the Zero's own).
pub fn kept_firmware_default(base: &str) -> Vec<String> {
    base.lines()
        .filter(|l| !l.trim_start().starts_with("ROOTPART="))
        .map(str::to_string)
        .collect()
}

/// Where the Zero's initramfs configuration lives: these files of the
/// `usbboot_initramfs` layer are built into the store's Zero boot layer.
pub const INITRAMFS_CONFIG: &str = "etc/initramfs-tools/";

/// raspi-firmware appends this file to `config.txt` when it writes it.
pub const RASPI_FIRMWARE_CUSTOM: &str = "etc/default/raspi-firmware-custom";

/// What the `usbboot_initramfs` templates read as
/// `roles.usbboot_initramfs`, from what the tree has (`has(path)`):
/// ClusterCTRL's `dtoverlay=dwc2,dr_mode=peripheral` only where the boot
/// directory carries that overlay. Debian's raspi-firmware boots the
/// upstream kernel (`upstream_kernel=1`) without `overlays/`, whose Zero 2 W
/// device tree already makes the USB controller OTG.
pub fn initramfs_values(
    plan: &NodePlan,
    has: impl Fn(&str) -> bool,
    read: impl Fn(&str) -> Option<String>,
) -> serde_json::Value {
    json!({
        "dwc2_overlay": has(&format!("{}/overlays/dwc2.dtbo", plan.boot_dir)),
        "netboot_modules": read(INITRAMFS_CONF).is_some_and(|c| modules_is_most(&c)),
    })
}

/// The base's own initramfs-tools settings (the layer's and the role's
/// files go to `conf.d/`, never here).
const INITRAMFS_CONF: &str = "etc/initramfs-tools/initramfs.conf";

/// Whether `initramfs.conf` asks for MODULES=most (Debian's default, also
/// when unset): a Zero then gets MODULES=netboot, a subset. A base that
/// chose `list`, `dep` or `netboot` is left with its choice, which is
/// already no larger.
fn modules_is_most(conf: &str) -> bool {
    matches!(
        crate::profile::plan::shell_assignment(conf, "MODULES"),
        None | Some("most")
    )
}

/// The initramfs-tools files of `usbboot_initramfs` as rendered for
/// `plan` on the tree at `root`, for the store's Zero boot layer. They
/// read no secret (the layer is shared) and nothing that differs between
/// Zeros, so every Zero of a profile gets the same layer.
pub fn initramfs_files(
    plan: &NodePlan,
    overlays: &Overlays,
    root: &std::path::Path,
) -> Result<Vec<BootFile>> {
    let layer = overlays
        .layer("roles/usbboot_initramfs")?
        .context("the overlays have no layer roles/usbboot_initramfs")?;
    let mut vars = crate::overlay::template_context(plan, None, json!({}))?;
    vars["roles"]["usbboot_initramfs"] = initramfs_values(
        plan,
        |p| root.join(p).exists(),
        |p| std::fs::read_to_string(root.join(p)).ok(),
    );
    let rendered = crate::overlay::render_layers(&vars, &[layer])?;
    Ok(rendered
        .into_iter()
        .filter(|r| r.path.starts_with(INITRAMFS_CONFIG))
        .filter_map(|r| {
            Some(BootFile {
                path: r.path.to_string_lossy().into_owned(),
                mode: r.mode,
                content: r.content?,
            })
        })
        .collect())
}

/// The settings of raspi-firmware-custom (`key=value` lines) that
/// `config` lacks, in order.
pub fn missing_config_lines(custom: &str, config: &str) -> Vec<String> {
    let have: Vec<&str> = config.lines().map(str::trim).collect();
    custom
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| !have.contains(l))
        .map(str::to_string)
        .collect()
}

/// The boot directory's `config.txt` gets the settings of
/// raspi-firmware-custom it lacks now: raspi-firmware adds them when it
/// next writes the file on the Zero, and the tree must boot before that.
fn add_config_lines(plan: &NodePlan, w: &mut TreeWriter) -> Result<()> {
    let config = format!("{}/config.txt", plan.boot_dir);
    let (Some(custom), Some(text)) = (
        w.read_string(RASPI_FIRMWARE_CUSTOM)?,
        w.read_string(&config)?,
    ) else {
        return Ok(());
    };
    let missing = missing_config_lines(&custom, &text);
    if missing.is_empty() {
        return Ok(());
    }
    let path = w.host_path(&config)?;
    let m = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    use std::os::unix::fs::MetadataExt;
    let mut out = text;
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# Added by chbuild, as {RASPI_FIRMWARE_CUSTOM}\n"
    ));
    for l in &missing {
        out.push_str(l);
        out.push('\n');
    }
    w.write(
        &config,
        out.as_bytes(),
        m.mode() & 0o7777,
        crate::overlay::write::Owner {
            uid: m.uid(),
            gid: m.gid(),
        },
    )
}

pub const ZERO_ROUTE_UNIT: &str = "chbuild-zero-route.service";

/// The base's kernel command line without what decides the root: the
/// console and other settings stay, the template adds ClusterCTRL's NFS
/// root and the exact `ip=...:pN:usb0.10:static` form its initramfs parses.
pub fn kept_cmdline(base: &str) -> Vec<String> {
    let drop = [
        "root=",
        "rootfstype=",
        "nfsroot=",
        "ip=",
        "boot=",
        "fsck.repair=",
        "fsck.mode=",
        "init=",
    ];
    base.split_whitespace()
        .filter(|t| !drop.iter().any(|d| t.starts_with(d)))
        .filter(|t| !["rw", "ro", "rootwait"].contains(t))
        .map(str::to_string)
        .collect()
}

/// The base's fstab lines a Zero keeps: all but any root or boot mount
/// (the template adds the boot directory from the controller's export).
pub fn kept_fstab(base: &str, plan: &NodePlan) -> Vec<String> {
    let boot = format!("/{}", plan.boot_dir);
    base.lines()
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let mounts_root_or_boot = !line.trim_start().starts_with('#')
                && f.len() >= 2
                && (f[1] == "/" || f[1] == boot);
            !mounts_root_or_boot && !line.contains("UNCONFIGURED FSTAB")
        })
        .map(str::to_string)
        .collect()
}

/// The network stack that configures a tree's interfaces, detected from
/// the programs the base has installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stack {
    /// Keyfiles in `etc/NetworkManager/system-connections` (Raspberry Pi
    /// OS Bookworm).
    NetworkManager,
    /// `etc/network/interfaces.d/<interface>` (Debian minbase).
    Ifupdown,
    /// `etc/systemd/network/*.network`, with systemd-networkd enabled.
    Networkd,
}

/// NetworkManager when installed (it would take over an interface that
/// ifupdown does not own), else ifupdown, else systemd-networkd, which
/// every systemd base carries.
pub fn detect_stack(w: &TreeWriter) -> Stack {
    if w.exists("usr/sbin/NetworkManager") {
        Stack::NetworkManager
    } else if w.exists("usr/sbin/ifup") || w.exists("sbin/ifup") {
        Stack::Ifupdown
    } else {
        Stack::Networkd
    }
}

const NETWORKD_UNIT: &str = "systemd-networkd.service";
/// What makes `network-online.target` wait for networkd's interfaces (the
/// route to the Zeros is added once it is reached).
const NETWORKD_WAIT_UNIT: &str = "systemd-networkd-wait-online.service";

/// What the `lan_*` templates read as `roles.<layer>`.
fn lan_values(plan: &NodePlan, lan: &LanPlan) -> serde_json::Value {
    // NetworkManager wants a UUID per connection; one derived from the
    // cluster, host and interface keeps rebuilds identical.
    let h = Sha256::digest(format!(
        "{}/{}/{}",
        plan.cluster, plan.hostname, lan.interface
    ));
    let mut b: [u8; 16] = h[..16].try_into().expect("a sha256 has 16 bytes");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &x[..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..]
    );
    json!({
        "interface": lan.interface,
        "dhcp": lan.dhcp,
        "address": lan.address,
        "prefix": lan.prefix,
        "netmask": lan.netmask,
        "gateway": lan.gateway,
        "dns": lan.dns,
        "uuid": uuid,
    })
}

/// Write the LAN interface's configuration for the tree's stack. Returns
/// the stack used.
pub fn apply_lan(
    plan: &NodePlan,
    lan: &LanPlan,
    t: &mut Templates,
    w: &mut TreeWriter,
) -> Result<Stack> {
    let stack = detect_stack(w);
    tracing::debug!(
        "{}: LAN interface {} ({}) for {stack:?}",
        plan.name,
        lan.interface,
        if lan.dhcp { "dhcp" } else { "static" }
    );
    let values = lan_values(plan, lan);
    match stack {
        Stack::NetworkManager => t.apply(w, "lan_nm", values)?,
        Stack::Ifupdown => t.apply(w, "lan_ifupdown", values)?,
        Stack::Networkd => {
            t.apply(w, "lan_networkd", values)?;
            if !enable_unit(w, NETWORKD_UNIT, "multi-user.target")? {
                tracing::warn!(
                    "{}: the base has neither NetworkManager, ifupdown nor {NETWORKD_UNIT}: \
                     the LAN configuration for systemd-networkd is written, but nothing \
                     will apply it",
                    plan.name
                );
            }
            enable_unit(w, NETWORKD_WAIT_UNIT, "network-online.target")?;
        }
    }
    // NetworkManager writes resolv.conf itself, and a symlink means a
    // resolver daemon (resolvconf, systemd-resolved) owns it; otherwise
    // ifupdown's `dns-nameservers` and networkd's `DNS=` reach no one,
    // so a static node gets its DNS servers in the file. A DHCP client
    // writes the file itself.
    let resolv_owned = w
        .host_path("etc/resolv.conf")
        .ok()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .is_some_and(|m| m.file_type().is_symlink());
    if !lan.dhcp && stack != Stack::NetworkManager && !resolv_owned {
        t.apply(w, "lan_resolv", json!({ "dns": lan.dns }))?;
    }
    Ok(stack)
}

pub fn apply(ctx: &RoleCtx, t: &mut Templates, w: &mut TreeWriter) -> Result<()> {
    let plan = ctx.plan;
    t.apply(w, "network", json!({}))?;
    w.symlink(
        "etc/localtime",
        format!("/usr/share/zoneinfo/{}", plan.timezone),
    )?;

    if plan.usbboot.is_some() && !w.exists(RECONFIG_USBBOOT) {
        let cmdline = w
            .read_string(format!("{}/cmdline.txt", plan.boot_dir))?
            .unwrap_or_default();
        let fstab = w.read_string("etc/fstab")?.unwrap_or_default();
        t.apply(
            w,
            "usbboot",
            json!({
                "base_cmdline": kept_cmdline(&cmdline),
                "base_fstab": kept_fstab(&fstab, plan),
            }),
        )?;
        // The initramfs brings up usb0 and usb0.10 (the store's Zero boot
        // layer holds the image built with these files), raspi-firmware
        // keeps the USB and UART settings, and ifupdown never takes the
        // NFS root's interface down.
        let values = initramfs_values(plan, |p| w.exists(p), |p| w.read_string(p).ok().flatten());
        t.apply(w, "usbboot_initramfs", values)?;
        add_config_lines(plan, w)?;
        // Debian's raspi-firmware rewrites cmdline.txt on every kernel or
        // firmware install, from its defaults: they must name the NFS
        // root, or the first upgrade leaves a Zero that cannot boot.
        if let Some(default) = w.read_string(RASPI_FIRMWARE_DEFAULT)? {
            t.apply(
                w,
                "usbboot_firmware",
                json!({ "base_default": kept_firmware_default(&default) }),
            )?;
        }
    }

    // The controller's card: ClusterCTRL, when its base has it, runs the
    // LAN and the Zeros' side itself.
    let clusterctrl = plan.usbhost.is_some() && super::usbhost::clusterctrl_owns_network(w);
    if let Some(lan) = plan.lan.as_ref().filter(|_| !clusterctrl) {
        apply_lan(plan, lan, t, w)?;
    }
    if let Some(u) = plan.usbhost.as_ref().filter(|_| !clusterctrl) {
        super::usbhost::apply(u, t, w)?;
    }

    if plan.usbboot.is_some() {
        // deploy shares identical boot files between the Zeros' trees;
        // these hooks break the sharing before raspi-firmware writes them
        // in place on the Zero (see overlays/roles/boot_unshare/).
        t.apply(w, "boot_unshare", json!({}))?;
    }

    if plan.zero_route.is_some() {
        // A unit rather than ifupdown or NetworkManager configuration, so
        // the route works whichever network stack the base uses.
        t.apply(w, "zero_route", json!({}))?;
        enable_unit(w, ZERO_ROUTE_UNIT, "multi-user.target")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_keeps_console_and_drops_the_root() {
        let c = kept_cmdline(
            "console=tty0 root=/dev/mmcblk0p2 rw fsck.repair=yes net.ifnames=0 rootwait\n",
        );
        assert_eq!(c, ["console=tty0", "net.ifnames=0"]);
    }

    fn zero_plan(name: &str) -> NodePlan {
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/clusterhat.toml");
        let text = include_str!("../../profiles/clusterhat.toml");
        let profile = crate::profile::parse_profile(text, &file).unwrap();
        profile.plan(profile.node(name).unwrap())
    }

    #[test]
    fn every_zero_gets_the_same_initramfs_files() {
        let t = tempfile::tempdir().unwrap();
        let files =
            |name: &str| initramfs_files(&zero_plan(name), &Overlays::Embedded, t.path()).unwrap();
        let z1 = files("z1");
        assert_eq!(z1, files("z2"), "N is read at boot, not baked");
        let paths: Vec<(&str, u32)> = z1.iter().map(|f| (f.path.as_str(), f.mode)).collect();
        assert_eq!(
            paths,
            [
                ("etc/initramfs-tools/conf.d/chbuild-usbboot", 0o644),
                ("etc/initramfs-tools/hooks/chbuild-usbboot", 0o755),
                ("etc/initramfs-tools/scripts/nfs-top/chbuild-usbboot", 0o755),
            ]
        );
        assert!(String::from_utf8_lossy(&z1[0].content).contains("\nBOOT=nfs\n"));
    }

    #[test]
    fn the_dwc2_overlay_only_where_the_boot_directory_has_it() {
        let plan = zero_plan("z1");
        let v = initramfs_values(&plan, |_| false, |_| None);
        assert_eq!(v["dwc2_overlay"], false);
        let v = initramfs_values(
            &plan,
            |p| p == format!("{}/overlays/dwc2.dtbo", plan.boot_dir),
            |_| None,
        );
        assert_eq!(v["dwc2_overlay"], true);
    }

    #[test]
    fn netboot_modules_only_narrow_the_base_choice() {
        let plan = zero_plan("z1");
        let with = |conf: &'static str| {
            initramfs_values(
                &plan,
                |_| false,
                move |p| (p == INITRAMFS_CONF).then(|| conf.to_string()),
            )["netboot_modules"]
                .clone()
        };
        assert_eq!(with("# MODULES=list\nMODULES=most\n"), true);
        assert_eq!(with("BUSYBOX=auto\n"), true);
        assert_eq!(with("MODULES=most\nMODULES=list\n"), false);
        assert_eq!(with("MODULES=dep\n"), false);
        // No initramfs-tools at all: nothing to narrow.
        assert_eq!(
            initramfs_values(&plan, |_| false, |_| None)["netboot_modules"],
            false
        );
    }

    #[test]
    fn config_txt_gets_the_dwc2_overlay_where_the_firmware_has_it() {
        let t = tempfile::tempdir().unwrap();
        let plan = zero_plan("z1");
        let boot = t.path().join(&plan.boot_dir);
        std::fs::create_dir_all(boot.join("overlays")).unwrap();
        std::fs::write(boot.join("overlays/dwc2.dtbo"), "").unwrap();
        std::fs::write(boot.join("config.txt"), "enable_uart=1\nkernel=vmlinuz").unwrap();
        std::fs::create_dir_all(t.path().join("etc/default")).unwrap();
        let mut w = TreeWriter::new(t.path()).unwrap();
        let values = initramfs_values(&plan, |p| w.exists(p), |p| w.read_string(p).ok().flatten());
        let layer = Overlays::Embedded
            .layer("roles/usbboot_initramfs")
            .unwrap()
            .unwrap();
        let mut vars = crate::overlay::template_context(&plan, None, json!({})).unwrap();
        vars["roles"]["usbboot_initramfs"] = values;
        let custom = crate::overlay::render_layers(&vars, &[layer])
            .unwrap()
            .into_iter()
            .find(|r| r.path.as_os_str() == RASPI_FIRMWARE_CUSTOM)
            .unwrap();
        w.write(
            RASPI_FIRMWARE_CUSTOM,
            &custom.content.unwrap(),
            0o644,
            crate::overlay::write::Owner::ROOT,
        )
        .unwrap();
        add_config_lines(&plan, &mut w).unwrap();
        let config = std::fs::read_to_string(boot.join("config.txt")).unwrap();
        assert!(
            config.starts_with("enable_uart=1\nkernel=vmlinuz\n"),
            "{config}"
        );
        assert!(
            config.ends_with("\ndtoverlay=dwc2,dr_mode=peripheral\n"),
            "{config}"
        );
        assert_eq!(config.matches("enable_uart=1").count(), 1, "{config}");
    }

    #[test]
    fn config_gets_only_the_settings_it_lacks() {
        let custom = "# comment\nenable_uart=1\ndtoverlay=dwc2,dr_mode=peripheral\n";
        let config = "arm_64bit=1\nenable_uart=1\nupstream_kernel=1\n";
        assert_eq!(
            missing_config_lines(custom, config),
            ["dtoverlay=dwc2,dr_mode=peripheral"]
        );
        assert!(missing_config_lines("enable_uart=1\n", config).is_empty());
    }
}
