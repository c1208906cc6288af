//! The DuckDB database the rules run in: the Sage tables as `sage.TABLE`, outputs in `main`.

use std::path::{Path, PathBuf};

use duckdb::Connection;

use super::{RulesError, duck};
use crate::schema::SourceSchema;
use crate::staging::{GENERATION_TABLE, ident};

/// Memory DuckDB may use for the rules; above it, it spills to the temp directory.
const MEMORY_LIMIT: &str = "500MB";
/// Schema of the rules' working tables, dropped once the checks have run.
pub const WORK_SCHEMA: &str = "work";

/// A DuckDB connection prepared for the rules.
pub struct Workspace {
    conn: Connection,
    /// Whether the database is a file (`out`) rather than memory.
    in_file: bool,
    /// Spill folder, removed on drop.
    temp_dir: PathBuf,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.temp_dir);
    }
}

impl Workspace {
    /// A database file (`out`, replaced, or one in a private temp folder) so that DuckDB can
    /// evict tables to disk: the rules' working set is larger than the memory limit on big
    /// companies, and an in-memory database cannot spill its tables.
    fn new(out: Option<&Path>) -> Result<Self, RulesError> {
        let temp_dir = std::env::temp_dir().join(format!(
            "connector-rules-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| RulesError::Read { path, source }
        };
        std::fs::create_dir_all(&temp_dir).map_err(io(&temp_dir))?;
        let conn = match out {
            Some(path) => {
                for p in [
                    path.to_owned(),
                    PathBuf::from(format!("{}.wal", path.display())),
                ] {
                    match std::fs::remove_file(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                            return Err(io(&p)(e));
                        }
                        _ => {}
                    }
                }
                Connection::open(path).map_err(|e| RulesError::Duck {
                    doing: format!("creating {}", path.display()),
                    detail: e.to_string(),
                })?
            }
            None => Connection::open_in_memory().map_err(duck("opening DuckDB"))?,
        };
        conn.execute_batch(&format!(
            "SET memory_limit = '{MEMORY_LIMIT}';
             SET temp_directory = '{}';
             SET preserve_insertion_order = false;
             CREATE SCHEMA {WORK_SCHEMA};",
            temp_dir
                .join("spill")
                .display()
                .to_string()
                .replace('\'', "''")
        ))
        .map_err(duck("configuring DuckDB"))?;
        Ok(Workspace {
            conn,
            temp_dir,
            in_file: out.is_some(),
        })
    }

    /// Drops the rules' working tables, leaving one table per data type.
    pub fn drop_work(&self) -> Result<(), RulesError> {
        // In memory the working tables go with the process; dropping them costs seconds.
        if !self.in_file {
            return Ok(());
        }
        self.conn
            .execute_batch(&format!(
                "DROP SCHEMA IF EXISTS {WORK_SCHEMA} CASCADE; CHECKPOINT;"
            ))
            .map_err(duck("dropping the working tables"))
    }

    /// Opens `staging` read-only and exposes its tables as `sage.TABLE`. Outputs go to `out`
    /// (a DuckDB file, replaced) or stay in memory.
    pub fn over_staging(
        staging: &Path,
        out: Option<&Path>,
        schema: &SourceSchema,
    ) -> Result<Self, RulesError> {
        let staging_err = |detail: String| RulesError::Staging {
            path: staging.to_owned(),
            detail,
        };
        if !staging.is_file() {
            return Err(staging_err(
                "not found: run `connector extract --staging FILE` first, or fix --staging".into(),
            ));
        }
        let ws = Self::new(out)?;
        let path = staging.display().to_string().replace('\'', "''");
        ws.conn
            .execute_batch(&format!(
                "ATTACH '{path}' AS staging (READ_ONLY); ATTACH ':memory:' AS sage;"
            ))
            .map_err(|e| staging_err(e.to_string()))?;
        let present: Vec<String> = {
            let mut stmt = ws
                .conn
                .prepare("SELECT table_name FROM duckdb_tables() WHERE database_name = 'staging'")
                .map_err(duck("listing staged tables"))?;
            stmt.query_map([], |r| r.get::<_, String>(0))
                .map_err(duck("listing staged tables"))?
                .collect::<Result<_, _>>()
                .map_err(duck("listing staged tables"))?
        };
        if !present.iter().any(|t| t == GENERATION_TABLE) {
            return Err(staging_err(
                "is not a staging store written by `connector extract` (no generation record)"
                    .into(),
            ));
        }
        for table in &schema.tables {
            if present.iter().any(|t| t.eq_ignore_ascii_case(&table.name)) {
                ws.conn
                    .execute_batch(&format!(
                        "CREATE VIEW sage.{0} AS SELECT * FROM staging.main.{0}",
                        ident(&table.name)
                    ))
                    .map_err(duck(format!("exposing staged table {}", table.name)))?;
            } else if table.required {
                return Err(staging_err(format!(
                    "lacks the required table {}: extract again with this connector version",
                    table.name
                )));
            } else {
                tracing::warn!(table = %table.name, "The staging store lacks this optional table; the rules see it empty.");
                ws.create_empty(table)?;
            }
        }
        Ok(ws)
    }

    /// An in-memory workspace whose Sage tables exist but are empty (rule test cases fill them).
    pub fn empty_source(schema: &SourceSchema) -> Result<Self, RulesError> {
        let ws = Self::new(None)?;
        ws.conn
            .execute_batch("ATTACH ':memory:' AS sage;")
            .map_err(duck("creating the sage catalogue"))?;
        for table in &schema.tables {
            ws.create_empty(table)?;
        }
        Ok(ws)
    }

    fn create_empty(&self, table: &crate::schema::Table) -> Result<(), RulesError> {
        let cols: Vec<String> = table
            .columns
            .iter()
            .map(|c| format!("{} {}", ident(&c.name), c.ty.sql_name()))
            .collect();
        self.conn
            .execute_batch(&format!(
                "CREATE TABLE sage.{} ({})",
                ident(&table.name),
                cols.join(", ")
            ))
            .map_err(duck(format!("creating empty table {}", table.name)))
    }

    /// The connection.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }
}
