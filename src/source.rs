//! The Sage source: connection strings, credentials, and the classification of what the ODBC
//! driver manager and driver say when something is wrong.
//!
//! Takes the user's connection string plus optional user and password, produces an open
//! `odbc_api::Connection`. Guarantees: the password is only ever placed in the string handed
//! to the driver, never in a log line or an error ([`SourceConfig::redact`] scrubs messages
//! that echo it back), and every failure a Sage user meets comes back as a named
//! [`ExtractError`] variant that says what to do.

use std::fmt;
use std::path::PathBuf;

use odbc_api::{Connection, ConnectionOptions, Environment};

use crate::extract::ExtractError;

/// A secret string that never prints itself.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself, for the one place that must hand it over.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How to reach a Sage company.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    connection_string: Secret,
    user: Option<String>,
    password: Option<Secret>,
}

/// Connection-string keys whose values are secret.
const SECRET_KEYS: &[&str] = &["PWD", "PASSWORD"];

impl SourceConfig {
    /// A source from a connection string and optional credentials (appended as UID/PWD).
    pub fn new(connection_string: &str, user: Option<String>, password: Option<Secret>) -> Self {
        SourceConfig {
            connection_string: Secret::new(connection_string.to_owned()),
            user,
            password,
        }
    }

    /// The user name, from `--user` or the connection string's UID.
    pub fn user(&self) -> String {
        self.user
            .clone()
            .or_else(|| {
                attribute(
                    self.connection_string.expose(),
                    &["UID", "USER", "USERNAME"],
                )
            })
            .unwrap_or_default()
    }

    /// The driver name from `Driver=`, if any.
    pub fn driver(&self) -> Option<String> {
        attribute(self.connection_string.expose(), &["DRIVER"])
    }

    /// The data path: Sage's `DIR=`, or `Database=`/`DBQ=` for file-based drivers (only when it
    /// looks like a path: a server database's `Database=` is a name).
    pub fn data_path(&self) -> Option<PathBuf> {
        attribute(self.connection_string.expose(), &["DIR", "DATABASE", "DBQ"])
            .filter(|p| p.contains('/') || p.contains('\\'))
            .map(PathBuf::from)
    }

    /// The connection string with secrets replaced by `***`, for logs.
    pub fn display(&self) -> String {
        self.redact(self.connection_string.expose())
    }

    /// Removes every secret (password values, `PWD=...`) from a message.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let mut secrets: Vec<String> = Vec::new();
        if let Some(p) = &self.password {
            secrets.push(p.expose().to_owned());
        }
        if let Some(p) = attribute(self.connection_string.expose(), SECRET_KEYS) {
            secrets.push(p);
        }
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            out = out.replace(s.as_str(), "***");
        }
        out
    }

    /// The full string handed to the driver manager, with driver-specific defaults added.
    fn driver_string(&self) -> String {
        let mut s = self
            .connection_string
            .expose()
            .trim()
            .trim_end_matches(';')
            .to_owned();
        // The SQLite3 driver materialises whole result sets unless told to step through rows;
        // that would break the connector's bounded-memory promise on large tables.
        if self
            .driver()
            .is_some_and(|d| d.to_ascii_lowercase().contains("sqlite"))
            && attribute(&s, &["STEPAPI"]).is_none()
        {
            s.push_str(";StepAPI=1");
        }
        if let Some(user) = &self.user {
            s.push_str(&format!(";UID={user}"));
        }
        if let Some(password) = &self.password {
            s.push_str(&format!(";PWD={}", password.expose()));
        }
        s
    }

    /// Connects, after checking what can be checked without the driver.
    pub fn connect<'e>(&self, env: &'e Environment) -> Result<Connection<'e>, ExtractError> {
        if let Some(path) = self.data_path() {
            // A file-based source names its file: the folder holding it must exist.
            let folder = if path.extension().is_some() {
                path.parent().map(PathBuf::from)
            } else {
                Some(path.clone())
            };
            if let Some(folder) = folder
                && !folder.as_os_str().is_empty()
                && !folder.exists()
            {
                return Err(ExtractError::DataFolderNotFound { path: folder });
            }
        }
        env.connect_with_connection_string(&self.driver_string(), ConnectionOptions::default())
            .map_err(|e| {
                match self.data_path() {
                    // File-based drivers fail vaguely ("connect failed") on a missing file.
                    Some(path) if path.extension().is_some() && !path.exists() => {
                        ExtractError::DataFolderNotFound { path }
                    }
                    _ => self.classify(&e),
                }
            })
    }

    /// Turns a driver error into the error a Sage user can act on.
    pub fn classify(&self, error: &odbc_api::Error) -> ExtractError {
        let (state, message) = diagnostic(error);
        let detail = self.redact(&message);
        let lower = detail.to_ascii_lowercase();
        let driver = self.driver().unwrap_or_else(|| "(none given)".to_owned());
        if state == "IM002"
            || lower.contains("can't open lib")
            || lower.contains("driver not found")
        {
            return ExtractError::DriverNotInstalled {
                driver,
                bits: usize::BITS as usize,
                detail,
            };
        }
        if state.starts_with("28")
            || lower.contains("password authentication failed")
            || lower.contains("invalid user")
            || lower.contains("invalid password")
            || lower.contains("login failed")
        {
            return ExtractError::CredentialsRejected {
                user: self.user(),
                detail,
            };
        }
        if lower.contains("database is locked")
            || lower.contains("already in use")
            || lower.contains("locked")
            || lower.contains("exclusive")
        {
            return ExtractError::DatasetLocked { detail };
        }
        if let Some(path) = self.data_path()
            && (lower.contains("unable to open database")
                || lower.contains("cannot be found")
                || lower.contains("not found"))
        {
            return ExtractError::DataFolderNotFound { path };
        }
        ExtractError::Connect { detail }
    }
}

