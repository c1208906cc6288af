//! The DuckDB staging store: one raw table per Sage table, replaced whole or not at all.
//!
//! Takes Arrow record batches per table and produces `FILE.duckdb`. Guarantees: a new
//! generation is built in `FILE.duckdb.building` and renamed over `FILE.duckdb` only after
//! every table arrived and DuckDB checkpointed it; a failure or a kill at any point leaves the
//! previous generation untouched. The tables `_connector_generation` and `_connector_tables`
//! record when and from what the generation was made.

use std::path::{Path, PathBuf};

use arrow::datatypes::{DataType, Schema};
use duckdb::Connection;

use crate::extract::ExtractError;
use crate::files::{self, sibling};

/// Metadata table: one row describing the generation.
pub const GENERATION_TABLE: &str = "_connector_generation";
/// Metadata table: one row per source table.
pub const TABLES_TABLE: &str = "_connector_tables";
/// Suffix of the generation being built.
const BUILDING_SUFFIX: &str = "building";

/// What was staged for one table.
#[derive(Debug, Clone)]
pub struct StagedTable {
    /// Sage table name (= staging table name).
    pub name: String,
    /// Rows loaded.
    pub rows: u64,
    /// Seconds from the query to the last row loaded.
    pub seconds: f64,
    /// Skipped because the source lacks this optional table.
    pub skipped: bool,
    /// Optional columns the source lacks (staged as NULL).
    pub missing_columns: Vec<String>,
}

/// A staging generation under construction.
pub struct Builder {
    target: PathBuf,
    building: PathBuf,
    conn: Connection,
    /// Held (an OS file lock, released even if the process is killed) while building, so
    /// two extractions into the same store cannot trample each other's generation.
    _lock: std::fs::File,
}

