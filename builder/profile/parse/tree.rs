//! `[tree]`: which directories node trees share with the base.

use super::Ctx;
use crate::profile::schema::RawTree;
use crate::profile::ProfileError;

/// `[tree] link`: top-level directories only, and none a running node
/// writes in place.
pub(super) fn link_dirs(ctx: &Ctx, raw: &RawTree) -> Result<Vec<String>, ProfileError> {
    let mut link_dirs = Vec::new();
    for l in &raw.link {
        let d = l.get_ref().trim_matches('/');
        if d.is_empty() || d.contains('/') || d == ".." || d == "." {
            return Err(ctx.err(
                l.span(),
                "tree.link",
                "expected a top-level directory name such as `usr`",
            ));
        }
        if ["etc", "var", "home", "root", "srv", "tmp", "boot"].contains(&d) {
            return Err(ctx.err(
                l.span(),
                "tree.link",
                format!(
                    "`{d}` is written in place by a running node: it must be copied, not linked"
                ),
            ));
        }
        link_dirs.push(d.to_string());
    }
    Ok(link_dirs)
}
