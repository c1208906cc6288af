//! Ingest: a company's newly published snapshot, checked and loaded, then swapped in whole.
//!
//! Takes a company's `latest.json` in the store; produces a [`Live`] snapshot that requests
//! read. Steps, none of which touches what is being served:
//! 1. The manifest is read and its versions and company checked.
//! 2. Each data file is fetched into a content-addressed cache (`STATE/cache/SHA256.parquet`),
//!    its size and SHA-256 checked on the way in.
//! 3. Control totals are recomputed from the Parquet and must equal the manifest's. Each data
//!    type is loaded into the company's in-memory DuckDB database, in a schema of its own per
//!    snapshot (`s_SNAPSHOTID`): its changed parts are built as tables of their own, on as
//!    many connections as the company has threads, a data type's compressed once built if
//!    the database holds half its memory, and the schema's views over them are made in one
//!    transaction at the end (until then nothing reads the new parts; a failed load drops
//!    the parts it built).
//! 6. After the swap, the live snapshot's state is saved to `STATE/db/COMPANY.duckdb` in one
//!    transaction: each record's content hash and `modifiedDate`, and the rows of records kept
//!    as deleted (those are in no Parquet file). A restarted server rebuilds the live snapshot
//!    from the cached Parquet and that state, so `modifiedDate` survives restarts; a server
//!    stopped before the save finds the previous state, and the new snapshot is simply
//!    ingested again.
//! 4. `modifiedDate`: a record whose content (every field) equals its previous version keeps
//!    that version's `modifiedDate`; a new or changed one gets the time the snapshot went
//!    live. A record of the previous snapshot missing from this one stays, `isDeleted = true`,
//!    for [`CompanyLimits::keep_deleted_days`] after its deletion.
//! 5. Going live is one swap of an `Arc` under a lock: a request holds the snapshot it
//!    started with until it finishes, so none sees a mix of two snapshots or fails during the
//!    swap. The previous [`KEEP_SNAPSHOTS`] snapshots stay loaded for `snapshot=` queries.
//!
//! A failure at any step leaves the live snapshot as it was and is returned (and recorded
//! by the caller as a failed snapshot).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use duckdb::Connection;
use futures::StreamExt;

use crate::model::DataModel;
use crate::publish::Store;
use crate::snapshot::manifest::Manifest;
use crate::staging::ident;

use super::query::MODIFIED_DATE;

/// Snapshots kept loaded per company (the live one and the ones before it).
pub const KEEP_SNAPSHOTS: usize = 3;
/// Files of a snapshot fetched into the cache at once.
const CONCURRENT_FETCHES: usize = 8;
/// Column holding a record's content hash (not served).
const HASH_COLUMN: &str = "_content_hash";

/// Why a snapshot could not go live.
#[derive(Debug, thiserror::Error)]
#[error("snapshot {snapshot} of company {company}: {detail}")]
pub struct IngestError {
    /// The company.
    pub company: String,
    /// The snapshot (or "?" when the manifest could not be read).
    pub snapshot: String,
    /// What is wrong.
    pub detail: String,
    /// Whether the snapshot may load at a later try (the store or the local disk failed,
    /// not the snapshot); a snapshot refused for its content is not checked again.
    pub retry: bool,
}

impl IngestError {
    /// What an API client is told: the detail's first line without the SQL a DuckDB error
    /// quotes (after it, or after `(in: `), with the server's own folder named `STATE`, at
    /// most 500 characters. The whole detail is in the server's log.
    pub fn public(&self, state_dir: &Path) -> String {
        let first = self.detail.lines().next().unwrap_or_default();
        let head = first.split(" (in: ").next().unwrap_or_default().trim();
        let text = head.replace(&state_dir.display().to_string(), "STATE");
        match text.char_indices().nth(500) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text,
        }
    }
}

/// One loaded snapshot.
pub struct Live {
    /// Its id.
    pub snapshot_id: String,
    /// Its manifest.
    pub manifest: Manifest,
    /// When it went live (RFC 3339).
    pub went_live_at: String,
    /// Records per data type as served (deleted ones carried from earlier snapshots included).
    pub records: HashMap<String, u64>,
    /// Per data type: what changed since the snapshot before (empty for a restored one).
    pub changes: std::collections::BTreeMap<String, Changes>,
    /// Schema in the company database: a view per data type over its parts' tables.
    pub schema: String,
    /// Per data type, its loaded parts (shared with the snapshots before and after it that
    /// hold the same part unchanged).
    parts: HashMap<String, Vec<Arc<PartTable>>>,
    db: Arc<Mutex<Connection>>,
    /// Where its Parquet files are cached (`SHA256.parquet`).
    cache: PathBuf,
    /// Per data type, its listing table once asked for (see [`Live::listing`]).
    listings: Mutex<HashMap<String, Listing>>,
}

/// Whether a data type's listing table is there to read.
#[derive(Debug, Clone, Copy)]
enum Listing {
    /// A request is building it (the others read the view meanwhile).
    Building,
    /// Built: listings read it.
    Ready,
    /// It could not be built when last tried (logged): listings read the view, and a request
    /// tries again once [`LISTING_RETRY`] has passed (a build interrupted by its request's
    /// deadline, or refused while memory was short, may succeed later).
    Failed(std::time::Instant),
}

/// How long after a listing table failed to build a request tries again.
const LISTING_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// One part of a data type loaded in a company database: the rows of its Parquet file (if
/// the snapshot has one for the part) with their content hashes and `modifiedDate`, and the
/// records of the part kept as deleted. Shared by every loaded snapshot whose part is the
/// same; its table is dropped when the last of them lets go.
pub struct PartTable {
    /// The part (`n000000`, …, `other`).
    part: String,
    /// The SHA-256 of its Parquet file, or None when the snapshot has no file for the part
    /// (only records kept as deleted).
    sha256: Option<String>,
    /// `parts.p_N`, quoted.
    table: String,
    /// Its rows as served.
    rows: u64,
    /// Control totals of its Parquet file (checked against the manifest's).
    totals: PartTotals,
    /// When the oldest record kept as deleted (in no Parquet file) was deleted, in
    /// microseconds since 1970: the part is rebuilt once that is older than the days deleted
    /// records are kept.
    oldest_carried: Option<i64>,
    db: Arc<Mutex<Connection>>,
}

impl PartTable {
    /// A new part table's name and nothing else yet (its maker creates the table and fills
    /// in the rest): the table is dropped with the value, so it also guards a scratch table.
    fn scratch(db: &Arc<Mutex<Connection>>) -> PartTable {
        PartTable {
            part: String::new(),
            sha256: None,
            table: new_part_table(),
            rows: 0,
            totals: PartTotals::default(),
            oldest_carried: None,
            db: db.clone(),
        }
    }
}

impl Drop for PartTable {
    fn drop(&mut self) {
        let conn = self
            .db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone();
        if let Err(e) =
            conn.and_then(|c| c.execute_batch(&format!("DROP TABLE IF EXISTS {}", self.table)))
        {
            tracing::warn!(table = %self.table, error = %e, "Could not drop a part no snapshot holds.");
        }
    }
}

/// A Parquet file's records, deleted records and money sums (in cents), to add up parts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct PartTotals {
    records: u64,
    deleted: u64,
    cents: std::collections::BTreeMap<String, i128>,
}

impl PartTotals {
    fn of(totals: &crate::rules::DataTypeTotals) -> Result<Self, String> {
        Ok(PartTotals {
            records: totals.rows,
            deleted: totals.deleted,
            cents: totals
                .sums
                .iter()
                .map(|(k, v)| cents(v).map(|c| (k.clone(), c)))
                .collect::<Result<_, _>>()?,
        })
    }

    fn add(&mut self, other: &PartTotals) {
        self.records += other.records;
        self.deleted += other.deleted;
        for (k, v) in &other.cents {
            *self.cents.entry(k.clone()).or_default() += v;
        }
    }
}

/// A decimal of at most two places (`-12.3`, `4`, `0.05`) in cents.
fn cents(text: &str) -> Result<i128, String> {
    let bad = || format!("{text:?} is not a decimal with at most two places");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || fraction.len() > 2
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let whole: i128 = whole.parse().map_err(|_| bad())?;
    let fraction: i128 = format!("{fraction:0<2}").parse().map_err(|_| bad())?;
    let value = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(fraction))
        .ok_or_else(bad)?;
    Ok(if negative { -value } else { value })
}

impl Live {
    /// A connection of its own to the company database, for one request.
    pub fn connection(&self) -> duckdb::Result<Connection> {
        self.db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
    }

    /// The quoted table of a data type: a view over its parts, with the columns [`PART_NO`]
    /// and [`ROW_NO`] besides the data type's own.
    pub fn table(&self, data_type: &str) -> String {
        format!("{}.{}", ident(&self.schema), ident(data_type))
    }

