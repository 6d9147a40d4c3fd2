//! `[features]`.

use super::nodes::valid_hostname;
use super::Ctx;
use crate::profile::plan::{self, is_slurm_compute};
use crate::profile::schema::RawFeatures;
use crate::profile::{
    Blob, BlobSource, Controller, Features, K3sBundle, Node, Partition, ProfileError,
};
use toml::Spanned;

/// The features, each node they name one the profile has (a server may
/// also be the controller, under its host name).
pub(super) fn features(
    ctx: &Ctx,
    f: &RawFeatures,
    controller: &Controller,
    nodes: &[Node],
) -> Result<Features, ProfileError> {
    let node_ref = |v: &Option<Spanned<String>>,
                    key: &str|
     -> Result<Option<String>, ProfileError> {
        match v {
            None => Ok(None),
            Some(s)
                if nodes
                    .iter()
                    .any(|n| &n.name == s.get_ref() && n.address.is_none()) =>
            {
                // Its clients are configured with its address at build time.
                Err(ctx.err(
                    s.span(),
                    key,
                    format!(
                        "node `{}` takes its address by DHCP: a server its clients reach \
                         needs a static `address`",
                        s.get_ref()
                    ),
                ))
            }
            Some(s) if nodes.iter().any(|n| &n.name == s.get_ref()) => {
                Ok(Some(s.get_ref().clone()))
            }
            Some(s) if controller.is_named(s.get_ref()) => Ok(Some(controller.hostname.clone())),
            Some(s) => Err(ctx.err(
                s.span(),
                key,
                format!(
                    "`{}` is neither a node nor the controller ({})",
                    s.get_ref(),
                    controller.hostname
                ),
            )),
        }
    };
    let features = Features {
        slurm: f.slurm,
        slurm_include_picluster: f.slurm_include_picluster,
        slurm_partitions_extra: partitions_extra(ctx, f, controller, nodes)?,
        docker: f.docker,
        docker_on_zeros: f.docker_on_zeros,
        k3s: f.k3s,
        k3s_server: node_ref(&f.k3s_server, "features.k3s_server")?,
        k3s_airgap_dir: f.k3s_airgap_dir.as_ref().map(|d| ctx.rel(d.get_ref())),
        k3s_bundle: k3s_bundle(ctx, f)?,
        k3s_version: k3s_version(ctx, f)?,
        k3s_sha256: f
            .k3s_sha256
            .as_ref()
            .map(|v| sha256(ctx, v, "features.k3s_sha256"))
            .transpose()?,
        nfs_server: node_ref(&f.nfs_server, "features.nfs_server")?,
        nfs_export_path: f.nfs_export_path.clone(),
        nfs_mount_point: f.nfs_mount_point.clone(),
    };
    if f.k3s && features.k3s_server.is_none() {
        return Err(ctx.err(
            0..0,
            "features.k3s_server",
            "k3s is on but no `k3s_server` is named",
        ));
    }
    if let (Some(d), Some(b)) = (&f.k3s_airgap_dir, &f.k3s_binary) {
        return Err(ctx.err(
            b.span(),
            "features.k3s_binary",
            format!(
                "`k3s_airgap_dir` ({}) already names a bundle: use one or the other",
                d.get_ref()
            ),
        ));
    }
    let bundled = features.k3s_airgap_dir.is_some() || features.k3s_bundle.is_some();
    if f.k3s && !bundled {
        // First boot downloads the binary: exactly one release, checked.
        let Some(v) = &f.k3s_version else {
            return Err(ctx.err(
                f.k3s_server.as_ref().map(|s| s.span()).unwrap_or(0..0),
                "features.k3s_version",
                "k3s without an air-gap bundle needs `k3s_version` (e.g. \"v1.36.4+k3s1\") \
                 and `k3s_sha256`: first boot installs exactly that release",
            ));
        };
        if f.k3s_sha256.is_none() {
            return Err(ctx.err(
                v.span(),
                "features.k3s_sha256",
                format!(
                    "k3s without an air-gap bundle needs `k3s_sha256`: the sha256 of {}'s \
                     binary for the base's architecture (from its sha256sum-<arch>.txt)",
                    v.get_ref()
                ),
            ));
        }
    }
    Ok(features)
}

/// `k3s_version`: a k3s release tag such as `v1.36.4+k3s1`.
fn k3s_version(ctx: &Ctx, f: &RawFeatures) -> Result<Option<String>, ProfileError> {
    let Some(v) = &f.k3s_version else {
        return Ok(None);
    };
    let s = v.get_ref();
    let ok = s.starts_with('v')
        && s.contains("+k3s")
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c));
    if !ok {
        return Err(ctx.err(
            v.span(),
            "features.k3s_version",
            format!("`{s}` is not a k3s release tag such as v1.36.4+k3s1"),
        ));
    }
    Ok(Some(s.clone()))
}

