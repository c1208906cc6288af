//! The control plane in PostgreSQL: [`PostgresControl`], the [`ControlPlane`] that several
//! server nodes share (`--control postgres://user@host:port/database`).
//!
//! It keeps the same data as [`super::SqliteControl`], with the same ids, orderings, errors
//! and sealed webhook secrets (see [`super::super::secrets`]: every node must read the same
//! key file, e.g. through `CONNECTOR_SECRETS_KEY_FILE`). What SQLite gets from being one
//! process's file, PostgreSQL gets from its locks: every read-then-write is a transaction
//! that locks what it read (`SELECT … FOR UPDATE`) or one guarded `UPDATE … RETURNING`, so
//! two nodes doing the same thing at once do it once.
//!
//! **Leases.** Some work is done by one node of many:
//! - a due webhook delivery is handed to one node by [`ControlPlane::due_deliveries`]: in one
//!   statement the due rows are locked (`FOR UPDATE SKIP LOCKED`: rows another node is
//!   taking are skipped, not waited for) and their next attempt pushed to now + the
//!   node's lease (`--delivery-lease-secs`, [`DELIVERY_LEASE_MS`] by default). The node's [`ControlPlane::record_attempt`] then sets the real
//!   next attempt; a node that dies mid-delivery leaves it due again for any node when the
//!   lease runs out.
//! - the recording of a snapshot is claimed by [`ControlPlane::claim_ingest`] for the lease
//!   its caller gives; one `INSERT … ON CONFLICT DO UPDATE … WHERE` decides who holds it.
//!
//! [`ControlPlane::version`] is a counter in the database that revoking a client or rotating
//! its key moves in the same transaction, so every node drops the API keys it remembered.
//!
//! **Migrations.** The schema is an ordered list of migrations ([`MIGRATIONS`]; version 1 is
//! the whole schema of the first release). At start each missing one is applied in order,
//! each in its own transaction holding a transaction-scoped advisory lock, and recorded in
//! `schema_migrations(version, applied_at)`: nodes starting at once apply each migration once,
//! and a failed one leaves nothing half done. A migration is never edited once released, and
//! only adds (tables, nullable columns, indexes): a node of the previous release keeps
//! working on a database a newer node has migrated (it logs the versions it does not know).
//!
//! **Connections.** The synchronous `postgres` client runs its own runtime and blocks on it,
//! so it is called only from plain threads or tokio's blocking pool ([`super::blocking`]),
//! never from an async task. A pool of at most [`POOL_SIZE`] connections lets calls from
//! several threads run at once; a connection found closed is dropped and another made. They
//! are made without TLS: the database is expected on loopback or a private network (TLS is
//! for a later change). The password comes from the URL, else `PGPASSWORD`; it never
//! appears in an error or a log, which name the database as `postgres://user@host:port/db`.

use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, Config, NoTls, Row};

use super::super::secrets::SecretKeys;
use super::{
    Attempt, Client as ApiClient, Company, ControlError, ControlPlane, Delivery, Device,
    DeviceAuth, DevicePoll, LinkState, ROTATION_GRACE_SECS, SnapshotRecord, Webhook,
    constant_time_eq, delivery_id, device_credential, key_hash, new_user_code, new_webhook_secret,
    now, now_ms, random_id,
};

/// The most connections one node keeps to the control database.
pub const POOL_SIZE: usize = 8;

/// How long making a connection may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The advisory lock that serialises migrations between nodes (any constant, the same in
/// every release: "control" in ASCII).
const MIGRATION_LOCK: i64 = 0x63_6f6e_7472_6f6c;

/// What a failed connection is told to check.
const CONNECT_HINT: &str = "check --control (CONNECTOR_CONTROL), the password in it or in PGPASSWORD, and that PostgreSQL is running and lets this user in";

/// The schema, one migration per release that changed it, oldest first: version N is
/// `MIGRATIONS[N - 1]`. Never edit a released one; add the next.
pub const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's control database (with its added columns), timestamps as the
    // same RFC 3339 text, times in milliseconds as BIGINT. Ids and the text that orders pages
    // compare byte by byte (COLLATE "C"), as in SQLite, whatever the database's collation.
    r#"
CREATE TABLE clients (
    id TEXT COLLATE "C" PRIMARY KEY, name TEXT NOT NULL, key_hash TEXT NOT NULL UNIQUE,
    created_at TEXT COLLATE "C" NOT NULL, revoked_at TEXT);
CREATE TABLE companies (
    id TEXT COLLATE "C" PRIMARY KEY, client_id TEXT NOT NULL REFERENCES clients(id),
    name TEXT NOT NULL, created_at TEXT COLLATE "C" NOT NULL, redirect_url TEXT);
CREATE INDEX companies_client ON companies(client_id);
CREATE TABLE webhooks (
    id TEXT COLLATE "C" PRIMARY KEY, client_id TEXT NOT NULL REFERENCES clients(id),
    url TEXT NOT NULL, event_types TEXT NOT NULL, secret TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL);
CREATE INDEX webhooks_client ON webhooks(client_id);
CREATE TABLE deliveries (
    id TEXT COLLATE "C" PRIMARY KEY, webhook_id TEXT NOT NULL REFERENCES webhooks(id),
    event_type TEXT NOT NULL, payload TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at BIGINT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL, delivered_at TEXT, last_error TEXT);
CREATE INDEX deliveries_due ON deliveries(status, next_attempt_at);
CREATE INDEX deliveries_webhook ON deliveries(webhook_id, created_at);
CREATE INDEX deliveries_created ON deliveries(created_at);
CREATE TABLE attempts (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES deliveries(id), at TEXT NOT NULL,
    status_code INTEGER, error TEXT);
CREATE INDEX attempts_delivery ON attempts(delivery_id);
CREATE TABLE snapshots (
    company_id TEXT COLLATE "C" NOT NULL REFERENCES companies(id),
    snapshot_id TEXT COLLATE "C" NOT NULL, status TEXT NOT NULL, detail TEXT, created_at TEXT,
    ingested_at TEXT NOT NULL, records TEXT, PRIMARY KEY (company_id, snapshot_id));
CREATE TABLE links (
    token_hash TEXT PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id),
    expires_at BIGINT NOT NULL, used_at TEXT, created_at TEXT NOT NULL);
CREATE TABLE link_codes (
    code_hash TEXT PRIMARY KEY, link_hash TEXT NOT NULL REFERENCES links(token_hash),
    company_id TEXT NOT NULL, state TEXT NOT NULL, expires_at BIGINT NOT NULL, used_at TEXT);
CREATE TABLE device_codes (
    device_code_hash TEXT PRIMARY KEY, user_code TEXT NOT NULL UNIQUE, device_name TEXT NOT NULL,
    expires_at BIGINT NOT NULL, company_id TEXT, link_hash TEXT, used_at TEXT);
CREATE TABLE devices (
    id TEXT COLLATE "C" PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id),
    name TEXT NOT NULL, secret_hash TEXT NOT NULL, next_hash TEXT, prev_hash TEXT,
    prev_until BIGINT, rotated_at BIGINT NOT NULL, revoked_at TEXT,
    created_at TEXT COLLATE "C" NOT NULL, last_seen_at TEXT, status TEXT);
CREATE INDEX devices_company ON devices(company_id);
CREATE TABLE sync_requests (
    id TEXT COLLATE "C" PRIMARY KEY, company_id TEXT NOT NULL REFERENCES companies(id),
    requested_at TEXT COLLATE "C" NOT NULL, taken_at TEXT, finished_at TEXT, outcome TEXT);