    /// The quoted table a page of a data type's records is picked from (filtered, counted,
    /// sorted): one table of the data type's rows with only the fields a query or an ordering
    /// may name (no lists), [`PART_NO`] and [`ROW_NO`]. Planning a query over the view binds
    /// every part (30 for the 1,000,000-split company's invoices): about 6 ms of a page pick's
    /// 8 (binding 3, optimizers 3, running 0.7), where the same pick over this table takes
    /// about 3 ms in all (DuckDB 1.5.6 in Python, one thread, on a copy of those parts).
    ///
    /// Built by the first request that lists the data type (84 ms for those 159,000
    /// invoices, measured the same way with every column but the lists), in the snapshot's schema (dropped with it), under the company's memory
    /// limit; until it is built, or if it cannot be (logged), the view is read: same rows.
    /// Also says whether this call built it (the company's memory is then counted again).
    pub fn listing(&self, conn: &Connection, data_type: &crate::model::DataType) -> (String, bool) {
        let view = self.table(&data_type.name);
        let table = format!(
            "{}.{}",
            ident(&self.schema),
            ident(&format!("{LISTING_PREFIX}{}", data_type.name))
        );
        let set = |state| {
            self.listings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(data_type.name.clone(), state)
        };
        {
            let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
            match listings.get(&data_type.name) {
                Some(Listing::Ready) => return (table, false),
                Some(Listing::Building) => return (view, false),
                Some(Listing::Failed(at)) if at.elapsed() < LISTING_RETRY => return (view, false),
                Some(Listing::Failed(_)) | None => {
                    listings.insert(data_type.name.clone(), Listing::Building)
                }
            };
        }
        let mut columns: Vec<String> = data_type
            .fields
            .iter()
            .filter(|f| super::query::nameable(f) || f.name == crate::model::ID_FIELD)
            .map(|f| ident(&f.name))
            .collect();
        columns.extend([MODIFIED_DATE, PART_NO, ROW_NO].map(ident));
        let started = std::time::Instant::now();
        let sql = format!(
            "CREATE TABLE {table} AS SELECT {} FROM {view}",
            columns.join(", ")
        );
        match conn.execute_batch(&sql) {
            Ok(()) => {
                tracing::debug!(data_type = %data_type.name, snapshot = %self.snapshot_id, seconds = started.elapsed().as_secs_f64(), "Built a data type's listing table.");
                set(Listing::Ready);
                (table, true)
            }
            Err(e) => {
                tracing::warn!(data_type = %data_type.name, snapshot = %self.snapshot_id, error = %e, "Could not build a data type's listing table; its listings read its parts.");
                // (a partly built table is not left behind: CREATE TABLE AS is one statement)
                set(Listing::Failed(std::time::Instant::now()));
                (view, false)
            }
        }
    }

    /// The quoted tables of a data type's parts, in the order [`PART_NO`] numbers them.
    pub fn parts_of(&self, data_type: &str) -> Vec<String> {
        self.parts
            .get(data_type)
            .map(|v| v.iter().map(|t| t.table.clone()).collect())
            .unwrap_or_default()
    }

    /// The quoted table of the part that holds the record `id` of a data type, if the
    /// snapshot has that part (a record is only ever in the part its id gives).
    pub fn part_holding(&self, data_type: &str, id: &str) -> Option<String> {
        let part = crate::snapshot::part_of(id);
        self.parts
            .get(data_type)?
            .iter()
            .find(|t| t.part == part)
            .map(|t| t.table.clone())
    }

    /// The cached Parquet files of a data type, one per part (what the naive peer of the
    /// benchmark reads).
    pub fn parquet_files(&self, data_type: &str) -> Vec<PathBuf> {
        self.manifest
            .data_types
            .get(data_type)
            .map(|e| {
                e.files
                    .iter()
                    .map(|f| self.cache.join(format!("{}.parquet", f.sha256)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `read_parquet([…])` of a data type's cached files.
    pub fn read_parquet(&self, data_type: &str) -> String {
        read_parquet(&self.parquet_files(data_type), false)
    }
}

/// Records added, modified and deleted in a data type by a snapshot.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, PartialEq, Eq)]
pub struct Changes {
    /// New records.
    pub added: u64,
    /// Records whose content changed.
    pub modified: u64,
    /// Records that disappeared or became deleted.
    pub deleted: u64,
}

/// Per company: its database and loaded snapshots, newest first (the first is live).
pub struct LiveSet {
    companies: RwLock<HashMap<String, Vec<Arc<Live>>>>,
    databases: Mutex<HashMap<String, Arc<Mutex<Connection>>>>,
    /// Where the company databases are.
    dir: PathBuf,
    /// Where data files are cached.
    cache: PathBuf,
    /// (company, snapshot) pairs already refused: not loaded and checked again at every poll.
    refused: Mutex<std::collections::HashSet<(String, String)>>,
    /// What one company's database may use.
    pub limits: CompanyLimits,
    /// Companies whose saved state has not been taken back yet: a server listens before it
    /// has taken back every company (see [`LiveSet::take_back`]).
    unrestored: Mutex<std::collections::HashSet<String>>,
    /// Companies being taken back now (by whoever claimed them).
    restoring: Mutex<std::collections::HashSet<String>>,
    /// One company is taken back at a time; waited for without holding a thread.
    pub restore_places: tokio::sync::Semaphore,
    /// What all companies' databases may hold in memory together (bytes; None: no limit).
    pub budget: Option<u64>,
    /// Per company in memory: what its database holds (bytes, as last measured) and when a
    /// request last used it.
    resident: Mutex<HashMap<String, Resident>>,
    /// Companies being ingested (see [`LiveSet::ingesting`]): never put out meanwhile.
    loading: Mutex<std::collections::HashSet<String>>,
    /// Held while a taken-back company is compacted and the budget kept: one at a time.
    pub compacting: Mutex<()>,
    /// Companies taken back from their saved state since the server started.
    pub taken_back: std::sync::atomic::AtomicU64,
    /// The data model (a part's control totals are recomputed when it is taken back).
    model: DataModel,
    /// Parts loaded from their files by ingests, and parts an ingest took unchanged.
    pub parts_loaded: std::sync::atomic::AtomicU64,
    /// See `parts_loaded`.
    pub parts_reused: std::sync::atomic::AtomicU64,
}

/// Holds a company as being ingested until dropped.
pub struct Ingesting {
    live: Arc<LiveSet>,
    company: String,
}

impl Drop for Ingesting {
    fn drop(&mut self) {
        self.live
            .loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.company);
    }
}

/// A company's database in memory, for the budget.
#[derive(Debug, Clone, Copy)]
struct Resident {
    bytes: u64,
    used: std::time::Instant,
}

/// What an in-memory DuckDB database costs beyond the data it holds (its catalog, buffers
/// and allocator), as measured on DuckDB 1.5: 200 small databases took 534 MB.
pub const DATABASE_OVERHEAD: u64 = 3 << 20;

/// What one company's DuckDB may use: past its memory it spills to `STATE/db/tmp/COMPANY`
/// or fails that load or query (never the server), and it runs on at most `threads`.
#[derive(Debug, Clone)]
pub struct CompanyLimits {
    /// DuckDB's `memory_limit` (`2GB`, `512MB`, …).
    pub memory: String,
    /// DuckDB's `threads`.
    pub threads: usize,
    /// Days a record stays served as deleted (`isDeleted = true`) after its deletion; then it
    /// is no longer carried into new snapshots.
    pub keep_deleted_days: u32,
}

impl Default for CompanyLimits {
    fn default() -> Self {
        CompanyLimits {
            memory: "2GB".into(),
            threads: 2,
            keep_deleted_days: 90,
        }
    }
}

/// In the saved state: the live snapshot (one row).
const SNAPSHOTS_TABLE: &str = "persist.main._snapshots";

impl LiveSet {
    /// Company databases in `STATE/db/`.
    pub fn new(state_dir: &Path, model: DataModel) -> Self {
        LiveSet {
            companies: RwLock::default(),
            databases: Mutex::default(),
            dir: state_dir.join("db"),
            cache: state_dir.join("cache"),
            refused: Mutex::default(),
            limits: CompanyLimits::default(),
            unrestored: Mutex::default(),
            restoring: Mutex::default(),
            restore_places: tokio::sync::Semaphore::new(1),
            budget: None,
            resident: Mutex::default(),
            loading: Mutex::default(),
            compacting: Mutex::default(),
            taken_back: Default::default(),
            model,
            parts_loaded: Default::default(),
            parts_reused: Default::default(),
        }
    }

    /// Marks `company` as being ingested (taken back, loaded, recorded) until the guard is
    /// dropped: the budget does not put it out meanwhile.
    pub fn ingesting(self: &Arc<Self>, company: &str) -> Ingesting {
        self.loading
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.to_owned());
        Ingesting {
            live: self.clone(),
            company: company.to_owned(),
        }
    }

    /// Notes that a request used `company` (the budget keeps the most recently used).
    pub fn touch(&self, company: &str) {
        if let Some(r) = self
            .resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(company)
        {
            r.used = std::time::Instant::now();
        }
    }

    /// Measures what `company`'s database holds now, for the budget.
    fn measure(&self, company: &str, db: &Arc<Mutex<Connection>>) {
        // a database put out meanwhile is no longer counted
        let current = self
            .databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(company)
            .is_some_and(|d| Arc::ptr_eq(d, db));
        if !current {
            return;
        }
        let bytes = memory_used(&db.lock().unwrap_or_else(|e| e.into_inner()));
        self.resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                company.to_owned(),
                Resident {
                    bytes: bytes + DATABASE_OVERHEAD,
                    used: std::time::Instant::now(),
                },
            );
    }

    /// Counts again what a company's database holds (after a listing table was built in it).
    pub fn remeasure(&self, company: &str) {
        if let Some(db) = self.database_in_memory(company) {
            self.measure(company, &db);
        }
    }

    /// A company's database, if it is in memory.
    fn database_in_memory(&self, company: &str) -> Option<Arc<Mutex<Connection>>> {
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(company)
            .cloned()
    }

    /// What the companies in memory hold together (bytes), and how many they are.
    pub fn resident(&self) -> (u64, usize) {
        let resident = self.resident.lock().unwrap_or_else(|e| e.into_inner());
        (resident.values().map(|r| r.bytes).sum(), resident.len())
    }

    /// Puts companies out of memory, least recently used first, until what stays fits the
    /// budget; never `keep`, nor one being ingested or taken back. A company put out is taken
    /// back from its saved state and cached Parquet on its next request or ingest, as after
    /// a restart (its older snapshots, kept for `snapshot=` queries, are not). Only a company
    /// whose saved state is its live snapshot's is put out. Returns how many were.
    pub fn fit_budget(&self, keep: &str) -> usize {
        let Some(budget) = self.budget else {
            return 0;
        };
        let (mut held, mut by_use) = {
            // (locks in the order put_out takes them: loading, then the others)
            let loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
            let resident = self.resident.lock().unwrap_or_else(|e| e.into_inner());
            let restoring = self.restoring.lock().unwrap_or_else(|e| e.into_inner());
            let held: u64 = resident.values().map(|r| r.bytes).sum();
            let by_use: Vec<(std::time::Instant, String, u64)> = resident
                .iter()
                .filter(|(c, _)| {
                    c.as_str() != keep && !restoring.contains(*c) && !loading.contains(*c)
                })
                .map(|(c, r)| (r.used, c.clone(), r.bytes))
                .collect();
            (held, by_use)
        };
        by_use.sort();
        let mut put_out = 0;
        for (_, company, bytes) in by_use {
            if held <= budget {
                break;
            }
            if self.put_out(&company) {
                held = held.saturating_sub(bytes);
                put_out += 1;
            }
        }
        if held > budget {
            tracing::warn!(
                held,
                budget,
                "The companies in memory hold more than the memory budget; none more can be put out now."
            );
        }
        put_out
    }

    /// Drops a company's database from memory; the next request or ingest takes it back.
    /// False when it cannot be (its saved state is not its live snapshot's yet).
    fn put_out(&self, company: &str) -> bool {
        // Held throughout: an ingest marks its company as loading under this lock and then
        // looks whether it is in memory, so it either keeps the company here or sees it gone
        // and takes it back first.
        let loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        if loading.contains(company) {
            return false;
        }
        if self.live(company).is_none() {
            // counted but no longer in memory (measured as it was put out): uncounted
            self.resident
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(company);
            return true;
        }
        if !self.is_saved(company) {
            return false;
        }
        // Claimed as if being taken back: a request meanwhile waits until it is gone, then
        // takes it back into a new database.
        if !self
            .restoring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.to_owned())
        {
            return false;
        }
        let release = || {
            self.restoring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(company);
        };
        let db = self
            .databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(company)
            .cloned();
        // The saved state is let go first, for the database that takes the company back
        // (requests still answering hold this one until they finish); if it cannot be, the
        // company stays.
        if let Some(db) = &db {
            let detached = db
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .execute_batch("DETACH persist");
            if let Err(e) = detached {
                tracing::warn!(company, error = %e, "Could not let go of a company's saved state; it stays in memory.");
                release();
                return false;
            }
        }
        self.defer_restore([company.to_owned()]);
        self.resident
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(company);
        self.companies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(company);
        self.databases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(company);
        release();
        drop(loading);
        tracing::debug!(
            company,
            "Put a company out of memory to stay within the budget."
        );
        true
    }

    /// Whether the company's saved state is that of its live snapshot.
    fn is_saved(&self, company: &str) -> bool {
        let Some(live) = self.live(company) else {
            return false;
        };
        live.connection()
            .and_then(|c| {
                c.query_row(
                    &format!("SELECT count(*) FROM {SNAPSHOTS_TABLE} WHERE snapshot_id = ?"),
                    [&live.snapshot_id],
                    |r| r.get::<_, i64>(0),
                )
            })
            .is_ok_and(|n| n == 1)
    }

    /// Notes companies whose saved state is to be taken back later: on demand (its first
    /// request or ingest), or by the server's background pass after it listens.
    pub fn defer_restore(&self, companies: impl IntoIterator<Item = String>) {
        self.unrestored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(companies);
    }

    /// Whether a company's saved state has been taken back (or it had none to take).
    pub fn is_restored(&self, company: &str) -> bool {
        !self
            .unrestored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(company)
    }

    /// The companies not taken back yet.
    pub fn unrestored(&self) -> Vec<String> {
        let mut left: Vec<String> = self
            .unrestored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect();
        left.sort();
        left
    }

    /// Claims the taking back of a company still to take back: true for the one caller that
    /// is to do it (then [`LiveSet::take_back`], and [`LiveSet::restored`] whatever happens).
    pub fn claim_restore(&self, company: &str) -> bool {
        !self.is_restored(company)
            && self
                .restoring
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(company.to_owned())
    }

    /// Marks a claimed company as taken back (or given up on: its latest is loaded again).
    pub fn restored(&self, company: &str) {
        self.unrestored
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(company);
        self.restoring
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(company);
    }

    /// Takes back a claimed company's live snapshot from its saved state (blocking: call it
    /// on the blocking pool).
    pub fn take_back(&self, company: &str) {
        // (a test holds the server here, listening, with the company not taken back)
        crate::failpoint::hit("restore");
        match self.restore(company) {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(company, snapshots = n, "Took back the loaded snapshots.")
            }
            Err(e) => {
                tracing::warn!(company, error = %e, "Could not take back the loaded snapshots; the latest is loaded again.")
            }
        }
    }

