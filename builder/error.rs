//! Errors a caller tests for.

/// Errors that are the user's input (bad usage, bad profile): exit 2.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Whether anything in the chain of `e` is the user's input (a usage or
/// profile error) rather than a failure of the work.
pub fn is_usage(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<UsageError>().is_some()
            || c.downcast_ref::<crate::profile::ProfileError>().is_some()
    })
}