CREATE INDEX sync_requests_company ON sync_requests(company_id);
CREATE TABLE ingest_claims (
    company_id TEXT NOT NULL, snapshot_id TEXT NOT NULL, node TEXT NOT NULL,
    expires_at BIGINT NOT NULL, PRIMARY KEY (company_id, snapshot_id));
CREATE TABLE sync_results (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    company_id TEXT NOT NULL REFERENCES companies(id), device_id TEXT NOT NULL,
    ok BOOLEAN NOT NULL, reason TEXT, message TEXT, snapshot_id TEXT, started_at TEXT,
    finished_at TEXT, received_at TEXT NOT NULL);
CREATE INDEX sync_results_company ON sync_results(company_id, seq);
CREATE TABLE control_version (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
INSERT INTO control_version (version) VALUES (0);
"#,
];

/// Why a call failed, inside: the database, or the control plane's own reason.
enum Fail {
    Pg(postgres::Error),
    Control(ControlError),
}

impl From<postgres::Error> for Fail {
    fn from(e: postgres::Error) -> Self {
        Fail::Pg(e)
    }
}

impl From<ControlError> for Fail {
    fn from(e: ControlError) -> Self {
        Fail::Control(e)
    }
}

/// The pooled connections: those idle, and how many exist (idle or in use).
struct Pool {
    idle: Vec<Client>,
    open: usize,
}

/// [`ControlPlane`] in PostgreSQL, shared by several nodes.
pub struct PostgresControl {
    config: Config,
    /// The database as errors name it: its URL without the password.
    shown: String,
    /// The password, taken out of every message that could carry it.
    password: Option<String>,
    pool: Mutex<Pool>,
    /// Signalled when a connection goes back to the pool (or is dropped).
    returned: Condvar,
    /// The keys that seal webhook secrets (see [`super::super::secrets`]).
    secrets: Mutex<SecretKeys>,
}

/// A connection taken from the pool; it goes back when dropped (closed ones are dropped).
struct Conn<'a> {
    owner: &'a PostgresControl,
    client: Option<Client>,
}

impl std::ops::Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a pooled connection is present until dropped")
    }
}

impl std::ops::DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("a pooled connection is present until dropped")
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let broken = {
            let mut pool = self.owner.pool();
            if client.is_closed() {
                pool.open -= 1;
                Some(client)
            } else {
                pool.idle.push(client);
                None
            }
        };
        self.owner.returned.notify_one();
        drop(broken);
    }
}

impl Drop for PostgresControl {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool.get_mut().unwrap_or_else(|e| e.into_inner()).idle);
        if tokio::runtime::Handle::try_current().is_ok() {
            // a client closes through its own runtime, which must not start on an async
            // worker (the server may drop the last handle there)
            let _ = std::thread::spawn(move || drop(idle)).join();
        }
    }
}

/// The configuration a `--control` URL names, the password from `env_password` (the
/// `PGPASSWORD` environment variable) when the URL has none; with the database as errors
/// show it (without the password) and the password.
fn configure(
    url: &str,
    env_password: Option<String>,
) -> Result<(Config, String, Option<String>), ControlError> {
    let mut config: Config = url.parse().map_err(|e: postgres::Error| {
        let written = written_password(url);
        ControlError::Db {
            path: without_password(url),
            detail: scrub(
                format!(
                    "not a PostgreSQL URL ({}): write it as postgres://user@host:port/database",
                    explain(&e)
                ),
                written.as_deref(),
            ),
        }
    })?;
    if config.get_password().is_none()
        && let Some(password) = env_password.filter(|p| !p.is_empty())
    {
        config.password(password);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("connector-server");
    }
    let password = config
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            // one port serves every host; else each host has its own
            let ports = config.get_ports();
            (
                host,
                ports.get(i).or(ports.first()).copied().unwrap_or(5432),
            )
        })
        .map(|(host, port)| match host {
            Host::Tcp(name) => format!("{name}:{port}"),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or_default();
    let shown = format!("postgres://{user}{}/{db}", hosts.join(","));
    Ok((config, shown, password))
}

/// The password written in a URL's user part, as written.
fn written_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let (user, _) = authority.rsplit_once('@')?;
    user.split_once(':').map(|(_, p)| p.to_owned())
}

/// A URL with the password of its user part taken out.
fn without_password(url: &str) -> String {
    match written_password(url) {
        Some(p) => url.replacen(&format!(":{p}@"), "@", 1),
        None => url.to_owned(),
    }
}

