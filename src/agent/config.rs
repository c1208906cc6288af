//! The agent's saved settings and its status file, in `STATE/agent/`.
//!
//! `config.json` holds what the user and the linking chose, per company: its id and name at
//! the server, the Sage data folder and user (never a password or a credential: those are
//! in the [`super::secrets`] store), the schedule, and the sync history the schedule counts
//! from. It is written whole to a temporary file and renamed, so a crash leaves the old or
//! the new file, never half of one. `status.json` is what the agent shows: each company's
//! state, last and next sync, last error; the tray and tests read it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::{CompanyState, Reason};

/// The agent's folder in the state folder.
pub fn agent_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("agent")
}

/// Name of a company's device credential in the secret store.
pub fn device_secret(company: &str) -> String {
    format!("device:{company}")
}

/// Name of a company's Sage password in the secret store.
pub fn sage_secret(company: &str) -> String {
    format!("sage:{company}")
}

/// The Sage company a linked company reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Setup {
    /// The ACCDATA folder.
    pub accdata: String,
    /// Sage's major version (`32`), when known from where the company was found.
    pub version: Option<u32>,
    /// The ODBC connection string, without user or password.
    pub odbc: String,
    /// The Sage user (`MANAGER`), if any.
    pub user: Option<String>,
    /// Sage's own company id (`COMPANY.COMPANYID`), to recognise the company after a move.
    pub sage_company_id: String,
    /// Sage's company name.
    pub sage_company_name: String,
}

/// One linked company.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CompanyConfig {
    /// Our company id at the server.
    pub id: String,
    /// Its name at the server.
    pub name: String,
    /// This connector's device id for it.
    pub device_id: String,
    /// Where to send the browser when linking is done.
    pub redirect_url: Option<String>,
    /// The Sage company, once set up.
    pub setup: Option<Setup>,
    /// Seconds between scheduled syncs.
    pub every_secs: u64,
    /// Quiet hours (`09:00-17:00`): no scheduled sync starts inside them.
    #[serde(default)]
    pub quiet: Vec<String>,
    /// Syncing paused until then (RFC 3339).
    pub paused_until: Option<String>,
    /// When the last successful sync finished.
    pub last_success: Option<String>,
    /// When the last failed sync finished (after the last success).
    pub last_failure: Option<String>,
    /// Failed syncs since the last success.
    #[serde(default)]
    pub failures_in_a_row: u32,
    /// Why the last sync failed.
    pub last_error: Option<Reason>,
    /// What failed, in words.
    pub last_message: Option<String>,
    /// The device was revoked: nothing runs for this company.
    #[serde(default)]
    pub revoked: bool,
    /// The same Sage company (by `COMPANY.COMPANYID`) found in another folder after its own
    /// disappeared: syncing waits until the user confirms it (or dismisses it).
    #[serde(default)]
    pub moved_to: Option<Setup>,
    /// What the last `connector doctor` run for this company found wrong (sent at check-in).
    #[serde(default)]
    pub problems: Vec<crate::protocol::Problem>,
    /// Folders the user said are not this company's data: never proposed again.
    #[serde(default)]
    pub declined_moves: Vec<String>,
}

impl CompanyConfig {
    /// A newly linked company, not set up yet.
    pub fn linked(linked: &crate::protocol::Linked) -> Self {
        CompanyConfig {
            id: linked.company_id.clone(),
            name: linked.company_name.clone(),
            device_id: linked.device_id.clone(),
            redirect_url: linked.redirect_url.clone(),
            setup: None,
            every_secs: 24 * 3600,
            quiet: Vec::new(),
            paused_until: None,
            last_success: None,
            last_failure: None,
            failures_in_a_row: 0,
            last_error: None,
            last_message: None,
            revoked: false,
            moved_to: None,
            problems: Vec::new(),
            declined_moves: Vec::new(),
        }
    }
}

