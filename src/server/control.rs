//! The control plane: API clients and their hashed keys, companies, and snapshot history.
//!
//! [`ControlPlane`] is the interface; [`SqliteControl`] implements it in one embedded SQLite
//! file (`STATE/control.sqlite3`), the default for one machine;
//! [`postgres::PostgresControl`] implements it in PostgreSQL when the server outgrows one
//! machine and several nodes share it (`--control postgres://…`). The interface speaks in
//! whole operations, never in SQL, so nothing above it changes.
//!
//! API keys are 256 random bits. Only their SHA-256 is stored (a salt adds nothing to a key
//! that cannot be guessed), looked up by hash and compared in constant time.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::snapshot::hex;

pub mod postgres;

/// Why the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The database failed.
    #[error("control database {path}: {detail}")]
    Db {
        /// The file.
        path: String,
        /// SQLite's message.
        detail: String,
    },
    /// The key file that seals webhook secrets cannot be used.
    #[error("{0}")]
    Secrets(String),
    /// The blocking task that ran a call failed (it panicked).
    #[error("a control-plane call failed: {0}")]
    Task(String),
}

/// How long a node holds a webhook delivery it took from a shared control plane: longer
/// than one attempt can take (a 10 s request, a 2 s look-up).
pub const DELIVERY_LEASE_MS: i64 = 60_000;

/// How long a node holds the recording of a snapshot it claimed (see
/// [`ControlPlane::claim_ingest`]): longer than a load of the largest company takes.
pub const INGEST_LEASE_MS: i64 = 120_000;

/// Runs control-plane work on tokio's blocking pool and waits for it: the database and its
/// lock never hold up an async worker. The server's routes and its ingest loop call the
/// control plane through here.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ControlError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(ControlError::Task(e.to_string())))
}

/// An API client (a lender, an accounting app).
#[derive(Debug, Clone, Serialize)]
pub struct Client {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A company an API client owns.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Company {
    /// Its id (the connector's `--company`).
    pub id: String,
    /// Display name.
    pub name: String,
    /// When it was created (RFC 3339).
    pub created_at: String,
    /// Where the link page sends the browser back to when linking is done.
    pub redirect_url: Option<String>,
    /// Owner.
    #[serde(skip)]
    pub client_id: String,
}

/// One snapshot the server has seen for a company.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRecord {
    /// The company.
    #[serde(skip)]
    pub company_id: String,
    /// The snapshot.
    pub snapshot_id: String,
    /// `live`, `superseded` or `failed`.
    pub status: String,
    /// Why it failed, when it did.
    pub detail: Option<String>,
    /// When the connector made it.
    pub created_at: Option<String>,
    /// When the server took it in (or refused it).
    pub ingested_at: String,
    /// Records per data type, when it went live.
    pub records: Option<serde_json::Value>,
}

/// A webhook subscription.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// Its id.
    pub id: String,
    /// Owner.
    #[serde(skip)]
    pub client_id: String,
    /// Where events are POSTed.
    pub url: String,
    /// The event types it wants.
    pub event_types: Vec<String>,
    /// The signing secret (`whsec_…`); shown only when the subscription is created.
    #[serde(skip)]
    pub secret: String,
    /// When it was made.
    pub created_at: String,
}

/// One event to deliver to one webhook.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// Its id: the `webhook-id` header, the same on every retry.
    pub id: String,
    /// The subscription.
    pub webhook_id: String,
    /// The event type.
    pub event_type: String,
    /// The JSON body sent.
    #[serde(skip)]
    pub payload: String,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Unix milliseconds of the next attempt (pending only).
    #[serde(skip)]
    pub next_attempt_at: i64,
    /// When the event was made.
    pub created_at: String,
    /// When a 2xx answer came.
    pub delivered_at: Option<String>,
    /// The last failure.
    pub last_error: Option<String>,
    /// Every attempt: time, HTTP status, error.
    pub attempt_log: Vec<Attempt>,
}

/// One delivery attempt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    /// When.
    pub at: String,
    /// The receiver's HTTP status, if it answered.
    pub status_code: Option<u16>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// The control plane's operations.
pub trait ControlPlane: Send + Sync {
    /// Subscribes `client_id` to events; the secret is generated here.
    fn create_webhook(
        &self,
        client_id: &str,
        url: &str,
        event_types: &[String],
    ) -> Result<Webhook, ControlError>;
    /// A client's subscriptions.
    fn webhooks(&self, client_id: &str) -> Result<Vec<Webhook>, ControlError>;
    /// Deletes a client's subscription with its deliveries and their attempts (one
    /// transaction). False when the client has no such subscription.
    fn delete_webhook(&self, client_id: &str, webhook_id: &str) -> Result<bool, ControlError>;
    /// Queues an event for every subscription of `client_id` that wants `event_type` (one
    /// transaction: all or none); returns how many deliveries were queued. An event with a
    /// `key` (what it is about, e.g. `data.synced:COMPANY:SNAPSHOT`) is queued once per
    /// subscription whoever queues it again, its delivery id made from the key: a node that
    /// takes over another's ingest cannot send one event under two ids.
    fn enqueue_event(
        &self,
        client_id: &str,
        event_type: &str,
        payload: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<usize, ControlError>;
    /// Pending deliveries due at `now_ms`, with their webhook: the oldest `per_webhook` of
    /// each webhook (so that one webhook's backlog never hides another's), oldest first, at
    /// most `limit`. A control plane shared by several nodes hands each delivery to one of
    /// them, which holds it for `lease_ms` (then it is due again, for any node: a node that
    /// died mid-delivery loses nothing); one process's own (SQLite) needs no lease.
    fn due_deliveries(
        &self,
        now_ms: i64,
        per_webhook: usize,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, ControlError>;
    /// Records an attempt; `next_attempt_at` None means no more tries (delivered or failed).
    fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        delivered: bool,
        next_attempt_at: Option<i64>,
    ) -> Result<(), ControlError>;
    /// A webhook's deliveries with their attempts, newest first: at most `limit`, those
    /// after delivery `after` (the last of the previous page) when given.
    fn deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, ControlError>;
    /// Deletes the deliveries made before `before` (RFC 3339) that are no longer pending,
    /// with their attempts; returns how many.
    fn purge_deliveries(&self, before: &str) -> Result<usize, ControlError>;
    /// Creates a client; returns it and its API key (shown once, never stored).
    fn create_client(&self, name: &str) -> Result<(Client, String), ControlError>;
    /// The client an API key belongs to (none for a revoked client).
    fn client_by_key(&self, key: &str) -> Result<Option<Client>, ControlError>;
    /// Revokes a client: its API key stops working. False when there is no such client.
    fn revoke_client(&self, client_id: &str) -> Result<bool, ControlError>;
    /// Gives a client a new API key (returned, shown once); the old one stops working. None
    /// when there is no such (unrevoked) client.
    fn rotate_client_key(&self, client_id: &str) -> Result<Option<String>, ControlError>;
    /// A number that moves whenever another process changed the control data (an operator's
    /// `admin` command): what a server remembers of it (API keys) is dropped when it moves.
    fn version(&self) -> Result<i64, ControlError>;
    /// Creates a company owned by `client_id`.
    fn create_company(
        &self,
        client_id: &str,
        name: &str,
        redirect_url: Option<&str>,
    ) -> Result<Company, ControlError>;
    /// A company by id, whoever owns it (link pages and device routes).
    fn company_by_id(&self, company_id: &str) -> Result<Option<Company>, ControlError>;
    /// A new link for a company: its token (`lk_…`), single use, valid `ttl_secs`.
    fn create_link(&self, company_id: &str, ttl_secs: i64) -> Result<String, ControlError>;
    /// The link a token names: its company and whether it can still be used.
    fn link(&self, token: &str) -> Result<Option<(Company, LinkState)>, ControlError>;
    /// A one-time code for the loopback hand-over of a usable link, bound to `state`.
    fn create_link_code(
        &self,
        token: &str,
        state: &str,
        ttl_secs: i64,
    ) -> Result<Option<String>, ControlError>;
    /// Redeems a loopback code: it must be unused, unexpired, carry its `state`, name its
    /// company, and its link must be unused. Uses the code and the link (one transaction).
    fn redeem_link_code(
        &self,
        code: &str,
        state: &str,
        company_id: &str,
    ) -> Result<Result<Company, &'static str>, ControlError>;
    /// Starts a device-code flow: (secret device code, user code).
    fn create_device_code(
        &self,
        device_name: &str,
        ttl_secs: i64,
    ) -> Result<(String, String), ControlError>;
    /// Binds a typed user code to a usable link's company (and uses the link).
    fn approve_user_code(
        &self,
        token: &str,
        user_code: &str,
    ) -> Result<Result<Company, &'static str>, ControlError>;
    /// Where a device-code flow is; `Approved` is answered once.
    fn poll_device_code(&self, device_code: &str) -> Result<DevicePoll, ControlError>;
    /// A new device of a company, and its credential (shown once, stored hashed).
    fn create_device(&self, company_id: &str, name: &str)
    -> Result<(Device, String), ControlError>;
    /// The device a credential belongs to (a rotated credential's first use retires the old).
    fn authenticate_device(&self, credential: &str) -> Result<DeviceAuth, ControlError>;
    /// A new credential for a device whose current one is older than `older_than_secs` (or
    /// whose last rotation was not yet used); `None` when no rotation is due.
    fn rotate_device(
        &self,
        device_id: &str,
        older_than_secs: i64,
    ) -> Result<Option<String>, ControlError>;
    /// Revokes a device; returns it (with its company) if it existed.
    fn revoke_device(&self, device_id: &str) -> Result<Option<Device>, ControlError>;
    /// Whether a device is revoked (`None`: no such device).
    fn device_revoked(&self, device_id: &str) -> Result<Option<bool>, ControlError>;
    /// A company's devices, newest first.
    fn devices(&self, company_id: &str) -> Result<Vec<Device>, ControlError>;
    /// Records what a device said at check-in.
    fn record_checkin(
        &self,
        device_id: &str,
        status: &serde_json::Value,
    ) -> Result<(), ControlError>;
    /// Queues a sync of a company; returns the request id (an untaken one is reused).
    fn request_sync(&self, company_id: &str) -> Result<String, ControlError>;
    /// Takes the company's oldest untaken sync request.
    fn take_sync_request(&self, company_id: &str) -> Result<Option<String>, ControlError>;
    /// Records a sync's outcome reported by a device.
    fn record_sync_result(
        &self,
        company_id: &str,
        device_id: &str,
        result: &crate::protocol::SyncResult,
    ) -> Result<(), ControlError>;
    /// The company's last reported sync outcome.
    fn last_sync_result(
        &self,
        company_id: &str,
    ) -> Result<Option<crate::protocol::SyncResult>, ControlError>;
    /// A client's companies.
    fn companies(&self, client_id: &str) -> Result<Vec<Company>, ControlError>;
    /// One company, if `client_id` owns it.
    fn company(&self, client_id: &str, company_id: &str) -> Result<Option<Company>, ControlError>;
    /// Every company (the ingest loop watches them all).
    fn all_companies(&self) -> Result<Vec<Company>, ControlError>;
    /// Records what happened to a snapshot (a second record for the same id replaces it).
    fn record_snapshot(&self, record: &SnapshotRecord) -> Result<(), ControlError>;
    /// Claims the recording of snapshot `snapshot_id` of `company_id` (its record, its
    /// events) for `node` during `lease_ms`: true when `node` may record it (no claim yet, its
    /// own claim, or one whose lease ran out because its node died). Every node loads each
    /// snapshot for itself; one records it.
    fn claim_ingest(
        &self,
        company_id: &str,
        snapshot_id: &str,
        node: &str,
        lease_ms: i64,
    ) -> Result<bool, ControlError>;
    /// Seals every webhook secret stored in clear, and (with `all`) every one sealed under a
    /// key other than the sealing key; returns how many were sealed again. One transaction.
    fn reseal_secrets(&self, all: bool) -> Result<usize, ControlError>;
    /// A company's snapshots, newest first.
    fn snapshots(&self, company_id: &str) -> Result<Vec<SnapshotRecord>, ControlError>;
}

/// [`ControlPlane`] in SQLite.
pub struct SqliteControl {
    conn: Mutex<Connection>,
    path: String,
    /// The keys that seal webhook secrets (see [`super::secrets`]).
    secrets: Mutex<super::secrets::SecretKeys>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS companies (
    id TEXT PRIMARY KEY, client_id TEXT NOT NULL REFERENCES clients(id), name TEXT NOT NULL,
    created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS companies_client ON companies(client_id);
CREATE TABLE IF NOT EXISTS webhooks (
    id TEXT PRIMARY KEY, client_id TEXT NOT NULL REFERENCES clients(id), url TEXT NOT NULL,
    event_types TEXT NOT NULL, secret TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    id TEXT PRIMARY KEY, webhook_id TEXT NOT NULL REFERENCES webhooks(id), event_type TEXT NOT NULL,
    payload TEXT NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL, created_at TEXT NOT NULL, delivered_at TEXT, last_error TEXT);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_webhook ON deliveries(webhook_id, created_at);
CREATE INDEX IF NOT EXISTS deliveries_created ON deliveries(created_at);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries(id), at TEXT NOT NULL, status_code INTEGER,
    error TEXT);
CREATE INDEX IF NOT EXISTS attempts_delivery ON attempts(delivery_id);
CREATE TABLE IF NOT EXISTS snapshots (
    company_id TEXT NOT NULL REFERENCES companies(id), snapshot_id TEXT NOT NULL,
    status TEXT NOT NULL, detail TEXT, created_at TEXT, ingested_at TEXT NOT NULL, records TEXT,
    PRIMARY KEY (company_id, snapshot_id));
CREATE TABLE IF NOT EXISTS links (
    token_hash TEXT PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id),
    expires_at INTEGER NOT NULL, used_at TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS link_codes (
    code_hash TEXT PRIMARY KEY, link_hash TEXT NOT NULL REFERENCES links(token_hash),
    company_id TEXT NOT NULL, state TEXT NOT NULL, expires_at INTEGER NOT NULL, used_at TEXT);
CREATE TABLE IF NOT EXISTS device_codes (
    device_code_hash TEXT PRIMARY KEY, user_code TEXT NOT NULL UNIQUE, device_name TEXT NOT NULL,
    expires_at INTEGER NOT NULL, company_id TEXT, link_hash TEXT, used_at TEXT);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id), name TEXT NOT NULL,
    secret_hash TEXT NOT NULL, next_hash TEXT, prev_hash TEXT, prev_until INTEGER,
    rotated_at INTEGER NOT NULL, revoked_at TEXT, created_at TEXT NOT NULL, last_seen_at TEXT,
    status TEXT);
