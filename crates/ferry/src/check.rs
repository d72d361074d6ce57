//! `ferry check`: the pre-check of a job, as a table; the exit code is the worst level
//! (0 all pass, 1 a warning, 2 a failure), so scripts can gate a migration on it.

use std::process::ExitCode;

use ferry_sync::Level;
use tracing::error;

use crate::out::out;
use crate::{job_file, SyncArgs};

pub async fn run(args: SyncArgs) -> ExitCode {
    let config = match job_file(&args).and_then(|(file, flags)| Ok(file.merge(flags)?)) {
        Ok(c) => c,
        Err(e) => {
            error!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let checks = ferry_sync::precheck(&config).await;
    out!("{}", table(&checks));
    match ferry_sync::precheck::worst(&checks) {
        Level::Pass => ExitCode::SUCCESS,
        Level::Warn => ExitCode::from(1),
        Level::Fail => ExitCode::from(2),
    }
}

/// Checks as aligned columns; the fix goes on its own indented line.
pub(crate) fn table(checks: &[ferry_sync::Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<6} {:<width$}  RESULT\n", "LEVEL", "CHECK");
    for c in checks {
        out.push_str(&format!(
            "{:<6} {:<width$}  {}\n",
            c.level.name().to_uppercase(),
            c.name,
            c.message
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<6} {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    out
}
