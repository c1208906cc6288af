//! The wire contract between a connector (the desktop agent) and `connector-server`: every
//! request and answer of their conversation as serde types used by both sides, and the
//! reason codes and company states as one enum each.
//!
//! The conversation, in order:
//! 1. **Link.** The link page sends the browser to the connector's loopback listener with a
//!    one-time `code` and `state`; the connector redeems them ([`REDEEM_PATH`],
//!    [`RedeemRequest`] → [`Linked`]). Or, when the browser is on another machine, the
//!    connector asks for a device code ([`DEVICE_CODE_PATH`]), shows the user code, and polls
//!    [`DEVICE_TOKEN_PATH`] until the user has typed it on the link page. Either way it gets a
//!    **device credential** bound to one company; the routes below are [`device_path`]s.
//! 2. **Check-in** ([`CHECKIN`], [`CheckIn`] → [`CheckInAnswer`]): the connector says how
//!    it is; the server answers with queued work (a requested sync) and configuration, and
//!    may rotate the credential. `?wait=SECONDS` holds the answer until work is queued
//!    (long poll), so a sync requested through the API starts within seconds.
//! 3. **Publish** without store credentials on the desktop: [`GRANTS`] ([`GrantRequest`]
//!    → [`Grants`]: where to PUT each missing file), the uploads, then [`COMMIT`] with the
//!    manifest: the server checks the snapshot and advances `latest` itself.
//! 4. **Report** a sync's outcome ([`RESULT`], [`SyncResult`]): a failure becomes the
//!    company's `sync.failed` webhook and its status.
//!
//! Device routes take `Authorization: Bearer <device credential>` and act only on that
//! credential's company; an API key is refused there, and a device credential anywhere else.

use serde::{Deserialize, Serialize};

/// Prefix of device credentials (`dv_<device id>_<secret>`).
pub const DEVICE_CREDENTIAL_PREFIX: &str = "dv_";
/// The connector's loopback port unless configured otherwise.
pub const DEFAULT_LOOPBACK_PORT: u16 = 47815;

/// Redeems a link page's one-time code (POST, no credential).
pub const REDEEM_PATH: &str = "/connector/link";
/// Starts the device-code flow (POST, no credential).
pub const DEVICE_CODE_PATH: &str = "/connector/code";
/// Polls the device-code flow (POST, no credential).
pub const DEVICE_TOKEN_PATH: &str = "/connector/token";
/// Check-in (POST, device credential), under [`device_path`].
pub const CHECKIN: &str = "checkin";
/// Upload grants for a snapshot (POST, device credential).
pub const GRANTS: &str = "grants";
/// Commit a snapshot (POST, device credential; the body is the manifest).
pub const COMMIT: &str = "commit";
/// Report a sync's outcome (POST, device credential).
pub const RESULT: &str = "result";
/// The company's latest published snapshot id (GET, device credential).
pub const LATEST: &str = "latest";
/// Upload route of the server's own, for stores that cannot pre-sign (PUT, device
/// credential): `upload/{grant token}`.
pub const UPLOAD: &str = "upload";

/// The path of a device route of a company: `/companies/{id}/connector/{what}`. A device
/// credential gets 404 for any company but its own.
pub fn device_path(company_id: &str, what: &str) -> String {
    format!("/companies/{company_id}/connector/{what}")
}

/// Why a sync did not happen or failed: the same codes at check-in, in `dataStatus`, in the
/// `sync.failed` webhook and on the desktop. [`Reason::advice`] is what the Sage user reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The Sage data folder is not there (moved, unmapped drive).
    DataFolderNotFound,
    /// The Sage ODBC driver is not installed for this process.
    DriverMissing,
    /// Sage refused the user name or password.
    CredentialsRejected,
    /// The company is locked or the user is logged in elsewhere.
    CompanyLocked,
    /// A table or column the connector needs is missing (unsupported Sage version).
    SageSchema,
    /// Reading Sage's data failed part way.
    SageData,
    /// The normalised data failed a check: nothing was published.
    ChecksFailed,
    /// The server or the store could not be reached: the snapshot waits in the outbox.
    Offline,
    /// The server refused the snapshot at commit.
    CommitRefused,
    /// The device credential was revoked.
    DeviceRevoked,
    /// The sync process crashed or was killed.
    Crashed,
    /// The local disk or state folder failed.
    LocalStorage,
    /// The Sage data moved: the same company (by Sage's company id) was found in another
    /// folder, waiting for the user to confirm it.
    DataMoved,
    /// The data folder is on a mapped drive letter, which a background process may not have.
    MappedDrive,
    /// Too little free disk space for the staging store.
    DiskFull,
    /// The server answered, but its TLS certificate was refused (a proxy inspecting traffic).
    TlsFailed,
    /// This PC's clock is minutes away from the server's.
    ClockSkew,
    /// The connector does not start when the user logs on.
    StartAtLogonOff,
    /// The connector is not running (or has not checked in for a while).
    NotRunning,
    /// The Sage data folder now holds another company than the one set up.
    OtherCompany,
    /// Anything else (the message says what).
    Other,
}

