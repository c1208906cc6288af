//! The control plane: API clients and their hashed keys, companies, and snapshot history.
//!
//! [`ControlPlane`] is the interface; [`SqliteControl`] implements it in one embedded SQLite
//! file (`STATE/control.sqlite3`), the default for one machine. A PostgreSQL implementation
//! takes its place when the server outgrows one machine: the interface speaks in whole
//! operations, never in SQL, so nothing above it changes.
//!
//! API keys are 256 random bits. Only their SHA-256 is stored (a salt adds nothing to a key
//! that cannot be guessed), looked up by hash and compared in constant time.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::snapshot::hex;

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
#[derive(Debug, Clone, Serialize)]
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
    /// Queues an event for every subscription of `client_id` that wants `event_type` (one
    /// transaction: all or none).
    fn enqueue_event(
        &self,
        client_id: &str,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<usize, ControlError>;
    /// Pending deliveries due at `now_ms`, oldest first, with their webhook.
    fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(Delivery, Webhook)>, ControlError>;
    /// Records an attempt; `next_attempt_at` None means no more tries (delivered or failed).
    fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &Attempt,
        delivered: bool,
        next_attempt_at: Option<i64>,
    ) -> Result<(), ControlError>;
    /// A webhook's deliveries with their attempts, newest first.
    fn deliveries(&self, webhook_id: &str) -> Result<Vec<Delivery>, ControlError>;
    /// Creates a client; returns it and its API key (shown once, never stored).
    fn create_client(&self, name: &str) -> Result<(Client, String), ControlError>;
    /// The client an API key belongs to.
    fn client_by_key(&self, key: &str) -> Result<Option<Client>, ControlError>;
    /// Creates a company owned by `client_id`.
    fn create_company(&self, client_id: &str, name: &str) -> Result<Company, ControlError>;
    /// A client's companies.
    fn companies(&self, client_id: &str) -> Result<Vec<Company>, ControlError>;
    /// One company, if `client_id` owns it.
    fn company(&self, client_id: &str, company_id: &str) -> Result<Option<Company>, ControlError>;
    /// Every company (the ingest loop watches them all).
    fn all_companies(&self) -> Result<Vec<Company>, ControlError>;
    /// Records what happened to a snapshot (a second record for the same id replaces it).
    fn record_snapshot(&self, record: &SnapshotRecord) -> Result<(), ControlError>;
    /// A company's snapshots, newest first.
    fn snapshots(&self, company_id: &str) -> Result<Vec<SnapshotRecord>, ControlError>;
}

/// [`ControlPlane`] in SQLite.
pub struct SqliteControl {
    conn: Mutex<Connection>,
    path: String,
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
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries(id), at TEXT NOT NULL, status_code INTEGER,
    error TEXT);
CREATE TABLE IF NOT EXISTS snapshots (
    company_id TEXT NOT NULL REFERENCES companies(id), snapshot_id TEXT NOT NULL,
    status TEXT NOT NULL, detail TEXT, created_at TEXT, ingested_at TEXT NOT NULL, records TEXT,
    PRIMARY KEY (company_id, snapshot_id));
";

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `prefix` and 32 random bytes as hex.
fn random_id(prefix: &str, bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    format!("{prefix}{}", hex(&raw))
}