/// Everything the agent keeps.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AgentConfig {
    /// The linked companies.
    pub companies: Vec<CompanyConfig>,
    /// The user's answer to "start the connector when you log on?" (None: not asked yet).
    #[serde(default)]
    pub start_at_logon: Option<bool>,
}

/// Why the settings could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("agent settings {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error(
        "agent settings {path} are not valid ({detail}); fix the file or move it aside to start again"
    )]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl AgentConfig {
    /// The settings file.
    pub fn path(state_dir: &Path) -> PathBuf {
        agent_dir(state_dir).join("config.json")
    }

    /// Reads the settings (none yet: empty).
    pub fn load(state_dir: &Path) -> Result<Self, ConfigError> {
        let path = Self::path(state_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ConfigError::Invalid {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AgentConfig::default()),
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    /// Writes the settings whole (temporary file, then rename).
    pub fn save(&self, state_dir: &Path) -> Result<(), ConfigError> {
        let path = Self::path(state_dir);
        write_json(
            &path,
            &serde_json::to_vec_pretty(self).expect("settings serialise"),
        )
    }

    /// A company by id.
    pub fn company_mut(&mut self, id: &str) -> Option<&mut CompanyConfig> {
        self.companies.iter_mut().find(|c| c.id == id)
    }
}

/// Writes a file whole: a temporary sibling renamed over it.
pub fn write_json(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = crate::files::sibling(path, "tmp");
    crate::files::write_synced(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Writes a file only this user can read (0600 on Unix), whole.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ConfigError> {
    let io = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = crate::files::sibling(path, "tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    {
        use std::io::Write;
        let mut file = options.open(&tmp).map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// One company as the agent shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CompanyStatus {
    /// Our company id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where it is.
    pub state: CompanyState,
    /// Sage's company name, once set up.
    pub sage_company: Option<String>,
    /// When the last successful sync finished.
    pub last_success: Option<String>,
    /// Why the last sync failed.
    pub last_error: Option<Reason>,
    /// What to do about it.
    pub advice: Option<String>,
    /// What failed, in words.
    pub last_message: Option<String>,
    /// When the next sync runs, and why it waits.
    pub next_sync_at: Option<String>,
    /// Why it waits (`quiet_hours`, `paused`, `not_due`, `retry_backoff`).
    pub waiting_because: Option<String>,
    /// Syncs started since the agent started.
    pub syncs_started: u64,
    /// When the running (or last) sync started.
    pub sync_started_at: Option<String>,
    /// Why it started (`missed`, `requested`, …).
    pub sync_started_because: Option<String>,
    /// Where the browser goes back to once linking is done.
    pub return_url: Option<String>,
    /// The Sage data folder read now.
    #[serde(default)]
    pub data_folder: Option<String>,
    /// Where the same company was found after its folder disappeared (state `moved`).
    #[serde(default)]
    pub moved_to: Option<String>,
    /// What the last `connector doctor` run found wrong.
    #[serde(default)]
    pub problems: Vec<crate::protocol::Problem>,
}

/// What the agent shows, written to `status.json` at every change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The loopback port.
    pub port: u16,
    /// The server.
    pub server: String,
    /// Whether the server answered the last check-in.
    pub server_reachable: bool,
    /// The agent's process id.
    #[serde(default)]
    pub pid: u32,
    /// Where it looks for Sage's settings folders.
    #[serde(default)]
    pub sage_root: String,
    /// The ODBC connection string template it fills in for a Sage company.
    #[serde(default)]
    pub odbc_template: String,
    /// The user's answer to "start at logon?" (None: not asked yet).
    #[serde(default)]
    pub start_at_logon: Option<bool>,
    /// Every company.
    pub companies: Vec<CompanyStatus>,
}

impl AgentStatus {
    /// The status file.
    pub fn path(state_dir: &Path) -> PathBuf {
        agent_dir(state_dir).join("status.json")
    }
}
