//! Where every variable the reference Ansible project documents goes in
//! chbuild: a profile key, a default of `chbuild deploy`, or nowhere, with
//! the reason. The README's table "Coming from the Ansible playbooks" is
//! checked against this list by a test.

/// What a variable became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A key of the profile (written by the import).
    Profile(&'static str),
    /// A default or flag of `chbuild deploy` (nothing to write).
    Deploy(&'static str),
    /// Nothing: the reason it has no meaning when building offline.
    Offline(&'static str),
}

pub struct Known {
    pub name: &'static str,
    pub target: Target,
}

use Target::*;

/// Every variable of the reference project, in its README's order.
pub const KNOWN: &[Known] = &[
    Known { name: "pi_user", target: Profile("user.name") },
    Known { name: "pi_pwhash", target: Profile("user.password_hash_file (the hash goes to the secrets directory)") },
    Known { name: "cluster_public_ssh_key", target: Profile("user.ssh_authorized_keys") },
    Known { name: "nfs_server_host", target: Profile("features.nfs_server") },
    Known { name: "nfs_export_path", target: Profile("features.nfs_export_path") },
    Known { name: "nfs_client_mount", target: Profile("features.nfs_mount_point") },
    Known { name: "clhat_mpnt", target: Profile("features.nfs_mount_point (when nfs_client_mount is not set)") },
    Known { name: "apt_pkg_base", target: Profile("packages.base") },
    Known { name: "apt_pkg_extra", target: Profile("packages.extra.<group>; in host_vars: node.overrides.packages") },
    Known { name: "slurmstack_enable", target: Profile("features.slurm") },
    Known { name: "slurmstack_include_picluster", target: Profile("features.slurm_include_picluster") },
    Known { name: "slurm_partitions_extra", target: Profile("[[features.slurm_partitions_extra]] (name, nodes; `z[1-4]` ranges expanded)") },
    Known { name: "docker_runtime_enable", target: Profile("features.docker; in host_vars: node.overrides.docker") },
    Known { name: "docker_runtime_on_zeros", target: Profile("features.docker_on_zeros") },
    Known { name: "k3s_cluster_enable", target: Profile("features.k3s") },
    Known { name: "k3s_cluster_server_host", target: Profile("features.k3s_server") },
    Known { name: "k3s_version", target: Profile("features.k3s_version") },
    Known { name: "usbboot_img", target: Profile("base.url (source = \"url\")") },
    Known { name: "usbboot_img_checksum", target: Profile("base.checksum (empty: \"unverified\", warned about on every download)") },
    Known { name: "usbboot_download_dir", target: Offline("the archive is downloaded once on the build machine into the store (`--store`, CHBUILD_STORE), never on the controller") },
    Known { name: "usbboot_force_reextract", target: Deploy("`chbuild deploy --force` redeploys an unchanged build") },
    Known { name: "usbboot_clean_before_extract", target: Offline("deploy always stages a whole tree (new, or pN.prev brought exactly to the new content, stale files removed) and swaps it in atomically; the old tree is kept as pN.prev") },
    Known { name: "usbboot_enable_ssh", target: Offline("every node gets the `ssh` flag and a key-only sshd (user.ssh_key_only)") },
    Known { name: "usbboot_wait_for_ssh", target: Deploy("`chbuild deploy` waits for SSH by default; `--no-wait` when false") },
    Known { name: "usbboot_uninstall", target: Deploy("`chbuild deploy --uninstall`") },
    Known { name: "usbboot_skip_prereq_install", target: Deploy("`chbuild deploy --controller` installs what the controller lacks, on the admin's command; `chbuild doctor` says what is missing for the Zeros") },
    Known { name: "usbboot_boot_firmware_dir", target: Profile("base.boot_dir") },
    Known { name: "power_on", target: Deploy("`chbuild deploy` powers nodes on by default; `--no-power-on` when false") },
];

pub fn known(name: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.name == name)
}

/// Variables read from the inventory's hosts.
pub const HOST_KEYS: &[(&str, &str)] = &[
    ("ansible_host", "address"),
    ("pi_model", "model"),
    ("usbboot_slot", "slot"),
];

#[cfg(test)]
mod tests {
    #[test]
    fn readme_table_lists_every_variable() {
        let readme = include_str!("../../README.md");
        let (_, section) = readme
            .split_once("## Coming from the Ansible playbooks")
            .expect("README section");
        for k in super::KNOWN {
            assert!(
                section.contains(&format!("| `{}` |", k.name)),
                "README table lacks {}",
                k.name
            );
        }
    }
}