/// SHA-256 of an API key, hex.
pub(crate) fn key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Equality that takes the same time wherever the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl SqliteControl {
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
        Ok(SqliteControl {
            conn: Mutex::new(conn),
            path: shown,
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> ControlError + '_ {
        move |e| ControlError::Db {
            path: self.path.clone(),
            detail: e.to_string(),
        }
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
    })
}

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
        use base64::Engine;
        let raw: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let hook = Webhook {
            id: random_id("wh_", 10),
            client_id: client_id.to_owned(),
            url: url.to_owned(),
            event_types: event_types.to_vec(),
            secret: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            ),
            created_at: now(),
        };
        self.db()
            .execute(
                "INSERT INTO webhooks (id, client_id, url, event_types, secret, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![hook.id, hook.client_id, hook.url, serde_json::to_string(&hook.event_types).unwrap_or_default(), hook.secret, hook.created_at],
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
        Ok(rows)
    }

    fn enqueue_event(
        &self,
        client_id: &str,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<usize, ControlError> {
        let hooks: Vec<Webhook> = self
            .webhooks(client_id)?
            .into_iter()
            .filter(|h| h.event_types.iter().any(|t| t == event_type))
            .collect();
        let mut db = self.db();
        let tx = db.transaction().map_err(self.err())?;
        let now_ms = chrono::Utc::now().timestamp_millis();
        for hook in &hooks {
            tx.execute(
                "INSERT INTO deliveries (id, webhook_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6)",
                params![random_id("msg_", 12), hook.id, event_type, payload.to_string(), now_ms, now()],
            )
            .map_err(self.err())?;
        }
        tx.commit().map_err(self.err())?;
        Ok(hooks.len())
    }

    fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<(Delivery, Webhook)>, ControlError> {
        let rows = self.rows(
            &format!(
                "SELECT {DELIVERY_COLUMNS}, {WEBHOOK_COLUMNS} FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= ?1 ORDER BY d.next_attempt_at, d.created_at LIMIT ?2"
            ),
            params![now_ms, limit as i64],
            // The webhook's columns follow the delivery's ten.
            |r| Ok((delivery_row(r)?, webhook_at(r, 10)?)),
        )?;
        Ok(rows)
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
                 delivered_at = CASE WHEN ?4 THEN ?5 ELSE delivered_at END, last_error = ?6 WHERE id = ?1",
            params![delivery_id, status, next_attempt_at, delivered, attempt.at, attempt.error],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    fn deliveries(&self, webhook_id: &str) -> Result<Vec<Delivery>, ControlError> {
        let mut rows = self.rows(
            &format!("SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE d.webhook_id = ?1 ORDER BY d.created_at DESC, d.id"),
            [webhook_id],
            delivery_row,
        )?;
        let db = self.db();
        let mut attempts = db
            .prepare(
                "SELECT at, status_code, error FROM attempts WHERE delivery_id = ?1 ORDER BY rowid",
            )
            .map_err(self.err())?;
        for d in &mut rows {
            d.attempt_log = attempts
                .query_map([&d.id], |r| {
                    Ok(Attempt {
                        at: r.get(0)?,
                        status_code: r.get(1)?,
                        error: r.get(2)?,
                    })
                })
                .map_err(self.err())?
                .collect::<Result<Vec<_>, _>>()
                .map_err(self.err())?;
        }
        Ok(rows)
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
                "SELECT id, name, key_hash FROM clients WHERE key_hash = ?1",
                [&wanted],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(self.err())?;
        Ok(found
            .filter(|(_, _, stored)| constant_time_eq(stored.as_bytes(), wanted.as_bytes()))
            .map(|(id, name, _)| Client { id, name }))
    }

    fn create_company(&self, client_id: &str, name: &str) -> Result<Company, ControlError> {
        let company = Company {
            id: random_id("co", 10),
            client_id: client_id.to_owned(),
            name: name.to_owned(),
            created_at: now(),
        };
        self.db()
            .execute(
                "INSERT INTO companies (id, client_id, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![
                    company.id,
                    company.client_id,
                    company.name,
                    company.created_at
                ],
            )
            .map_err(self.err())?;
        Ok(company)
    }

    fn companies(&self, client_id: &str) -> Result<Vec<Company>, ControlError> {
        let rows = self.rows(
            "SELECT id, client_id, name, created_at FROM companies WHERE client_id = ?1 ORDER BY created_at, id",
            [client_id],
            company_row,
        )?;
        Ok(rows)
    }

    fn company(&self, client_id: &str, company_id: &str) -> Result<Option<Company>, ControlError> {
        Ok(self
            .rows(
                "SELECT id, client_id, name, created_at FROM companies WHERE client_id = ?1 AND id = ?2",
                [client_id, company_id],
                company_row,
            )?
            .pop())
    }

    fn all_companies(&self) -> Result<Vec<Company>, ControlError> {
        let rows = self.rows(
            "SELECT id, client_id, name, created_at FROM companies ORDER BY id",
            [],
            company_row,
        )?;
        Ok(rows)
    }

    fn record_snapshot(&self, r: &SnapshotRecord) -> Result<(), ControlError> {
        let db = self.db();
        if r.status == "live" {
            db.execute(
                "UPDATE snapshots SET status = 'superseded' WHERE company_id = ?1 AND status = 'live'",
                [&r.company_id],
            )
            .map_err(self.err())?;
        }
        db.execute(
            "INSERT OR REPLACE INTO snapshots (company_id, snapshot_id, status, detail, created_at, ingested_at, records)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                r.company_id,
                r.snapshot_id,
                r.status,
                r.detail,
                r.created_at,
                r.ingested_at,
                r.records.as_ref().map(|v| v.to_string())
            ],
        )
        .map_err(self.err())?;
        Ok(())
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
        let ca = control.create_company(&a.id, "Acme").unwrap();
        assert!(crate::state::valid_company_id(&ca.id), "{}", ca.id);
        assert_eq!(control.companies(&a.id).unwrap().len(), 1);
        assert!(control.companies(&b.id).unwrap().is_empty());
    }
}