    /// Rebuilds a company's live snapshot from its saved state and the cached Parquet (after a
    /// restart). Returns how many snapshots are back (0 or 1).
    pub fn restore(&self, company: &str) -> Result<usize, String> {
        // never rebuilt into a database that is serving it
        if !self.dir.join(format!("{company}.duckdb")).exists() || self.live(company).is_some() {
            return Ok(0);
        }
        let db = self.database(company).map_err(|e| e.to_string())?;
        let conn = db
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
            .map_err(|e| e.to_string())?;
        let row = conn.query_row(
            &format!("SELECT manifest, went_live_at, records FROM {SNAPSHOTS_TABLE} LIMIT 1"),
            [],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        );
        let (manifest, went_live_at, records) = match row {
            Ok(row) => row,
            Err(duckdb::Error::QueryReturnedNoRows) => return Ok(0),
            Err(e) => return Err(e.to_string()),
        };
        let manifest = Manifest::from_json(manifest.as_bytes()).map_err(|e| e.to_string())?;
        let schema = schema_of(&manifest.snapshot_id);
        let started = std::time::Instant::now();
        let q = |sql: &str| {
            conn.execute_batch(sql)
                .map_err(|e| format!("{e} (in: {sql})"))
        };
        // The parts are built outside a transaction (each is private until the snapshot's
        // views exist, and dropped with its `PartTable` if the rebuild fails), so that each
        // data type's parts are compressed as soon as they are built.
        let mut parts: HashMap<String, Vec<Arc<PartTable>>> = HashMap::new();
        let rebuilt = (|| {
            let (h, m, id) = (
                ident(HASH_COLUMN),
                ident(MODIFIED_DATE),
                ident(crate::model::ID_FIELD),
            );
            for (name, entry) in &manifest.data_types {
                let (st, carried) = (ident(&format!("st_{name}")), ident(&format!("del_{name}")));
                let part_of = crate::snapshot::part_sql(&id);
                let dt = self
                    .model
                    .types
                    .iter()
                    .find(|t| t.name == *name)
                    .ok_or_else(|| format!("data type {name} is not in the data model"))?;
                // the records kept as deleted, per part: how many, and the oldest deletion
                let mut stmt = conn
                    .prepare(&format!(
                        "SELECT {part_of} AS part, count(*), epoch_us(min({m})) FROM persist.main.{carried} GROUP BY part"
                    ))
                    .map_err(|e| e.to_string())?;
                let kept: HashMap<String, (u64, Option<i64>)> = stmt
                    .query_map([], |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            (r.get::<_, i64>(1)? as u64, r.get(2)?),
                        ))
                    })
                    .and_then(|rows| rows.collect())
                    .map_err(|e| e.to_string())?;
                let mut tables = Vec::new();
                let mut files = Vec::new();
                for f in &entry.files {
                    let file = self
                        .cache
                        .join(company)
                        .join(format!("{}.parquet", f.sha256));
                    if !file.exists() {
                        return Err(format!("{} is no longer cached", file.display()));
                    }
                    files.push(file);
                }
                // The saved hashes and dates, sorted by part, so that each part's are read
                // without scanning the others' (splitting one read of all the files by file
                // instead costs parts × rows); a table, not a temporary one, so that every
                // connection building parts reads it (dropped with `saved`).
                let saved = PartTable::scratch(&db);
                q(&format!(
                    "CREATE TABLE {} AS
                     SELECT {part_of} AS _part, {id}, {h}, {m} FROM persist.main.{st} ORDER BY _part",
                    saved.table
                ))?;
                let jobs: Vec<_> = entry.files.iter().zip(&files).collect();
                let built = on_connections(&db, self.limits.threads, &jobs, |conn, (f, file)| {
                    let mut part = PartTable::scratch(&db);
                    part.part = f.part.clone();
                    part.sha256 = Some(f.sha256.clone());
                    let quoted = f.part.replace('\'', "''");
                    let q = |sql: &str| {
                        conn.execute_batch(sql)
                            .map_err(|e| format!("{e} (in: {sql})"))
                    };
                    q(&format!(
                        "CREATE TABLE {} AS
                         SELECT r.*, p.{h}, p.{m} FROM {} r
                         JOIN (SELECT * EXCLUDE (_part) FROM {} WHERE _part = '{quoted}') p USING ({id})",
                        part.table,
                        read_parquet(std::slice::from_ref(*file), false),
                        saved.table,
                    ))?;
                    // (the file's rows only, as when the part was loaded)
                    let totals = crate::rules::totals_of(conn, dt, &part.table)
                        .map_err(|e| e.to_string())?;
                    let (carried_rows, oldest) = kept.get(&f.part).copied().unwrap_or_default();
                    if carried_rows > 0 {
                        q(&format!(
                            "INSERT INTO {} SELECT * FROM persist.main.{carried} WHERE {part_of} = '{quoted}'",
                            part.table
                        ))?;
                    }
                    part.rows = totals.rows + carried_rows;
                    part.oldest_carried = oldest;
                    part.totals = PartTotals::of(&totals)?;
                    Ok(Arc::new(part))
                })?;
                tables.extend(built);
                drop(saved);
                tracing::debug!(data_type = %name, seconds = started.elapsed().as_secs_f64(), "Rebuilt a data type's parts.");
                // records kept as deleted in parts the snapshot has no file for
                for (part, (rows, oldest)) in kept
                    .into_iter()
                    .filter(|(p, _)| !entry.files.iter().any(|f| f.part == *p))
                {
                    let table = new_part_table();
                    q(&format!(
                        "CREATE TABLE {table} AS SELECT * FROM persist.main.{carried} WHERE {part_of} = '{}';",
                        part.replace('\'', "''")
                    ))?;
                    tables.push(Arc::new(PartTable {
                        part,
                        sha256: None,
                        rows,
                        oldest_carried: oldest,
                        table,
                        totals: PartTotals::default(),
                        db: db.clone(),
                    }));
                }
                parts.insert(name.clone(), tables);
                compress(&conn, name, &self.limits);
            }
            Ok(())
        })();
        rebuilt.and_then(|()| publish_views(&q, &schema, &parts))?;
        let built = started.elapsed().as_secs_f64();
        index_parts(&conn, parts.values().flatten().map(|t| &**t));
        tracing::debug!(
            company,
            built_seconds = built,
            indexed_seconds = started.elapsed().as_secs_f64() - built,
            "Rebuilt a company's parts from its saved state."
        );
        let live = Arc::new(Live {
            snapshot_id: manifest.snapshot_id.clone(),
            manifest,
            went_live_at,
            records: serde_json::from_str(&records).map_err(|e| e.to_string())?,
            changes: Default::default(),
            schema,
            parts,
            db: db.clone(),
            cache: self.cache.join(company),
            listings: Default::default(),
        });
        self.companies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(company.to_owned(), vec![live]);
        self.measure(company, &db);
        self.taken_back
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(1)
    }

    /// Saves the state a restart needs to rebuild `live` (see the module header, step 6); run
    /// after the swap, off the path to serving.
    pub fn save(&self, live: &Live) -> Result<(), String> {
        let conn = live.connection().map_err(|e| e.to_string())?;
        let q = |sql: &str| {
            conn.execute_batch(sql)
                .map_err(|e| format!("{e} (in: {sql})"))
        };
        q("BEGIN TRANSACTION")?;
        let saved = (|| {
            for name in live.manifest.data_types.keys() {
                q(&format!(
                    "CREATE OR REPLACE TABLE persist.main.{st} AS SELECT {id}, {h}, {m} FROM {table};
                     CREATE OR REPLACE TABLE persist.main.{del} AS SELECT t.* EXCLUDE ({PART_NO}, {ROW_NO}) FROM {table} t ANTI JOIN {raw} p USING ({id});",
                    raw = live.read_parquet(name),
                    st = ident(&format!("st_{name}")),
                    del = ident(&format!("del_{name}")),
                    id = ident(crate::model::ID_FIELD),
                    h = ident(HASH_COLUMN),
                    m = ident(MODIFIED_DATE),
                    table = live.table(name),
                ))?;
            }
            conn.execute(&format!("DELETE FROM {SNAPSHOTS_TABLE}"), [])
                .and_then(|_| {
                    conn.execute(
                        &format!("INSERT INTO {SNAPSHOTS_TABLE} VALUES (?, ?, ?, ?)"),
                        duckdb::params![
                            live.snapshot_id,
                            String::from_utf8_lossy(&live.manifest.to_json()).into_owned(),
                            live.went_live_at,
                            serde_json::to_string(&live.records).unwrap_or_default()
                        ],
                    )
                })
                .map(|_| ())
                .map_err(|e| e.to_string())
        })();
        if let Err(e) = saved.and_then(|()| q("COMMIT")) {
            let _ = q("ROLLBACK");
            return Err(e);
        }
        // beside it, the saved snapshot's id: a company out of memory is not taken back
        // just to learn that its latest.json has not moved
        let company = live.cache.file_name().unwrap_or_default().to_string_lossy();
        let file = self.dir.join(format!("{company}.live"));
        let part = crate::files::sibling(&file, "part");
        std::fs::write(&part, live.snapshot_id.as_bytes())
            .and_then(|()| std::fs::rename(&part, &file))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        self.compact(&company, &live.db);
        Ok(())
    }

    /// Compacts a taken-back company's database (see [`LiveSet::compact`]), after its
    /// request is answered: taking back waits for no checkpoint.
    pub fn compact_company(&self, company: &str) {
        if let Some(db) = self.database_in_memory(company) {
            self.compact(company, &db);
        }
    }

    /// Compacts a company's in-memory database: DuckDB keeps a table just loaded in its
    /// loading form until a checkpoint compresses it (a 20,000-transaction company: 85 MiB
    /// before, 10 MiB after). Then measures it for the budget. Off the path to serving.
    fn compact(&self, company: &str, db: &Arc<Mutex<Connection>>) {
        let conn = db.lock().unwrap_or_else(|e| e.into_inner()).try_clone();
        if let Err(e) = conn.and_then(|c| c.execute_batch("CHECKPOINT memory")) {
            tracing::warn!(company, error = %e, "Could not compact a company's database.");
        }
        self.measure(company, db);
    }

    /// The id of the snapshot whose state is saved for `company`, if any.
    pub fn saved_id(&self, company: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.join(format!("{company}.live")))
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// The live snapshot of a company.
    pub fn live(&self, company: &str) -> Option<Arc<Live>> {
        self.read().get(company).and_then(|v| v.first().cloned())
    }

    /// A loaded snapshot of a company by id.
    pub fn snapshot(&self, company: &str, id: &str) -> Option<Arc<Live>> {
        self.read()
            .get(company)
            .and_then(|v| v.iter().find(|l| l.snapshot_id == id).cloned())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Arc<Live>>>> {
        self.companies.read().unwrap_or_else(|e| e.into_inner())
    }

    fn database(&self, company: &str) -> Result<Arc<Mutex<Connection>>, duckdb::Error> {
        let mut dbs = self.databases.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = dbs.get(company) {
            return Ok(db.clone());
        }
        let _ = std::fs::create_dir_all(&self.dir);
        let file = self
            .dir
            .join(format!("{company}.duckdb"))
            .to_string_lossy()
            .replace('\'', "''");
        // DuckDB makes only the last folder of its spill path: the rest must be there (a
        // large snapshot spilling into a missing folder was refused for it)
        let spill_dir = self.dir.join("tmp").join(company);
        std::fs::create_dir_all(&spill_dir)
            .map_err(|e| duckdb::Error::ToSqlConversionFailure(Box::new(e)))?;
        let spill = spill_dir.to_string_lossy().replace('\'', "''");
        let conn = Connection::open_in_memory()?;
        let memory = self.limits.memory.replace('\'', "");
        conn.execute_batch(&format!(
            "SET preserve_insertion_order = false;
             SET memory_limit = '{memory}';
             SET threads = {threads};
             SET temp_directory = '{spill}';
             ATTACH '{file}' AS persist;
             CREATE TABLE IF NOT EXISTS {SNAPSHOTS_TABLE} (snapshot_id VARCHAR, manifest VARCHAR, went_live_at VARCHAR, records VARCHAR);
             CREATE SCHEMA IF NOT EXISTS {PARTS_SCHEMA};",
            threads = self.limits.threads.max(1),
        ))?;
        let db = Arc::new(Mutex::new(conn));
        dbs.insert(company.to_owned(), db.clone());
        Ok(db)
    }

    /// Makes `live` the company's live snapshot; drops snapshots beyond [`KEEP_SNAPSHOTS`].
    fn swap_in(&self, company: &str, live: Arc<Live>) {
        let db = live.db.clone();
        let dropped = {
            let mut map = self.companies.write().unwrap_or_else(|e| e.into_inner());
            let list = map.entry(company.to_owned()).or_default();
            list.insert(0, live);
            list.split_off(list.len().min(KEEP_SNAPSHOTS))
        };
        // A request still answering from a snapshot no longer kept holds it (an `Arc`): its
        // tables are dropped when the last holder lets go (see `Drop for Live`), never under
        // a request between two of its statements.
        drop(dropped);
        self.measure(company, &db);
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if let Ok(conn) = self.connection() {
            match conn.execute_batch(&format!(
                "DROP SCHEMA IF EXISTS {} CASCADE;",
                ident(&self.schema)
            )) {
                Ok(()) => {
                    tracing::debug!(snapshot = %self.snapshot_id, "Dropped a snapshot no longer kept or read.")
                }
                Err(e) => {
                    tracing::warn!(snapshot = %self.snapshot_id, error = %e, "Could not drop a snapshot's tables.")
                }
            }
        }
    }
}

