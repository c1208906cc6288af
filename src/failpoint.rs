//! Test hook: kill this process (SIGKILL, no clean-up) at a named point of a sync.
//!
//! `CONNECTOR_KILL_AT=NAME` (or `NAME:N`, the N-th time the point is reached, from 1) makes
//! the process send itself SIGKILL when it reaches [`hit`]`(NAME)`. The kill tests use it to
//! stop a sync at exact points (mid-upload, before the pointer update, …) and check that a
//! rerun recovers. Unset, [`hit`] is one cached environment look-up.

use std::sync::Mutex;
use std::sync::OnceLock;

/// The environment variable naming the point.
pub const ENV: &str = "CONNECTOR_KILL_AT";

fn target() -> &'static Option<(String, u64)> {
    static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TARGET.get_or_init(|| {
        let spec = std::env::var(ENV).ok()?;
        Some(match spec.split_once(':') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
            None => (spec, 1),
        })
    })
}

/// Marks point `name`: kills the process here if [`ENV`] names it (and this is the N-th hit).
pub fn hit(name: &str) {
    let Some((wanted, nth)) = target() else {
        return;
    };
    if wanted != name {
        return;
    }
    static HITS: Mutex<u64> = Mutex::new(0);
    let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
    *hits += 1;
    if *hits == *nth {
        tracing::warn!(point = name, "Killing this process at a test kill point.");
        #[cfg(unix)]
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // Elsewhere (or should `kill` be missing): the closest thing, no clean-up either.
        std::process::abort();
    }
}
