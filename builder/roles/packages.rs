//! Packages: the plan's list (plus what the roles need) minus what the
//! base already has, read from the tree's dpkg database. The first-boot
//! unit installs the rest.

use crate::overlay::write::TreeWriter;
use crate::profile::plan::NodePlan;
use anyhow::Result;
use std::collections::BTreeSet;

/// Names of the packages dpkg's status file lists as installed.
pub fn installed(status: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for para in status.split("\n\n") {
        let mut name = None;
        let mut ok = false;
        for line in para.lines() {
            if let Some(v) = line.strip_prefix("Package:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("Status:") {
                ok = v.split_whitespace().last() == Some("installed");
            }
        }
        if let (Some(n), true) = (name, ok) {
            out.insert(n);
        }
    }
    out
}

/// Packages to install at first boot, in the plan's order, each once.
pub fn missing(w: &TreeWriter, plan: &NodePlan, extra: &[String]) -> Result<Vec<String>> {
    let status = w.read_string("var/lib/dpkg/status")?.unwrap_or_default();
    let have = installed(&status);
    let mut out: Vec<String> = Vec::new();
    for p in plan.packages.iter().chain(extra) {
        if !have.contains(p) && !out.contains(p) {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_installed_packages_count() {
        let s = "Package: a\nStatus: install ok installed\n\nPackage: b\nStatus: deinstall ok config-files\n\nPackage: c\nArchitecture: all\nStatus: install ok installed\n";
        let i = installed(s);
        assert!(i.contains("a") && i.contains("c") && !i.contains("b"));
    }
}