fn staging_err(path: &Path) -> impl Fn(duckdb::Error) -> ExtractError + '_ {
    move |e| ExtractError::Staging {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> ExtractError + '_ {
    move |e| ExtractError::Staging {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), ExtractError> {
    files::remove_if_exists(path).map_err(io_err(path))
}

/// Quotes an identifier for DuckDB.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The DuckDB type for an Arrow type.
fn duckdb_type(dt: &DataType) -> String {
    match dt {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt8 => "UTINYINT".into(),
        DataType::UInt16 => "USMALLINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float32 => "REAL".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(_, _) => "TIMESTAMP".into(),
        DataType::Time32(_) | DataType::Time64(_) => "TIME".into(),
        DataType::Decimal128(p, s) => format!("DECIMAL({p},{s})"),
        DataType::Binary | DataType::LargeBinary => "BLOB".into(),
        _ => "VARCHAR".into(),
    }
}

impl Builder {
    /// Starts a new generation of the staging store at `target`.
    pub fn begin(target: &Path) -> Result<Self, ExtractError> {
        if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(target))?;
        }
        let lock_path = sibling(target, "lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(target))?;
        if lock.try_lock().is_err() {
            return Err(ExtractError::Staging {
                path: target.to_owned(),
                detail:
                    "another extraction into this staging store is running; wait for it to finish"
                        .to_owned(),
            });
        }
        let building = sibling(target, BUILDING_SUFFIX);
        remove_if_exists(&building)?;
        remove_if_exists(&sibling(&building, "wal"))?;
        let conn = Connection::open(&building).map_err(staging_err(target))?;
        // Bounded memory: DuckDB's buffer pool is capped (it evicts to the file and spills
        // to temporary files beyond it), so staging a table of any size costs the same.
        // One DuckDB thread: the ODBC driver keeps the other core busy. String dictionary and
        // FSST compression are off: their analysis cost more CPU than the smaller staging
        // file saves; numbers are still compressed.
        // One transaction for the whole generation: DuckDB then writes full row groups
        // straight to the file as they fill ("optimistic writing") instead of logging every
        // row to the WAL and checkpointing it again.
        conn.execute_batch(
            "SET memory_limit = '128MB'; SET threads = 1; SET preserve_insertion_order = true; SET disabled_compression_methods = 'fsst,dictionary,dict_fsst'; BEGIN TRANSACTION;",
        )
        .map_err(staging_err(target))?;
        Ok(Builder {
            target: target.to_owned(),
            building,
            conn,
            _lock: lock,
        })
    }

    /// Creates a staging table for `schema`.
    pub fn create_table(&self, name: &str, schema: &Schema) -> Result<(), ExtractError> {
        let mut cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", ident(f.name()), duckdb_type(f.data_type())))
            .collect();
        if cols.is_empty() {
            cols.push(format!("{} INTEGER", ident("_empty")));
        }
        let ddl = format!("CREATE TABLE {} ({})", ident(name), cols.join(", "));
        self.conn
            .execute_batch(&ddl)
            .map_err(staging_err(&self.target))
    }

    /// Drops a table of this generation, to load it again.
    pub fn drop_table(&self, name: &str) -> Result<(), ExtractError> {
        self.conn
            .execute_batch(&format!("DROP TABLE IF EXISTS {}", ident(name)))
            .map_err(staging_err(&self.target))
    }

    /// Adds the columns the source lacked, after loading, so they read as NULL.
    pub fn add_missing_columns(
        &self,
        name: &str,
        missing: &[(String, String)],
    ) -> Result<(), ExtractError> {
        for (column, ty) in missing {
            let sql = format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                ident(name),
                ident(column),
                ty
            );
            self.conn
                .execute_batch(&sql)
                .map_err(staging_err(&self.target))?;
        }
        Ok(())
    }

    /// An appender for a created table.
    pub fn appender(&self, name: &str) -> Result<duckdb::Appender<'_>, ExtractError> {
        self.conn.appender(name).map_err(staging_err(&self.target))
    }

    /// The path of the store being replaced, for errors.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Rows in a staged table, counted by DuckDB.
    pub fn count(&self, name: &str) -> Result<u64, ExtractError> {
        let n: i64 = self
            .conn
            .query_row(&format!("SELECT COUNT(*) FROM {}", ident(name)), [], |r| {
                r.get(0)
            })
            .map_err(staging_err(&self.target))?;
        Ok(n as u64)
    }

    /// Gives up on this generation: closes it and deletes its files. The previous generation
    /// was never touched.
    pub fn abandon(self) {
        let Builder { building, conn, .. } = self;
        drop(conn);
        let _ = std::fs::remove_file(sibling(&building, "wal"));
        let _ = std::fs::remove_file(&building);
    }

    /// Writes the metadata tables, commits and checkpoints the generation.
    fn record(&self, tables: &[StagedTable], source: &str) -> Result<String, ExtractError> {
        let err = staging_err(&self.target);
        self.conn.execute_batch("COMMIT").map_err(&err)?;
        let generation = chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ").to_string();
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE {GENERATION_TABLE} (generation VARCHAR, extracted_at TIMESTAMP, source VARCHAR, connector_version VARCHAR);
                 CREATE TABLE {TABLES_TABLE} (table_name VARCHAR, row_count BIGINT, seconds DOUBLE, skipped BOOLEAN, missing_columns VARCHAR);"
            ))
            .map_err(&err)?;
        self.conn
            .execute(
                &format!("INSERT INTO {GENERATION_TABLE} VALUES (?, now()::TIMESTAMP, ?, ?)"),
                duckdb::params![generation, source, env!("CARGO_PKG_VERSION")],
            )
            .map_err(&err)?;
        for t in tables {
            self.conn
                .execute(
                    &format!("INSERT INTO {TABLES_TABLE} VALUES (?, ?, ?, ?, ?)"),
                    duckdb::params![
                        t.name,
                        t.rows as i64,
                        t.seconds,
                        t.skipped,
                        t.missing_columns.join(",")
                    ],
                )
                .map_err(&err)?;
        }
        self.conn.execute_batch("CHECKPOINT").map_err(&err)?;
        Ok(generation)
    }

    /// Records metadata, checkpoints, and swaps the new generation in place of the old one;
    /// on failure the new generation is removed and the old one stays.
    pub fn commit(self, tables: &[StagedTable], source: &str) -> Result<String, ExtractError> {
        let generation = match self.record(tables, source) {
            Ok(generation) => generation,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        // `_lock` stays held until the new generation is in place.
        let Builder {
            target,
            building,
            conn,
            _lock,
        } = self;
        if let Err((_, e)) = conn.close() {
            let _ = std::fs::remove_file(&building);
            return Err(staging_err(&target)(e));
        }
        std::fs::File::open(&building)
            .and_then(|f| f.sync_all())
            .map_err(io_err(&target))?;
        // A write-ahead log left by the old generation must not be replayed onto the new one.
        // It is set aside first, never replayed: the old file is not opened at all, so an old
        // generation torn by a power cut (which DuckDB may refuse, or abort on) is simply
        // replaced by the new one.
        let old_wal = sibling(&target, "wal");
        let replaced_wal = sibling(&target, "wal.replaced");
        if old_wal.exists() {
            tracing::warn!(file = %old_wal.display(), "Setting aside the write-ahead log of the previous staging generation.");
            std::fs::rename(&old_wal, &replaced_wal).map_err(io_err(&target))?;
        }
        std::fs::rename(&building, &target).map_err(io_err(&target))?;
        remove_if_exists(&replaced_wal)?;
        if let Some(dir) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Make the rename itself durable (a no-op where directories cannot be opened).
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(generation)
    }
}