/// The schema a snapshot is loaded into.
fn schema_of(snapshot_id: &str) -> String {
    format!("s_{}", snapshot_id.replace('-', "_"))
}

/// Where fetched data files are cached: a folder per company, so that one company's
/// manifest can never name (and be served) a file another company's snapshot brought in.
pub fn cache_dir(state_dir: &Path, company: &str) -> PathBuf {
    state_dir.join("cache").join(company)
}

/// Why a data file could not be brought into a company's cache.
pub enum CacheError {
    /// The file is not what the manifest says (or not there): the snapshot is refused.
    Refused(String),
    /// The store or the disk failed: try again later.
    Later(String),
}

/// Brings a manifest entry's data file into `company`'s `cache` folder (nothing to do
/// when it is there: only checked files are ever put there) and returns its path. The entry
/// must name one of the company's own data keys. The file is streamed to disk while hashed,
/// its size checked against the manifest before a byte is read, and renamed into place only
/// when its size and SHA-256 match.
pub async fn fetch_into_cache(
    store: &Store,
    company: &str,
    cache: &Path,
    name: &str,
    entry: &crate::snapshot::manifest::FileEntry,
) -> Result<PathBuf, CacheError> {
    use crate::publish::Fetched;
    if !crate::snapshot::is_data_key_of(company, &entry.key, &entry.sha256) {
        return Err(CacheError::Refused(format!(
            "{name}: {} is not one of this company's data keys ({company}/data/TYPE/SHA256.parquet)",
            entry.key
        )));
    }
    let path = cache.join(format!("{}.parquet", entry.sha256));
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| CacheError::Later(format!("cannot create {}: {e}", cache.display())))?;
    // a name of its own: the ingest loop and a connector's commit may fetch the same file at
    // once, and each renames its own whole copy into place
    let tmp = crate::files::sibling(&path, &format!("tmp-{:016x}", rand::random::<u64>()));
    let fetched = store
        .fetch_to_file(&entry.key, &tmp, entry.bytes)
        .await
        .map_err(|e| CacheError::Later(e.to_string()))?;
    let refused = |what: String| CacheError::Refused(format!("{name}: {}: {what}", entry.key));
    match fetched {
        Fetched::Missing => Err(refused("it is missing from the store".into())),
        Fetched::WrongSize(n) => Err(refused(format!(
            "{n} bytes, the manifest says {}",
            entry.bytes
        ))),
        Fetched::Written { sha256 } if sha256 != entry.sha256 => {
            let _ = std::fs::remove_file(&tmp);
            Err(refused(format!(
                "SHA-256 {sha256}, the manifest says {}",
                entry.sha256
            )))
        }
        Fetched::Written { .. } => std::fs::rename(&tmp, &path)
            .map(|()| path.clone())
            .map_err(|e| CacheError::Later(format!("cannot cache {}: {e}", path.display()))),
    }
}

