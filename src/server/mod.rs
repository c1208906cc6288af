//! The server: loads published snapshots and answers API clients' queries.
//!
//! Takes a store URL (where connectors publish, see [`crate::publish`]) and a state folder;
//! serves the HTTP API in [`api`]. Its parts:
//! - [`control`]: API clients, hashed keys, companies, snapshot history (SQLite by default,
//!   behind the [`control::ControlPlane`] interface);
//! - [`ingest`]: a loop that watches each company's `latest.json` every `poll` interval (and at
//!   once when a "snapshot published" call arrives), checks a new snapshot and swaps it in;
//! - [`query`]: the query language, turned into SQL through an allow-list and bound values.
//!
//! Shutdown on SIGINT/SIGTERM is graceful: the listener stops, requests in flight finish.

pub mod api;
pub mod control;
pub mod devices;
pub mod docs;
#[cfg(test)]
mod fuzz;
pub mod ingest;
pub mod limits;
pub mod link;
pub mod listen;
pub mod openapi;
pub mod query;
mod render;
pub mod secrets;
pub mod served;
pub mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::model::DataModel;
use crate::publish::{Store, StoreConfig};
use control::{ControlPlane, SnapshotRecord, SqliteControl};

/// How to run the server.
pub struct ServeOptions {
    /// Where snapshots are published.
    pub store: StoreConfig,
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Control database (SQLite, unless `control` names another) and data cache.
    pub state_dir: PathBuf,
    /// The control plane's URL (`postgres://…`) when it is shared by several nodes.
    pub control: Option<String>,
    /// How often each company's `latest.json` is read.
    pub poll: Duration,
    /// Requests per second per API key.
    pub rate_per_sec: f64,
    /// Let webhooks target loopback and private addresses (tests only).
    pub allow_internal_webhooks: bool,
    /// The DNS server webhook hosts are looked up with (default: the system's configuration).
    pub webhook_dns: Option<SocketAddr>,
    /// The proxy webhooks go through (default: none, whatever `HTTP(S)_PROXY` says).
    pub webhook_proxy: Option<String>,
    /// How long webhook deliveries are kept once no longer pending.
    pub delivery_retention: Duration,
    /// Multiplies the webhook retry delays (tests shorten them).
    pub webhook_backoff_scale: f64,
    /// Benchmark peer: read Parquet per request (see [`api::AppState::naive`]).
    pub naive: bool,
    /// The public base URL (link URLs, upload grants); default `http://` + the bound address.
    pub public_url: Option<String>,
    /// The connector's loopback port the link page sends browsers to.
    pub loopback_port: u16,
    /// Seconds a link stays usable.
    pub link_ttl_secs: i64,
    /// Most companies one client may create.
    pub max_companies_per_client: usize,
    /// Deadline of one data request.
    pub query_timeout: Duration,
    /// What one company's database may use.
    pub company_limits: ingest::CompanyLimits,
    /// Connections served at once, and how long a request head may take.
    pub connections: listen::ConnectionLimits,
    /// Deadline of one request (data, control and public routes; not the connector's).
    pub request_timeout: Duration,
    /// Requests per second per IP address without a valid API key (bursts of twice that).
    pub unauthenticated_rate: f64,
    /// The bearer token `/metrics` asks for; without one, `/metrics` is off.
    pub metrics_token: Option<String>,
    /// Most data queries at once, in all.
    pub max_queries: usize,
    /// Most data queries at once for one API key.
    pub max_queries_per_key: usize,
    /// Device credentials older than this are rotated at check-in.
    pub rotate_after_secs: i64,
    /// A connector silent this long is `not_running` (and its client is told).
    pub connector_silence_secs: i64,
    /// How long a node holds what it claimed from a shared control plane.
    pub leases: Leases,
    /// What all companies' databases may hold in memory together (bytes); None: no limit.
    pub memory_limit: Option<u64>,
    /// What the rows kept in memory to answer from may hold (bytes); None: the default
    /// ([`served::SERVED_BYTES`], or a sixteenth of the memory limit).
    pub served_memory: Option<u64>,
    /// What the answers kept may hold (bytes); None: the default ([`api::ANSWER_BYTES`], or
    /// a sixteenth of the memory limit if that is less).
    pub answer_memory: Option<u64>,
}

