//! The one-command sync: extract → normalise → snapshot → publish, for one company.
//!
//! Takes the ODBC source, our company id, a store and the state folder; produces a published
//! snapshot (or one waiting in the outbox when the store cannot be reached) and a
//! [`SyncReport`]: rows per data type, bytes uploaded, seconds per stage.
//!
//! Files, under `STATE/companies/COMPANY/`: `staging.duckdb` (the last extraction),
//! `outbox/` (snapshots not yet published, see [`crate::publish::Outbox`]) and `sync.lock`,
//! an OS lock held for the whole sync (released by the OS even if the process is killed), so
//! two syncs of one company never run at once.
//!
//! Order: snapshots already waiting in the outbox are published first, oldest first; then a
//! new one is made and published. Every stage leaves the previous stage's last good output in
//! place when it fails or is killed (staging generations, `.partial` snapshot folders, the
//! store protocol), so a rerun simply starts again and nothing is published twice.

use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::ProgressBar;
use serde::Serialize;

use crate::extract::{self, ExtractError, ExtractOptions};
use crate::model::DataModel;
use crate::publish::{Outbox, PublishError, Published, ServerPublisher, Store, StoreConfig};
use crate::rules::{self, Rules, RulesError, Workspace};
use crate::schema::SourceSchema;
use crate::snapshot::{self, SnapshotError, SnapshotInput};
use crate::source::SourceConfig;
use crate::state;

/// Snapshots kept in the outbox at most, by default.
pub const OUTBOX_LIMIT: usize = 3;

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The company id cannot be used.
    #[error(
        "company id {0:?} is not usable: use 1 to 64 letters, digits, '-' or '_' (not starting with '-')"
    )]
    BadCompanyId(String),
    /// No state folder was given and none could be found.
    #[error(
        "no state folder: pass --state-dir (neither LOCALAPPDATA, XDG_STATE_HOME nor HOME is set)"
    )]
    NoStateDir,
    /// Another sync of the company holds the lock.
    #[error(
        "another sync of company {company} is running (it holds {path}); wait for it to finish"
    )]
    Busy {
        /// The company.
        company: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The state folder could not be used.
    #[error("state folder {path}: {source}")]
    State {
        /// The folder or file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Extraction failed.
    #[error("extraction failed: {0}")]
    Extract(#[from] ExtractError),
    /// The folder holds another Sage company than the one set up.
    #[error(
        "the Sage data folder now holds another company ({found_name}, COMPANYID {found}) than the one set up (COMPANYID {expected}): nothing was published; choose your company's folder again in the connector's settings"
    )]
    OtherCompany {
        /// The COMPANYID set up.
        expected: String,
        /// The one found.
        found: String,
        /// Its name.
        found_name: String,
    },
    /// Normalisation failed (a rule or a check).
    #[error("normalisation failed: {0}")]
    Rules(#[from] RulesError),
    /// The snapshot could not be written.
    #[error("the snapshot could not be written: {0}")]
    Snapshot(#[from] SnapshotError),
    /// Publishing failed for a reason a person must fix.
    #[error("publishing failed: {0}")]
    Publish(#[from] PublishError),
}

impl SyncError {
    /// The reason code the agent, the server and the API client see for this failure.
    pub fn reason(&self) -> crate::protocol::Reason {
        use crate::protocol::Reason as R;
        match self {
            SyncError::Extract(e) => e.reason(),
            SyncError::OtherCompany { .. } => R::OtherCompany,
            SyncError::Rules(_) => R::ChecksFailed,
            SyncError::Snapshot(_) | SyncError::State { .. } | SyncError::NoStateDir => {
                R::LocalStorage
            }
            SyncError::Publish(PublishError::Server {
                reason: Some(r), ..
            }) => *r,
            SyncError::Publish(PublishError::Server { status: 401, .. }) => R::DeviceRevoked,
            SyncError::Publish(PublishError::Server { .. }) => R::CommitRefused,
            SyncError::Publish(PublishError::Unreachable { .. }) => R::Offline,
            SyncError::Publish(PublishError::Local { .. }) => R::LocalStorage,
            SyncError::Publish(_) => R::Other,
            SyncError::BadCompanyId(_) | SyncError::Busy { .. } => R::Other,
        }
    }
}

/// What to sync, from where, to where.
pub struct SyncOptions<'a> {
    /// The Sage company over ODBC.
    pub source: &'a SourceConfig,
    /// Our company id (folder and key prefix).
    pub company_id: &'a str,
    /// The store; `None` means the local store in the state folder.
    pub store: Option<StoreConfig>,
    /// The state folder.
    pub state_dir: &'a Path,
    /// Snapshots kept waiting at most.
    pub outbox_limit: usize,
    /// Progress bars (drawn only on a terminal).
    pub progress: bool,
    /// Publish through this server with the company's device credential instead of writing
    /// to a store (the desktop then holds no store credential; `store` is ignored).
    pub via_server: Option<ServerPublisher>,
    /// Sage's `COMPANY.COMPANYID` of the company set up: a folder now holding another company
    /// (Sage reuses `Company.000`) is refused before anything is published.
    pub expect_sage_company: Option<&'a str>,
}

/// Where a sync publishes: a store it writes itself, or the server that writes for it.
enum Destination<'a> {
    Store(Box<Store>),
    Server(&'a ServerPublisher),
}

impl Destination<'_> {
    fn url(&self) -> String {
        match self {
            Destination::Store(s) => s.url.clone(),
            Destination::Server(s) => s.base.clone(),
        }
    }

    async fn latest(&self, company: &str) -> Result<Option<String>, PublishError> {
        match self {
            Destination::Store(s) => Ok(s.latest(company).await?.map(|(l, _)| l.snapshot_id)),
            Destination::Server(s) => s.latest().await,
        }
    }

    async fn publish(
        &self,
        snap: &crate::snapshot::SnapshotDir,
        outbox: &Outbox,
        bar: &ProgressBar,
    ) -> Result<Published, PublishError> {
        match self {
            Destination::Store(s) => s.publish(snap, outbox, bar).await,
            Destination::Server(s) => s.publish(snap, bar).await,
        }
    }
}

/// Seconds one stage took.
#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    /// extract, normalise, export or publish.
    pub name: &'static str,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// One data type in the new snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct DataTypeLine {
    /// Data type.
    pub data_type: String,
    /// Records (deleted included).
    pub records: u64,
    /// Deleted records.
    pub deleted: u64,
    /// Parquet bytes.
    pub bytes: u64,
    /// Whether its file was uploaded by this sync (false: unchanged, already in the store).
    pub uploaded: bool,
}