impl Reason {
    /// Every reason, in the README's order.
    pub const ALL: [Reason; 21] = [
        Reason::DataFolderNotFound,
        Reason::DriverMissing,
        Reason::CredentialsRejected,
        Reason::CompanyLocked,
        Reason::SageSchema,
        Reason::SageData,
        Reason::ChecksFailed,
        Reason::Offline,
        Reason::CommitRefused,
        Reason::DeviceRevoked,
        Reason::Crashed,
        Reason::LocalStorage,
        Reason::DataMoved,
        Reason::MappedDrive,
        Reason::DiskFull,
        Reason::TlsFailed,
        Reason::ClockSkew,
        Reason::StartAtLogonOff,
        Reason::NotRunning,
        Reason::OtherCompany,
        Reason::Other,
    ];

    /// The code on the wire (`data_folder_not_found`).
    pub fn code(self) -> &'static str {
        match self {
            Reason::DataFolderNotFound => "data_folder_not_found",
            Reason::DriverMissing => "driver_missing",
            Reason::CredentialsRejected => "credentials_rejected",
            Reason::CompanyLocked => "company_locked",
            Reason::SageSchema => "sage_schema",
            Reason::SageData => "sage_data",
            Reason::ChecksFailed => "checks_failed",
            Reason::Offline => "offline",
            Reason::CommitRefused => "commit_refused",
            Reason::DeviceRevoked => "device_revoked",
            Reason::Crashed => "crashed",
            Reason::LocalStorage => "local_storage",
            Reason::DataMoved => "data_moved",
            Reason::MappedDrive => "mapped_drive",
            Reason::DiskFull => "disk_full",
            Reason::TlsFailed => "tls_failed",
            Reason::ClockSkew => "clock_skew",
            Reason::StartAtLogonOff => "start_at_logon_off",
            Reason::NotRunning => "not_running",
            Reason::OtherCompany => "other_company",
            Reason::Other => "other",
        }
    }

    /// What the Sage user is told to do.
    pub fn advice(self) -> &'static str {
        match self {
            Reason::DataFolderNotFound => {
                "The Sage data folder was not found. In Sage, open Help > About and copy the Data Directory into the connector's settings."
            }
            Reason::DriverMissing => {
                "The Sage 50 ODBC driver is not installed. Install the ODBC driver of the same Sage version (it comes with Sage), then sync again."
            }
            Reason::CredentialsRejected => {
                "Sage refused the user name or password. Enter them again in the connector's settings."
            }
            Reason::CompanyLocked => {
                "The Sage company is in use or locked. Close Sage, or give the connector a Sage user of its own; the connector tries again later."
            }
            Reason::SageSchema => {
                "This Sage version or data is not supported: a table the connector needs is missing. Contact support with the connector's log."
            }
            Reason::SageData => {
                "Reading the Sage data failed part way. Run File > Maintenance > Check Data in Sage; the connector tries again later."
            }
            Reason::ChecksFailed => {
                "The data read from Sage did not add up, so nothing was sent. Run Check Data in Sage; the connector tries again later."
            }
            Reason::Offline => {
                "The connector could not reach the server. The data waits on this PC and is sent at the next chance."
            }
            Reason::CommitRefused => {
                "The server refused the data sent. The connector sends it again at the next sync."
            }
            Reason::DeviceRevoked => {
                "This connector was disconnected from the company. Link it again from your app."
            }
            Reason::Crashed => {
                "The sync stopped unexpectedly. The connector tries again later; the log says more."
            }
            Reason::LocalStorage => {
                "The connector could not write its files on this PC. Free some disk space."
            }
            Reason::DataMoved => {
                "The Sage data has moved to another folder. Open the connector's settings and confirm the new folder."
            }
            Reason::MappedDrive => {
                "The Sage data is on a mapped drive letter, which the connector may not see when it runs in the background. In the connector's settings, use the server's network path (it starts with two backslashes) instead."
            }
            Reason::DiskFull => {
                "This PC is almost out of disk space. Free some space on the drive the connector uses; it tries again later."
            }
            Reason::TlsFailed => {
                "The connection to the server was refused as insecure, often by a proxy or antivirus inspecting web traffic. Ask your IT support to allow the connector's server."
            }
            Reason::ClockSkew => {
                "This PC's clock is wrong. Set the date and time to update automatically in Windows settings."
            }
            Reason::StartAtLogonOff => {
                "The connector does not start when you log on, so data stops updating after a restart. Turn on Start at logon in the connector's settings."
            }
            Reason::NotRunning => {
                "The connector is not running on the PC with Sage. Start it from the Start menu, and leave that PC on or check it starts at logon."
            }
            Reason::OtherCompany => {
                "The Sage data folder now holds a different company, so nothing was sent. In the connector's settings, choose your company's folder again."
            }
            Reason::Other => "The sync failed. The message says what to change.",
        }
    }

    /// The reason of a code, if it is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Where a company is on the agent: the same names in the settings page, the tray, check-in