/// How long a node holds what it claimed from a control plane shared with other nodes: a
/// node that dies loses its claims when they run out.
#[derive(Debug, Clone, Copy)]
pub struct Leases {
    /// The recording of a snapshot (see [`ControlPlane::claim_ingest`]).
    pub ingest_ms: i64,
    /// A webhook delivery (see [`ControlPlane::due_deliveries`]).
    pub delivery_ms: i64,
}

impl Default for Leases {
    fn default() -> Self {
        Leases {
            ingest_ms: control::INGEST_LEASE_MS,
            delivery_ms: control::DELIVERY_LEASE_MS,
        }
    }
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] crate::publish::PublishError),
    /// The control database failed.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The address could not be listened on.
    #[error("cannot listen on {addr}: {source} (choose another --listen address)")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The state folder could not be made.
    #[error("state folder {path}: {source}")]
    State {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// `4GB`, `512MB`, `64KB` (powers of 1024) or a number of bytes.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim().to_ascii_uppercase();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KB" | "KIB" => 10,
        "MB" | "MIB" => 20,
        "GB" | "GIB" => 30,
        "TB" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{text:?}: write a size such as 4GB, 512MB or 1073741824"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?}: write a size such as 4GB, 512MB or 1073741824"))
}

/// Opens the control plane: PostgreSQL when `url` names it (shared by several nodes), else
/// SQLite in the state folder. The folder is the server's own (0700: keys' hashes, webhook
/// secrets' key, cached data of every tenant) and the SQLite file 0600; SQLite gives its WAL
/// files the database's permissions.
pub fn open_control(
    state_dir: &std::path::Path,
    url: Option<&str>,
) -> Result<Arc<dyn ControlPlane>, ServeError> {
    let path = state_dir.join("control.sqlite3");
    crate::files::private_dir(state_dir).map_err(|source| ServeError::State {
        path: state_dir.to_owned(),
        source,
    })?;
    if let Some(url) = url.filter(|u| !u.trim().is_empty()) {
        let keys = secrets::SecretKeys::path_for(&path);
        return Ok(Arc::new(control::postgres::PostgresControl::open(
            url, &keys,
        )?));
    }
    crate::files::private_file(&path).map_err(|source| ServeError::State {
        path: state_dir.to_owned(),
        source,
    })?;
    Ok(Arc::new(SqliteControl::open(&path)?))
}

/// The companies being ingested, and the places for them. A pass of the ingest loop starts
/// the companies that are not already being ingested and returns: a company whose store is
/// slow holds its own place, not the next pass, so another client's new snapshot is looked
/// at on time. At most [`INGEST_AT_ONCE`] load at once, at most [`INGEST_PER_CLIENT`] of one
/// client's companies, clients taking turns.
pub struct Ingests {
    places: Arc<tokio::sync::Semaphore>,
    busy: Arc<std::sync::Mutex<Busy>>,
    /// The ingests running, polled by the ingest loop's own task (as they always were: a
    /// company's load never runs beside another on a second thread).
    running: futures::stream::FuturesUnordered<futures::future::BoxFuture<'static, ()>>,
    /// Per client, the company it last had started: the next pass begins after it, so a
    /// client's later companies are not starved by its first ones taking its places.
    last_started: std::collections::HashMap<String, String>,
}

/// The companies being ingested, and how many of each client's.
type Busy = (
    std::collections::HashSet<String>,
    std::collections::HashMap<String, usize>,
);

impl Default for Ingests {
    fn default() -> Self {
        Ingests {
            places: Arc::new(tokio::sync::Semaphore::new(INGEST_AT_ONCE)),
            busy: Default::default(),
            running: Default::default(),
            last_started: Default::default(),
        }
    }
}

impl Ingests {
    /// Waits for every ingest started to end (at shutdown: a load or a save in progress is
    /// finished, not cut off).
    pub async fn finish(&mut self) {
        use futures::StreamExt;
        while self.running.next().await.is_some() {}
    }

