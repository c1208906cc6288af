//! Where device credentials and Sage passwords live on the desktop.
//!
//! Takes a name (`device:COMPANY`, `sage:COMPANY`) and a value; keeps it in the OS secret
//! store where there is one that answers, else in a file only this user can read. Two real
//! implementations of [`SecretStore`]:
//! - the OS store: Windows Credential Manager and the macOS Keychain through the `keyring`
//!   crate (`KeyringSecrets`, compiled only for those targets); on Linux the freedesktop Secret
//!   Service (GNOME Keyring, KWallet) through the `secret-tool` command ([`SecretTool`]), used
//!   when it exists, a session bus is set and a probe round trip works. Values go over stdin,
//!   never on a command line.
//! - [`FileSecrets`]: `STATE/secrets.json`, mode 0600, written whole (temporary file created
//!   0600, synced, renamed); a file others can read is refused with the command that fixes it.
//!
//! No error or `Debug` output ever contains a value.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The service name under which secrets are kept.
pub const SERVICE: &str = "SageConnector";

/// Why a secret could not be read or written (never holds the value).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The secrets file failed.
    #[error("secrets file {path}: {detail}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed, and what to do.
        detail: String,
    },
    /// The OS secret store failed.
    #[error("the secret store ({store}) failed for {name}: {detail}")]
    Store {
        /// Which store.
        store: String,
        /// The secret's name.
        name: String,
        /// What it said.
        detail: String,
    },
}

/// A place for secrets.
pub trait SecretStore: Send + Sync {
    /// The value of `name`, if set.
    fn get(&self, name: &str) -> Result<Option<String>, SecretError>;
    /// Sets `name`.
    fn set(&self, name: &str, value: &str) -> Result<(), SecretError>;
    /// Removes `name` (absent is fine).
    fn delete(&self, name: &str) -> Result<(), SecretError>;
    /// Which store this is, for logs.
    fn describe(&self) -> String;
}

/// Secrets in a file only this user can read.
#[derive(Debug)]
pub struct FileSecrets {
    path: PathBuf,
    lock: std::sync::Mutex<()>,
}

impl FileSecrets {
    /// Secrets in `path`.
    pub fn new(path: PathBuf) -> Self {
        FileSecrets {
            path,
            lock: std::sync::Mutex::new(()),
        }
    }

    fn err(&self, detail: impl Into<String>) -> SecretError {
        SecretError::File {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn read(&self) -> Result<BTreeMap<String, String>, SecretError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(self.err(e.to_string())),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&self.path)
                .map_err(|e| self.err(e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(self.err(format!(
                    "it can be read by other users (mode {:o}); run `chmod 600 {}`",
                    mode & 0o777,
                    self.path.display()
                )));
            }
        }
        serde_json::from_slice(&bytes).map_err(|_| {
            self.err("it is not a JSON object of names and values; move it aside and link again")
        })
    }

    fn write(&self, map: &BTreeMap<String, String>) -> Result<(), SecretError> {
        let bytes = serde_json::to_vec_pretty(map).expect("a map serialises");
        super::config::write_private(&self.path, &bytes).map_err(|e| self.err(e.to_string()))
    }
}

impl SecretStore for FileSecrets {
    fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        Ok(self.read()?.get(name).cloned())
    }

    fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.read()?;
        map.insert(name.to_owned(), value.to_owned());
        self.write(&map)
    }

    fn delete(&self, name: &str) -> Result<(), SecretError> {
        let _held = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = self.read()?;
        if map.remove(name).is_some() {
            self.write(&map)?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("file {} (0600)", self.path.display())
    }
}

/// The Secret Service through `secret-tool` (Debian: `libsecret-tools`).
#[derive(Debug)]
pub struct SecretTool;

impl SecretTool {
    fn run(&self, args: &[&str], input: Option<&str>, name: &str) -> Result<Vec<u8>, SecretError> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let err = |detail: String| SecretError::Store {
            store: self.describe(),
            name: name.to_owned(),
            detail,
        };
        let mut child = Command::new("secret-tool")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(e.to_string()))?;
        if let (Some(mut stdin), Some(value)) = (child.stdin.take(), input) {
            stdin
                .write_all(value.as_bytes())
                .map_err(|e| err(e.to_string()))?;
        }
        let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
        if out.status.success() || (input.is_none() && out.stderr.is_empty()) {
            Ok(out.stdout)
        } else {
            Err(err(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
        }
    }
}

impl SecretStore for SecretTool {
    fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        let out = self.run(&["lookup", "service", SERVICE, "name", name], None, name)?;
        Ok((!out.is_empty()).then(|| String::from_utf8_lossy(&out).into_owned()))
    }

    fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        let label = format!("{SERVICE} {name}");
        self.run(
            &["store", "--label", &label, "service", SERVICE, "name", name],
            Some(value),
            name,
        )
        .map(|_| ())
    }

    fn delete(&self, name: &str) -> Result<(), SecretError> {
        self.run(&["clear", "service", SERVICE, "name", name], None, name)
            .map(|_| ())
    }

    fn describe(&self) -> String {
        "Secret Service (secret-tool)".into()
    }
}

