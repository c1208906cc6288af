//! The snapshot stage: the checked, normalised tables frozen into Parquet files and a manifest.
//!
//! Takes the rules' workspace after [`crate::rules::normalise`] passed (one table per data
//! type in `main`, the Sage tables as `sage.TABLE`) and its report; produces a folder
//! `PARENT/SNAPSHOT_ID/` holding `DATATYPE/PART.parquet` for every part of every data type
//! and `manifest.json` (format in [`manifest`]).
//!
//! A data type's records are split into parts by their ids ([`part_sql`]): ids that begin
//! with a number are grouped in blocks of [`PART_BLOCK`] numbers (Sage numbers transactions
//! in order, so a block holds the records of one stretch of the company's history and new
//! transactions fill new blocks), every other id is in part `other`. A record never changes
//! part, and editing a few transactions changes only the files of their blocks: an unchanged
//! part is the same file, already in the store, and the server reloads only changed parts.
//!
//! Guarantees:
//! - The folder is built as `SNAPSHOT_ID.partial/` and renamed only when every file and the
//!   manifest are written and synced: a folder without that suffix is a whole snapshot.
//! - A Parquet file's bytes depend on its rows only: rows sorted by `id`, fed to the writer in
//!   batches of a fixed size, fixed row group size, zstd, no time stamps inside. So the same
//!   data gives the same file and the same SHA-256, which is its key in the store: an
//!   unchanged data type is never uploaded twice.
//! - Every file's row count is checked against normalisation's control totals before the
//!   manifest is written.

pub mod manifest;
mod parquet_file;

use std::path::{Path, PathBuf};
use std::time::Instant;

use duckdb::Connection;

use crate::files;
use crate::model::{DataModel, SCHEMA_VERSION};
use crate::rules::{CheckStatus, Report};
use manifest::{
    CheckEntry, ConnectorFacts, ControlTotals, DataTypeEntry, FileEntry, MANIFEST_VERSION,
    Manifest, SourceFacts,
};
pub use parquet_file::{ROW_GROUP_ROWS, hex, parquet_row_count};

/// File name of the manifest, in a snapshot folder and in the store.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Tables exported at the same time (these machines, like many customers' PCs, have two
/// cores).
const EXPORT_THREADS: usize = 2;
/// Suffix of a snapshot folder being built.
const PARTIAL_SUFFIX: &str = "partial";

/// Numbers per part: ids `0`..`16383` are part `n000000`, `16384`..`32767` part `n000001`, …
pub const PART_BLOCK: u64 = 16_384;
/// The part of a data type without records (its one, empty, file).
pub const FIRST_PART: &str = "n000000";

/// SQL giving the part of the record whose id is the expression `id`: `n` and the block of
/// the number the id begins with (at most 15 digits, six digits of block, zero-padded so
/// that parts sort in order), or `other` for an id that does not begin with a digit.
pub fn part_sql(id: &str) -> String {
    format!(
        "coalesce(printf('n%06d', TRY_CAST(regexp_extract({id}, '^[0-9]{{1,15}}') AS BIGINT) // {PART_BLOCK}), 'other')"
    )
}

/// The part of the record whose id is `id`: what [`part_sql`] gives, computed here.
pub fn part_of(id: &str) -> String {
    let digits: String = id
        .chars()
        .take_while(char::is_ascii_digit)
        .take(15)
        .collect();
    match digits.parse::<u64>() {
        Ok(n) => format!("n{:06}", n / PART_BLOCK),
        Err(_) => "other".to_owned(),
    }
}