/// [`fetch_into_cache`], keyed by the file's data type and part.
async fn fetch_part(
    store: &Store,
    company: &str,
    cache: &Path,
    name: &str,
    entry: &crate::snapshot::manifest::FileEntry,
) -> Result<((String, String), PathBuf), CacheError> {
    let path = fetch_into_cache(store, company, cache, name, entry).await?;
    Ok(((name.to_owned(), entry.part.clone()), path))
}

/// Checks and loads the snapshot `latest.json` names, and makes it live. Returns it, or
/// `None` when it is live already.
/// `holding` is set when the company is taken back or loaded: it is held as being ingested
/// until the caller drops it (after saving the new snapshot's state).
pub async fn ingest(
    store: &Store,
    live: &Arc<LiveSet>,
    model: &DataModel,
    company: &str,
    state_dir: &Path,
    holding: &mut Option<Ingesting>,
) -> Result<Option<Arc<Live>>, IngestError> {
    let fail = |snapshot: &str, detail: String| IngestError {
        company: company.to_owned(),
        snapshot: snapshot.to_owned(),
        detail,
        retry: false,
    };
    let later = |snapshot: &str, detail: String| IngestError {
        retry: true,
        ..fail(snapshot, detail)
    };
    let Some((latest, _)) = store
        .latest(company)
        .await
        .map_err(|e| later("?", e.to_string()))?
    else {
        return Ok(None);
    };
    let id = latest.snapshot_id.clone();
    let key = (company.to_owned(), id.clone());
    let refused = || live.refused.lock().unwrap_or_else(|e| e.into_inner());
    // a company out of memory (or not taken back since a restart) whose latest.json has
    // not moved stays out; otherwise it is taken back first, what is new builds on it
    if refused().contains(&key) {
        return Ok(None);
    }
    if !live.is_restored(company) {
        let saved = live.saved_id(company);
        // its saved snapshot is the latest (or newer: a rollback, refused once taken back)
        if saved.as_deref() == Some(id.as_str()) {
            return Ok(None);
        }
    }
    let current = live.live(company);
    if current.as_ref().is_some_and(|l| l.snapshot_id == id) {
        return Ok(None);
    }
    // Something new: held as being ingested (the budget does not put it out from here on),
    // and taken back first when it is out of memory (or was put out a moment ago).
    *holding = Some(live.ingesting(company));
    if !live.is_restored(company) {
        super::ready(live, company).await;
    }
    let current = live.live(company);
    if current.as_ref().is_some_and(|l| l.snapshot_id == id) {
        return Ok(None);
    }
    // Whoever can write the company's prefix writes latest.json: its ids name schemas and
    // files here, so they are taken only in their own shapes. Refused once, logged, not
    // recorded under a name that is not a snapshot id ("?").
    if !crate::snapshot::manifest::is_snapshot_id(&id)
        || !crate::snapshot::manifest::is_sha256(&latest.manifest_sha256)
    {
        refused().insert(key);
        return Err(fail(
            "?",
            "latest.json names no snapshot id or manifest SHA-256 in their shapes".into(),
        ));
    }
    // A company's data never goes back: a pointer to a snapshot older than the live one (a
    // store rolled back, a replayed latest.json) is refused once and logged; the older
    // snapshot's own record (it was live once) is left as it was.
    if let Some(l) = current.filter(|l| id < l.snapshot_id) {
        refused().insert(key);
        return Err(fail(
            "?",
            format!(
                "latest.json names snapshot {id}, older than the live {}: a company's data never goes back to an older snapshot",
                l.snapshot_id
            ),
        ));
    }
    let result = check_and_load(store, live, model, company, state_dir, &latest).await;
    if result.as_ref().is_err_and(|e| !e.retry) {
        // Its content is wrong, and a published snapshot never changes: no second look.
        refused().insert(key);
    }
    result.map(Some)
}

async fn check_and_load(
    store: &Store,
    live: &LiveSet,
    model: &DataModel,
    company: &str,
    state_dir: &Path,
    latest: &crate::snapshot::manifest::Latest,
) -> Result<Arc<Live>, IngestError> {
    let fail = |snapshot: &str, detail: String| IngestError {
        company: company.to_owned(),
        snapshot: snapshot.to_owned(),
        detail,
        retry: false,
    };
    let later = |snapshot: &str, detail: String| IngestError {
        retry: true,
        ..fail(snapshot, detail)
    };
    let id = latest.snapshot_id.clone();
    let bytes = store
        .get_bytes(&latest.manifest_key)
        .await
        .map_err(|e| later(&id, e.to_string()))?
        .ok_or_else(|| {
            fail(
                &id,
                format!("its manifest {} is missing", latest.manifest_key),
            )
        })?;
    let (manifest, problems) =
        crate::publish::check_manifest(&bytes, company, &id, Some(&latest.manifest_sha256));
    let manifest = match manifest {
        Some(m) if problems.is_empty() => m,
        _ => return Err(fail(&id, format!("its manifest: {}", problems.join("; ")))),
    };
    for dt in &model.types {
        if !manifest.data_types.contains_key(&dt.name) {
            return Err(fail(
                &id,
                format!("data type {} is missing from the manifest", dt.name),
            ));
        }
    }
    // 2. Fetch into the company's cache, checking every byte.
    let cache = cache_dir(state_dir, company);
    // (an unchanged part's file is there already: only changed parts are fetched)
    // (a few at a time: each file is synced to disk before it is renamed into the cache, and
    // one after another 88 changed files took 3.95 s under load)
    let started = std::time::Instant::now();
    let fetches: Vec<_> = manifest
        .files()
        .map(|(name, entry)| fetch_part(store, company, &cache, name, entry))
        .collect();
    let fetches = futures::stream::iter(fetches)
        .buffer_unordered(CONCURRENT_FETCHES)
        .collect::<Vec<_>>()
        .await;
    let files = fetches
        .into_iter()
        .collect::<Result<HashMap<_, _>, _>>()
        .map_err(|e| match e {
            CacheError::Refused(detail) => fail(&id, detail),
            CacheError::Later(detail) => later(&id, detail),
        })?;
    let fetched = started.elapsed();
    // 3-5. Load, check, carry modifiedDate and deletions, swap.
    let db = live
        .database(company)
        .map_err(|e| later(&id, e.to_string()))?;
    let previous = live.live(company);
    let model = model.clone();
    let cache_owned = cache.clone();
    let limits = live.limits.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        crate::failpoint::hit("ingest-load");
        load(
            &db,
            &model,
            &manifest,
            &files,
            previous.as_deref(),
            cache_owned,
            &limits,
        )
    })
    .await
    .map_err(|e| later(&id, e.to_string()))?
    .map_err(|detail| match on_the_server(&detail) {
        true => later(&id, detail),
        false => fail(&id, detail),
    })?;
    let (loaded, (parts_loaded, parts_reused), built) = loaded;
    let counter = |c: &std::sync::atomic::AtomicU64, n: usize| {
        c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
    };
    counter(&live.parts_loaded, parts_loaded);
    counter(&live.parts_reused, parts_reused);
    let loaded = Arc::new(loaded);
    live.swap_in(company, loaded.clone());
    let served = started.elapsed();
    // The new parts' indexes on their ids are built once they are served (until then a
    // look-up by id scans its part).
    if let Ok(conn) = loaded.connection() {
        let _ = tokio::task::spawn_blocking(move || index_parts(&conn, built.iter().map(|t| &**t)))
            .await;
    }
    tracing::info!(
        company,
        snapshot = %id,
        fetch_secs = fetched.as_secs_f64(),
        load_secs = (served - fetched).as_secs_f64(),
        index_secs = (started.elapsed() - served).as_secs_f64(),
        "A new snapshot is live."
    );
    Ok(loaded)
}