/// Windows Credential Manager / macOS Keychain.
#[cfg(any(windows, target_os = "macos"))]
#[derive(Debug)]
pub struct KeyringSecrets;

#[cfg(any(windows, target_os = "macos"))]
impl KeyringSecrets {
    fn entry(&self, name: &str) -> Result<keyring::Entry, SecretError> {
        keyring::Entry::new(SERVICE, name).map_err(|e| self.err(name, e))
    }

    fn err(&self, name: &str, e: keyring::Error) -> SecretError {
        SecretError::Store {
            store: self.describe(),
            name: name.to_owned(),
            detail: e.to_string(),
        }
    }
}

#[cfg(any(windows, target_os = "macos"))]
impl SecretStore for KeyringSecrets {
    fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        match self.entry(name)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(self.err(name, e)),
        }
    }

    fn set(&self, name: &str, value: &str) -> Result<(), SecretError> {
        self.entry(name)?
            .set_password(value)
            .map_err(|e| self.err(name, e))
    }

    fn delete(&self, name: &str) -> Result<(), SecretError> {
        match self.entry(name)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(self.err(name, e)),
        }
    }

    fn describe(&self) -> String {
        if cfg!(windows) {
            "Windows Credential Manager".into()
        } else {
            "macOS Keychain".into()
        }
    }
}

/// Whether the Secret Service may be tried: a session bus is set and `secret-tool` exists.
pub fn secret_service_candidate(env: impl Fn(&str) -> Option<String>) -> bool {
    env("DBUS_SESSION_BUS_ADDRESS").is_some_and(|v| !v.is_empty())
        && env("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("secret-tool").is_file())
        })
}

/// The OS store when one answers, else the 0600 file in the state folder.
pub fn open(state_dir: &Path) -> Box<dyn SecretStore> {
    #[cfg(any(windows, target_os = "macos"))]
    {
        let store = KeyringSecrets;
        let probe = format!("probe-{}", std::process::id());
        if store.set(&probe, "probe").is_ok() && store.delete(&probe).is_ok() {
            tracing::info!(store = %store.describe(), "Secrets are kept in the OS secret store.");
            return Box::new(store);
        }
    }
    if cfg!(unix)
        && !cfg!(target_os = "macos")
        && secret_service_candidate(|v| std::env::var(v).ok())
    {
        let store = SecretTool;
        let probe = format!("probe-{}", std::process::id());
        let works = store.set(&probe, "probe").is_ok()
            && store.get(&probe).ok().flatten().as_deref() == Some("probe")
            && store.delete(&probe).is_ok();
        if works {
            tracing::info!(store = %store.describe(), "Secrets are kept in the OS secret store.");
            return Box::new(store);
        }
    }
    let file = FileSecrets::new(state_dir.join("secrets.json"));
    tracing::info!(store = %file.describe(), "No OS secret store answers; secrets are kept in a file only this user can read.");
    Box::new(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_secrets_round_trip_in_a_file_only_this_user_reads() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileSecrets::new(dir.path().join("s").join("secrets.json"));
        assert_eq!(store.get("device:a").unwrap(), None);
        store.set("device:a", "dv_secret_1").unwrap();
        store.set("sage:a", "p@ss").unwrap();
        store.set("device:a", "dv_secret_2").unwrap();
        assert_eq!(
            store.get("device:a").unwrap().as_deref(),
            Some("dv_secret_2")
        );
        store.delete("sage:a").unwrap();
        store.delete("never-set").unwrap();
        assert_eq!(store.get("sage:a").unwrap(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join("s").join("secrets.json");
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let e = store.get("device:a").unwrap_err().to_string();
            assert!(e.contains("chmod 600") && e.contains("secrets.json"), "{e}");
            assert!(!e.contains("dv_secret_2"), "{e}");
            assert!(!format!("{store:?}").contains("dv_secret_2"));
        }
    }

    #[test]
    fn the_secret_service_is_tried_only_with_a_session_bus_and_secret_tool() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret-tool"), "").unwrap();
        let path = dir.path().display().to_string();
        let env = |bus: Option<&str>, path: &str| {
            let bus = bus.map(str::to_owned);
            let path = path.to_owned();
            move |v: &str| match v {
                "DBUS_SESSION_BUS_ADDRESS" => bus.clone(),
                "PATH" => Some(path.clone()),
                _ => None,
            }
        };
        assert!(secret_service_candidate(env(Some("unix:path=/x"), &path)));
        assert!(!secret_service_candidate(env(None, &path)));
        assert!(!secret_service_candidate(env(
            Some("unix:path=/x"),
            "/nonexistent"
        )));
        // Without one, the file is used.
        let store = open(dir.path());
        if !secret_service_candidate(|v| std::env::var(v).ok()) {
            assert!(
                store.describe().contains("secrets.json"),
                "{}",
                store.describe()
            );
        }
    }
}
