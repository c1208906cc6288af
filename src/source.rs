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

use crate::extract::{ExtractError, TextEncoding};

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

/// The connection-string key read by the connector and never passed to the driver.
const TEXT_KEY: &str = crate::extract::text::SETTING;

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

    /// How text is to be fetched: the connection string's `TextEncoding=` (default auto).
    pub fn text_encoding(&self) -> Result<TextEncoding, ExtractError> {
        let value = attribute(self.connection_string.expose(), &[TEXT_KEY]).unwrap_or_default();
        TextEncoding::parse(&value).map_err(|detail| ExtractError::Setting { detail })
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
        // Also as quoted in the driver string, in case a driver echoes that form.
        let quoted: Vec<String> = secrets.iter().map(|s| quote_value(s)).collect();
        secrets.extend(quoted);
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            out = out.replace(s.as_str(), "***");
        }
        out
    }

    /// The full string handed to the driver manager, with driver-specific defaults added and
    /// `--user`/`--password-env` replacing any UID/PWD already in the string.
    fn driver_string(&self) -> String {
        let mut parts: Vec<String> = split_attributes(self.connection_string.expose())
            .into_iter()
            .filter(|(k, _, _)| {
                let user_key = ["UID", "USER", "USERNAME"]
                    .iter()
                    .any(|u| k.eq_ignore_ascii_case(u));
                let password_key = SECRET_KEYS.iter().any(|p| k.eq_ignore_ascii_case(p));
                // The connector's own setting, not the driver's.
                let ours = k.eq_ignore_ascii_case(TEXT_KEY);
                !(ours
                    || user_key && self.user.is_some()
                    || password_key && self.password.is_some())
            })
            .map(|(_, _, raw)| raw)
            .collect();
        // The SQLite3 driver materialises whole result sets unless told to step through rows;
        // that would break the connector's bounded-memory promise on large tables.
        let sqlite = self
            .driver()
            .is_some_and(|d| d.to_ascii_lowercase().contains("sqlite"));
        if sqlite && attribute(self.connection_string.expose(), &["STEPAPI"]).is_none() {
            parts.push("StepAPI=1".to_owned());
        }
        if let Some(user) = &self.user {
            parts.push(format!("UID={}", quote_value(user)));
        }
        if let Some(password) = &self.password {
            parts.push(format!("PWD={}", quote_value(password.expose())));
        }
        parts.join(";")
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

    /// Turns an error met while connecting into the error a Sage user can act on.
    pub fn classify(&self, error: &odbc_api::Error) -> ExtractError {
        self.classify_as(error, true)
    }

    /// Turns an error met while querying an open connection into the error a Sage user can
    /// act on: only a lock can explain it, not a missing folder or driver.
    pub fn classify_query(&self, error: &odbc_api::Error) -> ExtractError {
        self.classify_as(error, false)
    }

    fn classify_as(&self, error: &odbc_api::Error, connecting: bool) -> ExtractError {
        let (state, message) = diagnostic(error);
        let detail = self.redact(&message);
        let lower = detail.to_ascii_lowercase();
        if lower.contains("locked")
            || lower.contains("already in use")
            || lower.contains("exclusive")
        {
            return ExtractError::DatasetLocked { detail };
        }
        if !connecting {
            return ExtractError::Connect { detail };
        }
        if state == "IM002"
            || lower.contains("can't open lib")
            || lower.contains("driver not found")
        {
            let dsn = || {
                attribute(self.connection_string.expose(), &["DSN"])
                    .map(|d| format!("(data source {d})"))
            };
            let driver = self
                .driver()
                .or_else(dsn)
                .unwrap_or_else(|| "(none given)".to_owned());
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

/// A connection-string value, in braces (with `}` doubled) when it holds a character that
/// would otherwise end or split it.
fn quote_value(value: &str) -> String {
    if value.contains([';', '{', '}', '=']) || value.starts_with(' ') || value.ends_with(' ') {
        format!("{{{}}}", value.replace('}', "}}"))
    } else {
        value.to_owned()
    }
}

/// The value of the first of `keys` present in a connection string (case-insensitive keys,
/// `{braced}` values unwrapped).
fn attribute(connection_string: &str, keys: &[&str]) -> Option<String> {
    split_attributes(connection_string)
        .into_iter()
        .find_map(|(k, v, _)| {
            keys.iter()
                .any(|key| k.eq_ignore_ascii_case(key))
                .then_some(v)
        })
}

/// (key, value, the attribute's own text) for each `key=value` of a connection string.
fn split_attributes(s: &str) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let segment_start = rest;
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_owned();
        rest = &rest[eq + 1..];
        let value;
        if let Some(stripped) = rest.trim_start().strip_prefix('{') {
            // A braced value ends at the first `}` not doubled.
            let mut text = String::new();
            let mut chars = stripped.char_indices().peekable();
            let mut end = stripped.len();
            while let Some((i, c)) = chars.next() {
                if c == '}' {
                    if chars.peek().is_some_and(|(_, n)| *n == '}') {
                        chars.next();
                    } else {
                        end = i;
                        break;
                    }
                }
                text.push(c);
            }
            value = text;
            rest = stripped.get(end + 1..).unwrap_or("");
            rest = rest.trim_start().strip_prefix(';').unwrap_or(rest);
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        let consumed = segment_start.len() - rest.len();
        let raw = segment_start[..consumed]
            .trim()
            .trim_end_matches(';')
            .trim()
            .to_owned();
        if !key.is_empty() {
            out.push((key, value, raw));
        }
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
    fn credentials_with_separators_are_quoted_and_replace_those_in_the_string() {
        let password = Secret::new("pa;ss}word".into());
        let cfg = SourceConfig::new(
            "Driver={Sage Line 50 v32};DIR=C:\\A;UID=old;PWD=old",
            Some("MANAGER".into()),
            Some(password),
        );
        let s = cfg.driver_string();
        assert_eq!(
            s,
            "Driver={Sage Line 50 v32};DIR=C:\\A;UID=MANAGER;PWD={pa;ss}}word}"
        );
        assert_eq!(attribute(&s, &["PWD"]).as_deref(), Some("pa;ss}word"));
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
