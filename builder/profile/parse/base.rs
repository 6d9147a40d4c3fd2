//! `[base]`: where the base root filesystem comes from.

use super::Ctx;
use crate::profile::model::Arch;
use crate::profile::schema::{RawBase, RawPackages};
use crate::profile::{BaseSource, Checksum, ChecksumAlgorithm, DebianRecipe, ProfileError};
use toml::Spanned;

/// The base's source and architecture.
pub(super) fn source(
    ctx: &Ctx,
    raw: &RawBase,
    packages: &RawPackages,
) -> Result<(BaseSource, Arch), ProfileError> {
    let architecture = Arch::parse(raw.architecture.get_ref()).ok_or_else(|| {
        ctx.err(
            raw.architecture.span(),
            "base.architecture",
            "expected `arm64` or `armhf`",
        )
    })?;
    let source = match raw.source.get_ref().as_str() {
        "archive" => {
            let p = raw.path.as_ref().ok_or_else(|| {
                ctx.err(
                    raw.source.span(),
                    "base.path",
                    "an `archive` base needs `path`",
                )
            })?;
            BaseSource::Archive {
                path: ctx.rel(p.get_ref()),
                checksum: raw
                    .checksum
                    .as_ref()
                    .map(|c| checksum(ctx, c))
                    .transpose()?,
            }
        }
        "url" => {
            let u = raw.url.as_ref().ok_or_else(|| {
                ctx.err(raw.source.span(), "base.url", "a `url` base needs `url`")
            })?;
            if !(u.get_ref().starts_with("https://") || u.get_ref().starts_with("http://")) {
                return Err(ctx.err(u.span(), "base.url", "expected an http:// or https:// URL"));
            }
            let c = raw.checksum.as_ref().ok_or_else(|| {
                ctx.err(
                    u.span(),
                    "base.checksum",
                    "a downloaded base needs `checksum = \"sha256:...\"`",
                )
            })?;
            BaseSource::Url {
                url: u.get_ref().clone(),
                checksum: checksum(ctx, c)?,
            }
        }
        "debian" => BaseSource::Debian(debian_recipe(raw, packages, architecture)),
        other => {
            return Err(ctx.err(
                raw.source.span(),
                "base.source",
                format!("unknown source `{other}` (expected archive, url or debian)"),
            ))
        }
    };
    Ok((source, architecture))
}

fn debian_recipe(raw: &RawBase, packages: &RawPackages, architecture: Arch) -> DebianRecipe {
    let mut list: Vec<String> = raw.include.clone();
    if raw.include_base_packages {
        list.extend(packages.base.iter().cloned());
    }
    list.sort();
    list.dedup();
    DebianRecipe {
        suite: raw.suite.clone().unwrap_or_else(|| "bookworm".into()),
        architecture,
        variant: raw.variant.clone().unwrap_or_else(|| "minbase".into()),
        components: if raw.components.is_empty() {
            vec!["main".into()]
        } else {
            raw.components.clone()
        },
        mirror: raw.mirror.clone(),
        packages: list,
    }
}

pub(super) fn boot_dir(ctx: &Ctx, raw: &RawBase) -> Result<String, ProfileError> {
    let boot_dir = raw.boot_dir.get_ref().trim_matches('/').to_string();
    if boot_dir != "boot/firmware" && boot_dir != "boot" {
        return Err(ctx.err(
            raw.boot_dir.span(),
            "base.boot_dir",
            "expected `boot/firmware` (Bookworm) or `boot` (older releases)",
        ));
    }
    Ok(boot_dir)
}

fn checksum(ctx: &Ctx, v: &Spanned<String>) -> Result<Checksum, ProfileError> {
    let s = v.get_ref();
    let (alg, hex, len) = if let Some(h) = s.strip_prefix("sha256:") {
        (ChecksumAlgorithm::Sha256, h, 64)
    } else if let Some(h) = s.strip_prefix("md5:") {
        (ChecksumAlgorithm::Md5, h, 32)
    } else {
        return Err(ctx.err(
            v.span(),
            "base.checksum",
            "expected `sha256:<hex>` or `md5:<hex>`",
        ));
    };
    if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ctx.err(
            v.span(),
            "base.checksum",
            format!("expected {len} hexadecimal digits after the algorithm"),
        ));
    }
    Ok(Checksum {
        algorithm: alg,
        hex: hex.to_ascii_lowercase(),
    })
}