    /// Runs the ingests until one ends (never, when none runs).
    pub async fn progress(&mut self) {
        use futures::StreamExt;
        if self.running.next().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

/// One pass of the ingest loop over `companies`, or those of them `only` names: starts
/// those not being ingested already, and returns.
fn ingest_some(
    state: &Arc<api::AppState>,
    store: &Store,
    state_dir: &std::path::Path,
    companies: Vec<control::Company>,
    only: Option<&std::collections::BTreeSet<String>>,
    ingests: &mut Ingests,
) {
    let companies: Vec<_> = companies
        .into_iter()
        .filter(|c| only.is_none_or(|only| only.contains(&c.id)))
        .collect();
    // Clients take turns (one company of each, then the next of each, …).
    let mut by_client: std::collections::BTreeMap<String, std::collections::VecDeque<_>> =
        Default::default();
    for company in companies {
        by_client
            .entry(company.client_id.clone())
            .or_default()
            .push_back(company);
    }
    // each client's companies in id order, from the one after its last started
    for (client, queue) in by_client.iter_mut() {
        queue.make_contiguous().sort_by(|a, b| a.id.cmp(&b.id));
        if let Some(last) = ingests.last_started.get(client) {
            let after = queue.iter().position(|c| c.id > *last).unwrap_or(0);
            queue.rotate_left(after);
        }
    }
    let mut turns = Vec::new();
    while !by_client.is_empty() {
        by_client.retain(|_, queue| {
            turns.extend(queue.pop_front());
            !queue.is_empty()
        });
    }
    for company in turns {
        {
            let mut busy = ingests.busy.lock().unwrap_or_else(|e| e.into_inner());
            let of_client = busy.1.get(&company.client_id).copied().unwrap_or(0);
            if busy.0.contains(&company.id) || of_client >= INGEST_PER_CLIENT {
                continue;
            }
            busy.0.insert(company.id.clone());
            *busy.1.entry(company.client_id.clone()).or_default() += 1;
        }
        ingests
            .last_started
            .insert(company.client_id.clone(), company.id.clone());
        let (state, store, dir) = (state.clone(), store.clone(), state_dir.to_owned());
        let (places, busy) = (ingests.places.clone(), ingests.busy.clone());
        ingests.running.push(Box::pin(async move {
            let (id, client) = (company.id.clone(), company.client_id.clone());
            if let Ok(_place) = places.acquire().await {
                ingest_company(&state, &store, &dir, company).await;
            }
            let mut busy = busy.lock().unwrap_or_else(|e| e.into_inner());
            busy.0.remove(&id);
            if let Some(n) = busy.1.get_mut(&client) {
                *n -= 1;
                if *n == 0 {
                    busy.1.remove(&client);
                }
            }
        }));
    }
}

/// Companies loaded at the same time.
pub const INGEST_AT_ONCE: usize = 4;
/// Companies of one client loaded at the same time: a client whose store is slow leaves
/// places for the others.
pub const INGEST_PER_CLIENT: usize = 2;

/// Looks at one company's store, and makes its new snapshot live or records why not.
async fn ingest_company(
    state: &Arc<api::AppState>,
    store: &Store,
    state_dir: &std::path::Path,
    company: control::Company,
) {
    let mut holding = None;
    let ingested = ingest::ingest(
        store,
        &state.live,
        &state.model,
        &company.id,
        state_dir,
        &mut holding,
    )
    .await;
    // what follows writes the control plane and the saved state: on the blocking pool
    let (state, state_dir) = (state.clone(), state_dir.to_owned());
    let recorded = control::blocking(move || {
        record_ingest(&state, &state_dir, &company, ingested);
        // what it took back or loaded is counted against the budget now
        if holding.take().is_some() {
            state.live.fit_budget(&company.id);
        }
        Ok(())
    });
    if let Err(e) = recorded.await {
        tracing::error!(error = %e, "Could not record an ingest's outcome.");
    }
}

/// Waits until the company's saved state is taken back (at once when it is): what it
/// serves and what it ingests next build on it.
/// One caller takes it back (one company at a time, on the blocking pool); the others wait
/// without holding a thread.
pub(crate) async fn ready(live: &Arc<ingest::LiveSet>, company: &str) {
    loop {
        if live.is_restored(company) {
            return;
        }
        if live.claim_restore(company) {
            let _place = live.restore_places.acquire().await;
            let (taking, name) = (live.clone(), company.to_owned());
            let _ = tokio::task::spawn_blocking(move || taking.take_back(&name)).await;
            live.restored(company);
            // then, beside the request that waited for it: compacted, and the budget kept
            // (counting it as compacted), one company at a time
            let (taking, name) = (live.clone(), company.to_owned());
            tokio::task::spawn_blocking(move || {
                let _one = taking.compacting.lock().unwrap_or_else(|e| e.into_inner());
                taking.compact_company(&name);
                taking.fit_budget(&name);
            });
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Records what an ingest did: the saved state (this node's), then the snapshot's record and
/// its events, by one node of those that share the control plane (see [`record_once`]).
fn record_ingest(
    state: &api::AppState,
    state_dir: &std::path::Path,
    company: &control::Company,
    ingested: Result<Option<Arc<ingest::Live>>, ingest::IngestError>,
) {
    match ingested {
        Ok(Some(live)) => {
            state.metrics.snapshots_live.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = state.live.save(&live) {
                tracing::error!(company = %company.id, error = %e, "Could not save the live snapshot's state; after a restart it is ingested again.");
            }
            record_live(state, company, &live);
        }
        // nothing new here; what this node serves may still be unrecorded (the node that
        // claimed it died before recording it)
        Ok(None) => {
            if let Some(live) = state.live.live(&company.id) {
                record_live(state, company, &live);
            }
            let pending = state
                .refusals
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&company.id);
            if let Some(refusal) = pending
                && !record_refusal(state, company, &refusal)
            {
                state
                    .refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(company.id.clone(), refusal);
            }
        }
        Err(e) if e.retry => {
            tracing::warn!(company = %company.id, error = %e, "Could not load a published snapshot now; the next poll tries again.");
        }
        Err(e) if e.snapshot == "?" => {
            state
                .metrics
                .snapshots_failed
                .fetch_add(1, Ordering::Relaxed);
            tracing::error!(company = %company.id, error = %e, "A published snapshot was refused; the previous one stays live.");
        }
        Err(e) => {
            // Recorded once per snapshot id; the live snapshot stays as it was. Kept until it
            // is recorded: when another node holds the claim and dies, this one records it at
            // a later poll.
            tracing::error!(company = %company.id, error = %e, "A published snapshot was refused; the previous one stays live.");
            let refusal = Refusal {
                snapshot: e.snapshot.clone(),
                public: e.public(state_dir),
            };
            if !record_refusal(state, company, &refusal) {
                state
                    .refusals
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(company.id.clone(), refusal);
            }
        }
    }
}

/// What an event about a snapshot is about (`data.synced:COMPANY:SNAPSHOT`): its key, the
/// same on every node that queues it (see [`ControlPlane::enqueue_event`]).
fn event_key(what: &str, company: &str, snapshot: &str) -> Option<String> {
    Some(format!("{what}:{company}:{snapshot}"))
}

/// A snapshot this node refused, as its record and events tell it.
pub(crate) struct Refusal {
    snapshot: String,
    /// Why, as the client is told (no server path, no SQL).
    public: String,
}

/// Records a refusal once among the nodes, with its events; false when not recorded now.
fn record_refusal(state: &api::AppState, company: &control::Company, r: &Refusal) -> bool {
    record_once(
        state,
        &company.id,
        &r.snapshot,
        Outcome::Refused,
        |history| {
            state
                .metrics
                .snapshots_failed
                .fetch_add(1, Ordering::Relaxed);
            let before = status_of(history);
            let key = |what: &str| event_key(what, &company.id, &r.snapshot);
            // The client hears of it as of a sync that failed on the PC.
            emit(
                state,
                &company.client_id,
                "sync.failed",
                serde_json::json!({
                    "companyId": company.id,
                    "snapshotId": r.snapshot,
                    "reason": "snapshot_refused",
                    "message": r.public,
                    "advice": "The published data did not pass the server's checks; the previous data is still served. The next sync publishes again.",
                }),
                key("sync.failed"),
            );
            if before != "Failing" {
                emit(
                    state,
                    &company.client_id,
                    "company.status_changed",
                    serde_json::json!({
                        "companyId": company.id, "from": before, "to": "Failing",
                    }),
                    key("company.status_changed:Failing"),
                );
            }
            SnapshotRecord {
                company_id: company.id.clone(),
                snapshot_id: r.snapshot.clone(),
                status: "failed".into(),
                detail: Some(r.public.clone()),
                created_at: None,
                ingested_at: chrono::Utc::now()
                    .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                records: None,
            }
        },
    )
}

/// Records the snapshot this node made live, with its events, unless it is recorded already.
fn record_live(state: &api::AppState, company: &control::Company, live: &ingest::Live) {
    let known = |state: &api::AppState| {
        state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&company.id)
            == Some(&live.snapshot_id)
    };
    if known(state) {
        return;
    }
    let recorded = record_once(
        state,
        &company.id,
        &live.snapshot_id,
        Outcome::Live,
        |history| {
            let before = status_of(history);
            let key = |what: &str| event_key(what, &company.id, &live.snapshot_id);
            emit(
                state,
                &company.client_id,
                "data.synced",
                serde_json::json!({
                    "companyId": company.id,
                    "snapshotId": live.snapshot_id,
                    "dataTypes": live.changes,
                }),
                key("data.synced"),
            );
            if before != "Fetched" {
                emit(
                    state,
                    &company.client_id,
                    "company.status_changed",
                    serde_json::json!({
                        "companyId": company.id, "from": before, "to": "Fetched",
                    }),
                    key("company.status_changed:Fetched"),
                );
            }
            SnapshotRecord {
                company_id: company.id.clone(),
                snapshot_id: live.snapshot_id.clone(),
                status: "live".into(),
                detail: None,
                created_at: Some(live.manifest.created_at.clone()),
                ingested_at: live.went_live_at.clone(),
                records: serde_json::to_value(&live.records).ok(),
            }
        },
    );
    if recorded {
        state
            .recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.id.clone(), live.snapshot_id.clone());
    }
}

/// What a node found of a snapshot.
#[derive(Clone, Copy)]
enum Outcome {
    Live,
    Refused,
}

/// Records snapshot `snapshot` of `company` once among the nodes that share the control
/// plane: unless its history has it (or, for one going live, a newer one: a slow node's
/// older snapshot never supersedes a newer one), this node claims it and `record` queues its events (keyed, so
/// that a node taking over a claim whose node died sends each under the same id) and
/// returns its record. True when the snapshot is recorded (now or before); false when
/// another node holds the claim or the control plane failed (the next poll looks again).
fn record_once(
    state: &api::AppState,
    company: &str,
    snapshot: &str,
    outcome: Outcome,
    record: impl FnOnce(&[SnapshotRecord]) -> SnapshotRecord,
) -> bool {
    let history = match state.control.snapshots(company) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(company, error = %e, "Could not read a company's snapshot history.");
            return false;
        }
    };
    // a refusal is recorded for its own snapshot (a store rolled back to an older one is
    // refused too); a snapshot going live, unless a newer one is recorded
    let done = |r: &SnapshotRecord| match outcome {
        Outcome::Refused => r.snapshot_id == snapshot,
        Outcome::Live => {
            r.snapshot_id == snapshot || (r.snapshot_id.as_str() > snapshot && r.status != "failed")
        }
    };
    if history.iter().any(done) {
        return true;
    }
    match state
        .control
        .claim_ingest(company, snapshot, &state.node, state.leases.ingest_ms)
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!(company, snapshot, "Another node records this snapshot.");
            return false;
        }
        Err(e) => {
            tracing::error!(company, error = %e, "Could not claim a snapshot's recording.");
            return false;
        }
    }
    let made = record(&history);
    // (a test kills a node here: its events queued, its record not written)
    crate::failpoint::hit("ingest-queued");
    match state.control.record_snapshot(&made) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(company, error = %e, "Could not record a snapshot's outcome.");
            false
        }
    }
}

