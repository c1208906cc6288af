//! Test hooks at named points of a sync: kill this process there (SIGKILL, no clean-up), or
//! hold it there while a test changes the world around it.
//!
//! `CONNECTOR_KILL_AT=NAME` (or `NAME:N`, the N-th time the point is reached, from 1) makes
//! the process send itself SIGKILL when it reaches [`hit`]`(NAME)`. The kill tests use it to
//! stop a sync at exact points (mid-upload, before the pointer update, …) and check that a
//! rerun recovers.
//!
//! `CONNECTOR_PAUSE_AT=NAME` (or `NAME:N`) with `CONNECTOR_PAUSE_FILE=PATH` makes the process
//! create PATH when it reaches the point and wait there until PATH is deleted: a test sees
//! the moment as a file, not as a guess of time, changes the source or the store, and lets
//! the process go on. Unset, [`hit`] is two cached environment look-ups.

use std::sync::Mutex;
use std::sync::OnceLock;

/// The environment variable naming the point to kill at.
pub const ENV: &str = "CONNECTOR_KILL_AT";
/// The environment variable naming the point to pause at.
pub const PAUSE_ENV: &str = "CONNECTOR_PAUSE_AT";
/// The file a paused process creates, and waits for a test to delete.
pub const PAUSE_FILE_ENV: &str = "CONNECTOR_PAUSE_FILE";

/// `NAME` or `NAME:N` from an environment variable: the point and which of its hits (from 1).
fn spec(var: &str) -> Option<(String, u64)> {
    let spec = std::env::var(var).ok()?;
    Some(match spec.rsplit_once(':') {
        Some((name, n)) if n.parse::<u64>().is_ok() => (name.to_owned(), n.parse().unwrap_or(1)),
        _ => (spec, 1),
    })
}

/// Counts the hits of the wanted point; true on the N-th.
fn nth_hit(hits: &Mutex<u64>, nth: u64) -> bool {
    let mut hits = hits.lock().unwrap_or_else(|e| e.into_inner());
    *hits += 1;
    *hits == nth
}

/// Marks point `name`: kills the process here if [`ENV`] names it, or pauses it if
/// [`PAUSE_ENV`] does (on the N-th hit).
pub fn hit(name: &str) {
    static PAUSE: OnceLock<Option<(String, u64)>> = OnceLock::new();
    if let Some((wanted, nth)) = PAUSE.get_or_init(|| spec(PAUSE_ENV))
        && wanted == name
    {
        static HITS: Mutex<u64> = Mutex::new(0);
        if nth_hit(&HITS, *nth) {
            pause(name);
        }
    }
    static KILL: OnceLock<Option<(String, u64)>> = OnceLock::new();
    let Some((wanted, nth)) = KILL.get_or_init(|| spec(ENV)) else {
        return;
    };
    if wanted != name {
        return;
    }
    static HITS: Mutex<u64> = Mutex::new(0);
    if nth_hit(&HITS, *nth) {
        tracing::warn!(point = name, "Killing this process at a test kill point.");
        #[cfg(unix)]
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &std::process::id().to_string()])
            .status();
        // Elsewhere (or should `kill` be missing): the closest thing, no clean-up either.
        std::process::abort();
    }
}

/// Creates the pause file and waits until it is deleted.
fn pause(name: &str) {
    let Some(file) = std::env::var_os(PAUSE_FILE_ENV) else {
        tracing::warn!(
            point = name,
            "A test pause point was reached without {PAUSE_FILE_ENV}; not pausing."
        );
        return;
    };
    let file = std::path::PathBuf::from(file);
    if let Err(e) = std::fs::write(&file, name) {
        tracing::warn!(point = name, file = %file.display(), error = %e, "Could not create the test pause file; not pausing.");
        return;
    }
    tracing::warn!(point = name, file = %file.display(), "Paused at a test pause point until the file is deleted.");
    while file.exists() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