CREATE INDEX IF NOT EXISTS devices_company ON devices(company_id);
CREATE TABLE IF NOT EXISTS sync_requests (
    id TEXT PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id), requested_at TEXT NOT NULL,
    taken_at TEXT, finished_at TEXT, outcome TEXT);
CREATE TABLE IF NOT EXISTS ingest_claims (
    company_id TEXT NOT NULL, snapshot_id TEXT NOT NULL, node TEXT NOT NULL,
    expires_at INTEGER NOT NULL, PRIMARY KEY (company_id, snapshot_id));
CREATE TABLE IF NOT EXISTS sync_results (
    company_id TEXT NOT NULL REFERENCES companies(id), device_id TEXT NOT NULL, ok INTEGER NOT NULL,
    reason TEXT, message TEXT, snapshot_id TEXT, started_at TEXT, finished_at TEXT,
    received_at TEXT NOT NULL);
";

/// Columns added to tables of earlier versions (`ALTER TABLE … ADD COLUMN`, once).
const MIGRATIONS: &[(&str, &str, &str)] = &[
    ("companies", "redirect_url", "TEXT"),
    ("clients", "revoked_at", "TEXT"),
];

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `prefix` and 32 random bytes as hex.
fn random_id(prefix: &str, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    format!("{prefix}{}", hex(&raw))
}

/// A random token of `bytes` bytes, hex.
pub fn random_token(bytes: usize) -> String {
    random_id("", bytes)
}

/// A delivery's id (its `webhook-id`): random, or made from the event's key and the
/// subscription when the event has one (the same event queued twice is one delivery).
pub(crate) fn delivery_id(webhook_id: &str, key: Option<&str>) -> String {
    match key {
        None => random_id("msg_", 12),
        Some(key) => {
            let digest = Sha256::digest(format!("{webhook_id}\n{key}").as_bytes());
            format!("msg_{}", hex(&digest[..12]))
        }
    }
}

/// A new webhook signing secret: `whsec_` and 32 random bytes, base64.
fn new_webhook_secret() -> String {
    use base64::Engine;
    let raw: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A new device-flow user code: as stored (8 consonants, nothing a person misreads) and as
/// shown (`XXXX-XXXX`).
fn new_user_code() -> (String, String) {
    const LETTERS: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    let user: String = (0..8)
        .map(|_| LETTERS[rand::random_range(0..LETTERS.len())] as char)
        .collect();
    let shown = format!("{}-{}", &user[..4], &user[4..]);
    (user, shown)
}

/// SHA-256 of an API key, hex.
pub(crate) fn key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Equality that takes the same time wherever the first difference is.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Seconds a rotated-out device credential keeps working after its successor's first use.
pub const ROTATION_GRACE_SECS: i64 = 15 * 60;

fn device_credential(id: &str, secret: &str) -> String {
    format!("{}{id}_{secret}", crate::protocol::DEVICE_CREDENTIAL_PREFIX)
}

/// Whether a link can still be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Unused and unexpired.
    Usable,
    /// A connector was linked with it already.
    Used,
    /// Past its time.
    Expired,
}

/// Where a device-code flow is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePoll {
    /// The user has not typed the code yet.
    Pending,
    /// Typed on a link page: the device may be created (answered once).
    Approved {
        /// The link's company.
        company_id: String,
        /// The device's name.
        device_name: String,
    },
    /// Not typed in time.
    Expired,
    /// Not a code (or already answered).
    Unknown,
}

/// A connector linked to a company.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    /// Its id.
    pub id: String,
    /// Its company.
    pub company_id: String,
    /// The PC's name.
    pub name: String,
    /// When it was linked.
    pub created_at: String,
    /// When it last called.
    pub last_seen_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// What it said at its last check-in.
    pub status: Option<serde_json::Value>,
}

/// What a presented device credential is.
#[derive(Debug, Clone)]
pub enum DeviceAuth {
    /// A valid credential of this device.
    Valid(Device),
    /// The device's credential, but the device was revoked.
    Revoked(Device),
    /// Not a credential.
    Invalid,
}

const DEVICE_COLUMNS: &str = "id, company_id, name, created_at, last_seen_at, revoked_at, status";

fn device_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: r.get(0)?,
        company_id: r.get(1)?,
        name: r.get(2)?,
        created_at: r.get(3)?,
        last_seen_at: r.get(4)?,
        revoked_at: r.get(5)?,
        status: r
            .get::<_, Option<String>>(6)?
            .and_then(|s| serde_json::from_str(&s).ok()),
    })
}