/// Whether `part` is a part's name as [`part_sql`] gives them (it names local files and
/// tables on the server, so nothing else is taken).
pub fn is_part(part: &str) -> bool {
    part == "other"
        || (part.len() >= 7
            && part.len() <= 12
            && part.starts_with('n')
            && part[1..].bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_part_is_the_same_in_rust_and_in_sql() {
        let ids = [
            "0",
            "1",
            "16383",
            "16384",
            "25296-1200",
            "000123",
            "99999",
            "1000000",
            "123456789012345678901",
            "ABC001",
            "department-1",
            "",
            "-5",
            "7a",
            "٣٣",
        ];
        let conn = Connection::open_in_memory().unwrap();
        for id in ids {
            let sql: String = conn
                .query_row(&format!("SELECT {}", part_sql("?")), [id], |r| r.get(0))
                .unwrap();
            assert_eq!(part_of(id), sql, "{id:?}");
            assert!(is_part(&sql), "{sql}");
        }
        assert_eq!(part_of("16384"), "n000001");
        assert_eq!(part_of("ABC001"), "other");
    }
}

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// DuckDB failed reading a data type table or the source facts.
    #[error("reading {what} from the normalised data: {detail}")]
    Query {
        /// Which table or fact.
        what: String,
        /// DuckDB's message.
        detail: String,
    },
    /// Writing a Parquet file failed.
    #[error("writing the Parquet file {path}: {detail}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The writer's message.
        detail: String,
    },
    /// A file or folder could not be written, read or renamed.
    #[error("{doing} {path}: {source} (check the state folder's free space and permissions)")]
    Io {
        /// What was being done.
        doing: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file's rows disagree with what normalisation counted.
    #[error(
        "data type {data_type}: the Parquet file has {written} rows but normalisation counted {expected}"
    )]
    RowCount {
        /// The data type.
        data_type: String,
        /// Rows in the file.
        written: u64,
        /// Rows in the report.
        expected: u64,
    },
    /// The report lacks a data type of the model.
    #[error("data type {0} has no control totals in the normalisation report")]
    MissingTotals(String),
}

/// Everything about a snapshot that does not come from the data type tables.
pub struct SnapshotInput<'a> {
    /// Our company id.
    pub company_id: &'a str,
    /// The data model (which tables to export, in which order).
    pub model: &'a DataModel,
    /// Normalisation's report (control totals, checks); its checks must have passed.
    pub report: &'a Report,
    /// The Sage data folder, when the connection names one.
    pub data_path: Option<String>,
    /// The newest snapshot id already made (in the store or the outbox): the new id sorts
    /// after it even if the PC's clock went back.
    pub after: Option<String>,
}

/// A whole snapshot in a local folder.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    /// `PARENT/SNAPSHOT_ID`.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl SnapshotDir {
    /// Reads a finished snapshot folder (one written by [`write`]).
    pub fn open(path: &Path) -> Result<Self, SnapshotError> {
        let file = path.join(MANIFEST_FILE);
        let bytes = std::fs::read(&file).map_err(|source| SnapshotError::Io {
            doing: "reading",
            path: file.clone(),
            source,
        })?;
        let manifest = Manifest::from_json(&bytes).map_err(|e| SnapshotError::Io {
            doing: "parsing",
            path: file,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })?;
        Ok(SnapshotDir {
            path: path.to_owned(),
            manifest,
        })
    }

    /// The local Parquet file of one part of a data type.
    pub fn file(&self, data_type: &str, part: &str) -> PathBuf {
        self.path.join(data_type).join(format!("{part}.parquet"))
    }

    /// Total bytes of its Parquet files.
    pub fn data_bytes(&self) -> u64 {
        self.manifest.data_types.values().map(|d| d.bytes).sum()
    }
}

/// The store key of a data file: `COMPANY/data/DATATYPE/SHA256.parquet`.
pub fn data_key(company_id: &str, data_type: &str, sha256: &str) -> String {
    format!("{company_id}/data/{data_type}/{sha256}.parquet")
}

/// Whether `key` is one of `company`'s data keys, the one [`data_key`] gives for `sha256`
/// (`COMPANY/data/TYPE/SHA256.parquet`, the hash in its shape): what a manifest may name.
pub fn is_data_key_of(company: &str, key: &str, sha256: &str) -> bool {
    let Some(rest) = key.strip_prefix(&format!("{company}/data/")) else {
        return false;
    };
    let Some((data_type, file)) = rest.split_once('/') else {
        return false;
    };
    !data_type.is_empty()
        && data_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && file == format!("{sha256}.parquet")
        && manifest::is_sha256(sha256)
}