/// Whether a load failed on the server's own resources (memory, disk, a folder it could not
/// make) rather than on the snapshot's content: DuckDB names these classes at the start of
/// its messages.
/// Such a snapshot is not refused: the next poll loads it again. A refusal is for content,
/// which a published snapshot never changes.
pub fn on_the_server(detail: &str) -> bool {
    const CLASSES: [&str; 6] = [
        "IO Error",
        "Out of Memory Error",
        "INTERRUPT Error",
        "INTERNAL Error",
        "FATAL Error",
        "Connection Error",
    ];
    // DuckDB's message begins with its class; the rest may quote the snapshot's own text
    // (a column's name, a value), which never decides
    CLASSES.iter().any(|class| detail.starts_with(class))
}

/// Checks that the Parquet `raw` reads has exactly the data type's fields, with its types.
fn fields_match(conn: &Connection, dt: &crate::model::DataType, raw: &str) -> Result<(), String> {
    use crate::rules::FieldDifference as D;
    let actual = crate::rules::describe(conn, &format!("SELECT * FROM {raw}")).map_err(|e| {
        match e.to_string() {
            // the server's own failure keeps DuckDB's class first (see on_the_server)
            server if on_the_server(&server) => format!("{server} (reading {})", dt.name),
            content => format!("{}: its Parquet cannot be read: {content}", dt.name),
        }
    })?;
    let expected = crate::rules::model_columns(conn, dt).map_err(|e| e.to_string())?;
    let problems: Vec<String> = crate::rules::field_differences(&expected, &actual)
        .into_iter()
        .map(|d| match d {
            D::Missing { name, .. } => format!("field {name} is missing"),
            D::WrongType {
                name,
                found,
                wanted,
            } => {
                format!("field {name} is {found}, not the model's {wanted}")
            }
            D::Extra { name } => format!("column {name} is not in the model"),
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", dt.name, problems.join("; ")))
    }
}

/// `read_parquet([…])` of `files`, quoted for SQL; with `named`, each row also says its file
/// (`filename`).
fn read_parquet(files: &[PathBuf], named: bool) -> String {
    let list: Vec<String> = files
        .iter()
        .map(|p| format!("'{}'", p.to_string_lossy().replace('\'', "''")))
        .collect();
    let option = if named { ", filename = true" } else { "" };
    format!("read_parquet([{}]{option})", list.join(", "))
}

/// A new part table's name in the company database (`parts.p_N`, quoted): unique in the
/// process, so a table being dropped never has the name of one being made.
fn new_part_table() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}.{}", ident(PARTS_SCHEMA), ident(&format!("p_{n}")))
}

/// Schema of the part tables in a company database.
const PARTS_SCHEMA: &str = "parts";
/// Column of a data type's view: the place of the row's part in [`Live::parts_of`].
pub const PART_NO: &str = "_part";
/// Column of a data type's view: the row's rowid in its part's table.
pub const ROW_NO: &str = "_row";
/// Start of a listing table's name in a snapshot's schema (no data type's name starts so).
const LISTING_PREFIX: &str = "_listing_";

/// Makes each data type's view in `schema`: its parts' tables, read as one.
fn create_views(
    q: &dyn Fn(&str) -> Result<(), String>,
    schema: &str,
    parts: &HashMap<String, Vec<Arc<PartTable>>>,
) -> Result<(), String> {
    for (name, tables) in parts {
        // each row says where it is (`_part`: its part's place in the list; `_row`: its rowid
        // there), so that a page of rows is read back from its parts by rowid
        let union: Vec<String> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| {
                format!(
                    "SELECT *, {i} AS {PART_NO}, rowid AS {ROW_NO} FROM {}",
                    t.table
                )
            })
            .collect();
        q(&format!(
            "CREATE VIEW {}.{} AS {}",
            ident(schema),
            ident(name),
            union.join(" UNION ALL ")
        ))?;
    }
    Ok(())
}

/// Makes the snapshot's schema of views over its parts (already built), in one transaction:
/// until it commits, nothing can read the new parts.
fn publish_views(
    q: &dyn Fn(&str) -> Result<(), String>,
    schema: &str,
    parts: &HashMap<String, Vec<Arc<PartTable>>>,
) -> Result<(), String> {
    q(&format!(
        "BEGIN TRANSACTION; DROP SCHEMA IF EXISTS {0} CASCADE; CREATE SCHEMA {0};",
        ident(schema)
    ))?;
    if let Err(e) = create_views(q, schema, parts).and_then(|()| q("COMMIT")) {
        let _ = q("ROLLBACK");
        return Err(e);
    }
    Ok(())
}

/// Compresses the parts just built for `data_type` once the company's database holds half
/// its memory. DuckDB keeps a new table uncompressed until a checkpoint: a large snapshot
/// built whole before compressing spilled to disk past the company's memory limit (1.6 GB
/// for the 1,000,000-split company's restart), and that writing was most of its time. Not
/// sooner: a checkpoint costs time on the way to the swap (1.3 s for 30 parts of invoices).
/// Only a help: a checkpoint that cannot run now is logged, and the company is compacted
/// after its load anyway.
fn compress(conn: &Connection, data_type: &str, limits: &CompanyLimits) {
    let half = super::parse_bytes(&limits.memory).map_or(u64::MAX, |m| m / 2);
    if memory_used(conn) <= half {
        return;
    }
    let started = std::time::Instant::now();
    match conn.execute_batch("CHECKPOINT memory") {
        Ok(()) => tracing::debug!(
            data_type,
            seconds = started.elapsed().as_secs_f64(),
            "Compressed a data type's new parts."
        ),
        Err(e) => {
            tracing::debug!(data_type, error = %e, "Could not compress a data type's new parts yet.")
        }
    }
}

/// What a company's database holds in memory now (bytes; 0 when DuckDB cannot say).
fn memory_used(conn: &Connection) -> u64 {
    conn.query_row(
        "SELECT coalesce(sum(memory_usage_bytes), 0)::UBIGINT FROM duckdb_memory()",
        [],
        |r| r.get::<_, u64>(0),
    )
    .unwrap_or(0)
}

/// When the oldest record of `table` (a part with no file: all its records are kept as
/// deleted) was deleted, in microseconds since 1970, if it holds any.
fn oldest_carried(conn: &Connection, table: &str) -> Result<Option<i64>, String> {
    let m = ident(MODIFIED_DATE);
    conn.query_row(
        &format!("SELECT epoch_us(min({m})) FROM {table}"),
        [],
        |r| r.get(0),
    )
    .map_err(|e| e.to_string())
}

/// Runs `run` for each of `jobs` on up to `workers` connections to `db` at once, and gives
/// the results in the jobs' order, or the error of the first job (in that order) that
/// failed; the results already made are then dropped. A part's file is one row group, which
/// DuckDB reads on one thread: two parts built at once use two cores.
fn on_connections<J: Sync, T: Send>(
    db: &Arc<Mutex<Connection>>,
    workers: usize,
    jobs: &[J],
    run: impl Fn(&Connection, &J) -> Result<T, String> + Sync,
) -> Result<Vec<T>, String> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let (next, failed) = (AtomicUsize::new(0), AtomicBool::new(false));
    let done: Vec<Mutex<Option<Result<T, String>>>> =
        jobs.iter().map(|_| Mutex::new(None)).collect();
    let not_connected = Mutex::new(None);
    std::thread::scope(|scope| {
        for _ in 0..workers.clamp(1, jobs.len()) {
            scope.spawn(|| {
                let conn = match db.lock().unwrap_or_else(|e| e.into_inner()).try_clone() {
                    Ok(conn) => conn,
                    Err(e) => {
                        *not_connected.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(e.to_string());
                        return;
                    }
                };
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let result = run(&conn, job);
                    failed.fetch_or(result.is_err(), Ordering::Relaxed);
                    *done[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                }
            });
        }
    });
    let mut out = Vec::with_capacity(jobs.len());
    for slot in done {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(result) => out.push(result?),
            None => {
                let why = not_connected
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                return Err(why.unwrap_or_else(|| "a part was not built".into()));
            }
        }
    }
    Ok(out)
}

/// What loading one data type's part needs to know.
#[derive(Clone, Copy)]
struct PartLoad<'a> {
    conn: &'a Connection,
    db: &'a Arc<Mutex<Connection>>,
    dt: &'a crate::model::DataType,
    /// The time the snapshot goes live, as a DuckDB timestamp literal's text.
    stamp: &'a str,
    keep_deleted_days: u32,
}

