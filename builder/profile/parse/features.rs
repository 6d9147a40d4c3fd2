//! `[features]`.

use super::Ctx;
use crate::profile::schema::RawFeatures;
use crate::profile::{Features, Node, ProfileError};
use toml::Spanned;

/// The features, each node they name one the profile has.
pub(super) fn features(
    ctx: &Ctx,
    f: &RawFeatures,
    nodes: &[Node],
) -> Result<Features, ProfileError> {
    let node_ref =
        |v: &Option<Spanned<String>>, key: &str| -> Result<Option<String>, ProfileError> {
            match v {
                None => Ok(None),
                Some(s) if nodes.iter().any(|n| &n.name == s.get_ref()) => {
                    Ok(Some(s.get_ref().clone()))
                }
                Some(s) => Err(ctx.err(
                    s.span(),
                    key,
                    format!("node `{}` does not exist", s.get_ref()),
                )),
            }
        };
    let features = Features {
        slurm: f.slurm,
        slurm_include_picluster: f.slurm_include_picluster,
        docker: f.docker,
        docker_on_zeros: f.docker_on_zeros,
        k3s: f.k3s,
        k3s_server: node_ref(&f.k3s_server, "features.k3s_server")?,
        k3s_airgap_dir: f.k3s_airgap_dir.as_ref().map(|d| ctx.rel(d.get_ref())),
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
    Ok(features)
}