/// The store key of a snapshot's manifest.
pub fn manifest_key(company_id: &str, snapshot_id: &str) -> String {
    format!("{company_id}/snapshots/{snapshot_id}/{MANIFEST_FILE}")
}

/// The store key of a company's `latest` pointer.
pub fn latest_key(company_id: &str) -> String {
    format!("{company_id}/latest.json")
}

/// Writes a new snapshot folder under `parent` from the workspace `conn`.
pub fn write(
    conn: &Connection,
    input: &SnapshotInput<'_>,
    parent: &Path,
) -> Result<SnapshotDir, SnapshotError> {
    let started = Instant::now();
    let now = chrono::Utc::now();
    let snapshot_id = manifest::new_snapshot_id_after(now, input.after.as_deref());
    let path = parent.join(&snapshot_id);
    let partial = files::sibling(&path, PARTIAL_SUFFIX);
    let io = |doing: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| SnapshotError::Io {
            doing,
            path: p,
            source,
        }
    };
    std::fs::create_dir_all(&partial).map_err(io("creating", &partial))?;
    let result = write_into(conn, input, &snapshot_id, now, &partial);
    let manifest = match result {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    crate::failpoint::hit("snapshot-before-rename");
    std::fs::rename(&partial, &path).map_err(io("renaming the finished snapshot", &path))?;
    files::sync_dir(parent);
    tracing::info!(
        snapshot = %snapshot_id,
        data_types = manifest.data_types.len(),
        bytes = manifest.data_types.values().map(|d| d.bytes).sum::<u64>(),
        seconds = started.elapsed().as_secs_f64(),
        "Wrote the snapshot's Parquet files and manifest."
    );
    Ok(SnapshotDir { path, manifest })
}

fn write_into(
    conn: &Connection,
    input: &SnapshotInput<'_>,
    snapshot_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    dir: &Path,
) -> Result<Manifest, SnapshotError> {
    // Largest first, two at a time (one DuckDB connection each): the big tables overlap.
    let mut order: Vec<(&str, &crate::rules::DataTypeTotals)> = Vec::new();
    for data_type in &input.model.types {
        let totals = input
            .report
            .totals(&data_type.name)
            .ok_or_else(|| SnapshotError::MissingTotals(data_type.name.clone()))?;
        order.push((&data_type.name, totals));
    }
    order.sort_by_key(|(name, totals)| (std::cmp::Reverse(totals.rows), *name));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicUsize::new(0);
    type Parts = Result<Vec<parquet_file::Written>, SnapshotError>;
    let results: Vec<std::sync::Mutex<Option<Parts>>> =
        order.iter().map(|_| std::sync::Mutex::new(None)).collect();
    // (a clone starts in the database's default catalogue: it is told the one in use, where
    // the rules' in-memory workspace keeps its tables)
    let clone_err = |e: duckdb::Error| SnapshotError::Query {
        what: "a second connection for the export".into(),
        detail: e.to_string(),
    };
    let catalogue: String = conn
        .query_row("SELECT current_database()", [], |r| r.get(0))
        .map_err(clone_err)?;
    let mut conns = Vec::new();
    for _ in 0..EXPORT_THREADS {
        let clone = conn.try_clone().map_err(clone_err)?;
        clone
            .execute_batch(&format!("USE {}", crate::staging::ident(&catalogue)))
            .map_err(clone_err)?;
        conns.push(clone);
    }
    std::thread::scope(|scope| {
        for worker in conns {
            let (order, next, done, results) = (&order, &next, &done, &results);
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((name, _)) = order.get(i) else { break };
                    let result = parquet_file::export(&worker, name, &dir.join(name));
                    let failed = result.is_err();
                    *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(result);
                    if failed {
                        // Stop handing out work; the error is reported below.
                        next.store(order.len(), std::sync::atomic::Ordering::SeqCst);
                        break;
                    }
                    if done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        crate::failpoint::hit("export-first-file");
                    }
                }
            });
        }
    });
    let mut data_types = std::collections::BTreeMap::new();
    for ((name, totals), result) in order.iter().zip(results) {
        let written = match result.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(result) => result?,
            // Not exported because another table failed first: that error comes first.
            None => continue,
        };
        let rows = written.iter().map(|w| w.rows).sum::<u64>();
        if rows != totals.rows {
            return Err(SnapshotError::RowCount {
                data_type: name.to_string(),
                written: rows,
                expected: totals.rows,
            });
        }
        data_types.insert(
            name.to_string(),
            DataTypeEntry {
                rows,
                bytes: written.iter().map(|w| w.bytes).sum(),
                control_totals: ControlTotals {
                    records: totals.rows,
                    deleted: totals.deleted,
                    sums: totals.sums.clone(),
                },
                files: written
                    .into_iter()
                    .map(|w| FileEntry {
                        key: data_key(input.company_id, name, &w.sha256),
                        part: w.part,
                        rows: w.rows,
                        bytes: w.bytes,
                        sha256: w.sha256,
                    })
                    .collect(),
            },
        );
    }
    if data_types.len() != order.len() {
        return Err(SnapshotError::Query {
            what: "the data type tables".into(),
            detail: "an export stopped early without an error".into(),
        });
    }
    let manifest = Manifest {
        manifest_version: MANIFEST_VERSION,
        snapshot_id: snapshot_id.to_owned(),
        company_id: input.company_id.to_owned(),
        created_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        connector: ConnectorFacts {
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        schema_version: SCHEMA_VERSION,
        source: source_facts(conn, input.data_path.clone())?,
        data_types,
        checks: input
            .report
            .checks
            .iter()
            .map(|c| CheckEntry {
                name: c.name.clone(),
                status: match c.status {
                    CheckStatus::Pass => "pass",
                    CheckStatus::Warn => "warn",
                    CheckStatus::Fail => "fail",
                }
                .to_owned(),
                warnings: c.warnings,
            })
            .collect(),
    };
    let file = dir.join(MANIFEST_FILE);
    files::write_synced(&file, &manifest.to_json()).map_err(|source| SnapshotError::Io {
        doing: "writing",
        path: file,
        source,
    })?;
    Ok(manifest)
}