/// and the server's view of the company.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompanyState {
    /// Linked to the server, waiting for the Sage folder and login.
    NeedsSetup,
    /// Set up; no sync has finished yet.
    Ready,
    /// A sync is running.
    Syncing,
    /// The last sync published.
    UpToDate,
    /// The last sync failed (see the reason).
    Failing,
    /// The user paused syncing.
    Paused,
    /// The device credential was revoked: nothing runs for this company.
    Revoked,
    /// The Sage data moved: syncing waits until the user confirms the new folder.
    Moved,
}

impl CompanyState {
    /// Every state, in the README's order.
    pub const ALL: [CompanyState; 8] = [
        CompanyState::NeedsSetup,
        CompanyState::Ready,
        CompanyState::Syncing,
        CompanyState::UpToDate,
        CompanyState::Failing,
        CompanyState::Paused,
        CompanyState::Revoked,
        CompanyState::Moved,
    ];

    /// The name on the wire (`up_to_date`).
    pub fn code(self) -> &'static str {
        match self {
            CompanyState::NeedsSetup => "needs_setup",
            CompanyState::Ready => "ready",
            CompanyState::Syncing => "syncing",
            CompanyState::UpToDate => "up_to_date",
            CompanyState::Failing => "failing",
            CompanyState::Paused => "paused",
            CompanyState::Revoked => "revoked",
            CompanyState::Moved => "moved",
        }
    }
}

/// Redeems the code the link page handed to the loopback listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RedeemRequest {
    /// The one-time code.
    pub code: String,
    /// The `state` that came with it.
    pub state: String,
    /// The company the link page named.
    pub company_id: String,
    /// The PC's name, shown to the API client in the company's devices.
    pub device_name: String,
}

/// A linked device: the answer to a redeemed code or an approved device code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linked {
    /// The company.
    pub company_id: String,
    /// Its name (as the API client gave it).
    pub company_name: String,
    /// The device's id (for revocation).
    pub device_id: String,
    /// The device credential: shown once, stored hashed on the server.
    pub credential: String,
    /// Where to send the browser when linking is done (the API client's page), if anywhere.
    pub redirect_url: Option<String>,
}

/// Starts the device-code flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCodeRequest {
    /// The PC's name.
    pub device_name: String,
}

/// The device-code flow's codes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceCode {
    /// Secret, for polling.
    pub device_code: String,
    /// Short, for the user to type on the link page (`ABCD-EFGH`).
    pub user_code: String,
    /// Seconds until both expire.
    pub expires_in: u64,
    /// Seconds to wait between polls.
    pub interval: u64,
}

/// Polls the device-code flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceTokenRequest {
    /// The secret device code.
    pub device_code: String,
}