/// A sha256 as 64 hex digits (lowercased).
fn sha256(ctx: &Ctx, v: &Spanned<String>, key: &str) -> Result<String, ProfileError> {
    let s = v.get_ref();
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ctx.err(
            v.span(),
            key,
            format!("`{s}` is not a sha256 (64 hexadecimal digits)"),
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// Image archive names k3s imports from `agent/images/`.
const IMAGE_SUFFIXES: [&str; 5] = [".tar", ".tar.zst", ".tar.gz", ".tar.lz4", ".tar.bz2"];

/// `k3s_binary` and `k3s_images`, each with its sha256: both or neither.
fn k3s_bundle(ctx: &Ctx, f: &RawFeatures) -> Result<Option<K3sBundle>, ProfileError> {
    let (binary, images) = match (&f.k3s_binary, &f.k3s_images) {
        (None, None) => return Ok(None),
        (Some(b), Some(i)) => (b, i),
        (Some(b), None) => {
            return Err(ctx.err(
                b.span(),
                "features.k3s_images",
                "`k3s_binary` needs `k3s_images` (the air-gap images tarball)",
            ))
        }
        (None, Some(i)) => {
            return Err(ctx.err(
                i.span(),
                "features.k3s_binary",
                "`k3s_images` needs `k3s_binary`",
            ))
        }
    };
    let binary = blob(ctx, binary, &f.k3s_binary_sha256, "features.k3s_binary")?;
    let images = blob(ctx, images, &f.k3s_images_sha256, "features.k3s_images")?;
    if !IMAGE_SUFFIXES.iter().any(|s| images.name.ends_with(s)) {
        return Err(ctx.err(
            f.k3s_images.as_ref().map(|i| i.span()).unwrap_or(0..0),
            "features.k3s_images",
            format!(
                "`{}` is not a name k3s imports images from (it must end in {})",
                images.name,
                IMAGE_SUFFIXES.join(", ")
            ),
        ));
    }
    Ok(Some(K3sBundle { binary, images }))
}

/// A local path (relative to the profile) or an http(s) URL, and its
/// sha256 from the key `<key>_sha256`.
fn blob(
    ctx: &Ctx,
    v: &Spanned<String>,
    sum: &Option<Spanned<String>>,
    key: &str,
) -> Result<Blob, ProfileError> {
    let s = v.get_ref();
    let source = if s.starts_with("https://") || s.starts_with("http://") {
        BlobSource::Url(s.clone())
    } else if s.contains("://") {
        return Err(ctx.err(
            v.span(),
            key,
            format!("`{s}`: expected a local path or an http:// or https:// URL"),
        ));
    } else {
        BlobSource::Path(ctx.rel(s))
    };
    let name = s
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_string();
    if name.is_empty() || name == "." || name == ".." {
        return Err(ctx.err(v.span(), key, format!("`{s}` does not end in a file name")));
    }
    let sum_key = format!("{key}_sha256");
    let Some(sum) = sum else {
        return Err(ctx.err(
            v.span(),
            &sum_key,
            format!(
                "`{key}` needs `{}` (its sha256)",
                sum_key.trim_start_matches("features.")
            ),
        ));
    };
    Ok(Blob {
        key: key.to_string(),
        source,
        sha256: sha256(ctx, sum, &sum_key)?,
        name,
        stored: None,
    })
}

/// Extra Slurm partitions: every member must be a Slurm compute node (a
/// node in the `slurm` group, or the controller when it computes), named
/// by node name, host name or a controller name.
fn partitions_extra(
    ctx: &Ctx,
    f: &RawFeatures,
    controller: &Controller,
    nodes: &[Node],
) -> Result<Vec<Partition>, ProfileError> {
    let mut reserved = vec![
        plan::ZERO_PARTITION.to_string(),
        plan::PI_PARTITION.to_string(),
        controller.slurm_partition.clone(),
    ];
    let mut out = Vec::new();
    for rp in &f.slurm_partitions_extra {
        let name = rp.name.get_ref();
        let key = format!("features.slurm_partitions_extra {name}");
        if !valid_hostname(name) {
            return Err(ctx.err(rp.name.span(), &key, "must be letters, digits or `-`"));
        }
        if reserved.contains(name) {
            return Err(ctx.err(
                rp.name.span(),
                &key,
                format!("partition `{name}` is already defined"),
            ));
        }
        reserved.push(name.clone());
        if rp.nodes.is_empty() {
            return Err(ctx.err(rp.name.span(), &key, "a partition needs `nodes`"));
        }
        let mut members = Vec::new();
        for m in &rp.nodes {
            let who = m.get_ref();
            let slurm_name = if controller.is_named(who) {
                if !(f.slurm && controller.slurm_compute) {
                    return Err(ctx.err(
                        m.span(),
                        &key,
                        "the controller is not a Slurm compute node (controller.slurm_compute)",
                    ));
                }
                controller.hostname.clone()
            } else {
                let Some(n) = nodes.iter().find(|n| &n.name == who || &n.hostname == who) else {
                    return Err(ctx.err(m.span(), &key, format!("node `{who}` does not exist")));
                };
                if !is_slurm_compute(f.slurm, f.slurm_include_picluster, n) {
                    return Err(ctx.err(
                        m.span(),
                        &key,
                        format!("node `{who}` is not a Slurm compute node"),
                    ));
                }
                n.hostname.clone()
            };
            if !members.contains(&slurm_name) {
                members.push(slurm_name);
            }
        }
        out.push(Partition {
            name: name.clone(),
            nodes: members,
        });
    }
    Ok(out)
}
