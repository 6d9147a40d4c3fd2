//! `[groups]` (aggregates) and `[packages]`, whose extras name groups.

use super::Ctx;
use crate::profile::schema::RawPackages;
use crate::profile::{ProfileError, BUILTIN_GROUPS};
use std::collections::{BTreeMap, BTreeSet};
use toml::Spanned;

/// Every group name and the aggregates with their members.
pub(super) struct Groups {
    pub known: BTreeSet<String>,
    pub aggregates: BTreeMap<String, Vec<String>>,
}

/// Built-in groups plus aggregates whose members must exist.
pub(super) fn aggregates(
    ctx: &Ctx,
    raw: &BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
) -> Result<Groups, ProfileError> {
    let mut known: BTreeSet<String> = BUILTIN_GROUPS.iter().map(|s| s.to_string()).collect();
    known.extend(raw.keys().cloned());
    let mut aggregates = BTreeMap::new();
    for (agg, members) in raw {
        if BUILTIN_GROUPS.contains(&agg.as_str()) {
            return Err(ctx.err(
                members.span(),
                &format!("groups.{agg}"),
                "a built-in group cannot be redefined as an aggregate",
            ));
        }
        let mut list = Vec::new();
        for m in members.get_ref() {
            if !known.contains(m.get_ref()) {
                return Err(ctx.err(
                    m.span(),
                    &format!("groups.{agg}"),
                    format!("group `{}` does not exist", m.get_ref()),
                ));
            }
            list.push(m.get_ref().clone());
        }
        aggregates.insert(agg.clone(), list);
    }
    Ok(Groups { known, aggregates })
}

/// `packages.extra`, each for a group that exists.
pub(super) fn packages_extra(
    ctx: &Ctx,
    raw: &RawPackages,
    groups: &Groups,
) -> Result<BTreeMap<String, Vec<String>>, ProfileError> {
    let mut packages_extra = BTreeMap::new();
    for (g, list) in &raw.extra {
        if !groups.known.contains(g.get_ref()) {
            return Err(ctx.err(
                g.span(),
                &format!("packages.extra.{}", g.get_ref()),
                format!("group `{}` does not exist", g.get_ref()),
            ));
        }
        packages_extra.insert(g.get_ref().clone(), list.clone());
    }
    Ok(packages_extra)
}

/// Add every aggregate that (transitively) contains one of the groups.
pub(super) fn close_groups(
    groups: &mut BTreeSet<String>,
    aggregates: &BTreeMap<String, Vec<String>>,
) {
    loop {
        let before = groups.len();
        for (agg, members) in aggregates {
            if members.iter().any(|m| groups.contains(m)) {
                groups.insert(agg.clone());
            }
        }
        if groups.len() == before {
            break;
        }
    }
}