impl PartLoad<'_> {
    fn q(&self, sql: &str) -> Result<(), String> {
        self.conn
            .execute_batch(sql)
            .map_err(|e| format!("{e} (in: {sql})"))
    }

    /// Builds a part from its Parquet file `path` (listed in the manifest as `file`), carrying
    /// `modifiedDate` and deletions from the same part of the snapshot before (`prev`).
    fn with_file(
        &self,
        file: &crate::snapshot::manifest::FileEntry,
        path: &Path,
        prev: Option<&PartTable>,
    ) -> Result<(PartTable, Changes), String> {
        let (dt, stamp) = (self.dt, self.stamp);
        let raw = read_parquet(&[path.to_owned()], false);
        // Exactly the model's fields with the model's types: a file lacking one would go
        // live and then fail every request that reads it.
        fields_match(self.conn, dt, &raw)?;
        let (h, m, id, del) = (
            ident(HASH_COLUMN),
            ident(MODIFIED_DATE),
            ident(crate::model::ID_FIELD),
            ident(crate::model::IS_DELETED_FIELD),
        );
        // DuckDB's 64-bit hash of the whole row: far cheaper than hashing its JSON, and a
        // change missed by a collision has odds of 1 in 2^64 per record.
        let hash = format!("hash(r) AS {h}");
        // the table is dropped with `part` if a step below fails
        let mut part = PartTable::scratch(self.db);
        let table = part.table.clone();
        // The file is read once, into the part's table (with `modifiedDate` carried from the
        // part before when a record's content is the same); what is checked is that table.
        match prev {
            Some(prev) => self.q(&format!(
                "CREATE TABLE {table} AS
                 WITH n AS (SELECT r.*, {hash} FROM {raw} r)
                 SELECT n.*, CASE WHEN o.{h} = n.{h} THEN o.{m} ELSE TIMESTAMP '{stamp}' END AS {m}
                 FROM n LEFT JOIN {old} o USING ({id})",
                old = prev.table,
            ))?,
            None => self.q(&format!(
                "CREATE TABLE {table} AS SELECT r.*, {hash}, TIMESTAMP '{stamp}' AS {m} FROM {raw} r"
            ))?,
        }
        // Every record in the part its id gives: a record is in one part only, so a part's
        // deletions are found in that part alone.
        let strays: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM {table} WHERE {} IS DISTINCT FROM ?",
                    crate::snapshot::part_sql(&id)
                ),
                [&file.part],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        if strays > 0 {
            return Err(format!(
                "{} part {}: {strays} records have ids of another part",
                dt.name, file.part
            ));
        }
        // Control totals recomputed from the file's rows (added up over the parts and
        // checked against the manifest's by the caller).
        let computed = crate::rules::totals_of(self.conn, dt, &table).map_err(|e| e.to_string())?;
        if computed.rows != file.rows {
            return Err(format!(
                "{} part {}: the file holds {} records, the manifest says {}",
                dt.name, file.part, computed.rows, file.rows
            ));
        }
        let totals = PartTotals::of(&computed)?;
        // The part's records the file no longer has stay, deleted, for the days they are kept.
        let (mut carried, mut oldest_carried) = (0u64, None);
        if let Some(prev) = prev {
            let gone = format!(
                "FROM {old} o ANTI JOIN {table} n USING ({id})
                 WHERE NOT (o.{del} AND o.{m} < TIMESTAMP '{stamp}' - INTERVAL {keep} DAY)",
                old = prev.table,
                keep = self.keep_deleted_days,
            );
            let deleted_at = format!("CASE WHEN o.{del} THEN o.{m} ELSE TIMESTAMP '{stamp}' END");
            oldest_carried = self
                .conn
                .query_row(
                    &format!("SELECT epoch_us(min({deleted_at})) {gone}"),
                    [],
                    |r| r.get(0),
                )
                .map_err(|e| e.to_string())?;
            if oldest_carried.is_some() {
                carried = self
                    .conn
                    .execute(
                        &format!("INSERT INTO {table} SELECT o.* REPLACE (true AS {del}, {deleted_at} AS {m}) {gone}"),
                        [],
                    )
                    .map_err(|e| e.to_string())? as u64;
            }
        }
        let changes = match prev {
            Some(prev) => self.conn.query_row(
                &format!(
                    "SELECT count(*) FILTER (WHERE o.{id} IS NULL AND NOT t.{del}),
                            count(*) FILTER (WHERE o.{id} IS NOT NULL AND o.{h} <> t.{h} AND NOT t.{del}),
                            count(*) FILTER (WHERE t.{del} AND (o.{id} IS NULL OR NOT o.{del}))
                     FROM {table} t LEFT JOIN {} o USING ({id})",
                    prev.table
                ),
                [],
                |r| Ok(Changes { added: r.get::<_, i64>(0)? as u64, modified: r.get::<_, i64>(1)? as u64, deleted: r.get::<_, i64>(2)? as u64 }),
            ),
            None => self.conn.query_row(
                &format!("SELECT count(*) FILTER (WHERE NOT {del}) FROM {table}"),
                [],
                |r| Ok(Changes { added: r.get::<_, i64>(0)? as u64, ..Changes::default() }),
            ),
        }
        .map_err(|e| e.to_string())?;
        part.part = file.part.clone();
        part.sha256 = Some(file.sha256.clone());
        part.rows = file.rows + carried;
        part.oldest_carried = oldest_carried;
        part.totals = totals;
        Ok((part, changes))
    }

    /// What is left of a part the new snapshot has no file for: its records, kept as deleted
    /// for the days deleted records are kept. None when nothing is left.
    fn without_file(&self, prev: &PartTable) -> Result<Option<(PartTable, Changes)>, String> {
        let (m, del) = (ident(MODIFIED_DATE), ident(crate::model::IS_DELETED_FIELD));
        let stamp = self.stamp;
        let mut part = PartTable::scratch(self.db);
        let table = part.table.clone();
        self.q(&format!(
            "CREATE TABLE {table} AS
             SELECT o.* REPLACE (true AS {del}, CASE WHEN o.{del} THEN o.{m} ELSE TIMESTAMP '{stamp}' END AS {m})
             FROM {old} o
             WHERE NOT (o.{del} AND o.{m} < TIMESTAMP '{stamp}' - INTERVAL {keep} DAY);",
            old = prev.table,
            keep = self.keep_deleted_days,
        ))?;
        let deleted: i64 = self
            .conn
            .query_row(
                &format!(
                    "SELECT count(*) FILTER (WHERE NOT {del}) FROM {}",
                    prev.table
                ),
                [],
                |r| r.get(0),
            )
            .map_err(|e| e.to_string())?;
        part.part = prev.part.clone();
        part.rows = count(self.conn, &table)?;
        part.oldest_carried = oldest_carried(self.conn, &table)?;
        if part.rows == 0 {
            return Ok(None);
        }
        let changes = Changes {
            deleted: deleted as u64,
            ..Changes::default()
        };
        Ok(Some((part, changes)))
    }
}

fn count(conn: &Connection, table: &str) -> Result<u64, String> {
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(|e| e.to_string())
}

/// Checks that a data type's parts add up to the manifest's control totals.
fn check_totals(
    name: &str,
    sum: &PartTotals,
    expected: &crate::snapshot::manifest::ControlTotals,
) -> Result<(), String> {
    let want = PartTotals {
        records: expected.records,
        deleted: expected.deleted,
        cents: expected
            .sums
            .iter()
            .map(|(k, v)| cents(v).map(|c| (k.clone(), c)))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{name}: the manifest's control totals: {e}"))?,
    };
    if *sum == want {
        return Ok(());
    }
    Err(format!(
        "{name}: the data does not add up to the manifest's control totals (records {} vs {}, deleted {} vs {}, sums in cents {:?} vs {:?})",
        sum.records, want.records, sum.deleted, want.deleted, sum.cents, want.cents
    ))
}

/// Indexes new part tables on their ids: a record asked for by id is found through it, not
/// by scanning. Built after the snapshot's transaction, and only a help: an index that
/// cannot be built (DuckDB builds it in memory, under the company's limit) is logged, and
/// that part is scanned instead.
fn index_parts<'a>(conn: &Connection, tables: impl Iterator<Item = &'a PartTable>) {
    for t in tables {
        let name = t
            .table
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .trim_matches('"');
        let sql = format!(
            "CREATE INDEX {} ON {} ({});",
            ident(&format!("by_id_{name}")),
            t.table,
            ident(crate::model::ID_FIELD)
        );
        if let Err(e) = conn.execute_batch(&sql) {
            tracing::warn!(table = %t.table, error = %e, "Could not index a loaded part on its ids; look-ups by id scan it.");
        }
    }
}

/// A loaded snapshot, how many parts were loaded and reused, and the parts loaded (to index).
type Loaded = (Live, (usize, usize), Vec<Arc<PartTable>>);

