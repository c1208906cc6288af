//! Where the connector keeps its own files on the customer's PC: one folder per company
//! (staging store, outbox, lock) under a per-user state folder, and the default local store.
//!
//! The default state folder is the platform's per-user application data folder:
//! `%LOCALAPPDATA%\SageConnector` on Windows, `~/Library/Application Support/SageConnector`
//! on macOS, `$XDG_STATE_HOME/sage-connector` (else `~/.local/state/sage-connector`)
//! elsewhere. `--state-dir` overrides it.

use std::path::{Path, PathBuf};

/// Environment of the platform's folders, passed in so the choice is testable anywhere.
pub fn default_state_dir(var: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if cfg!(windows) {
        var("LOCALAPPDATA").map(|d| Path::new(&d).join("SageConnector"))
    } else if cfg!(target_os = "macos") {
        var("HOME").map(|h| Path::new(&h).join("Library/Application Support/SageConnector"))
    } else {
        var("XDG_STATE_HOME")
            .filter(|d| Path::new(d).is_absolute())
            .map(|d| Path::new(&d).join("sage-connector"))
            .or_else(|| var("HOME").map(|h| Path::new(&h).join(".local/state/sage-connector")))
    }
}

/// The state folder from the process environment.
pub fn state_dir_from_env() -> Option<PathBuf> {
    default_state_dir(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// The local store used when no `--store` is given: a folder in the state folder.
pub fn default_store_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("store")
}

/// A company's own folder inside the state folder.
pub fn company_dir(state_dir: &Path, company_id: &str) -> PathBuf {
    state_dir.join("companies").join(company_id)
}

/// Checks a company id is usable as a folder name and an object key segment everywhere.
pub fn valid_company_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !id.starts_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(unix, not(target_os = "macos")))]
    fn state_folder_follows_xdg_then_home() {
        fn env(xdg: Option<&'static str>) -> impl Fn(&str) -> Option<String> {
            move |name: &str| match name {
                "XDG_STATE_HOME" => xdg.map(str::to_owned),
                "HOME" => Some("/home/ann".to_owned()),
                _ => None,
            }
        }
        assert_eq!(
            default_state_dir(env(Some("/var/state"))),
            Some(PathBuf::from("/var/state/sage-connector"))
        );
        assert_eq!(
            default_state_dir(env(None)),
            Some(PathBuf::from("/home/ann/.local/state/sage-connector"))
        );
        // A relative XDG_STATE_HOME is invalid by the spec and ignored.
        assert_eq!(
            default_state_dir(env(Some("rel"))),
            Some(PathBuf::from("/home/ann/.local/state/sage-connector"))
        );
    }

    #[test]
    fn company_ids_are_safe_path_segments() {
        for ok in ["acme", "ACME-ltd_2", "a"] {
            assert!(valid_company_id(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a b", "-x", &"x".repeat(65), "é"] {
            assert!(!valid_company_id(bad), "{bad}");
        }
    }
}