/// What a sync did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// The store URL.
    pub store: String,
    /// The snapshot this sync made.
    pub snapshot_id: String,
    /// Rows read from Sage.
    pub extracted_rows: u64,
    /// The new snapshot's data types.
    pub data_types: Vec<DataTypeLine>,
    /// Seconds per stage, in order.
    pub stages: Vec<Stage>,
    /// Snapshots published by this run (older waiting ones first), with what they sent.
    pub published: Vec<PublishedLine>,
    /// Snapshots dropped unpublished because the outbox was full.
    pub dropped: Vec<String>,
    /// Snapshots still waiting in the outbox.
    pub waiting: Vec<String>,
    /// Why they wait (the store could not be reached), if they do.
    pub waiting_because: Option<String>,
}

/// A published snapshot, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct PublishedLine {
    /// The snapshot.
    pub snapshot_id: String,
    /// Data files uploaded.
    pub files_uploaded: usize,
    /// Their bytes.
    pub bytes_uploaded: u64,
    /// Data files already in the store.
    pub files_unchanged: usize,
    /// Bytes of the manifest and pointer.
    pub bytes_metadata: u64,
    /// Whether `latest` names it now.
    pub is_latest: bool,
}

impl From<&Published> for PublishedLine {
    fn from(p: &Published) -> Self {
        PublishedLine {
            snapshot_id: p.snapshot_id.clone(),
            files_uploaded: p.files_uploaded,
            bytes_uploaded: p.bytes_uploaded,
            files_unchanged: p.files_skipped,
            bytes_metadata: p.bytes_metadata,
            is_latest: p.is_latest,
        }
    }
}

impl SyncReport {
    /// Bytes sent to the store by this run.
    pub fn bytes_sent(&self) -> u64 {
        self.published
            .iter()
            .map(|p| p.bytes_uploaded + p.bytes_metadata)
            .sum()
    }

