//! Raw profile -> validated `Profile`, one file per profile section. The
//! sections are checked in file order (cluster, controller, groups, base,
//! user, nodes, packages, features, tree), so the first error reported is
//! the same whatever else is wrong.

mod base;
mod cluster;
mod features;
mod groups;
mod nodes;
mod tree;
mod user;

use super::model::{Model, MODEL_NAMES};
use super::schema::RawProfile;
use super::{Base, Profile, ProfileError};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The text being parsed, for errors that name its file, line and column.
struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ProfileError {
        let (line, column) = if span == (0..0) {
            (0, 0)
        } else {
            line_col(self.text, span.start)
        };
        ProfileError {
            file: self.file.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A path relative to the profile's directory.
    fn rel(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.file.parent().unwrap_or(Path::new(".")).join(p)
        }
    }

    fn addr(&self, v: &Spanned<String>, key: &str) -> Result<Ipv4Addr, ProfileError> {
        v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!("`{}` is not an IPv4 address", v.get_ref()),
            )
        })
    }

    fn net(&self, v: &Spanned<String>, key: &str) -> Result<Ipv4Net, ProfileError> {
        v.get_ref().parse().map_err(|_| {
            self.err(
                v.span(),
                key,
                format!(
                    "`{}` is not an IPv4 network such as 172.16.2.0/24",
                    v.get_ref()
                ),
            )
        })
    }

    fn model(&self, v: &Spanned<String>, key: &str) -> Result<Model, ProfileError> {
        Model::parse(v.get_ref()).ok_or_else(|| {
            self.err(
                v.span(),
                key,
                format!(
                    "unknown model `{}` (expected one of {MODEL_NAMES})",
                    v.get_ref()
                ),
            )
        })
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, column)
}

pub(super) fn parse(
    text: &str,
    file: &Path,
    secrets_override: Option<&Path>,
) -> Result<Profile, ProfileError> {
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
        ProfileError {
            file: file.to_path_buf(),
            line,
            column,
            key: String::new(),
            message: e.message().to_string(),
        }
    })?;
    let ctx = Ctx { text, file };
    let cluster = cluster::cluster(&ctx, &raw.cluster)?;
    let mut controller = cluster::controller(&ctx, &raw.controller, &cluster)?;
    let groups = groups::aggregates(&ctx, &raw.groups)?;
    let (source, architecture) = base::source(&ctx, &raw.base, &raw.packages)?;
    let boot_dir = base::boot_dir(&ctx, &raw.base)?;
    if let Some(rb) = &raw.controller.base {
        // The same checks as `[base]`, named as the controller's keys.
        let named = |mut e: ProfileError| {
            e.key = format!("controller.{}", e.key);
            e
        };
        let (source, architecture) = base::source(&ctx, rb, &raw.packages).map_err(named)?;
        let boot_dir = base::boot_dir(&ctx, rb).map_err(named)?;
        controller.base = Some(Base {
            source,
            architecture,
            boot_dir,
        });
    }
    let secrets_dir = match secrets_override {
        Some(d) => d.to_path_buf(),
        None => user::secrets_dir(&raw.secrets, &cluster.name, file),
    };
    let user = user::user(&ctx, &raw.user, &secrets_dir)?;
    let nodes = nodes::nodes(
        &ctx,
        &raw.nodes,
        &cluster,
        &controller,
        architecture,
        &groups,
    )?;
    let packages_extra = groups::packages_extra(&ctx, &raw.packages, &groups)?;
    let features = features::features(&ctx, &raw.features, &controller, &nodes)?;
    let link_dirs = tree::link_dirs(&ctx, &raw.tree)?;

    let profile = Profile {
        file: file.to_path_buf(),
        name: cluster.name,
        lan_network: cluster.lan_network,
        zero_network: cluster.zero_network,
        nfs_network: cluster.nfs_network,
        lan: cluster.lan,
        timezone: raw.cluster.timezone.clone(),
        domain: raw.cluster.domain.clone(),
        controller,
        base: Base {
            source,
            architecture,
            boot_dir,
        },
        user,
        features,
        packages_base: raw.packages.base.clone(),
        packages_extra,
        packages_firstboot: raw.packages.firstboot.clone(),
        aggregates: groups.aggregates,
        link_dirs,
        secrets_dir,
        overlay_dir: raw.overlay_dir.as_ref().map(|d| ctx.rel(d.get_ref())),
        nodes,
    };
    nodes::check_features_run(&ctx, &raw.nodes, &profile)?;
    Ok(profile)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_from_one() {
        assert_eq!(line_col("a\nbc\n", 3), (2, 2));
        assert_eq!(line_col("abc", 0), (1, 1));
    }
}