/// What a connector says at check-in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckIn {
    /// The connector's version.
    pub connector_version: String,
    /// The operating system (`windows`, `linux`, …).
    pub os: String,
    /// The company's state on the agent (a [`CompanyState`] code).
    pub state: Option<CompanyState>,
    /// When the last sync finished (RFC 3339).
    pub last_sync_at: Option<String>,
    /// When the last successful sync finished.
    pub last_success_at: Option<String>,
    /// Why the last sync failed, if it did.
    pub last_error: Option<Reason>,
    /// When the next scheduled sync runs.
    pub next_sync_at: Option<String>,
    /// What the connector's own checks (`connector doctor`) found wrong, in their order.
    #[serde(default)]
    pub problems: Vec<Problem>,
}

/// A check of `connector doctor` that failed: the same reason codes as a failed sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// The check (`data_folder`, `disk_space`, …).
    pub check: String,
    /// Why, as a reason code.
    pub reason: Reason,
    /// What was found, in words (never a secret).
    pub message: String,
    /// A warning: syncs still work, but may stop (start at logon off, a mapped drive).
    #[serde(default)]
    pub warning: bool,
}

/// The server's answer to a check-in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckInAnswer {
    /// A sync requested through the API (or by the server), to run now: its request id.
    pub sync_requested: Option<String>,
    /// Seconds between check-ins.
    pub checkin_secs: u64,
    /// Seconds between scheduled syncs (daily by default).
    pub sync_every_secs: u64,
    /// A new credential replacing the one used (rotation); the old one stops working once
    /// the new one has been used.
    pub credential: Option<String>,
    /// The server's clock (RFC 3339), for clock-skew diagnostics.
    pub server_time: String,
}

/// One data file a snapshot needs in the store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FileToUpload {
    /// Its key (`COMPANY/data/TYPE/SHA256.parquet`).
    pub key: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
}

/// Asks where to upload a snapshot's files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantRequest {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its data files.
    pub files: Vec<FileToUpload>,
}

/// Where to send one file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Upload {
    /// The key.
    pub key: String,
    /// `PUT`.
    pub method: String,
    /// Absolute URL: pre-signed for the store, or the server's own upload route.
    pub url: String,
    /// Headers to send with it.
    pub headers: std::collections::BTreeMap<String, String>,
    /// Whether the URL is the server's (send the device credential) or the store's.
    pub via_server: bool,
}

/// Upload grants for a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grants {
    /// Files to send.
    pub uploads: Vec<Upload>,
    /// Keys already in the store with their size (nothing to send).
    pub present: Vec<String>,
    /// Seconds the URLs stay valid.
    pub expires_in: u64,
}

/// The answer to a commit.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Committed {
    /// The snapshot.
    pub snapshot_id: String,
    /// Whether `latest` names it now (false: a newer one was there already).
    pub is_latest: bool,
    /// Bytes of the manifest and pointer written by the server.
    pub bytes_metadata: u64,
}

/// A refused request: what is wrong, machine-readably.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// The message.
    pub error: String,
    /// The HTTP status.
    pub status: u16,
    /// A reason code, where one applies (`device_revoked`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Each problem found (commit).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// A sync's outcome, reported by the connector.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncResult {
    /// The request it answers, if it was requested.
    pub request_id: Option<String>,
    /// Whether it published.
    pub ok: bool,
    /// The snapshot it made, if any.
    pub snapshot_id: Option<String>,
    /// Why it failed.
    pub reason: Option<Reason>,
    /// What failed, in words (never a secret).
    pub message: Option<String>,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// When it finished.
    pub finished_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_tables_name_every_reason_with_its_advice_and_every_state() {
        let readme = include_str!("../README.md");
        for r in Reason::ALL {
            let row = format!("| `{}` | {} |", r.code(), r.advice());
            assert!(readme.contains(&row), "README lacks the row {row}");
        }
        for s in CompanyState::ALL {
            let row = format!("| `{}` |", s.code());
            assert!(readme.contains(&row), "README lacks the state {}", s.code());
        }
    }

    #[test]
    fn reason_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            assert!(seen.insert(r.code()), "{} twice", r.code());
            assert_eq!(Reason::from_code(r.code()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.code()));
        }
        for s in CompanyState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.code()));
        }
    }
}