/// An error of the client with its causes ("db error" alone says nothing: the server's
/// message is its cause).
fn explain(e: &postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// `text` with every occurrence of the password replaced.
fn scrub(text: String, password: Option<&str>) -> String {
    match password.filter(|p| !p.is_empty()) {
        Some(p) if text.contains(p) => text.replace(p, "***"),
        _ => text,
    }
}

impl PostgresControl {
    /// Connects to the control database `url` (`postgres://user[:password]@host:port/db`,
    /// the password else from `PGPASSWORD`), brings its schema up to date, and loads the
    /// key file that seals webhook secrets (made when missing).
    pub fn open(url: &str, secrets_key_file: &Path) -> Result<Self, ControlError> {
        let (config, shown, password) = configure(url, std::env::var("PGPASSWORD").ok())?;
        let secrets =
            SecretKeys::load_or_create(secrets_key_file).map_err(ControlError::Secrets)?;
        let control = PostgresControl {
            config,
            shown,
            password,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
            secrets: Mutex::new(secrets),
        };
        control.migrate()?;
        let sealed = control.reseal_secrets(false)?;
        if sealed > 0 {
            tracing::info!(
                webhooks = sealed,
                "Sealed webhook secrets that were stored in clear."
            );
        }
        Ok(control)
    }

    /// Applies the migrations the database lacks, in order (see the module's header).
    fn migrate(&self) -> Result<(), ControlError> {
        let mut conn = self.conn()?;
        let lock = |tx: &mut postgres::Transaction<'_>| {
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        };
        let mut tx = conn.transaction().map_err(|e| self.db_err(e))?;
        lock(&mut tx)
            .and_then(|_| {
                tx.batch_execute(
                    // quietly: "already exists" is the usual case, not news for the log
                    "SET LOCAL client_min_messages = warning;
                     CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)",
                )
            })
            .and_then(|()| tx.commit())
            .map_err(|e| self.db_err(e))?;
        for (n, sql) in MIGRATIONS.iter().enumerate() {
            let version = n as i32 + 1;
            let failed = |e: postgres::Error| ControlError::Db {
                path: self.shown.clone(),
                detail: self.scrubbed(format!(
                    "schema migration {version} failed, nothing of it was applied: {}",
                    explain(&e)
                )),
            };
            let mut tx = conn.transaction().map_err(failed)?;
            lock(&mut tx).map_err(failed)?;
            let applied = tx
                .query_opt(
                    "SELECT 1 FROM schema_migrations WHERE version = $1",
                    &[&version],
                )
                .map_err(failed)?
                .is_some();
            if !applied {
                tx.batch_execute(sql)
                    .and_then(|()| {
                        tx.execute(
                            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                            &[&version, &now()],
                        )
                    })
                    .map_err(failed)?;
            }
            tx.commit().map_err(failed)?;
            if !applied {
                tracing::info!(version, database = %self.shown, "Applied a control-database migration.");
            }
        }
        let newest: Option<i32> = conn
            .query_one("SELECT max(version) FROM schema_migrations", &[])
            .map_err(|e| self.db_err(e))?
            .get(0);
        if let Some(newest) = newest.filter(|v| *v as usize > MIGRATIONS.len()) {
            tracing::warn!(
                newest,
                known = MIGRATIONS.len(),
                "The control database was migrated by a newer release; this one keeps working on it."
            );
        }
        Ok(())
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: an idle one, a new one while fewer than [`POOL_SIZE`] exist, else the
    /// first one given back.
    fn conn(&self) -> Result<Conn<'_>, ControlError> {
        let mut pool = self.pool();
        loop {
            while let Some(client) = pool.idle.pop() {
                if !client.is_closed() {
                    return Ok(Conn {
                        owner: self,
                        client: Some(client),
                    });
                }
                pool.open -= 1;
            }
            if pool.open < POOL_SIZE {
                pool.open += 1;
                break;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
        drop(pool);
        match self.config.connect(NoTls) {
            Ok(client) => Ok(Conn {
                owner: self,
                client: Some(client),
            }),
            Err(e) => {
                self.pool().open -= 1;
                self.returned.notify_one();
                Err(ControlError::Db {
                    path: self.shown.clone(),
                    detail: self
                        .scrubbed(format!("cannot connect: {} ({CONNECT_HINT})", explain(&e))),
                })
            }
        }
    }

    fn scrubbed(&self, text: String) -> String {
        scrub(text, self.password.as_deref())
    }

    fn db_err(&self, e: postgres::Error) -> ControlError {
        ControlError::Db {
            path: self.shown.clone(),
            detail: self.scrubbed(explain(&e)),
        }
    }

    /// Runs `work` on a pooled connection.
    fn with<T>(
        &self,
        work: impl FnOnce(&mut Client) -> Result<T, Fail>,
    ) -> Result<T, ControlError> {
        let mut conn = self.conn()?;
        work(&mut conn).map_err(|f| match f {
            Fail::Pg(e) => self.db_err(e),
            Fail::Control(e) => e,
        })
    }

    /// Every row of a query, mapped.
    fn rows<T>(
        &self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        f: impl Fn(&Row) -> T,
    ) -> Result<Vec<T>, ControlError> {
        self.with(|c| Ok(c.query(sql, params)?.iter().map(f).collect()))
    }

    fn keys(&self) -> MutexGuard<'_, SecretKeys> {
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

    fn device(&self, id: &str) -> Result<Option<Device>, ControlError> {
        Ok(self
            .rows(
                &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"),
                &[&id],
                device_row,
            )?
            .pop())
    }
}

const COMPANY_COLUMNS: &str = "id, client_id, name, created_at, redirect_url";

fn company_row(r: &Row) -> Company {
    Company {
        id: r.get(0),
        client_id: r.get(1),
        name: r.get(2),
        created_at: r.get(3),
        redirect_url: r.get(4),
    }
}

const DEVICE_COLUMNS: &str = "id, company_id, name, created_at, last_seen_at, revoked_at, status";

fn device_row(r: &Row) -> Device {
    Device {
        id: r.get(0),
        company_id: r.get(1),
        name: r.get(2),
        created_at: r.get(3),
        last_seen_at: r.get(4),
        revoked_at: r.get(5),
        status: r
            .get::<_, Option<String>>(6)
            .and_then(|s| serde_json::from_str(&s).ok()),
    }
}

const WEBHOOK_COLUMNS: &str = "w.id, w.client_id, w.url, w.event_types, w.secret, w.created_at";

/// A webhook from [`WEBHOOK_COLUMNS`] starting at column `at` (its secret as stored).
fn webhook_at(r: &Row, at: usize) -> Webhook {
    Webhook {
        id: r.get(at),
        client_id: r.get(at + 1),
        url: r.get(at + 2),
        event_types: serde_json::from_str(&r.get::<_, String>(at + 3)).unwrap_or_default(),
        secret: r.get(at + 4),
        created_at: r.get(at + 5),
    }
}

const DELIVERY_COLUMNS: &str = "d.id, d.webhook_id, d.event_type, d.payload, d.status, d.attempts, d.next_attempt_at, d.created_at, d.delivered_at, d.last_error";

fn delivery_row(r: &Row) -> Delivery {
    Delivery {
        id: r.get(0),
        webhook_id: r.get(1),
        event_type: r.get(2),
        payload: r.get(3),
        status: r.get(4),
        attempts: r.get::<_, i32>(5).max(0) as u32,
        next_attempt_at: r.get(6),
        created_at: r.get(7),
        delivered_at: r.get(8),
        last_error: r.get(9),
        attempt_log: Vec::new(),
    }
}

/// Moves [`ControlPlane::version`]: what nodes remember of clients' keys is dropped.
const BUMP_VERSION: &str = "UPDATE control_version SET version = version + 1";

impl ControlPlane for PostgresControl {
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
        let sealed = self.keys().seal(&hook.secret);
        let types = serde_json::to_string(&hook.event_types).unwrap_or_default();
        self.with(|c| {
            c.execute(
                "INSERT INTO webhooks (id, client_id, url, event_types, secret, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&hook.id, &hook.client_id, &hook.url, &types, &sealed, &hook.created_at],
            )?;
            Ok(())
        })?;
        Ok(hook)
    }

    fn webhooks(&self, client_id: &str) -> Result<Vec<Webhook>, ControlError> {
        let rows = self.rows(
            &format!("SELECT {WEBHOOK_COLUMNS} FROM webhooks w WHERE w.client_id = $1 ORDER BY w.created_at, w.id"),
            &[&client_id],
            |r| webhook_at(r, 0),
        )?;
        rows.into_iter()
            .map(|mut hook| {
                hook.secret = self.open_secret(&hook.secret)?;
                Ok(hook)
            })
            .collect()
    }

    fn delete_webhook(&self, client_id: &str, webhook_id: &str) -> Result<bool, ControlError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let owned = tx
                .query_opt(
                    "SELECT 1 FROM webhooks WHERE id = $1 AND client_id = $2 FOR UPDATE",
                    &[&webhook_id, &client_id],
                )?
                .is_some();
            if !owned {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE webhook_id = $1)",
                &[&webhook_id],
            )?;
            tx.execute("DELETE FROM deliveries WHERE webhook_id = $1", &[&webhook_id])?;
            tx.execute("DELETE FROM webhooks WHERE id = $1", &[&webhook_id])?;
            tx.commit()?;
            Ok(true)
        })
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
        let (payload, at, due) = (payload.to_string(), now(), now_ms());
        self.with(|c| {
            let mut tx = c.transaction()?;
            let mut queued = 0;
            for hook in &hooks {
                queued += tx.execute(
                    "INSERT INTO deliveries (id, webhook_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, 'pending', 0, $5, $6) ON CONFLICT (id) DO NOTHING",
                    &[&delivery_id(&hook.id, key), &hook.id, &event_type, &payload, &due, &at],
                )?;
            }
            tx.commit()?;
            Ok(queued as usize)
        })
    }

    fn due_deliveries(
        &self,
        now_ms: i64,
        per_webhook: usize,
        limit: usize,
        lease_ms: i64,
    ) -> Result<Vec<(Delivery, Webhook)>, ControlError> {
        // The window picks the ids (it cannot sit beside FOR UPDATE); the lock re-checks that
        // each row is still due, so a row another node took meanwhile is not taken again.
        let rows = self.rows(
            &format!(
                "WITH picked AS (
                     SELECT id, next_attempt_at AS due_at FROM deliveries
                     WHERE id IN (
                         SELECT id FROM (
                             SELECT id, next_attempt_at, created_at,
                                    row_number() OVER (PARTITION BY webhook_id ORDER BY next_attempt_at, created_at) AS nth
                             FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $1) r
                         WHERE nth <= $2 ORDER BY next_attempt_at, created_at LIMIT $3)
                       AND status = 'pending' AND next_attempt_at <= $1
                     FOR UPDATE SKIP LOCKED),
                 taken AS (
                     UPDATE deliveries d SET next_attempt_at = $4 FROM picked p WHERE d.id = p.id
                     RETURNING d.id, d.webhook_id, d.event_type, d.payload, d.status, d.attempts,
                               p.due_at AS next_attempt_at, d.created_at, d.delivered_at, d.last_error)
                 SELECT {DELIVERY_COLUMNS}, {WEBHOOK_COLUMNS}
                 FROM taken d JOIN webhooks w ON w.id = d.webhook_id
                 ORDER BY d.next_attempt_at, d.created_at"
            ),
            &[
                &now_ms,
                &(per_webhook as i64),
                &(limit as i64),
                &(now_ms + lease_ms),
            ],
            // The webhook's columns follow the delivery's ten.
            |r| (delivery_row(r), webhook_at(r, 10)),
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
        let status = match (delivered, next_attempt_at) {
            (true, _) => "delivered",
            (false, Some(_)) => "pending",
            (false, None) => "failed",
        };
        let code = attempt.status_code.map(i32::from);
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO attempts (delivery_id, at, status_code, error) VALUES ($1, $2, $3, $4)",
                &[&delivery_id, &attempt.at, &code, &attempt.error],
            )?;
            tx.execute(
                "UPDATE deliveries SET attempts = attempts + 1, status = $2, next_attempt_at = coalesce($3::bigint, next_attempt_at),
                     delivered_at = CASE WHEN $4::boolean THEN $5::text ELSE delivered_at END, last_error = $6 WHERE id = $1 AND status = 'pending'",
                &[&delivery_id, &status, &next_attempt_at, &delivered, &attempt.at, &attempt.error],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn deliveries(
        &self,
        webhook_id: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Delivery>, ControlError> {
        // One statement: the page by the (webhook_id, created_at) index, each delivery's
        // attempts (at most 11) as a JSON array beside it.
        let rows = self.rows(
            &format!(
                "SELECT {DELIVERY_COLUMNS},
                    coalesce((SELECT json_agg(json_build_object('at', a.at, 'statusCode', a.status_code, 'error', a.error) ORDER BY a.seq)
                              FROM attempts a WHERE a.delivery_id = d.id), '[]'::json)::text
                 FROM deliveries d
                 WHERE d.webhook_id = $1
                   AND ($2::text IS NULL OR (d.created_at, d.id) < (SELECT created_at, id FROM deliveries WHERE id = $2 AND webhook_id = $1))
                 ORDER BY d.created_at DESC, d.id DESC LIMIT $3"
            ),
            &[&webhook_id, &after, &(limit as i64)],
            |r| (delivery_row(r), r.get::<_, String>(10)),
        )?;
        rows.into_iter()
            .map(|(mut d, log)| {
                d.attempt_log = serde_json::from_str(&log).map_err(|e| ControlError::Db {
                    path: self.shown.clone(),
                    detail: format!("the attempts of delivery {} do not read: {e}", d.id),
                })?;
                Ok(d)
            })
            .collect()
    }

    fn purge_deliveries(&self, before: &str) -> Result<usize, ControlError> {
        const OLD: &str = "SELECT id FROM deliveries WHERE created_at < $1 AND status <> 'pending'";
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                &format!("DELETE FROM attempts WHERE delivery_id IN ({OLD})"),
                &[&before],
            )?;
            let n = tx.execute(
                &format!("DELETE FROM deliveries WHERE id IN ({OLD})"),
                &[&before],
            )?;
            tx.commit()?;
            Ok(n as usize)
        })
    }

    fn create_client(&self, name: &str) -> Result<(ApiClient, String), ControlError> {
        let client = ApiClient {
            id: random_id("cl_", 8),
            name: name.to_owned(),
        };
        let key = random_id("ck_", 32);
        self.with(|c| {
            c.execute(
                "INSERT INTO clients (id, name, key_hash, created_at) VALUES ($1, $2, $3, $4)",
                &[&client.id, &client.name, &key_hash(&key), &now()],
            )?;
            Ok(())
        })?;
        Ok((client, key))
    }

    fn client_by_key(&self, key: &str) -> Result<Option<ApiClient>, ControlError> {
        let wanted = key_hash(key);
        let found = self.rows(
            "SELECT id, name, key_hash FROM clients WHERE key_hash = $1 AND revoked_at IS NULL",
            &[&wanted],
            |r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(2),
                )
            },
        )?;
        Ok(found
            .into_iter()
            .find(|(_, _, stored)| constant_time_eq(stored.as_bytes(), wanted.as_bytes()))
            .map(|(id, name, _)| ApiClient { id, name }))
    }

    fn revoke_client(&self, client_id: &str) -> Result<bool, ControlError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE clients SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1",
                &[&client_id, &now()],
            )?;
            if n > 0 {
                tx.execute(BUMP_VERSION, &[])?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn rotate_client_key(&self, client_id: &str) -> Result<Option<String>, ControlError> {
        let key = random_id("ck_", 32);
        self.with(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE clients SET key_hash = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&client_id, &key_hash(&key)],
            )?;
            if n > 0 {
                tx.execute(BUMP_VERSION, &[])?;
            }
            tx.commit()?;
            Ok((n > 0).then_some(key))
        })
    }

    fn version(&self) -> Result<i64, ControlError> {
        self.with(|c| {
            Ok(c.query_one("SELECT version FROM control_version", &[])?
                .get(0))
        })
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
        self.with(|c| {
            c.execute(
                "INSERT INTO companies (id, client_id, name, created_at, redirect_url) VALUES ($1, $2, $3, $4, $5)",
                &[
                    &company.id,
                    &company.client_id,
                    &company.name,
                    &company.created_at,
                    &company.redirect_url,
                ],
            )?;
            Ok(())
        })?;
        Ok(company)
    }

    fn company_by_id(&self, company_id: &str) -> Result<Option<Company>, ControlError> {
        Ok(self
            .rows(
                &format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE id = $1"),
                &[&company_id],
                company_row,
            )?
            .pop())
    }

    fn create_link(&self, company_id: &str, ttl_secs: i64) -> Result<String, ControlError> {
        let token = random_id("lk_", 24);
        self.with(|c| {
            c.execute(
                "INSERT INTO links (token_hash, company_id, expires_at, created_at) VALUES ($1, $2, $3, $4)",
                &[&key_hash(&token), &company_id, &(now_ms() + ttl_secs * 1000), &now()],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    fn link(&self, token: &str) -> Result<Option<(Company, LinkState)>, ControlError> {
        let found = self.rows(
            "SELECT company_id, expires_at, used_at FROM links WHERE token_hash = $1",
            &[&key_hash(token)],
            |r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, Option<String>>(2),
                )
            },
        )?;
        let Some((company_id, expires_at, used_at)) = found.into_iter().next() else {
            return Ok(None);
        };
        let state = link_state(expires_at, &used_at);
        Ok(self.company_by_id(&company_id)?.map(|c| (c, state)))
    }

    fn create_link_code(
        &self,
        token: &str,
        state: &str,
        ttl_secs: i64,
    ) -> Result<Option<String>, ControlError> {
        let Some((company, LinkState::Usable)) = self.link(token)? else {
            return Ok(None);
        };
        let code = random_id("", 32);
        self.with(|c| {
            c.execute(
                "INSERT INTO link_codes (code_hash, link_hash, company_id, state, expires_at) VALUES ($1, $2, $3, $4, $5)",
                &[&key_hash(&code), &key_hash(token), &company.id, &state, &(now_ms() + ttl_secs * 1000)],
            )?;
            Ok(())
        })?;
        Ok(Some(code))
    }

    fn redeem_link_code(
        &self,
        code: &str,
        state: &str,
        company_id: &str,
    ) -> Result<Result<Company, &'static str>, ControlError> {
        let code_hash = key_hash(code);
        let verdict = self.with(|c| {
            let mut tx = c.transaction()?;
            // the code and its link locked: a second redemption waits, then sees them used
            let found = tx.query_opt(
                "SELECT c.link_hash, c.company_id, c.state, c.expires_at, c.used_at, l.used_at, l.expires_at
                 FROM link_codes c JOIN links l ON l.token_hash = c.link_hash WHERE c.code_hash = $1
                 FOR UPDATE OF c, l",
                &[&code_hash],
            )?;
            let Some(row) = found else {
                return Ok(Err(
                    "this code is not valid: start again from the link page",
                ));
            };
            let (link_hash, code_company, code_state): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            let (expires_at, used_at, link_used, link_expires): (
                i64,
                Option<String>,
                Option<String>,
                i64,
            ) = (row.get(3), row.get(4), row.get(5), row.get(6));
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
            let at = now();
            if verdict.is_ok() {
                tx.execute(
                    "UPDATE link_codes SET used_at = $2 WHERE code_hash = $1",
                    &[&code_hash, &at],
                )?;
                tx.execute(
                    "UPDATE links SET used_at = $2 WHERE token_hash = $1",
                    &[&link_hash, &at],
                )?;
            } else if used_at.is_none() {
                // A code presented wrongly is burnt: it cannot be tried again with other values.
                tx.execute(
                    "UPDATE link_codes SET used_at = $2 WHERE code_hash = $1",
                    &[&code_hash, &at],
                )?;
            }
            tx.commit()?;
            Ok(verdict)
        })?;
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
        self.with(|c| {
            c.execute(
                "INSERT INTO device_codes (device_code_hash, user_code, device_name, expires_at) VALUES ($1, $2, $3, $4)",
                &[&key_hash(&device_code), &user, &device_name, &(now_ms() + ttl_secs * 1000)],
            )?;
            Ok(())
        })?;
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
        let link_hash = key_hash(token);
        self.with(|c| {
            let mut tx = c.transaction()?;
            // the link and the code locked: two codes typed on one link, or one code on two
            // links, at once on two nodes, make one approval
            let link = tx.query_opt(
                "SELECT l.expires_at, l.used_at, co.id, co.client_id, co.name, co.created_at, co.redirect_url
                 FROM links l JOIN companies co ON co.id = l.company_id
                 WHERE l.token_hash = $1 FOR UPDATE OF l",
                &[&link_hash],
            )?;
            let company = match link {
                None => return Ok(Err("this link is not valid")),
                Some(r) => match link_state(r.get(0), &r.get(1)) {
                    LinkState::Used => {
                        return Ok(Err(
                            "this link was already used: ask the app for a new one",
                        ));
                    }
                    LinkState::Expired => {
                        return Ok(Err("this link has expired: ask the app for a new one"));
                    }
                    LinkState::Usable => Company {
                        id: r.get(2),
                        client_id: r.get(3),
                        name: r.get(4),
                        created_at: r.get(5),
                        redirect_url: r.get(6),
                    },
                },
            };
            let found = tx
                .query_opt(
                    "SELECT expires_at, company_id FROM device_codes WHERE user_code = $1 FOR UPDATE",
                    &[&typed],
                )?
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Option<String>>(1)));
            let verdict = match found {
                None => Err(
                    "no connector shows this code: check the code in the connector's window",
                ),
                Some((expires, _)) if expires <= now_ms() => {
                    Err("this code has expired: ask the connector for a new one")
                }
                Some((_, Some(_))) => Err("this code was already used"),
                Some(_) => Ok(()),
            };
            if verdict.is_ok() {
                tx.execute(
                    "UPDATE device_codes SET company_id = $2, link_hash = $3 WHERE user_code = $1",
                    &[&typed, &company.id, &link_hash],
                )?;
                tx.execute(
                    "UPDATE links SET used_at = $2 WHERE token_hash = $1",
                    &[&link_hash, &now()],
                )?;
            }
            tx.commit()?;
            Ok(verdict.map(|()| company))
        })
    }

    fn poll_device_code(&self, device_code: &str) -> Result<DevicePoll, ControlError> {
        let hash = key_hash(device_code);
        self.with(|c| {
            let mut tx = c.transaction()?;
            // locked: an approval is answered to one poll, whichever node it reaches
            let found = tx
                .query_opt(
                    "SELECT expires_at, company_id, used_at, device_name FROM device_codes
                     WHERE device_code_hash = $1 FOR UPDATE",
                    &[&hash],
                )?
                .map(|r| {
                    (
                        r.get::<_, i64>(0),
                        r.get::<_, Option<String>>(1),
                        r.get::<_, Option<String>>(2),
                        r.get::<_, String>(3),
                    )
                });
            let poll = match found {
                None => DevicePoll::Unknown,
                Some((_, _, Some(_), _)) => DevicePoll::Unknown,
                Some((_, Some(company_id), None, device_name)) => {
                    tx.execute(
                        "UPDATE device_codes SET used_at = $2 WHERE device_code_hash = $1",
                        &[&hash, &now()],
                    )?;
                    DevicePoll::Approved {
                        company_id,
                        device_name,
                    }
                }
                Some((expires, None, None, _)) if expires <= now_ms() => DevicePoll::Expired,
                Some(_) => DevicePoll::Pending,
            };
            tx.commit()?;
            Ok(poll)
        })
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
        self.with(|c| {
            c.execute(
                "INSERT INTO devices (id, company_id, name, secret_hash, rotated_at, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&id, &company_id, &name, &key_hash(&secret), &now_ms(), &device.created_at],
            )?;
            Ok(())
        })?;
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
        let checked = self.with(|c| {
            let mut tx = c.transaction()?;
            // locked: the rotated credential's first use retires the old one once
            let Some(r) = tx.query_opt(
                "SELECT secret_hash, next_hash, prev_hash, prev_until, revoked_at FROM devices WHERE id = $1 FOR UPDATE",
                &[&id],
            )?
            else {
                return Ok(None);
            };
            let (current, next, prev): (String, Option<String>, Option<String>) =
                (r.get(0), r.get(1), r.get(2));
            let (prev_until, revoked): (Option<i64>, Option<String>) = (r.get(3), r.get(4));
            let is = |h: &Option<String>| {
                h.as_ref()
                    .is_some_and(|h| constant_time_eq(h.as_bytes(), wanted.as_bytes()))
            };
            let valid = if constant_time_eq(current.as_bytes(), wanted.as_bytes()) {
                true
            } else if is(&next) {
                // The rotated credential's first use: the old one stays valid a little
                // longer, for requests already under way with it, then never again.
                tx.execute(
                    "UPDATE devices SET prev_hash = secret_hash, prev_until = $2, secret_hash = next_hash, next_hash = NULL WHERE id = $1",
                    &[&id, &(now_ms() + ROTATION_GRACE_SECS * 1000)],
                )?;
                true
            } else {
                is(&prev) && prev_until.is_some_and(|t| t > now_ms())
            };
            if valid {
                tx.execute(
                    "UPDATE devices SET last_seen_at = $2 WHERE id = $1",
                    &[&id, &now()],
                )?;
            }
            tx.commit()?;
            Ok(Some((valid, revoked.is_some())))
        })?;
        let Some((true, revoked)) = checked else {
            return Ok(DeviceAuth::Invalid);
        };
        let device = self.device(id)?.ok_or_else(|| ControlError::Db {
            path: self.shown.clone(),
            detail: format!("device {id} vanished"),
        })?;
        Ok(if revoked {
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
        let changed = self.with(|c| {
            Ok(c.execute(
                "UPDATE devices SET next_hash = $2, rotated_at = $3
                 WHERE id = $1 AND revoked_at IS NULL AND (next_hash IS NOT NULL OR rotated_at <= $4)",
                &[
                    &device_id,
                    &key_hash(&secret),
                    &now_ms(),
                    &(now_ms() - older_than_secs * 1000),
                ],
            )?)
        })?;
        Ok((changed == 1).then(|| device_credential(device_id, &secret)))
    }

    fn revoke_device(&self, device_id: &str) -> Result<Option<Device>, ControlError> {
        Ok(self
            .rows(
                &format!(
                    "UPDATE devices SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
                ),
                &[&device_id, &now()],
                device_row,
            )?
            .pop())
    }

    fn device_revoked(&self, device_id: &str) -> Result<Option<bool>, ControlError> {
        Ok(self.device(device_id)?.map(|d| d.revoked_at.is_some()))
    }

    fn devices(&self, company_id: &str) -> Result<Vec<Device>, ControlError> {
        self.rows(
            &format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE company_id = $1 ORDER BY created_at DESC, id"),
            &[&company_id],
            device_row,
        )
    }

    fn record_checkin(
        &self,
        device_id: &str,
        status: &serde_json::Value,
    ) -> Result<(), ControlError> {
        self.with(|c| {
            c.execute(
                "UPDATE devices SET status = $2, last_seen_at = $3 WHERE id = $1",
                &[&device_id, &status.to_string(), &now()],
            )?;
            Ok(())
        })
    }

    fn request_sync(&self, company_id: &str) -> Result<String, ControlError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // the company locked (not against new rows that name it): two nodes asked at once
            // queue one request
            tx.execute(
                "SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE",
                &[&company_id],
            )?;
            let open = tx.query_opt(
                "SELECT id FROM sync_requests WHERE company_id = $1 AND taken_at IS NULL ORDER BY requested_at LIMIT 1",
                &[&company_id],
            )?;
            if let Some(r) = open {
                return Ok(r.get(0));
            }
            let id = random_id("sr_", 10);
            tx.execute(
                "INSERT INTO sync_requests (id, company_id, requested_at) VALUES ($1, $2, $3)",
                &[&id, &company_id, &now()],
            )?;
            tx.commit()?;
            Ok(id)
        })
    }

    fn take_sync_request(&self, company_id: &str) -> Result<Option<String>, ControlError> {
        self.with(|c| {
            Ok(c.query_opt(
                "UPDATE sync_requests SET taken_at = $2
                 WHERE taken_at IS NULL AND id = (
                     SELECT id FROM sync_requests WHERE company_id = $1 AND taken_at IS NULL
                     ORDER BY requested_at LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id",
                &[&company_id, &now()],
            )?
            .map(|r| r.get(0)))
        })
    }

    fn record_sync_result(
        &self,
        company_id: &str,
        device_id: &str,
        r: &crate::protocol::SyncResult,
    ) -> Result<(), ControlError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO sync_results (company_id, device_id, ok, reason, message, snapshot_id, started_at, finished_at, received_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                &[
                    &company_id,
                    &device_id,
                    &r.ok,
                    &r.reason.map(|x| x.code()),
                    &r.message,
                    &r.snapshot_id,
                    &r.started_at,
                    &r.finished_at,
                    &now(),
                ],
            )?;
            if let Some(id) = &r.request_id {
                tx.execute(
                    "UPDATE sync_requests SET finished_at = $2, outcome = $3 WHERE id = $1 AND company_id = $4",
                    &[id, &r.finished_at, &if r.ok { "ok" } else { "failed" }, &company_id],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn last_sync_result(
        &self,
        company_id: &str,
    ) -> Result<Option<crate::protocol::SyncResult>, ControlError> {
        Ok(self
            .rows(
                "SELECT ok, reason, message, snapshot_id, started_at, finished_at FROM sync_results
                 WHERE company_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&company_id],
                |r| crate::protocol::SyncResult {
                    request_id: None,
                    ok: r.get(0),
                    reason: r
                        .get::<_, Option<String>>(1)
                        .and_then(|c| crate::protocol::Reason::from_code(&c)),
                    message: r.get(2),
                    snapshot_id: r.get(3),
                    started_at: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    finished_at: r.get::<_, Option<String>>(5).unwrap_or_default(),
                },
            )?
            .pop())
    }

    fn companies(&self, client_id: &str) -> Result<Vec<Company>, ControlError> {
        self.rows(
            &format!("SELECT {COMPANY_COLUMNS} FROM companies WHERE client_id = $1 ORDER BY created_at, id"),
            &[&client_id],
            company_row,
        )
    }

    fn company(&self, client_id: &str, company_id: &str) -> Result<Option<Company>, ControlError> {
        Ok(self
            .rows(
                &format!(
                    "SELECT {COMPANY_COLUMNS} FROM companies WHERE client_id = $1 AND id = $2"
                ),
                &[&client_id, &company_id],
                company_row,
            )?
            .pop())
    }

    fn all_companies(&self) -> Result<Vec<Company>, ControlError> {
        self.rows(
            &format!("SELECT {COMPANY_COLUMNS} FROM companies ORDER BY id"),
            &[],
            company_row,
        )
    }

    fn record_snapshot(&self, r: &SnapshotRecord) -> Result<(), ControlError> {
        let records = r.records.as_ref().map(|v| v.to_string());
        self.with(|c| {
            let mut tx = c.transaction()?;
            // the company locked: two nodes recording live snapshots at once leave one live
            tx.execute(
                "SELECT 1 FROM companies WHERE id = $1 FOR NO KEY UPDATE",
                &[&r.company_id],
            )?;
            // a snapshot going live after a newer one (a slow node's) is recorded superseded
            let mut status = r.status.clone();
            if r.status == "live" {
                let newer = tx
                    .query_opt(
                        "SELECT 1 FROM snapshots WHERE company_id = $1 AND snapshot_id > $2 AND status <> 'failed' LIMIT 1",
                        &[&r.company_id, &r.snapshot_id],
                    )?
                    .is_some();
                if newer {
                    status = "superseded".into();
                } else {
                    tx.execute(
                        "UPDATE snapshots SET status = 'superseded' WHERE company_id = $1 AND status = 'live'",
                        &[&r.company_id],
                    )?;
                }
            }
            tx.execute(
                "INSERT INTO snapshots (company_id, snapshot_id, status, detail, created_at, ingested_at, records)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (company_id, snapshot_id) DO UPDATE SET status = excluded.status,
                     detail = excluded.detail, created_at = excluded.created_at,
                     ingested_at = excluded.ingested_at, records = excluded.records",
                &[
                    &r.company_id,
                    &r.snapshot_id,
                    &status,
                    &r.detail,
                    &r.created_at,
                    &r.ingested_at,
                    &records,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn claim_ingest(
        &self,
        company_id: &str,
        snapshot_id: &str,
        node: &str,
        lease_ms: i64,
    ) -> Result<bool, ControlError> {
        let now = now_ms();
        self.with(|c| {
            // the company's claims that ran out are done with (one row a company stays)
            c.execute(
                "DELETE FROM ingest_claims WHERE company_id = $1 AND snapshot_id <> $2 AND expires_at < $3",
                &[&company_id, &snapshot_id, &now],
            )?;
            let claimed = c.execute(
                "INSERT INTO ingest_claims (company_id, snapshot_id, node, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (company_id, snapshot_id) DO UPDATE SET node = excluded.node, expires_at = excluded.expires_at
                 WHERE ingest_claims.node = excluded.node OR ingest_claims.expires_at < $5",
                &[&company_id, &snapshot_id, &node, &(now + lease_ms), &now],
            )?;
            Ok(claimed == 1)
        })
    }

    fn reseal_secrets(&self, all: bool) -> Result<usize, ControlError> {
        self.with(|c| {
            // Nothing is locked unless something is to be sealed (every node's start asks);
            // then the rows are locked in one order, and a node resealing at once waits and
            // reads what this one wrote.
            let to_seal = c
                .query("SELECT secret FROM webhooks", &[])?
                .iter()
                .map(|r| r.get::<_, String>(0))
                .any(|stored| {
                    !SecretKeys::is_sealed(&stored) || (all && !self.keys().is_current(&stored))
                });
            if !to_seal {
                return Ok(0);
            }
            let mut tx = c.transaction()?;
            let rows: Vec<(String, String)> = tx
                .query(
                    "SELECT id, secret FROM webhooks ORDER BY id FOR UPDATE",
                    &[],
                )?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            let mut n = 0;
            for (id, stored) in rows {
                let sealed = SecretKeys::is_sealed(&stored);
                if sealed && (!all || self.keys().is_current(&stored)) {
                    continue;
                }
                let secret = self.open_secret(&stored)?;
                let resealed = self.keys().seal(&secret);
                tx.execute(
                    "UPDATE webhooks SET secret = $2 WHERE id = $1",
                    &[&id, &resealed],
                )?;
                n += 1;
            }
            tx.commit()?;
            Ok(n)
        })
    }

    fn snapshots(&self, company_id: &str) -> Result<Vec<SnapshotRecord>, ControlError> {
        self.rows(
            "SELECT snapshot_id, status, detail, created_at, ingested_at, records FROM snapshots
                 WHERE company_id = $1 ORDER BY snapshot_id DESC",
            &[&company_id],
            |r| SnapshotRecord {
                company_id: company_id.to_owned(),
                snapshot_id: r.get(0),
                status: r.get(1),
                detail: r.get(2),
                created_at: r.get(3),
                ingested_at: r.get(4),
                records: r
                    .get::<_, Option<String>>(5)
                    .and_then(|s| serde_json::from_str(&s).ok()),
            },
        )
    }
}

/// Whether a link can still be used, from its row.
fn link_state(expires_at: i64, used_at: &Option<String>) -> LinkState {
    if used_at.is_some() {
        LinkState::Used
    } else if expires_at <= now_ms() {
        LinkState::Expired
    } else {
        LinkState::Usable
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Barrier};

    use super::*;

    /// The role `.ci/pg.sh` makes for these tests.
    const ROLE: &str = "connector";
    const PASSWORD: &str = "connector-test";

    /// A database of its own on the test PostgreSQL (`make test` starts it), dropped at the
    /// end.
    struct TestDb {
        port: String,
        name: String,
    }

    impl TestDb {
        fn create() -> TestDb {
            let port = std::env::var("CONNECTOR_TEST_PG_PORT").expect(
                "CONNECTOR_TEST_PG_PORT is not set: run these tests under `make test`, which starts PostgreSQL on loopback (or `make pg-up` and CONNECTOR_TEST_PG_PORT=54329)",
            );
            let db = TestDb {
                port,
                name: format!("ctl_{}", super::super::random_token(6)),
            };
            db.admin(&format!("CREATE DATABASE {}", db.name));
            db
        }

        fn admin(&self, sql: &str) {
            let mut client = Client::connect(
                &format!(
                    "host=127.0.0.1 port={} user={ROLE} password={PASSWORD} dbname=postgres",
                    self.port
                ),
                NoTls,
            )
            .expect("connect to the test PostgreSQL as the role .ci/pg.sh makes");
            client.batch_execute(sql).unwrap();
        }

        fn url(&self) -> String {
            format!(
                "postgres://{ROLE}:{PASSWORD}@127.0.0.1:{}/{}",
                self.port, self.name
            )
        }

        fn open(&self, key_file: &Path) -> PostgresControl {
            PostgresControl::open(&self.url(), key_file).unwrap()
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            self.admin(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }

    #[test]
    fn postgres_control_keeps_the_control_plane_contract() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("secrets.key");
        super::super::tests::contract(&|| Box::new(db.open(&key_file)), &key_file, true);
    }

    #[test]
    fn two_nodes_never_take_the_same_delivery() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("secrets.key");
        let nodes = [Arc::new(db.open(&key_file)), Arc::new(db.open(&key_file))];
        let (client, _) = nodes[0].create_client("Lender").unwrap();
        let types = ["data.synced".to_owned()];
        for n in 0..4 {
            nodes[0]
                .create_webhook(&client.id, &format!("https://example.com/{n}"), &types)
                .unwrap();
        }
        let events = 150;
        for n in 0..events {
            let payload = serde_json::json!({ "n": n });
            nodes[n % 2]
                .enqueue_event(&client.id, "data.synced", &payload, None)
                .unwrap();
        }
        let due_at = now_ms() + 1;
        let start = Arc::new(Barrier::new(8));
        let takers: Vec<_> = (0..8)
            .map(|t| {
                let (node, start) = (nodes[t % 2].clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut taken = Vec::new();
                    loop {
                        let due = node
                            .due_deliveries(due_at, 2, 3, super::super::DELIVERY_LEASE_MS)
                            .unwrap();
                        if due.is_empty() {
                            return taken;
                        }
                        taken.extend(due.into_iter().map(|(d, _)| d.id));
                    }
                })
            })
            .collect();
        let mut seen = BTreeSet::new();
        let mut count = 0;
        for taker in takers {
            for id in taker.join().unwrap() {
                count += 1;
                assert!(
                    seen.insert(id.clone()),
                    "delivery {id} was handed out twice"
                );
            }
        }
        assert_eq!(count, 4 * events, "every delivery handed out once");
    }

    #[test]
    fn concurrent_claims_of_one_snapshot_grant_exactly_one() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("secrets.key");
        let nodes = [Arc::new(db.open(&key_file)), Arc::new(db.open(&key_file))];
        for round in 0..5 {
            let snapshot = format!("s{round:04}");
            let start = Arc::new(Barrier::new(6));
            let claims: Vec<_> = (0..6)
                .map(|t| {
                    let (node, start, snapshot) =
                        (nodes[t % 2].clone(), start.clone(), snapshot.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        node.claim_ingest("co1", &snapshot, &format!("node-{t}"), 60_000)
                            .unwrap()
                    })
                })
                .collect();
            let granted: Vec<bool> = claims.into_iter().map(|c| c.join().unwrap()).collect();
            assert_eq!(
                granted.iter().filter(|g| **g).count(),
                1,
                "round {round}: {granted:?}"
            );
        }
    }

    /// Runs `call` on `threads` threads at once, alternating between the two nodes.
    fn race<T: Send + 'static>(
        nodes: &[Arc<PostgresControl>; 2],
        threads: usize,
        call: impl Fn(&PostgresControl) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let (start, call) = (Arc::new(Barrier::new(threads)), Arc::new(call));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (node, start, call) = (nodes[t % 2].clone(), start.clone(), call.clone());
                std::thread::spawn(move || {
                    start.wait();
                    call(&node)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn codes_sync_requests_and_live_snapshots_are_used_once_when_nodes_race() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("secrets.key");
        let nodes = [Arc::new(db.open(&key_file)), Arc::new(db.open(&key_file))];
        let (client, _) = nodes[0].create_client("Lender").unwrap();
        let company = nodes[0].create_company(&client.id, "Acme", None).unwrap();
        let id = company.id.clone();
        for round in 0..3 {
            // one loopback code redeemed at once on both nodes
            let token = nodes[0].create_link(&id, 600).unwrap();
            let code = nodes[0]
                .create_link_code(&token, "st", 60)
                .unwrap()
                .unwrap();
            let c = id.clone();
            let redeemed = race(&nodes, 6, move |n| {
                n.redeem_link_code(&code, "st", &c).unwrap().is_ok()
            });
            assert_eq!(redeemed.iter().filter(|r| **r).count(), 1, "round {round}");
            // one approval answered to one poll
            let (device_code, user_code) = nodes[0].create_device_code("PC", 600).unwrap();
            let page = nodes[0].create_link(&id, 600).unwrap();
            let approved = race(&nodes, 6, move |n| {
                n.approve_user_code(&page, &user_code).unwrap().is_ok()
            });
            assert_eq!(approved.iter().filter(|a| **a).count(), 1, "round {round}");
            let polled = race(&nodes, 6, move |n| {
                n.poll_device_code(&device_code).unwrap()
            });
            let answered = polled
                .iter()
                .filter(|p| matches!(p, DevicePoll::Approved { .. }))
                .count();
            assert_eq!(answered, 1, "round {round}: {polled:?}");
            // one sync request queued, taken once
            let c = id.clone();
            let requested: BTreeSet<String> = race(&nodes, 6, move |n| n.request_sync(&c).unwrap())
                .into_iter()
                .collect();
            assert_eq!(requested.len(), 1, "round {round}: {requested:?}");
            let c = id.clone();
            let taken = race(&nodes, 6, move |n| n.take_sync_request(&c).unwrap());
            assert_eq!(
                taken.iter().flatten().count(),
                1,
                "round {round}: {taken:?}"
            );
            // live snapshots recorded at once leave one live
            let c = id.clone();
            race(&nodes, 6, move |n| {
                n.record_snapshot(&SnapshotRecord {
                    company_id: c.clone(),
                    snapshot_id: format!("s{round}-{}", random_id("", 4)),
                    status: "live".into(),
                    detail: None,
                    created_at: None,
                    ingested_at: now(),
                    records: None,
                })
                .unwrap()
            });
            let history = nodes[0].snapshots(&id).unwrap();
            assert_eq!(
                history.iter().filter(|r| r.status == "live").count(),
                1,
                "round {round}"
            );
        }
    }

    #[test]
    fn nodes_starting_at_once_apply_each_migration_once() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let key_file = Arc::new(dir.path().join("secrets.key"));
        // the key file made first: the race under test is the database's
        drop(SecretKeys::load_or_create(&key_file).unwrap());
        let url = Arc::new(db.url());
        let start = Arc::new(Barrier::new(4));
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let (url, key_file, start) = (url.clone(), key_file.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    PostgresControl::open(&url, &key_file).map(drop)
                })
            })
            .collect();
        for open in opens {
            if let Err(e) = open.join().unwrap() {
                panic!("a node starting beside others failed: {e}");
            }
        }
        let control = db.open(&key_file);
        let applied: Vec<(i32, i64)> = control
            .rows(
                "SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version",
                &[],
                |r| (r.get(0), r.get(1)),
            )
            .unwrap();
        let expected: Vec<(i32, i64)> = (1..=MIGRATIONS.len() as i32).map(|v| (v, 1)).collect();
        assert_eq!(applied, expected);
        assert_eq!(control.version().unwrap(), 0, "the version row made once");
    }

    #[test]
    fn a_refused_password_is_not_in_the_error() {
        let db = TestDb::create();
        let dir = tempfile::tempdir().unwrap();
        let secret = "wrong-Pa55word-4711";
        let url = format!(
            "postgres://{ROLE}:{secret}@127.0.0.1:{}/{}",
            db.port, db.name
        );
        let error = match PostgresControl::open(&url, &dir.path().join("secrets.key")) {
            Ok(_) => panic!("a wrong password was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(!error.contains(secret), "{error}");
        assert!(
            error.contains(&format!(
                "postgres://{ROLE}@127.0.0.1:{}/{}",
                db.port, db.name
            )),
            "the database is named: {error}"
        );
        assert!(error.contains("password authentication failed"), "{error}");
        assert!(error.contains("PGPASSWORD"), "says what to check: {error}");
    }

    #[test]
    fn a_control_database_that_is_not_running_says_what_to_check() {
        // a port nobody listens on: bound, then let go
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("postgres://{ROLE}:{PASSWORD}@127.0.0.1:{port}/ctl");
        let error = match PostgresControl::open(&url, &dir.path().join("secrets.key")) {
            Ok(_) => panic!("connected to nothing"),
            Err(e) => e.to_string(),
        };
        assert!(!error.contains(PASSWORD), "{error}");
        assert!(
            error.starts_with(&format!(
                "control database postgres://{ROLE}@127.0.0.1:{port}/ctl: cannot connect: "
            )),
            "{error}"
        );
        assert!(error.contains("that PostgreSQL is running"), "{error}");
    }

    #[test]
    fn the_password_comes_from_the_url_else_pgpassword_and_is_never_shown() {
        let (config, shown, password) = configure(
            "postgres://ctl:from-url@db.internal:6432/control",
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(config.get_password(), Some(&b"from-url"[..]));
        assert_eq!(password.as_deref(), Some("from-url"));
        assert_eq!(shown, "postgres://ctl@db.internal:6432/control");
        let (config, shown, _) = configure(
            "postgres://ctl@db.internal/control",
            Some("from-env".into()),
        )
        .unwrap();
        assert_eq!(config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(shown, "postgres://ctl@db.internal:5432/control");
        let (config, _, password) = configure("postgres://ctl@db.internal/control", None).unwrap();
        assert_eq!((config.get_password(), password), (None, None));
        let error = match configure("postgres://ctl:s3cret-Value@db.internal:notaport/x", None) {
            Ok(_) => panic!("a port that is not a number was taken"),
            Err(e) => e.to_string(),
        };
        assert!(!error.contains("s3cret-Value"), "{error}");
        assert!(
            error.contains("postgres://ctl@db.internal:notaport/x"),
            "{error}"
        );
    }
}