impl SqliteControl {
    fn device(&self, id: &str) -> Result<Option<Device>, ControlError> {
        Ok(self
            .rows(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = ?1"),
                [id],
                device_row,
            )?
            .pop())
    }

    /// Opens (creating) the control database at `path`.
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let shown = path.display().to_string();
        let err = |e: rusqlite::Error| ControlError::Db {
            path: shown.clone(),
            detail: e.to_string(),
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
        )
        .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        for (table, column, ty) in MIGRATIONS {
            let has: bool = conn
                .query_row(
                    &format!(
                        "SELECT count(*) > 0 FROM pragma_table_info('{table}') WHERE name = ?1"
                    ),
                    [column],
                    |r| r.get(0),
                )
                .map_err(err)?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .map_err(err)?;
            }
        }
        let secrets =
            super::secrets::SecretKeys::load_or_create(&super::secrets::SecretKeys::path_for(path))
                .map_err(ControlError::Secrets)?;
        let control = SqliteControl {
            conn: Mutex::new(conn),
            path: shown,
            secrets: Mutex::new(secrets),
        };
        // secrets of older versions, stored in clear, are sealed now
        let sealed = control.reseal_secrets(false)?;
        if sealed > 0 {
            tracing::info!(
                webhooks = sealed,
                "Sealed webhook secrets that were stored in clear."
            );
        }
        Ok(control)
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> ControlError + '_ {
        move |e| ControlError::Db {
            path: self.path.clone(),
            detail: e.to_string(),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, super::secrets::SecretKeys> {
        self.secrets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A stored secret opened; the key file is read again once when its key is unknown
    /// (another process rotated the keys).
    fn open_secret(&self, stored: &str) -> Result<String, ControlError> {
        let mut keys = self.keys();
        if let Some(secret) = keys.open(stored).map_err(ControlError::Secrets)? {
            return Ok(secret);
        }
        keys.reload().map_err(ControlError::Secrets)?;
        keys.open(stored)
            .map_err(ControlError::Secrets)?
            .ok_or_else(|| {
                ControlError::Secrets(
                    "a webhook secret is sealed under a key the secrets key file no longer holds: put that key back in the file (as a line after the first)".into(),
                )
            })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every row of a query, mapped.
    fn rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, ControlError> {
        let db = self.db();
        let mut stmt = db.prepare(sql).map_err(self.err())?;
        stmt.query_map(params, f)
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())
    }
}

fn company_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Company> {
    Ok(Company {
        id: r.get(0)?,
        client_id: r.get(1)?,
        name: r.get(2)?,
        created_at: r.get(3)?,
        redirect_url: r.get(4)?,
    })
}

const COMPANY_COLUMNS: &str = "id, client_id, name, created_at, redirect_url";

fn webhook_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Webhook> {
    webhook_at(r, 0)
}

/// A webhook from [`WEBHOOK_COLUMNS`] starting at column `at`.
fn webhook_at(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Webhook> {
    Ok(Webhook {
        id: r.get(at)?,
        client_id: r.get(at + 1)?,
        url: r.get(at + 2)?,
        event_types: serde_json::from_str(&r.get::<_, String>(at + 3)?).unwrap_or_default(),
        secret: r.get(at + 4)?,
        created_at: r.get(at + 5)?,
    })
}

const WEBHOOK_COLUMNS: &str = "w.id, w.client_id, w.url, w.event_types, w.secret, w.created_at";
const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.event_type, d.payload, d.status, d.attempts, d.next_attempt_at, d.created_at, d.delivered_at, d.last_error";

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        webhook_id: r.get(1)?,
        event_type: r.get(2)?,
        payload: r.get(3)?,
        status: r.get(4)?,
        attempts: r.get(5)?,
        next_attempt_at: r.get(6)?,
        created_at: r.get(7)?,
        delivered_at: r.get(8)?,
        last_error: r.get(9)?,
        attempt_log: Vec::new(),
    })
}

impl ControlPlane for SqliteControl {
    fn create_webhook(
        &self,
        client_id: &str,
        url: &str,
        event_types: &[String],
    ) -> Result<Webhook, ControlError> {
        let hook = Webhook {
            id: random_id("wh_", 10),
            client_id: client_id.to_owned(),
            url: url.to_owned(),
            event_types: event_types.to_vec(),
            secret: new_webhook_secret(),
            created_at: now(),
        };
        self.db()
            .execute(
                "INSERT INTO webhooks (id, client_id, url, event_types, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hook.id, hook.client_id, hook.url, serde_json::to_string(&hook.event_types).unwrap_or_default(), self.keys().seal(&hook.secret), hook.created_at],
            )
            .map_err(self.err())?;
        Ok(hook)
    }

    fn webhooks(&self, client_id: &str) -> Result<Vec<Webhook>, ControlError> {
        let rows = self.rows(
            &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.client_id = ?1 ORDER BY w.created_at, w.id"),
            [client_id],
            webhook_row,
        )?;
        rows.into_iter()
            .map(|mut hook| {
                hook.secret = self.open_secret(&hook.secret)?;
                Ok(hook)
            })
            .collect()
    }

