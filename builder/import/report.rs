//! What became of every variable that is not a node's: the report lines
//! of cluster-wide and per-group variables.

use super::mapping::{self, Target};
use super::resolve::{group_names, Ctx};
use super::Outcome;

pub(super) const ANSIBLE_CONNECTION: &str =
    "Ansible connection setting: nothing connects while building offline";

/// A known variable found per group or per host, where chbuild has one
/// cluster-wide setting.
pub(super) fn cluster_wide(m: &mapping::Known) -> (&'static str, String) {
    match m.target {
        Target::Profile(key) => (
            "unmapped",
            format!("cluster-wide in chbuild: set it in group_vars/all (profile key {key})"),
        ),
        Target::Deploy(flag) => ("deploy", flag.into()),
        Target::Offline(why) => ("unmapped", why.into()),
    }
}

pub(super) fn report_global(c: &mut Ctx) {
    for (k, s) in c.global.clone() {
        let scope = c.src.scope(&s);
        let already = c
            .report
            .variables
            .iter()
            .any(|o| o.variable == k && o.scope == scope);
        if already {
            continue;
        }
        let (kind, note) = match mapping::known(&k) {
            Some(m) => match m.target {
                Target::Profile(key) => ("profile", key.to_string()),
                Target::Deploy(flag) => ("deploy", flag.to_string()),
                Target::Offline(why) => ("unmapped", why.to_string()),
            },
            None if k == "timezone" => ("profile", "cluster.timezone".into()),
            None if k.starts_with("ansible_") => ("unmapped", ANSIBLE_CONNECTION.into()),
            None => (
                "unmapped",
                "no profile key: put it in a node's overrides.vars for overlay templates".into(),
            ),
        };
        c.report.variables.push(Outcome {
            scope,
            variable: k,
            kind,
            note,
        });
    }
}

pub(super) fn report_groups(c: &mut Ctx) {
    for g in group_names(c.src) {
        for (k, s) in c.src.group(&g) {
            let (kind, note) = match k.as_str() {
                "apt_pkg_extra" => ("profile", format!("packages.extra.{g}")),
                k if k.starts_with("ansible_") => ("unmapped", ANSIBLE_CONNECTION.into()),
                k => match mapping::known(k) {
                    Some(m) => cluster_wide(m),
                    None => (
                        "unmapped",
                        format!(
                            "group variable with no profile key: put it in overrides.vars of \
                             the [{g}] nodes for overlay templates"
                        ),
                    ),
                },
            };
            c.report.variables.push(Outcome {
                scope: c.src.scope(&s),
                variable: k,
                kind,
                note,
            });
        }
    }
}