    /// The summary printed after a sync.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<18} {:>10} {:>8} {:>12}  file",
            "data type", "records", "deleted", "bytes"
        );
        for d in &self.data_types {
            let _ = writeln!(
                s,
                "{:<18} {:>10} {:>8} {:>12}  {}",
                d.data_type,
                d.records,
                d.deleted,
                d.bytes,
                if d.uploaded { "uploaded" } else { "unchanged" }
            );
        }
        let _ = writeln!(s);
        for stage in &self.stages {
            let _ = writeln!(s, "{:<10} {:>8.2}s", stage.name, stage.seconds);
        }
        for p in &self.published {
            let _ = writeln!(
                s,
                "published {}: {} file(s) uploaded ({} bytes), {} unchanged; {} bytes of manifest and pointer; {}",
                p.snapshot_id,
                p.files_uploaded,
                p.bytes_uploaded,
                p.files_unchanged,
                p.bytes_metadata,
                if p.is_latest {
                    "latest points at it"
                } else {
                    "a newer snapshot is latest"
                }
            );
        }
        for id in &self.dropped {
            let _ = writeln!(
                s,
                "dropped {id} unpublished (outbox full; newer snapshots hold its data)"
            );
        }
        if let Some(why) = &self.waiting_because {
            let _ = writeln!(
                s,
                "waiting in the outbox: {} ({why})",
                self.waiting.join(", ")
            );
        }
        let _ = writeln!(s, "store: {}; {} bytes sent", self.store, self.bytes_sent());
        s
    }
}