/// Loads a snapshot: each part whose file is the one the snapshot before had (and none of
/// whose deleted records has expired) is that snapshot's part, shared; every other part is
/// built from its file and the part before it. Only changed parts cost time.
fn load(
    db: &Arc<Mutex<Connection>>,
    model: &DataModel,
    manifest: &Manifest,
    files: &HashMap<(String, String), PathBuf>,
    previous: Option<&Live>,
    cache: PathBuf,
    limits: &CompanyLimits,
) -> Result<Loaded, String> {
    let (keep_deleted_days, workers) = (limits.keep_deleted_days, limits.threads);
    let conn = db
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .try_clone()
        .map_err(|e| e.to_string())?;
    let schema = schema_of(&manifest.snapshot_id);
    let went_live_at = chrono::Utc::now();
    let stamp = went_live_at.format("%Y-%m-%d %H:%M:%S%.6f").to_string();
    let expired_before =
        (went_live_at - chrono::Duration::days(keep_deleted_days.into())).timestamp_micros();
    let q = |sql: &str| {
        conn.execute_batch(sql)
            .map_err(|e| format!("{e} (in: {sql})"))
    };
    let mut records = HashMap::new();
    let mut changes = std::collections::BTreeMap::new();
    let mut parts: HashMap<String, Vec<Arc<PartTable>>> = HashMap::new();
    let mut built: Vec<Arc<PartTable>> = Vec::new();
    let (mut reused, mut loaded) = (0usize, 0usize);
    let result = (|| {
        for dt in &model.types {
            let entry = &manifest.data_types[&dt.name];
            let built_before = built.len();
            let load = PartLoad {
                conn: &conn,
                db,
                dt,
                stamp: &stamp,
                keep_deleted_days,
            };
            let before: HashMap<&str, &Arc<PartTable>> = previous
                .and_then(|p| p.parts.get(&dt.name))
                .map(|v| v.iter().map(|t| (t.part.as_str(), t)).collect())
                .unwrap_or_default();
            let mut tables = Vec::new();
            let mut sum = PartTotals::default();
            let mut changed = Changes::default();
            let mut add = |part: PartTable, c: Changes, built: &mut Vec<Arc<PartTable>>| {
                changed.added += c.added;
                changed.modified += c.modified;
                changed.deleted += c.deleted;
                let part = Arc::new(part);
                built.push(part.clone());
                part
            };
            // each part: the previous snapshot's (same file, no expired deletion), or built
            let same: Vec<Option<Arc<PartTable>>> = entry
                .files
                .iter()
                .map(|file| {
                    before
                        .get(file.part.as_str())
                        .filter(|t| {
                            t.sha256.as_deref() == Some(file.sha256.as_str())
                                && t.oldest_carried.is_none_or(|o| o >= expired_before)
                        })
                        .map(|t| (*t).clone())
                })
                .collect();
            let jobs: Vec<_> = entry
                .files
                .iter()
                .zip(&same)
                .filter(|(_, same)| same.is_none())
                .map(|(file, _)| {
                    let path = &files[&(dt.name.clone(), file.part.clone())];
                    (file, path, before.get(file.part.as_str()).map(|t| &***t))
                })
                .collect();
            let mut made = on_connections(db, workers, &jobs, |conn, (file, path, prev)| {
                PartLoad { conn, ..load }.with_file(file, path, *prev)
            })?
            .into_iter();
            for same in same {
                let table = match same {
                    Some(t) => {
                        reused += 1;
                        t
                    }
                    None => {
                        loaded += 1;
                        let (part, c) = made.next().ok_or("a part was not built")?;
                        add(part, c, &mut built)
                    }
                };
                sum.add(&table.totals);
                tables.push(table);
            }
            for (part, prev) in &before {
                if !entry.files.iter().any(|f| f.part == *part)
                    && let Some((table, c)) = load.without_file(prev)?
                {
                    tables.push(add(table, c, &mut built));
                }
            }
            check_totals(&dt.name, &sum, &entry.control_totals)?;
            changes.insert(dt.name.clone(), changed);
            records.insert(dt.name.clone(), tables.iter().map(|t| t.rows).sum());
            parts.insert(dt.name.clone(), tables);
            if built.len() > built_before {
                compress(&conn, &dt.name, limits);
            }
        }
        Ok(())
    })();
    let went_live = went_live_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    // (a failure drops the parts built so far with their `PartTable`s)
    result.and_then(|()| publish_views(&q, &schema, &parts))?;
    tracing::info!(
        schema,
        parts_reused = reused,
        parts_loaded = loaded,
        "Loaded a snapshot: its changed parts from their files, the others as they were."
    );
    Ok((
        Live {
            snapshot_id: manifest.snapshot_id.clone(),
            manifest: manifest.clone(),
            went_live_at: went_live,
            records,
            changes,
            schema,
            parts,
            db: db.clone(),
            cache,
            listings: Default::default(),
        },
        (loaded, reused),
        built,
    ))
}

#[cfg(test)]
mod tests {
    use super::{
        Connection, Live, MODIFIED_DATE, PART_NO, PARTS_SCHEMA, PartTable, ROW_NO, on_connections,
        on_the_server, publish_views,
    };
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::sync::{Arc, Mutex};

    fn tables_in(db: &Arc<Mutex<Connection>>, schema: &str) -> i64 {
        db.lock()
            .unwrap()
            .query_row(
                "SELECT count(*) FROM duckdb_tables() WHERE schema_name = ?",
                [schema],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn part_tables(db: &Arc<Mutex<Connection>>) -> i64 {
        tables_in(db, PARTS_SCHEMA)
    }

    /// A part table of invoices with the model's columns and `n` rows (ids from `first`).
    fn invoice_part(db: &Arc<Mutex<Connection>>, part: &str, first: i64, n: i64) -> PartTable {
        let model = crate::model::DataModel::embedded();
        let dt = model.get("invoices").unwrap();
        let mut columns: Vec<String> = dt
            .fields
            .iter()
            .map(|f| format!("\"{}\" {}", f.name, f.duckdb_type()))
            .collect();
        columns.push(format!("\"{MODIFIED_DATE}\" TIMESTAMP"));
        let mut t = PartTable::scratch(db);
        t.part = part.to_owned();
        t.rows = n as u64;
        db.lock()
            .unwrap()
            .execute_batch(&format!(
                "CREATE TABLE {0} ({1});
                 INSERT INTO {0} (\"id\", \"status\", \"issueDate\", \"lineItems\", \"{MODIFIED_DATE}\")
                 SELECT (i)::VARCHAR, CASE WHEN i % 3 = 0 THEN 'Paid' ELSE 'Submitted' END,
                        DATE '2025-01-01' + (i % 90)::INTEGER, [], TIMESTAMP '2026-01-01'
                 FROM range({first}, {first} + {n}) r(i);",
                t.table,
                columns.join(", ")
            ))
            .unwrap();
        t
    }

    #[test]
    fn a_listing_table_is_built_once_with_the_views_rows_and_a_failed_one_leaves_the_view() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("CREATE SCHEMA {PARTS_SCHEMA}"))
            .unwrap();
        let db = Arc::new(Mutex::new(conn));
        let parts: HashMap<String, Vec<Arc<PartTable>>> = HashMap::from([(
            "invoices".to_owned(),
            vec![
                Arc::new(invoice_part(&db, "n000000", 0, 700)),
                Arc::new(invoice_part(&db, "n000001", 16384, 500)),
            ],
        )]);
        let schema = "s_listing_test".to_owned();
        let q = |sql: &str| {
            db.lock()
                .unwrap()
                .execute_batch(sql)
                .map_err(|e| e.to_string())
        };
        publish_views(&q, &schema, &parts).unwrap();
        let live = Live {
            snapshot_id: "20260101T000000000Z-00000000".into(),
            manifest: serde_json::from_str(include_str!("../../fixtures/snapshot/manifest.json"))
                .unwrap(),
            went_live_at: "2026-01-01T00:00:00Z".into(),
            records: Default::default(),
            changes: Default::default(),
            schema,
            parts,
            db: db.clone(),
            cache: PathBuf::new(),
            listings: Default::default(),
        };
        let model = crate::model::DataModel::embedded();
        let invoices = model.get("invoices").unwrap();
        let conn = live.connection().unwrap();
        let (table, built) = live.listing(&conn, invoices);
        assert!(built && table.contains("_listing_invoices"), "{table}");
        assert_eq!(live.listing(&conn, invoices), (table.clone(), false));
        // the view's rows, each with its part and rowid, and no lists
        let view = live.table("invoices");
        let cols = format!("\"id\", \"status\", \"issueDate\", {PART_NO}, {ROW_NO}");
        let differ: i64 = conn
            .query_row(
                &format!(
                    "SELECT count(*) FROM ((SELECT {cols} FROM {view} EXCEPT ALL SELECT {cols} FROM {table})
                     UNION ALL (SELECT {cols} FROM {table} EXCEPT ALL SELECT {cols} FROM {view}))"
                ),
                [],
                |r| r.get(0),
            )
            .unwrap();
        let rows: i64 = conn
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!((differ, rows), (0, 1200));
        let lists: i64 = conn
            .query_row(
                "SELECT count(*) FROM duckdb_columns() WHERE table_name = '_listing_invoices' AND column_name = 'lineItems'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(lists, 0);
        // a data type whose listing cannot be built (here: no view) is read from its view,
        // and not tried again at once
        let bills = model.get("bills").unwrap();
        assert_eq!(live.listing(&conn, bills), (live.table("bills"), false));
        assert!(matches!(
            live.listings.lock().unwrap().get("bills"),
            Some(super::Listing::Failed(_))
        ));
        assert_eq!(live.listing(&conn, bills), (live.table("bills"), false));
        drop(conn);
        drop(live);
        assert_eq!(
            tables_in(&db, "s_listing_test"),
            0,
            "the listing table is dropped with its snapshot"
        );
    }

    #[test]
    fn parts_built_on_two_connections_come_back_in_order_and_a_failure_drops_those_built() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(&format!("CREATE SCHEMA {PARTS_SCHEMA}"))
            .unwrap();
        let db = Arc::new(Mutex::new(conn));
        let jobs: Vec<i64> = (0..9).collect();
        let build = |fail: Option<i64>| {
            let db = db.clone();
            move |conn: &Connection, n: &i64| {
                if Some(*n) == fail {
                    return Err(format!("part {n} failed"));
                }
                let part = PartTable::scratch(&db);
                conn.execute_batch(&format!("CREATE TABLE {} AS SELECT {n} AS n", part.table))
                    .map_err(|e| e.to_string())?;
                Ok(part)
            }
        };
        let built = on_connections(&db, 2, &jobs, build(None)).unwrap();
        assert_eq!(part_tables(&db), 9);
        for (n, part) in built.iter().enumerate() {
            let held: i64 = db
                .lock()
                .unwrap()
                .query_row(&format!("SELECT n FROM {}", part.table), [], |r| r.get(0))
                .unwrap();
            assert_eq!(held, n as i64, "the results are in the jobs' order");
        }
        drop(built);
        assert_eq!(part_tables(&db), 0, "a dropped part drops its table");
        let failed = on_connections(&db, 2, &jobs, build(Some(4))).map(|v| v.len());
        assert_eq!(failed, Err("part 4 failed".to_owned()));
        assert_eq!(
            part_tables(&db),
            0,
            "the parts built before the failure are dropped"
        );
    }

    #[test]
    fn only_duckdbs_own_classes_at_the_start_say_the_server_failed() {
        assert!(on_the_server(
            "IO Error: No files found that match the pattern \"/state/cache/x.parquet\""
        ));
        assert!(on_the_server(
            "Out of Memory Error: failed to allocate data of size 256.0 KiB (in: CREATE TABLE …)"
        ));
        // the snapshot's own text never decides
        assert!(!on_the_server(
            "invoices: column IO Error is not in the model"
        ));
        assert!(!on_the_server(
            "Conversion Error: Could not convert string 'Out of Memory Error' to INT64"
        ));
        assert!(!on_the_server(
            "invoices: the data does not add up to the manifest's control totals"
        ));
    }
}
