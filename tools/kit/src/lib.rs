//! What xtask and the tools it hands off to (the deployer) share, so each concept has one
//! model: the process layer, the duration grammar, the `.env` reader, dates, the build
//! manifest, findings, Docker's container state, the deploy hand-off, the SLOs, the migration
//! check, and the usage error that means exit code 2.

pub mod date;
pub mod docker;
pub mod duration;
pub mod env_file;
pub mod findings;
pub mod handoff;
pub mod images;
pub mod migrations;
pub mod process;
pub mod slo;

/// Bad input (flags, config files, environment) rather than a failed step: exit code 2, with
/// one line naming the problem and the fix.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}