/// Runs a sync.
pub fn sync(options: &SyncOptions<'_>) -> Result<SyncReport, SyncError> {
    let company = options.company_id;
    if !state::valid_company_id(company) {
        return Err(SyncError::BadCompanyId(company.to_owned()));
    }
    let dir = state::company_dir(options.state_dir, company);
    let state_err = |path: &Path| {
        let path = path.to_owned();
        move |source| SyncError::State { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
    let lock_path = dir.join("sync.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(state_err(&lock_path))?;
    if lock.try_lock().is_err() {
        return Err(SyncError::Busy {
            company: company.to_owned(),
            path: lock_path,
        });
    }
    let store_config = options.store.clone().unwrap_or_else(|| {
        StoreConfig::new(crate::publish::file_url(&state::default_store_dir(
            options.state_dir,
        )))
    });
    let store = match &options.via_server {
        Some(server) => Destination::Server(server),
        None => Destination::Store(Box::new(Store::open(&store_config)?)),
    };
    let outbox = Outbox::open(&dir.join("outbox"), options.outbox_limit)?;
    outbox.remove_partial()?;
    let runtime = crate::publish::runtime();
    let mut stages = Vec::new();
    let mut published = Vec::new();

    // One look at the store first: its latest snapshot id (new ids must sort after it, even
    // if this PC's clock went back), and whether it can be reached at all. A store that
    // refuses us (credentials, bucket) fails the sync here, before any work.
    let started = Instant::now();
    let (in_store, reachable) = match runtime.block_on(store.latest(company)) {
        Ok(latest) => (latest, true),
        Err(e) if e.is_transient() => {
            tracing::warn!(error = %e, "The store cannot be reached now; the sync goes on and publishes at the end.");
            (None, false)
        }
        Err(e) => return Err(e.into()),
    };
    // Earlier snapshots first, oldest first.
    if reachable && !outbox.pending()?.is_empty() {
        publish_waiting(&runtime, &store, &outbox, options.progress, &mut published)?;
    }
    stages.push(Stage {
        name: "store check",
        seconds: started.elapsed().as_secs_f64(),
    });

    let started = Instant::now();
    let staging = dir.join("staging.duckdb");
    let schema = SourceSchema::embedded();
    let extracted = extract::extract(&ExtractOptions {
        source: options.source,
        staging: &staging,
        schema: &schema,
        verify_counts: false,
        progress: options.progress,
    })?;
    stages.push(Stage {
        name: "extract",
        seconds: started.elapsed().as_secs_f64(),
    });

    let started = Instant::now();
    let spinner = crate::telemetry::stage_spinner("normalising and checking", options.progress);
    let model = DataModel::embedded();
    let ws = Workspace::over_staging(&staging, None, &schema)?;
    if let Some(expected) = options.expect_sage_company.filter(|e| !e.is_empty()) {
        // (a driver without COMPANYID cannot tell: nothing to compare)
        let found: Option<(Option<String>, Option<String>)> = ws
            .conn()
            .query_row(
                "SELECT CAST(COMPANYID AS VARCHAR), CAST(NAME AS VARCHAR) FROM sage.COMPANY LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .ok();
        if let Some((Some(found), name)) = found
            && found.trim() != expected.trim()
        {
            return Err(SyncError::OtherCompany {
                expected: expected.to_owned(),
                found,
                found_name: name.unwrap_or_default(),
            });
        }
    }
    let report = rules::normalise(&ws, &Rules::embedded(), &model)?;
    spinner.finish_and_clear();
    report.ensure_passed()?;
    stages.push(Stage {
        name: "normalise",
        seconds: started.elapsed().as_secs_f64(),
    });
    crate::failpoint::hit("normalised");

    let after = std::cmp::max(in_store, outbox.newest_id()?);
    let started = Instant::now();
    let spinner = crate::telemetry::stage_spinner("writing Parquet files", options.progress);
    let snap = snapshot::write(
        ws.conn(),
        &SnapshotInput {
            company_id: company,
            model: &model,
            report: &report,
            data_path: options
                .source
                .data_path()
                .map(|p| p.to_string_lossy().into_owned()),
            after,
        },
        outbox.dir(),
    )?;
    drop(ws);
    spinner.finish_and_clear();
    stages.push(Stage {
        name: "export",
        seconds: started.elapsed().as_secs_f64(),
    });
    let dropped = outbox.trim()?;

    let started = Instant::now();
    let first_new = published.len();
    // The outcome of this last attempt is the one that counts.
    let waiting_because =
        publish_waiting(&runtime, &store, &outbox, options.progress, &mut published)?;
    stages.push(Stage {
        name: "publish",
        seconds: started.elapsed().as_secs_f64(),
    });
    let this = published[first_new..]
        .iter()
        .find(|p| p.snapshot_id == snap.manifest.snapshot_id);
    let data_types = snap
        .manifest
        .data_types
        .iter()
        .map(|(name, entry)| DataTypeLine {
            data_type: name.clone(),
            records: entry.rows,
            deleted: entry.control_totals.deleted,
            bytes: entry.bytes,
            uploaded: this.is_some_and(|p| p.changed.contains(name)),
        })
        .collect();
    let waiting = outbox
        .pending()?
        .into_iter()
        .map(|s| s.manifest.snapshot_id)
        .collect();
    drop(lock);
    Ok(SyncReport {
        store: store.url(),
        snapshot_id: snap.manifest.snapshot_id.clone(),
        extracted_rows: extracted.total_rows(),
        data_types,
        stages,
        published: published.iter().map(PublishedLine::from).collect(),
        dropped,
        waiting,
        waiting_because,
    })
}

/// Publishes the outbox's snapshots, oldest first, removing each once published. Stops at
/// a transient failure and returns its message (the rest wait for the next attempt); fails
/// on a permanent one.
fn publish_waiting(
    runtime: &tokio::runtime::Runtime,
    store: &Destination<'_>,
    outbox: &Outbox,
    progress: bool,
    published: &mut Vec<Published>,
) -> Result<Option<String>, SyncError> {
    let pending = outbox.pending()?;
    let total: u64 = pending.iter().map(|s| s.data_bytes()).sum();
    let bar = if progress {
        crate::telemetry::bytes_progress("publishing", total)
    } else {
        ProgressBar::hidden()
    };
    for snap in &pending {
        match runtime.block_on(store.publish(snap, outbox, &bar)) {
            Ok(p) => {
                outbox.remove(snap)?;
                published.push(p);
            }
            Err(
                e @ PublishError::Server {
                    status: 400 | 422, ..
                },
            ) => {
                bar.abandon();
                tracing::error!(snapshot = %snap.manifest.snapshot_id, error = %e, "The server refused a snapshot; it is set aside and the next sync makes a new one.");
                outbox.remove(snap)?;
                return Err(e.into());
            }
            Err(e @ PublishError::Corrupt { .. }) => {
                tracing::error!(snapshot = %snap.manifest.snapshot_id, error = %e, "Set aside a waiting snapshot whose files were damaged.");
                outbox.remove(snap)?;
            }
            Err(e) if e.is_transient() => {
                bar.abandon();
                tracing::warn!(snapshot = %snap.manifest.snapshot_id, error = %e, "The store could not be reached; the snapshot stays in the outbox.");
                return Ok(Some(e.to_string()));
            }
            Err(e) => {
                bar.abandon();
                return Err(e.into());
            }
        }
    }
    bar.finish_and_clear();
    Ok(None)
}