    fn delete_webhook(&self, client_id: &str, webhook_id: &str) -> Result<bool, ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let owned: bool = tx
            .query_row(
                "SELECT count(*) > 0 FROM webhooks WHERE id = ?1 AND client_id = ?2",
                [webhook_id, client_id],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        if !owned {
            return Ok(false);
        }
        tx.execute(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE webhook_id = ?1)",
            [webhook_id],
        )
        .and_then(|_| tx.execute("DELETE FROM deliveries WHERE webhook_id = ?1", [webhook_id]))
            .and_then(|_| tx.execute("DELETE FROM webhooks WHERE id = ?1", [webhook_id]))
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(true)
    }

    fn enqueue_event(
        &self,
        client_id: &str,
        event_type: &str,
        payload: &serde_json::Value,
        key: Option<&str>,
    ) -> Result<usize, ControlError> {
        let hooks: Vec<Webhook> = self
            .webhooks(client_id)?
            .into_iter()
            .filter(|h| h.event_types.iter().any(|t| t == event_type))
            .collect();
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        let mut queued = 0;
        for hook in &hooks {
            queued += tx
                .execute(
                    "INSERT OR IGNORE INTO deliveries (id, webhook_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                     VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6)",
                    params![delivery_id(&hook.id, key), hook.id, event_type, payload.to_string(), now_ms, now()],
                )
                .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(queued)
    }

    fn due_deliveries(
        &self,
        now_ms: i64,
        per_webhook: usize,
        limit: usize,
        _lease_ms: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, ControlError> {
        let rows = self.rows(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, {WEBHOOK_COLUMNS}
                 FROM (SELECT *, row_number() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, created_at) AS nth
                       FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ?1) d
                 JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.nth <= ?2 ORDER BY d.next_attempt_at, d.created_at LIMIT ?3"
            ),
            params![now_ms, per_webhook as i64, limit as i64],
            // The webhook's columns follow the delivery's ten.
            |r| Ok((delivery_row(r)?, webhook_at(r, 10)?)),
        )?;
        rows.into_iter()
            .map(|(delivery, mut hook)| {
                hook.secret = self.open_secret(&hook.secret)?;
                Ok((delivery, hook))
            })
            .collect()
    }

    fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        delivered: bool,
        next_attempt_at: Option<i64>,
    ) -> Result<(), ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        tx.execute(
            "INSERT INTO attempts (delivery_id, at, status_code, error) VALUES (?1, ?2, ?3, ?4)",
            params![delivery_id, attempt.at, attempt.status_code, attempt.error],
        )
        .map_err(self.err())?;
        let status = match (delivered, next_attempt_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        tx.execute(
            "UPDATE deliveries SET attempts = attempts + 1, status = ?2, next_attempt_at = coalesce(?3, next_attempt_at),
                 delivered_at = CASE WHEN ?4 THEN ?5 ELSE delivered_at END, last_error = ?6 WHERE id = ?1 AND status = 'pending'",
            params![delivery_id, status, next_attempt_at, delivered, attempt.at, attempt.error],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    fn deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, ControlError> {
        // One statement: the page by the (webhook_id, created_at) index, each delivery's
        // attempts (at most 11) as a JSON array beside it.
        self.rows(
            &format!(
                "SELECT {DELIVERY_COLUMNS},
                    (SELECT json_group_array(json_object('at', a.at, 'statusCode', a.status_code, 'error', a.error))
                     FROM (SELECT * FROM attempts a WHERE a.delivery_id = d.id ORDER BY a.rowid) a)
                 FROM deliveries d
                 WHERE d.webhook_id = ?1
                   AND (?2 IS NULL OR (d.created_at, d.id) < (SELECT created_at, id FROM deliveries WHERE id = ?2 AND webhook_id = ?1))
                 ORDER BY d.created_at DESC, d.id DESC LIMIT ?3"
            ),
            params![webhook_id, after, limit as i64],
            |r| {
                let mut d = delivery_row(r)?;
                let log: String = r.get(10)?;
                d.attempt_log = serde_json::from_str(&log).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(10, rusqlite::types::Type::Text, e.into())
                })?;
                Ok(d)
            },
        )
    }

    fn purge_deliveries(&self, before: &str) -> Result<usize, ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        const OLD: &str = "SELECT id FROM deliveries WHERE created_at < ?1 AND status != 'pending'";
        tx.execute(
            &format!("DELETE FROM attempts WHERE delivery_id IN ({OLD})"),
            [before],
        )
        .map_err(self.err())?;
        let n = tx
            .execute(
                &format!("DELETE FROM deliveries WHERE id IN ({OLD})"),
                [before],
            )
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(n)
    }

    fn create_client(&self, name: &str) -> Result<(Client, String), ControlError> {
        let client = Client {
            id: random_id("cl_", 8),
            name: name.to_owned(),
        };
        let key = random_id("ck_", 32);
        self.db()
            .execute(
                "INSERT INTO clients (id, name, key_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![client.id, client.name, key_hash(&key), now()],
            )
            .map_err(self.err())?;
        Ok((client, key))
    }

    fn client_by_key(&self, key: &str) -> Result<Option<Client>, ControlError> {
        let wanted = key_hash(key);
        let found: Option<(String, String, String)> = self
            .db()
            .query_row(
                "SELECT id, name, key_hash FROM clients WHERE key_hash = ?1 AND revoked_at IS NULL",
                [&wanted],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err())?;
        Ok(found
            .filter(|(_, _, stored)| constant_time_eq(stored.as_bytes(), wanted.as_bytes()))
            .map(|(id, name, _)| Client { id, name }))
    }

    fn revoke_client(&self, client_id: &str) -> Result<bool, ControlError> {
        let n = self
            .db()
            .execute(
                "UPDATE clients SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                params![client_id, now()],
            )
            .map_err(self.err())?;
        Ok(n > 0)
    }

    fn rotate_client_key(&self, client_id: &str) -> Result<Option<String>, ControlError> {
        let key = random_id("ck_", 32);
        let n = self
            .db()
            .execute(
                "UPDATE clients SET key_hash = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![client_id, key_hash(&key)],
            )
            .map_err(self.err())?;
        Ok((n > 0).then_some(key))
    }

    fn version(&self) -> Result<i64, ControlError> {
        self.db()
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(self.err())
    }

    fn create_company(
        &self,
        client_id: &str,
        name: &str,
        redirect_url: Option<&str>,
    ) -> Result<Company, ControlError> {
        let company = Company {
            id: random_id("co", 10),
            client_id: client_id.to_owned(),
            name: name.to_owned(),
            created_at: now(),
            redirect_url: redirect_url.map(str::to_owned),
        };
        self.db()
            .execute(
                "INSERT INTO companies (id, client_id, name, created_at, redirect_url) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    company.id,
                    company.client_id,
                    company.name,
                    company.created_at,
                    company.redirect_url
                ],
            )
            .map_err(self.err())?;
        Ok(company)
    }

    fn company_by_id(&self, company_id: &str) -> Result<Option<Company>, ControlError> {
        Ok(self
            .rows(
                &format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE id = ?1"),
                [company_id],
                company_row,
            )?
            .pop())
    }

    fn create_link(&self, company_id: &str, ttl_secs: i64) -> Result<String, ControlError> {
        let token = random_id("lk_", 24);
        self.db()
            .execute(
                "INSERT INTO links (token_hash, company_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![key_hash(&token), company_id, now_ms() + ttl_secs * 1000, now()],
            )
            .map_err(self.err())?;
        Ok(token)
    }

    fn link(&self, token: &str) -> Result<Option<(Company, LinkState)>, ControlError> {
        let found: Option<(String, i64, Option<String>)> = self
            .db()
            .query_row(
                "SELECT company_id, expires_at, used_at FROM links WHERE token_hash = ?1",
                [key_hash(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((company_id, expires_at, used_at)) = found else {
            return Ok(None);
        };
        let state = if used_at.is_some() {
            LinkState::Used
        } else if expires_at <= now_ms() {
            LinkState::Expired
        } else {
            LinkState::Usable
        };
        Ok(self.company_by_id(&company_id)?.map(|c| (c, state)))
    }

    fn create_link_code(
        &self,
        token: &str,
        state: &str,
        ttl_secs: i64,
    ) -> Result<Option<String>, ControlError> {
        if !matches!(self.link(token)?, Some((_, LinkState::Usable))) {
            return Ok(None);
        }
        let Some((company, _)) = self.link(token)? else {
            return Ok(None);
        };
        let code = random_id("", 32);
        self.db()
            .execute(
                "INSERT INTO link_codes (code_hash, link_hash, company_id, state, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key_hash(&code), key_hash(token), company.id, state, now_ms() + ttl_secs * 1000],
            )
            .map_err(self.err())?;
        Ok(Some(code))
    }

    fn redeem_link_code(
        &self,
        code: &str,
        state: &str,
        company_id: &str,
    ) -> Result<Result<Company, &'static str>, ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        type Row = (
            String,
            String,
            String,
            i64,
            Option<String>,
            Option<String>,
            i64,
        );
        let found: Option<Row> = tx
            .query_row(
                "SELECT c.link_hash, c.company_id, c.state, c.expires_at, c.used_at, l.used_at, l.expires_at
                 FROM link_codes c JOIN links l ON l.token_hash = c.link_hash WHERE c.code_hash = ?1",
                [key_hash(code)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((
            link_hash,
            code_company,
            code_state,
            expires_at,
            used_at,
            link_used,
            link_expires,
        )) = found
        else {
            return Ok(Err(
                "this code is not valid: start again from the link page",
            ));
        };
        let verdict = if used_at.is_some() {
            Err("this code was already used: start again from the link page")
        } else if expires_at <= now_ms() || link_expires <= now_ms() {
            Err("this code has expired: start again from the link page")
        } else if !constant_time_eq(code_state.as_bytes(), state.as_bytes()) {
            Err("this code does not belong to this request (state differs)")
        } else if code_company != company_id {
            Err("this code is for another company")
        } else if link_used.is_some() {
            Err("this link was already used: ask the app for a new one")
        } else {
            Ok(())
        };
        if verdict.is_ok() {
            let at = now();
            tx.execute(
                "UPDATE link_codes SET used_at = ?2 WHERE code_hash = ?1",
                params![key_hash(code), at],
            )
            .map_err(self.err())?;
            tx.execute(
                "UPDATE links SET used_at = ?2 WHERE token_hash = ?1",
                params![link_hash, at],
            )
            .map_err(self.err())?;
        } else if used_at.is_none() {
            // A code presented wrongly is burnt: it cannot be tried again with other values.
            tx.execute(
                "UPDATE link_codes SET used_at = ?2 WHERE code_hash = ?1",
                params![key_hash(code), now()],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        drop(db);
        match verdict {
            Ok(()) => Ok(self
                .company_by_id(company_id)?
                .ok_or("this company no longer exists")),
            Err(why) => Ok(Err(why)),
        }
    }

    fn create_device_code(
        &self,
        device_name: &str,
        ttl_secs: i64,
    ) -> Result<(String, String), ControlError> {
        let device_code = random_id("", 32);
        let (user, user_code) = new_user_code();
        self.db()
            .execute(
                "INSERT INTO device_codes (device_code_hash, user_code, device_name, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![key_hash(&device_code), user, device_name, now_ms() + ttl_secs * 1000],
            )
            .map_err(self.err())?;
        Ok((device_code, user_code))
    }

    fn approve_user_code(
        &self,
        token: &str,
        user_code: &str,
    ) -> Result<Result<Company, &'static str>, ControlError> {
        let typed: String = user_code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let company = match self.link(token)? {
            Some((c, LinkState::Usable)) => c,
            Some((_, LinkState::Used)) => {
                return Ok(Err("this link was already used: ask the app for a new one"));
            }
            Some((_, LinkState::Expired)) => {
                return Ok(Err("this link has expired: ask the app for a new one"));
            }
            None => return Ok(Err("this link is not valid")),
        };
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let found: Option<(i64, Option<String>)> = tx
            .query_row(
                "SELECT expires_at, company_id FROM device_codes WHERE user_code = ?1",
                [&typed],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        let verdict = match found {
            None => Err("no connector shows this code: check the code in the connector's window"),
            Some((expires, _)) if expires <= now_ms() => {
                Err("this code has expired: ask the connector for a new one")
            }
            Some((_, Some(_))) => Err("this code was already used"),
            Some(_) => Ok(()),
        };
        if verdict.is_ok() {
            tx.execute(
                "UPDATE device_codes SET company_id = ?2, link_hash = ?3 WHERE user_code = ?1",
                params![typed, company.id, key_hash(token)],
            )
            .map_err(self.err())?;
            tx.execute(
                "UPDATE links SET used_at = ?2 WHERE token_hash = ?1",
                params![key_hash(token), now()],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(verdict.map(|()| company))
    }

    fn poll_device_code(&self, device_code: &str) -> Result<DevicePoll, ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let found: Option<(i64, Option<String>, Option<String>, String)> = tx
            .query_row(
                "SELECT expires_at, company_id, used_at, device_name FROM device_codes WHERE device_code_hash = ?1",
                [key_hash(device_code)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err())?;
        let poll = match found {
            None => DevicePoll::Unknown,
            Some((_, _, Some(_), _)) => DevicePoll::Unknown,
            Some((_, Some(company_id), None, device_name)) => {
                tx.execute(
                    "UPDATE device_codes SET used_at = ?2 WHERE device_code_hash = ?1",
                    params![key_hash(device_code), now()],
                )
                .map_err(self.err())?;
                DevicePoll::Approved {
                    company_id,
                    device_name,
                }
            }
            Some((expires, None, None, _)) if expires <= now_ms() => DevicePoll::Expired,
            Some(_) => DevicePoll::Pending,
        };
        tx.commit().map_err(self.err())?;
        Ok(poll)
    }

    fn create_device(
        &self,
        company_id: &str,
        name: &str,
    ) -> Result<(Device, String), ControlError> {
        let id = random_id("dev", 8);
        let secret = random_id("", 32);
        let device = Device {
            id: id.clone(),
            company_id: company_id.to_owned(),
            name: name.to_owned(),
            created_at: now(),
            last_seen_at: None,
            revoked_at: None,
            status: None,
        };
        self.db()
            .execute(
                "INSERT INTO devices (id, company_id, name, secret_hash, rotated_at, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, company_id, name, key_hash(&secret), now_ms(), device.created_at],
            )
            .map_err(self.err())?;
        Ok((device, device_credential(&id, &secret)))
    }

    fn authenticate_device(&self, credential: &str) -> Result<DeviceAuth, ControlError> {
        let Some((id, secret)) = credential
            .strip_prefix(crate::protocol::DEVICE_CREDENTIAL_PREFIX)
            .and_then(|rest| rest.rsplit_once('_'))
        else {
            return Ok(DeviceAuth::Invalid);
        };
        let wanted = key_hash(secret);
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        type Row = (
            String,
            Option<String>,
            Option<String>,
            Option<i64>,
            Option<String>,
        );
        let found: Option<Row> = tx
            .query_row(
                "SELECT secret_hash, next_hash, prev_hash, prev_until, revoked_at FROM devices WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((current, next, prev, prev_until, revoked)) = found else {
            return Ok(DeviceAuth::Invalid);
        };
        let is = |h: &Option<String>| {
            h.as_ref()
                .is_some_and(|h| constant_time_eq(h.as_bytes(), wanted.as_bytes()))
        };
        let valid = if constant_time_eq(current.as_bytes(), wanted.as_bytes()) {
            true
        } else if is(&next) {
            // The rotated credential's first use: the old one stays valid a little longer,
            // for requests already under way with it, then never again.
            tx.execute(
                "UPDATE devices SET prev_hash = secret_hash, prev_until = ?2, secret_hash = next_hash, next_hash = NULL WHERE id = ?1",
                params![id, now_ms() + ROTATION_GRACE_SECS * 1000],
            )
            .map_err(self.err())?;
            true
        } else {
            is(&prev) && prev_until.is_some_and(|t| t > now_ms())
        };
        if valid {
            tx.execute(
                "UPDATE devices SET last_seen_at = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        drop(db);
        if !valid {
            return Ok(DeviceAuth::Invalid);
        }
        let device = self.device(id)?.ok_or_else(|| ControlError::Db {
            path: self.path.clone(),
            detail: format!("device {id} vanished"),
        })?;
        Ok(if revoked.is_some() {
            DeviceAuth::Revoked(device)
        } else {
            DeviceAuth::Valid(device)
        })
    }

    fn rotate_device(
        &self,
        device_id: &str,
        older_than_secs: i64,
    ) -> Result<Option<String>, ControlError> {
        let secret = random_id("", 32);
        let changed = self
            .db()
            .execute(
                "UPDATE devices SET next_hash = ?2, rotated_at = ?3
                 WHERE id = ?1 AND revoked_at IS NULL AND (next_hash IS NOT NULL OR rotated_at <= ?4)",
                params![
                    device_id,
                    key_hash(&secret),
                    now_ms(),
                    now_ms() - older_than_secs * 1000
                ],
            )
            .map_err(self.err())?;
        Ok((changed == 1).then(|| device_credential(device_id, &secret)))
    }

    fn revoke_device(&self, device_id: &str) -> Result<Option<Device>, ControlError> {
        self.db()
            .execute(
                "UPDATE devices SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1",
                params![device_id, now()],
            )
            .map_err(self.err())?;
        self.device(device_id)
    }

    fn device_revoked(&self, device_id: &str) -> Result<Option<bool>, ControlError> {
        Ok(self.device(device_id)?.map(|d| d.revoked_at.is_some()))
    }

    fn devices(&self, company_id: &str) -> Result<Vec<Device>, ControlError> {
        self.rows(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE company_id = ?1 ORDER BY created_at DESC, id"),
            [company_id],
            device_row,
        )
    }

    fn record_checkin(
        &self,
        device_id: &str,
        status: &serde_json::Value,
    ) -> Result<(), ControlError> {
        self.db()
            .execute(
                "UPDATE devices SET status = ?2, last_seen_at = ?3 WHERE id = ?1",
                params![device_id, status.to_string(), now()],
            )
            .map_err(self.err())?;
        Ok(())
    }

    fn request_sync(&self, company_id: &str) -> Result<String, ControlError> {
        let db = self.db();
        let open: Option<String> = db
            .query_row(
                "SELECT id FROM sync_requests WHERE company_id = ?1 AND taken_at IS NULL ORDER BY requested_at LIMIT 1",
                [company_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(id) = open {
            return Ok(id);
        }
        let id = random_id("sr_", 10);
        db.execute(
            "INSERT INTO sync_requests (id, company_id, requested_at) VALUES (?1, ?2, ?3)",
            params![id, company_id, now()],
        )
        .map_err(self.err())?;
        Ok(id)
    }

    fn take_sync_request(&self, company_id: &str) -> Result<Option<String>, ControlError> {
        let db = self.db();
        let open: Option<String> = db
            .query_row(
                "SELECT id FROM sync_requests WHERE company_id = ?1 AND taken_at IS NULL ORDER BY requested_at LIMIT 1",
                [company_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())?;
        if let Some(id) = &open {
            db.execute(
                "UPDATE sync_requests SET taken_at = ?2 WHERE id = ?1",
                params![id, now()],
            )
            .map_err(self.err())?;
        }
        Ok(open)
    }

    fn record_sync_result(
        &self,
        company_id: &str,
        device_id: &str,
        r: &crate::protocol::SyncResult,
    ) -> Result<(), ControlError> {
        let db = self.db();
        db.execute(
            "INSERT INTO sync_results (company_id, device_id, ok, reason, message, snapshot_id, started_at, finished_at, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                company_id,
                device_id,
                r.ok,
                r.reason.map(|x| x.code()),
                r.message,
                r.snapshot_id,
                r.started_at,
                r.finished_at,
                now()
            ],
        )
        .map_err(self.err())?;
        if let Some(id) = &r.request_id {
            db.execute(
                "UPDATE sync_requests SET finished_at = ?2, outcome = ?3 WHERE id = ?1 AND company_id = ?4",
                params![id, r.finished_at, if r.ok { "ok" } else { "failed" }, company_id],
            )
            .map_err(self.err())?;
        }
        Ok(())
    }

    fn last_sync_result(
        &self,
        company_id: &str,
    ) -> Result<Option<crate::protocol::SyncResult>, ControlError> {
        Ok(self
            .rows(
                "SELECT ok, reason, message, snapshot_id, started_at, finished_at FROM sync_results
                 WHERE company_id = ?1 ORDER BY rowid DESC LIMIT 1",
                [company_id],
                |r| {
                    Ok(crate::protocol::SyncResult {
                        request_id: None,
                        ok: r.get(0)?,
                        reason: r
                            .get::<_, Option<String>>(1)?
                            .and_then(|c| crate::protocol::Reason::from_code(&c)),
                        message: r.get(2)?,
                        snapshot_id: r.get(3)?,
                        started_at: r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                        finished_at: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                    })
                },
            )?
            .pop())
    }

    fn companies(&self, client_id: &str) -> Result<Vec<Company>, ControlError> {
        let rows = self.rows(
            &format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE client_id = ?1 ORDER BY created_at, id"),
            [client_id],
            company_row,
        )?;
        Ok(rows)
    }

    fn company(&self, client_id: &str, company_id: &str) -> Result<Option<Company>, ControlError> {
        Ok(self
            .rows(
                &format!(
                    "SELECT {COMPANY_COLUMNS} FROM companies WHERE client_id = ?1 AND id = ?2"
                ),
                [client_id, company_id],
                company_row,
            )?
            .pop())
    }

    fn all_companies(&self) -> Result<Vec<Company>, ControlError> {
        let rows = self.rows(
            &format!("SELECT {COMPANY_COLUMNS} FROM companies ORDER BY id"),
            [],
            company_row,
        )?;
        Ok(rows)
    }

    fn record_snapshot(&self, r: &SnapshotRecord) -> Result<(), ControlError> {
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        // a snapshot going live after a newer one is recorded superseded
        let mut status = r.status.clone();
        if r.status == "live" {
            let newer: bool = tx
                .query_row(
                    "SELECT count(*) > 0 FROM snapshots WHERE company_id = ?1 AND snapshot_id > ?2 AND status <> 'failed'",
                    params![r.company_id, r.snapshot_id],
                    |row| row.get(0),
                )
                .map_err(self.err())?;
            if newer {
                status = "superseded".into();
            } else {
                tx.execute(
                    "UPDATE snapshots SET status = 'superseded' WHERE company_id = ?1 AND status = 'live'",
                    [&r.company_id],
                )
                .map_err(self.err())?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO snapshots (company_id, snapshot_id, status, detail, created_at, ingested_at, records)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.company_id,
                r.snapshot_id,
                status,
                r.detail,
                r.created_at,
                r.ingested_at,
                r.records.as_ref().map(|v| v.to_string())
            ],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    fn claim_ingest(
        &self,
        company_id: &str,
        snapshot_id: &str,
        node: &str,
        lease_ms: i64,
    ) -> Result<bool, ControlError> {
        let now = now_ms();
        let db = self.db();
        // the company's claims that ran out are done with (one row a company stays)
        db.execute(
            "DELETE FROM ingest_claims WHERE company_id = ?1 AND snapshot_id <> ?2 AND expires_at < ?3",
            params![company_id, snapshot_id, now],
        )
        .map_err(self.err())?;
        let claimed = db
            .execute(
                "INSERT INTO ingest_claims (company_id, snapshot_id, node, expires_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (company_id, snapshot_id) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
                 WHERE ingest_claims.node = excluded.node OR ingest_claims.expires_at < ?5",
                params![company_id, snapshot_id, node, now + lease_ms, now],
            )
            .map_err(self.err())?;
        Ok(claimed == 1)
    }

    fn reseal_secrets(&self, all: bool) -> Result<usize, ControlError> {
        let rows: Vec<(String, String)> =
            self.rows("SELECT id, secret FROM webhooks", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let mut n = 0;
        for (id, stored) in rows {
            let sealed = super::secrets::SecretKeys::is_sealed(&stored);
            if sealed && (!all || self.keys().is_current(&stored)) {
                continue;
            }
            let secret = self.open_secret(&stored)?;
            let resealed = self.keys().seal(&secret);
            tx.execute(
                "UPDATE webhooks SET secret = ?2 WHERE id = ?1",
                params![id, resealed],
            )
            .map_err(self.err())?;
            n += 1;
        }
        tx.commit().map_err(self.err())?;
        Ok(n)
    }

    fn snapshots(&self, company_id: &str) -> Result<Vec<SnapshotRecord>, ControlError> {
        let rows = self.rows(
            "SELECT snapshot_id, status, detail, created_at, ingested_at, records FROM snapshots
                 WHERE company_id = ?1 ORDER BY snapshot_id DESC",
            [company_id],
            |r| {
                Ok(SnapshotRecord {
                    company_id: company_id.to_owned(),
                    snapshot_id: r.get(0)?,
                    status: r.get(1)?,
                    detail: r.get(2)?,
                    created_at: r.get(3)?,
                    ingested_at: r.get(4)?,
                    records: r
                        .get::<_, Option<String>>(5)?
                        .and_then(|s| serde_json::from_str(&s).ok()),
                })
            },
        )?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The behaviour every [`ControlPlane`] keeps, checked on planes `open` makes on one
    /// store (two of them stand for two nodes, or two processes); `key_file` is the file that
    /// seals their webhook secrets. `shared` planes hand each due delivery to one node.
    pub(super) fn contract(
        open: &dyn Fn() -> Box<dyn ControlPlane>,
        key_file: &Path,
        shared: bool,
    ) {
        let (a, b) = (open(), open());

        // clients, their keys, and the version that moves when another node changes them
        let (client, key) = a.create_client("Lender").unwrap();
        assert!(client.id.starts_with("cl_"), "{}", client.id);
        assert!(key.starts_with("ck_") && key.len() == 67, "{key}");
        assert_eq!(b.client_by_key(&key).unwrap().unwrap().id, client.id);
        assert!(a.client_by_key(&key[..66]).unwrap().is_none());
        assert!(a.client_by_key("").unwrap().is_none());
        let before = a.version().unwrap();
        let rotated = b.rotate_client_key(&client.id).unwrap().unwrap();
        assert_ne!(
            a.version().unwrap(),
            before,
            "a key rotated elsewhere moves the version"
        );
        assert!(
            a.client_by_key(&key).unwrap().is_none(),
            "the old key stops working"
        );
        assert_eq!(a.client_by_key(&rotated).unwrap().unwrap().name, "Lender");
        assert!(a.rotate_client_key("cl_nosuch").unwrap().is_none());
        let (gone, gone_key) = a.create_client("Gone").unwrap();
        let before = a.version().unwrap();
        assert!(b.revoke_client(&gone.id).unwrap());
        assert_ne!(
            a.version().unwrap(),
            before,
            "a revocation elsewhere moves the version"
        );
        assert!(a.client_by_key(&gone_key).unwrap().is_none());
        assert!(a.rotate_client_key(&gone.id).unwrap().is_none());
        assert!(!a.revoke_client("cl_nosuch").unwrap());
        let (other, _) = a.create_client("Other").unwrap();

        // companies
        let c1 = a
            .create_company(&client.id, "Acme", Some("https://app.example/done"))
            .unwrap();
        let c2 = b.create_company(&client.id, "Beta", None).unwrap();
        assert!(crate::state::valid_company_id(&c1.id), "{}", c1.id);
        let found = a.company_by_id(&c1.id).unwrap().unwrap();
        assert_eq!(
            (found.name.as_str(), found.client_id.as_str()),
            ("Acme", client.id.as_str())
        );
        assert_eq!(
            found.redirect_url.as_deref(),
            Some("https://app.example/done")
        );
        assert!(a.company_by_id("conosuch").unwrap().is_none());
        let mut owned = [&c1, &c2];
        owned.sort_by(|x, y| (&x.created_at, &x.id).cmp(&(&y.created_at, &y.id)));
        let ids = |cs: Vec<Company>| cs.into_iter().map(|c| c.id).collect::<Vec<_>>();
        assert_eq!(
            ids(a.companies(&client.id).unwrap()),
            owned.iter().map(|c| c.id.clone()).collect::<Vec<_>>()
        );
        assert!(a.companies(&other.id).unwrap().is_empty());
        assert!(a.company(&other.id, &c1.id).unwrap().is_none());
        assert_eq!(a.company(&client.id, &c2.id).unwrap().unwrap().name, "Beta");
        let mut every = vec![c1.id.clone(), c2.id.clone()];
        every.sort();
        assert_eq!(ids(b.all_companies().unwrap()), every);

        // links and their loopback codes
        let token = a.create_link(&c1.id, 600).unwrap();
        assert!(token.starts_with("lk_"), "{token}");
        let (linked, state) = b.link(&token).unwrap().unwrap();
        assert_eq!(
            (linked.id.as_str(), state),
            (c1.id.as_str(), LinkState::Usable)
        );
        assert!(a.link("lk_nosuch").unwrap().is_none());
        let expired = a.create_link(&c1.id, -1).unwrap();
        assert_eq!(a.link(&expired).unwrap().unwrap().1, LinkState::Expired);
        assert!(a.create_link_code(&expired, "s", 60).unwrap().is_none());
        let code = a.create_link_code(&token, "state-1", 60).unwrap().unwrap();
        assert_eq!(
            b.redeem_link_code(&code, "state-x", &c1.id)
                .unwrap()
                .unwrap_err(),
            "this code does not belong to this request (state differs)"
        );
        assert_eq!(
            b.redeem_link_code(&code, "state-1", &c1.id)
                .unwrap()
                .unwrap_err(),
            "this code was already used: start again from the link page",
            "a code presented wrongly is burnt"
        );
        let code = a.create_link_code(&token, "state-2", 60).unwrap().unwrap();
        assert_eq!(
            a.redeem_link_code(&code, "state-2", &c2.id)
                .unwrap()
                .unwrap_err(),
            "this code is for another company"
        );
        let late = a.create_link_code(&token, "state-3", -1).unwrap().unwrap();
        assert_eq!(
            a.redeem_link_code(&late, "state-3", &c1.id)
                .unwrap()
                .unwrap_err(),
            "this code has expired: start again from the link page"
        );
        let code = a.create_link_code(&token, "state-4", 60).unwrap().unwrap();
        let spare = a.create_link_code(&token, "state-5", 60).unwrap().unwrap();
        assert_eq!(
            b.redeem_link_code(&code, "state-4", &c1.id)
                .unwrap()
                .unwrap()
                .id,
            c1.id
        );
        assert_eq!(a.link(&token).unwrap().unwrap().1, LinkState::Used);
        assert!(a.create_link_code(&token, "state-6", 60).unwrap().is_none());
        assert_eq!(
            a.redeem_link_code(&spare, "state-5", &c1.id)
                .unwrap()
                .unwrap_err(),
            "this link was already used: ask the app for a new one"
        );
        assert_eq!(
            a.redeem_link_code("nosuch", "s", &c1.id)
                .unwrap()
                .unwrap_err(),
            "this code is not valid: start again from the link page"
        );

        // device codes, approved on a link page
        let (device_code, user_code) = a.create_device_code("PC-1", 600).unwrap();
        assert!(
            user_code.len() == 9
                && user_code.as_bytes()[4] == b'-'
                && user_code
                    .chars()
                    .filter(|c| *c != '-')
                    .all(|c| c.is_ascii_uppercase()),
            "{user_code}"
        );
        assert_eq!(
            a.poll_device_code(&device_code).unwrap(),
            DevicePoll::Pending
        );
        let page = a.create_link(&c1.id, 600).unwrap();
        let typed = user_code.to_lowercase().replace('-', " ");
        assert_eq!(
            b.approve_user_code(&page, &typed).unwrap().unwrap().id,
            c1.id
        );
        assert_eq!(
            a.approve_user_code(&page, &user_code).unwrap().unwrap_err(),
            "this link was already used: ask the app for a new one"
        );
        assert_eq!(
            b.poll_device_code(&device_code).unwrap(),
            DevicePoll::Approved {
                company_id: c1.id.clone(),
                device_name: "PC-1".into()
            }
        );
        assert_eq!(
            a.poll_device_code(&device_code).unwrap(),
            DevicePoll::Unknown,
            "an approval is answered once"
        );
        assert_eq!(a.poll_device_code("nosuch").unwrap(), DevicePoll::Unknown);
        let (late_code, late_user) = a.create_device_code("PC-2", -1).unwrap();
        let page = a.create_link(&c2.id, 600).unwrap();
        assert_eq!(
            a.approve_user_code(&page, &late_user).unwrap().unwrap_err(),
            "this code has expired: ask the connector for a new one"
        );
        assert_eq!(a.poll_device_code(&late_code).unwrap(), DevicePoll::Expired);
        assert_eq!(
            a.approve_user_code(&page, "AAAA-AAAA")
                .unwrap()
                .unwrap_err(),
            "no connector shows this code: check the code in the connector's window"
        );
        let (_, twice) = a.create_device_code("PC-3", 600).unwrap();
        assert_eq!(
            a.approve_user_code(&page, &twice).unwrap().unwrap().id,
            c2.id,
            "a refused code leaves the link usable"
        );
        let page = a.create_link(&c2.id, 600).unwrap();
        assert_eq!(
            a.approve_user_code(&page, &twice).unwrap().unwrap_err(),
            "this code was already used"
        );
        let stale = a.create_link(&c2.id, -1).unwrap();
        assert_eq!(
            a.approve_user_code(&stale, &twice).unwrap().unwrap_err(),
            "this link has expired: ask the app for a new one"
        );
        assert_eq!(
            a.approve_user_code("lk_nosuch", &twice)
                .unwrap()
                .unwrap_err(),
            "this link is not valid"
        );

        // devices, their credentials' rotation, and revocation
        let (device, credential) = a.create_device(&c1.id, "PC-1").unwrap();
        assert!(device.id.starts_with("dev"), "{}", device.id);
        assert!(credential.starts_with(crate::protocol::DEVICE_CREDENTIAL_PREFIX));
        let valid = |auth: DeviceAuth| match auth {
            DeviceAuth::Valid(d) => d,
            other => panic!("not valid: {other:?}"),
        };
        let seen = valid(b.authenticate_device(&credential).unwrap());
        assert_eq!(seen.id, device.id);
        assert!(seen.last_seen_at.is_some());
        let wrong = format!("{}x", &credential[..credential.len() - 1]);
        assert!(matches!(
            a.authenticate_device(&wrong).unwrap(),
            DeviceAuth::Invalid
        ));
        assert!(matches!(
            a.authenticate_device("garbage").unwrap(),
            DeviceAuth::Invalid
        ));
        assert!(
            a.rotate_device(&device.id, 3600).unwrap().is_none(),
            "not due yet"
        );
        let unused = a.rotate_device(&device.id, 0).unwrap().unwrap();
        valid(a.authenticate_device(&credential).unwrap());
        let newer = b
            .rotate_device(&device.id, 3600)
            .unwrap()
            .expect("a rotation not yet used is made again");
        assert!(matches!(
            a.authenticate_device(&unused).unwrap(),
            DeviceAuth::Invalid
        ));
        valid(b.authenticate_device(&newer).unwrap());
        valid(a.authenticate_device(&credential).unwrap());
        assert!(a.rotate_device(&device.id, 3600).unwrap().is_none());
        let status = serde_json::json!({"state": "ready"});
        a.record_checkin(&device.id, &status).unwrap();
        let (second, _) = b.create_device(&c1.id, "PC-2").unwrap();
        let mut expected = vec![(device.created_at.clone(), device.id.clone())];
        expected.push((second.created_at.clone(), second.id.clone()));
        expected.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        let listed = a.devices(&c1.id).unwrap();
        assert_eq!(
            listed.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
        );
        let first = listed.iter().find(|d| d.id == device.id).unwrap();
        assert_eq!(first.status.as_ref(), Some(&status));
        assert!(a.devices(&c2.id).unwrap().is_empty());
        assert_eq!(a.device_revoked(&device.id).unwrap(), Some(false));
        let revoked = b.revoke_device(&device.id).unwrap().unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(revoked.company_id, c1.id);
        assert_eq!(a.device_revoked(&device.id).unwrap(), Some(true));
        assert!(matches!(
            a.authenticate_device(&newer).unwrap(),
            DeviceAuth::Revoked(d) if d.id == device.id
        ));
        assert!(a.rotate_device(&device.id, 0).unwrap().is_none());
        assert!(a.revoke_device("devnosuch").unwrap().is_none());
        assert_eq!(a.device_revoked("devnosuch").unwrap(), None);

        // sync requests and results
        let request = a.request_sync(&c1.id).unwrap();
        assert!(request.starts_with("sr_"), "{request}");
        assert_eq!(
            b.request_sync(&c1.id).unwrap(),
            request,
            "an untaken one is reused"
        );
        assert_eq!(b.take_sync_request(&c1.id).unwrap(), Some(request.clone()));
        assert_eq!(a.take_sync_request(&c1.id).unwrap(), None);
        let next = a.request_sync(&c1.id).unwrap();
        assert_ne!(next, request);
        assert!(a.last_sync_result(&c1.id).unwrap().is_none());
        let result = |ok: bool, snapshot: Option<&str>| crate::protocol::SyncResult {
            request_id: Some(next.clone()),
            ok,
            snapshot_id: snapshot.map(str::to_owned),
            reason: (!ok).then_some(crate::protocol::Reason::ALL[0]),
            message: (!ok).then(|| "it failed".to_owned()),
            started_at: "2025-01-01T10:00:00.000Z".into(),
            finished_at: "2025-01-01T10:01:00.000Z".into(),
        };
        a.record_sync_result(&c1.id, &second.id, &result(false, None))
            .unwrap();
        let last = b.last_sync_result(&c1.id).unwrap().unwrap();
        assert!(!last.ok);
        assert_eq!(last.reason, Some(crate::protocol::Reason::ALL[0]));
        assert_eq!(last.message.as_deref(), Some("it failed"));
        b.record_sync_result(&c1.id, &second.id, &result(true, Some("s0001")))
            .unwrap();
        let last = a.last_sync_result(&c1.id).unwrap().unwrap();
        assert!(last.ok && last.reason.is_none());
        assert_eq!(last.snapshot_id.as_deref(), Some("s0001"));
        assert_eq!(last.finished_at, "2025-01-01T10:01:00.000Z");
        assert!(a.last_sync_result(&c2.id).unwrap().is_none());

        // snapshots: a live one supersedes the live one, a failed one does not
        let record = |id: &str, status: &str| SnapshotRecord {
            company_id: c1.id.clone(),
            snapshot_id: id.into(),
            status: status.into(),
            detail: (status == "failed").then(|| "bad".to_owned()),
            created_at: Some("2025-01-01T09:00:00.000Z".into()),
            ingested_at: now(),
            records: None,
        };
        a.record_snapshot(&record("s0001", "live")).unwrap();
        b.record_snapshot(&record("s0002", "live")).unwrap();
        a.record_snapshot(&record("s0003", "failed")).unwrap();
        let mut again = record("s0002", "live");
        again.records = Some(serde_json::json!({"customers": 3}));
        b.record_snapshot(&again).unwrap();
        let history = a.snapshots(&c1.id).unwrap();
        let seen: Vec<(&str, &str)> = history
            .iter()
            .map(|r| (r.snapshot_id.as_str(), r.status.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("s0003", "failed"),
                ("s0002", "live"),
                ("s0001", "superseded")
            ]
        );
        assert_eq!(
            history[1].records, again.records,
            "a second record replaces the first"
        );
        assert_eq!(history[0].detail.as_deref(), Some("bad"));
        assert!(a.snapshots(&c2.id).unwrap().is_empty());

        // ingest claims: one node at a time, until its lease runs out
        assert!(a.claim_ingest(&c1.id, "s0004", "node-a", 60_000).unwrap());
        assert!(!b.claim_ingest(&c1.id, "s0004", "node-b", 60_000).unwrap());
        assert!(
            a.claim_ingest(&c1.id, "s0004", "node-a", 60_000).unwrap(),
            "its own"
        );
        assert!(
            b.claim_ingest(&c2.id, "s0004", "node-b", 60_000).unwrap(),
            "another company"
        );
        assert!(a.claim_ingest(&c1.id, "s0005", "node-a", -1).unwrap());
        assert!(
            b.claim_ingest(&c1.id, "s0005", "node-b", 60_000).unwrap(),
            "ran out"
        );
        assert!(!a.claim_ingest(&c1.id, "s0005", "node-a", 60_000).unwrap());

        // webhooks and the events queued for them
        let wanted = ["data.synced".to_owned(), "sync.failed".to_owned()];
        let hook = a
            .create_webhook(&client.id, "https://example.com/hook", &wanted)
            .unwrap();
        assert!(hook.id.starts_with("wh_"), "{}", hook.id);
        assert!(hook.secret.starts_with("whsec_"), "a new secret");
        let hook2 = b
            .create_webhook(&client.id, "https://example.com/other", &wanted[..1])
            .unwrap();
        let mut hooks = [&hook, &hook2];
        hooks.sort_by(|x, y| (&x.created_at, &x.id).cmp(&(&y.created_at, &y.id)));
        let listed = b.webhooks(&client.id).unwrap();
        assert_eq!(
            listed
                .iter()
                .map(|h| (h.id.as_str(), h.secret.as_str(), h.event_types.len()))
                .collect::<Vec<_>>(),
            hooks
                .iter()
                .map(|h| (h.id.as_str(), h.secret.as_str(), h.event_types.len()))
                .collect::<Vec<_>>(),
            "secrets come back opened"
        );
        assert!(a.webhooks(&other.id).unwrap().is_empty());
        let payload = serde_json::json!({"type": "x"});
        assert_eq!(
            a.enqueue_event(&client.id, "sync.failed", &payload, None)
                .unwrap(),
            1
        );
        let key = format!("data.synced:{}:s0002", c1.id);
        assert_eq!(
            a.enqueue_event(&client.id, "data.synced", &payload, Some(&key))
                .unwrap(),
            2
        );
        assert_eq!(
            b.enqueue_event(&client.id, "data.synced", &payload, Some(&key))
                .unwrap(),
            0,
            "the same event queued again is the same delivery"
        );
        assert_eq!(
            a.enqueue_event(&client.id, "nothing.wanted", &payload, None)
                .unwrap(),
            0
        );
        assert_eq!(
            a.enqueue_event(&other.id, "sync.failed", &payload, None)
                .unwrap(),
            0
        );
        let queued = a.deliveries(&hook.id, None, 10).unwrap();
        assert_eq!(queued.len(), 2);
        assert!(
            queued
                .iter()
                .any(|d| d.id == delivery_id(&hook.id, Some(&key)))
        );
        assert!(
            queued
                .iter()
                .all(|d| d.status == "pending" && d.attempts == 0)
        );
        let queued2 = a.deliveries(&hook2.id, None, 10).unwrap();
        assert_eq!(
            queued2.iter().map(|d| d.id.clone()).collect::<Vec<_>>(),
            [delivery_id(&hook2.id, Some(&key))]
        );

        // due deliveries: the oldest of each webhook first, each with its webhook
        let due_at = now_ms() + 1;
        let ids = |due: &[(Delivery, Webhook)]| {
            let mut ids: Vec<String> = due.iter().map(|(d, _)| d.id.clone()).collect();
            ids.sort();
            ids
        };
        let first = a.due_deliveries(due_at, 1, 100, DELIVERY_LEASE_MS).unwrap();
        assert_eq!(first.len(), 2, "one of each webhook");
        for (d, h) in &first {
            assert_eq!(d.webhook_id, h.id);
            let made = hooks.iter().find(|x| x.id == h.id).unwrap();
            assert_eq!(h.secret, made.secret, "the webhook's secret, opened");
        }
        let rest = b
            .due_deliveries(due_at, 10, 100, DELIVERY_LEASE_MS)
            .unwrap();
        if shared {
            // each delivery is handed to one node, which holds it for the lease
            assert_eq!(rest.len(), 1);
            assert!(first.iter().all(|(d, _)| d.id != rest[0].0.id));
            assert!(
                a.due_deliveries(due_at, 10, 100, DELIVERY_LEASE_MS)
                    .unwrap()
                    .is_empty()
            );
            let after_lease = due_at + DELIVERY_LEASE_MS + 1;
            assert_eq!(
                a.due_deliveries(after_lease, 10, 1, DELIVERY_LEASE_MS)
                    .unwrap()
                    .len(),
                1,
                "at most limit"
            );
            let again = b
                .due_deliveries(after_lease, 10, 100, DELIVERY_LEASE_MS)
                .unwrap();
            assert_eq!(again.len(), 2, "due again when the lease ran out");
        } else {
            assert_eq!(rest.len(), 3);
            assert!(ids(&first).iter().all(|id| ids(&rest).contains(id)));
            assert_eq!(
                a.due_deliveries(due_at, 10, 1, DELIVERY_LEASE_MS)
                    .unwrap()
                    .len(),
                1,
                "at most limit"
            );
        }

        // attempts
        let target = delivery_id(&hook.id, Some(&key));
        let at = |code: u16, error: Option<&str>| Attempt {
            at: now(),
            status_code: Some(code),
            error: error.map(str::to_owned),
        };
        let retry_at = due_at + 10 * DELIVERY_LEASE_MS;
        a.record_attempt(&target, &at(500, Some("HTTP 500")), false, Some(retry_at))
            .unwrap();
        let find = |webhook: &str, id: &str| {
            b.deliveries(webhook, None, 100)
                .unwrap()
                .into_iter()
                .find(|d| d.id == id)
                .unwrap()
        };
        let d = find(&hook.id, &target);
        assert_eq!((d.status.as_str(), d.attempts), ("pending", 1));
        assert_eq!(d.next_attempt_at, retry_at);
        assert_eq!(d.last_error.as_deref(), Some("HTTP 500"));
        assert_eq!(d.attempt_log.len(), 1);
        assert_eq!(d.attempt_log[0].status_code, Some(500));
        let delivered = at(200, None);
        b.record_attempt(&target, &delivered, true, None).unwrap();
        let d = find(&hook.id, &target);
        assert_eq!((d.status.as_str(), d.attempts), ("delivered", 2));
        assert_eq!(d.delivered_at.as_deref(), Some(delivered.at.as_str()));
        assert_eq!(d.last_error, None);
        assert_eq!(
            d.attempt_log
                .iter()
                .map(|x| x.status_code)
                .collect::<Vec<_>>(),
            [Some(500), Some(200)],
            "attempts in the order they were made"
        );
        let target2 = delivery_id(&hook2.id, Some(&key));
        a.record_attempt(&target2, &at(410, Some("HTTP 410")), false, None)
            .unwrap();
        assert_eq!(find(&hook2.id, &target2).status, "failed");
        let far = retry_at + 100 * DELIVERY_LEASE_MS;
        let due = a.due_deliveries(far, 10, 100, DELIVERY_LEASE_MS).unwrap();
        assert!(due.iter().all(|(d, _)| d.id != target && d.id != target2));

        // pages of deliveries, newest first
        for _ in 0..3 {
            a.enqueue_event(&client.id, "sync.failed", &payload, None)
                .unwrap();
        }
        let all = b.deliveries(&hook.id, None, 100).unwrap();
        assert_eq!(all.len(), 5);
        let mut sorted = all.clone();
        sorted.sort_by(|x, y| (&y.created_at, &y.id).cmp(&(&x.created_at, &x.id)));
        assert_eq!(
            all.iter().map(|d| &d.id).collect::<Vec<_>>(),
            sorted.iter().map(|d| &d.id).collect::<Vec<_>>()
        );
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = a.deliveries(&hook.id, after.as_deref(), 2).unwrap();
            assert!(page.len() <= 2);
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            paged.extend(page.into_iter().map(|d| d.id));
        }
        assert_eq!(paged, all.iter().map(|d| d.id.clone()).collect::<Vec<_>>());
        assert!(
            a.deliveries(&hook.id, Some("msg_nosuch"), 10)
                .unwrap()
                .is_empty()
        );

        // purge: done deliveries only
        assert_eq!(a.purge_deliveries("2000-01-01T00:00:00.000Z").unwrap(), 0);
        assert_eq!(b.purge_deliveries("9999-01-01T00:00:00.000Z").unwrap(), 2);
        assert_eq!(a.deliveries(&hook.id, None, 100).unwrap().len(), 4);
        assert!(a.deliveries(&hook2.id, None, 100).unwrap().is_empty());

        // secrets sealed again under a new key, still opened by a plane holding the old one
        assert_eq!(a.reseal_secrets(false).unwrap(), 0);
        assert_eq!(
            a.reseal_secrets(true).unwrap(),
            0,
            "all under the sealing key"
        );
        super::super::secrets::SecretKeys::rotate(key_file).unwrap();
        let fresh = open();
        assert_eq!(fresh.reseal_secrets(true).unwrap(), 2);
        assert_eq!(fresh.reseal_secrets(true).unwrap(), 0);
        let reopened = a.webhooks(&client.id).unwrap();
        assert_eq!(
            reopened
                .iter()
                .map(|h| h.secret.as_str())
                .collect::<Vec<_>>(),
            hooks.iter().map(|h| h.secret.as_str()).collect::<Vec<_>>(),
            "the key file is read again for a key it did not know"
        );

        // a webhook deleted with its deliveries, by its owner only
        assert!(!a.delete_webhook(&other.id, &hook.id).unwrap());
        assert!(b.delete_webhook(&client.id, &hook.id).unwrap());
        assert!(!b.delete_webhook(&client.id, &hook.id).unwrap());
        assert_eq!(
            a.webhooks(&client.id)
                .unwrap()
                .into_iter()
                .map(|h| h.id)
                .collect::<Vec<_>>(),
            [hook2.id.as_str()]
        );
        assert!(a.deliveries(&hook.id, None, 100).unwrap().is_empty());
    }

    #[test]
    fn sqlite_control_keeps_the_control_plane_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite3");
        let key_file = super::super::secrets::SecretKeys::path_for(&path);
        contract(
            &|| Box::new(SqliteControl::open(&path).unwrap()),
            &key_file,
            false,
        );
    }

    #[test]
    fn keys_are_stored_hashed_and_found_only_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sqlite3");
        let control = SqliteControl::open(&path).unwrap();
        let (client, key) = control.create_client("Lender").unwrap();
        assert!(key.starts_with("ck_") && key.len() == 67, "{key}");
        assert_eq!(control.client_by_key(&key).unwrap().unwrap().id, client.id);
        assert!(control.client_by_key(&key[..66]).unwrap().is_none());
        assert!(control.client_by_key("").unwrap().is_none());
        // The key itself is nowhere in the database file.
        drop(control);
        let bytes = std::fs::read(&path).unwrap();
        let needle = key.as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle));
    }

    #[test]
    fn companies_belong_to_their_client() {
        let dir = tempfile::tempdir().unwrap();
        let control = SqliteControl::open(&dir.path().join("c.sqlite3")).unwrap();
        let (a, _) = control.create_client("A").unwrap();
        let (b, _) = control.create_client("B").unwrap();
        let ca = control.create_company(&a.id, "Acme", None).unwrap();
        assert!(crate::state::valid_company_id(&ca.id), "{}", ca.id);
        assert_eq!(control.companies(&a.id).unwrap().len(), 1);
        assert!(control.companies(&b.id).unwrap().is_empty());
    }
}