/// Sage's company id and name, the last transaction date and when extraction finished.
fn source_facts(
    conn: &Connection,
    data_path: Option<String>,
) -> Result<SourceFacts, SnapshotError> {
    let err = |what: &str| {
        let what = what.to_owned();
        move |e: duckdb::Error| SnapshotError::Query {
            what,
            detail: e.to_string(),
        }
    };
    let (sage_company_id, company_name) = conn
        .query_row(
            "SELECT CAST(COMPANYID AS VARCHAR), NAME FROM sage.COMPANY ORDER BY COMPANYID LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .or_else(|e| match e {
            duckdb::Error::QueryReturnedNoRows => Ok((None, None)),
            e => Err(e),
        })
        .map_err(err("the Sage company (COMPANY)"))?;
    let last_transaction_date: Option<String> = conn
        .query_row(
            "SELECT strftime(max(DATE), '%Y-%m-%d') FROM sage.AUDIT_HEADER",
            [],
            |r| r.get(0),
        )
        .map_err(err("the last transaction date (AUDIT_HEADER.DATE)"))?;
    // The staging generation id is the UTC time extraction finished (see `crate::staging`).
    let generation: String = conn
        .query_row(
            &format!(
                "SELECT generation FROM {}.main.{}",
                crate::rules::STAGING_CATALOGUE,
                crate::staging::GENERATION_TABLE
            ),
            [],
            |r| r.get(0),
        )
        .map_err(err("the staging generation (_connector_generation)"))?;
    let extracted_at = chrono::NaiveDateTime::parse_from_str(&generation, "%Y%m%dT%H%M%S%.fZ")
        .map(|t| {
            t.and_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        })
        .map_err(|e| SnapshotError::Query {
            what: "the staging generation (_connector_generation)".into(),
            detail: format!("generation id {generation:?} is not a time: {e}"),
        })?;
    Ok(SourceFacts {
        sage_company_id,
        company_name,
        data_path,
        last_transaction_date,
        extracted_at,
    })
}