/// SQLSTATE and message of an ODBC error.
pub fn diagnostic(error: &odbc_api::Error) -> (String, String) {
    match error {
        odbc_api::Error::Diagnostics { record, .. } => {
            (record.state.as_str().to_owned(), record.to_string())
        }
        other => (String::new(), other.to_string()),
    }
}

/// The value of the first of `keys` present in a connection string (case-insensitive keys,
/// `{braced}` values unwrapped).
fn attribute(connection_string: &str, keys: &[&str]) -> Option<String> {
    split_attributes(connection_string)
        .into_iter()
        .find_map(|(k, v)| {
            keys.iter()
                .any(|key| k.eq_ignore_ascii_case(key))
                .then_some(v)
        })
}

fn split_attributes(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_owned();
        rest = &rest[eq + 1..];
        let value;
        if let Some(stripped) = rest.strip_prefix('{') {
            let end = stripped.find('}').unwrap_or(stripped.len());
            value = stripped[..end].to_owned();
            rest = stripped.get(end + 1..).unwrap_or("");
            rest = rest.trim_start().strip_prefix(';').unwrap_or(rest);
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        out.push((key, value));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_read_case_insensitively_and_unbraced() {
        let s = "Driver={Sage Line 50 v32};DIR=C:\\Data\\ACCDATA;uid=MANAGER;Pwd={se;cret}";
        assert_eq!(
            attribute(s, &["DRIVER"]).as_deref(),
            Some("Sage Line 50 v32")
        );
        assert_eq!(attribute(s, &["DIR"]).as_deref(), Some("C:\\Data\\ACCDATA"));
        assert_eq!(attribute(s, &["UID"]).as_deref(), Some("MANAGER"));
        assert_eq!(attribute(s, &["PWD"]).as_deref(), Some("se;cret"));
    }

    #[test]
    fn redact_removes_passwords_from_the_string_and_the_flag() {
        let cfg = SourceConfig::new(
            "Driver=X;PWD=hunter2",
            None,
            Some(Secret::new("s3cr3t".into())),
        );
        let shown = cfg.redact("login as bob with hunter2 and s3cr3t failed");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        assert!(!cfg.display().contains("hunter2"));
        assert!(!format!("{cfg:?}").contains("s3cr3t"));
    }

    #[test]
    fn sqlite_sources_stream_rows() {
        let cfg = SourceConfig::new("Driver={SQLite3};Database=/x/SAGE50.DB", None, None);
        assert!(cfg.driver_string().ends_with(";StepAPI=1"));
        let cfg = SourceConfig::new(
            "Driver={SQLite3};Database=/x/SAGE50.DB;StepAPI=0",
            None,
            None,
        );
        assert!(!cfg.driver_string().contains("StepAPI=1"));
    }
}