/// This process's node name: the host, the process id and a random part (a node restarted
/// under the same process id is still a new node).
pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "server".into());
    format!("{host}-{}-{}", std::process::id(), control::random_token(4))
}

/// A company's status from its snapshot history: `NotSynced`, `Fetched` or `Failing`.
pub(crate) fn company_status(control: &dyn ControlPlane, company: &str) -> &'static str {
    status_of(&control.snapshots(company).unwrap_or_default())
}

/// The status a snapshot history (newest first) says.
fn status_of(history: &[SnapshotRecord]) -> &'static str {
    match history.first() {
        None => "NotSynced",
        Some(r) if r.status == "failed" => "Failing",
        Some(_) => "Fetched",
    }
}

/// Queues an event for the client's subscribers and wakes the delivery worker. `key` names
/// what the event is about when more than one node may queue it (see
/// [`ControlPlane::enqueue_event`]).
pub(crate) fn emit(
    state: &api::AppState,
    client_id: &str,
    event_type: &str,
    data: serde_json::Value,
    key: Option<String>,
) {
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    });
    match state
        .control
        .enqueue_event(client_id, event_type, &body, key.as_deref())
    {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                event = event_type,
                subscriptions = n,
                "Queued a webhook event."
            );
            state.webhook_wake.notify_one();
        }
        Err(e) => {
            tracing::error!(error = %e, event = event_type, "Could not queue a webhook event.")
        }
    }
}

/// What one of the server's memories may hold: as `set`, else `default` or a sixteenth of
/// the memory limit, whichever is less (the answers kept, the rows kept to answer from).
fn share(limit: Option<u64>, set: Option<u64>, default: usize) -> u64 {
    set.unwrap_or(match limit {
        Some(limit) => (default as u64).min(limit / 16),
        None => default as u64,
    })
}

/// Runs the server until SIGINT or SIGTERM.
pub async fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let store = Store::open(&options.store)?;
    // on the blocking pool: PostgreSQL's client blocks on a runtime of its own
    let (state_dir, url) = (options.state_dir.clone(), options.control.clone());
    let control = tokio::task::spawn_blocking(move || open_control(&state_dir, url.as_deref()))
        .await
        .map_err(|e| ServeError::Control(control::ControlError::Task(e.to_string())))??;
    let mut live = ingest::LiveSet::new(&options.state_dir, DataModel::embedded());
    live.limits = options.company_limits.clone();
    let answer_bytes = share(
        options.memory_limit,
        options.answer_memory,
        api::ANSWER_BYTES,
    );
    let served_bytes = share(
        options.memory_limit,
        options.served_memory,
        served::SERVED_BYTES,
    );
    if let Some(limit) = options.memory_limit {
        // The companies' data is kept to three quarters of the limit, less the answers kept
        // (64 MiB, or a sixteenth of the limit if that is less) and the rows kept in memory
        // to answer from (a sixteenth): the rest is for loads and
        // queries at work and the allocator's slack. One company's database may use at most
        // an eighth of the limit (beyond, it spills to disk), so that four loads at once
        // stay within it.
        live.budget = Some(
            (limit / 4 * 3)
                .saturating_sub(answer_bytes)
                .saturating_sub(served_bytes),
        );
        let eighth = limit / 8;
        if parse_bytes(&live.limits.memory).is_ok_and(|m| m > eighth) {
            live.limits.memory = format!("{}MB", (eighth >> 20).max(64));
        }
    }
    let live = Arc::new(live);
    // The server listens at once: each company's saved state is taken back on its first
    // request or ingest, or by the pass below, whichever comes first.
    let listing = control.clone();
    live.defer_restore(
        control::blocking(move || listing.all_companies())
            .await?
            .into_iter()
            .map(|c| c.id),
    );
    let mut state = api::AppState::new(
        control,
        live,
        DataModel::embedded(),
        options.rate_per_sec,
        Arc::new(webhooks::Targets::new(
            options.webhook_dns,
            options.allow_internal_webhooks,
            options.webhook_proxy.clone(),
        )),
    );
    state.naive = options.naive;
    state.keep_answers(answer_bytes as usize);
    state.served = Arc::new(served::ServedSet::holding(served_bytes as usize));
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Listen {
            addr: options.listen,
            source,
        })?;
    let bound = listener.local_addr().unwrap_or(options.listen);
    state.store = Some(store.clone());
    state.state_dir = options.state_dir.clone();
    state.public_url = options
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{bound}"))
        .trim_end_matches('/')
        .to_owned();
    state.loopback_port = options.loopback_port;
    state.link_ttl_secs = options.link_ttl_secs;
    state.max_companies_per_client = options.max_companies_per_client;
    state.request_timeout = options.request_timeout;
    state.unauthenticated_rate = options.unauthenticated_rate;
    state.metrics_token = options
        .metrics_token
        .as_deref()
        .filter(|t| !t.trim().is_empty())
        .map(|t| <sha2::Sha256 as sha2::Digest>::digest(t.trim().as_bytes()).into());
    state.limits = limits::QueryLimits::new(
        options.query_timeout,
        options.max_queries,
        options.max_queries_per_key,
    );
    state.rotate_after_secs = options.rotate_after_secs;
    state.connector_silence_secs = options.connector_silence_secs;
    state.leases = options.leases;
    let state = Arc::new(state);
    tracing::info!(address = %bound, store = %store.url, "Serving the API.");
    println!("listening on http://{bound}");
    // with a memory budget, companies are taken back on demand only
    if state.live.budget.is_none() {
        let live = state.live.clone();
        let left = live.unrestored();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            for company in &left {
                ready(&live, company).await;
            }
            if !left.is_empty() {
                tracing::info!(
                    companies = left.len(),
                    seconds = started.elapsed().as_secs_f64(),
                    "Took back every company's saved state."
                );
            }
        });
    }
    // At shutdown the ingest loop stops starting ingests and waits for those running, so a
    // snapshot being loaded or its state being saved is finished, not cut off.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let state = state.clone();
        let state_dir = options.state_dir.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            // Every company once per poll; between polls, only the companies a wake named.
            let mut last_full: Option<std::time::Instant> = None;
            let mut ingests = Ingests::default();
            let mut sweep: Option<tokio::task::JoinHandle<()>> = None;
            while !stopping.load(Ordering::SeqCst) {
                let named =
                    std::mem::take(&mut *state.woken.lock().unwrap_or_else(|e| e.into_inner()));
                let full = last_full.is_none_or(|t| t.elapsed() >= options.poll);
                if full {
                    last_full = Some(std::time::Instant::now());
                }
                if full || !named.is_empty() {
                    let listing = state.control.clone();
                    match control::blocking(move || listing.all_companies()).await {
                        Ok(companies) => {
                            let only = (!full).then_some(&named);
                            ingest_some(&state, &store, &state_dir, companies, only, &mut ingests);
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "Could not list the companies to watch.");
                        }
                    }
                }
                // a connector that fell silent: its client hears `not_running` (one sweep at
                // a time, on the blocking pool, beside the ingests)
                if full && sweep.as_ref().is_none_or(|s| s.is_finished()) {
                    let state = state.clone();
                    sweep = Some(tokio::task::spawn_blocking(move || {
                        if let Ok(companies) = state.control.all_companies() {
                            for company in companies {
                                devices::tell_reason(&state, &company.id);
                            }
                        }
                    }));
                }
                let until_poll =
                    last_full.map_or(Duration::ZERO, |t| options.poll.saturating_sub(t.elapsed()));
                // the ingests run meanwhile; one ending is a moment to look again
                tokio::select! {
                    _ = tokio::time::sleep(until_poll) => {}
                    _ = state.wake.notified() => {}
                    _ = ingests.progress() => {}
                }
            }
            ingests.finish().await;
        })
    };
    let wake_on_stop = state.clone();
    let deliveries = tokio::spawn(webhooks::deliver_forever(
        state.control.clone(),
        state.webhook_wake.clone(),
        state.webhook_targets.clone(),
        options.webhook_backoff_scale,
        options.delivery_retention,
        options.leases.delivery_ms,
    ));
    let app = api::router(state);
    listen::serve(listener, app, options.connections, shutdown_signal()).await;
    stopping.store(true, Ordering::SeqCst);
    wake_on_stop.wake.notify_one();
    if tokio::time::timeout(Duration::from_secs(60), watcher)
        .await
        .is_err()
    {
        tracing::warn!("The ingest loop did not finish within 60 s of shutdown.");
    }
    deliveries.abort();
    tracing::info!("The server stopped.");
    Ok(())
}

/// Resolves at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("Shutting down: finishing requests in flight.");
}
