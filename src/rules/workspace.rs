//! The DuckDB database the rules run in: the Sage tables as `sage.TABLE`, outputs in `main`.

use std::path::{Path, PathBuf};

use duckdb::Connection;

use super::{RulesError, duck};
use crate::files::{self, sibling};
use crate::schema::SourceSchema;
use crate::staging::{GENERATION_TABLE, ident};

/// Memory DuckDB may use for the rules; above it, it spills to the temp directory. The
/// process's peak is this plus what DuckDB does not count (list aggregates' states, the
/// allocator's slack): with 640 MB, 767 to 804 MB on the 1,000,000-split company and about
/// 945 MB on the 5,000,000-split one, under the 1 GB the rules may take; it spills less than
/// 500 MB did (paired runs: README, Normalisation).
const MEMORY_LIMIT: &str = "640MB";
/// DuckDB's allocator gives freed memory back to the system after a task whose peak
/// passed this. Its default (128 MiB) is passed by nearly every statement over a large
/// company, and the pages given back are faulted in and zeroed again by the next one:
/// above [`MEMORY_LIMIT`], nothing is given back before the workspace closes (paired runs
/// of `connector rules run`: README, Normalisation).
const ALLOCATOR_FLUSH_THRESHOLD: &str = "2GB";
/// Catalogue of an in-memory workspace: attached with compression, as a database file's
/// tables are (DuckDB keeps a plain in-memory database's tables uncompressed), so that the
/// working tables spill less past [`MEMORY_LIMIT`].
const IN_MEMORY_CATALOGUE: &str = "workspace";
/// Schema of the rules' working tables, dropped once the rules have run.
pub const WORK_SCHEMA: &str = "work";
/// Catalogue under which the rules see the Sage tables (`sage.AUDIT_HEADER`).
pub const SAGE_CATALOGUE: &str = "sage";
/// Catalogue of the attached staging store.
pub const STAGING_CATALOGUE: &str = "staging";
/// Suffix of an output file while it is being built.
const PARTIAL_SUFFIX: &str = "partial";
/// Suffix of DuckDB's write-ahead log beside a database file.
const WAL_SUFFIX: &str = "wal";

/// A DuckDB database prepared for the rules: in memory (spilling to a private temp folder
/// above [`MEMORY_LIMIT`]) or, with `out`, a file built as `OUT.partial` and renamed to `OUT`
/// only by [`Workspace::keep`]: a failed run never leaves a half-made or unchecked file.
pub struct Workspace {
    /// Closed before the temp folder and the partial file are removed (Windows cannot remove
    /// files DuckDB still holds open).
    conn: Option<Connection>,
    /// `(partial, final)` paths of the output file, when there is one.
    out: Option<(PathBuf, PathBuf)>,
    /// Spill folder, removed on drop (after the connection: field order).
    _temp_dir: tempfile::TempDir,
}

impl Drop for Workspace {
    fn drop(&mut self) {
        drop(self.conn.take());
        if let Some((partial, _)) = &self.out {
            for p in [partial.clone(), sibling(partial, WAL_SUFFIX)] {
                if let Err(e) = files::remove_if_exists(&p) {
                    tracing::warn!(file = %p.display(), error = %e, "Could not remove an unfinished output file.");
                }
            }
        }
    }
}

fn sql_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn io_err(doing: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RulesError {
    let path = path.to_owned();
    move |source| RulesError::Io {
        doing,
        path,
        source,
    }
}

fn remove_if_exists(path: &Path) -> Result<(), RulesError> {
    files::remove_if_exists(path).map_err(io_err("removing a stale output file", path))
}

impl Workspace {
    fn new(out: Option<&Path>) -> Result<Self, RulesError> {
        let temp_dir = tempfile::Builder::new()
            .prefix("connector-rules-")
            .tempdir()
            .map_err(io_err("creating a temp folder", &std::env::temp_dir()))?;
        let out = out.map(|path| (sibling(path, PARTIAL_SUFFIX), path.to_owned()));
        let conn = match &out {
            Some((partial, _)) => {
                remove_if_exists(partial)?;
                remove_if_exists(&sibling(partial, WAL_SUFFIX))?;
                Connection::open(partial).map_err(|e| RulesError::Duck {
                    doing: format!("creating {}", partial.display()),
                    detail: e.to_string(),
                })?
            }
            None => {
                let conn = Connection::open_in_memory().map_err(duck("opening DuckDB"))?;
                conn.execute_batch(&format!(
                    "ATTACH ':memory:' AS {IN_MEMORY_CATALOGUE} (COMPRESS); USE {IN_MEMORY_CATALOGUE};"
                ))
                .map_err(duck("creating the compressed in-memory workspace"))?;
                conn
            }
        };
        conn.execute_batch(&format!(
            "SET memory_limit = '{MEMORY_LIMIT}';
             SET allocator_flush_threshold = '{ALLOCATOR_FLUSH_THRESHOLD}';
             SET temp_directory = {};
             SET preserve_insertion_order = false;
             CREATE SCHEMA {WORK_SCHEMA};",
            sql_literal(&temp_dir.path().join("spill").display().to_string())
        ))
        .map_err(duck("configuring DuckDB"))?;
        Ok(Workspace {
            conn: Some(conn),
            out,
            _temp_dir: temp_dir,
        })
    }

    /// Drops the rules' working tables, leaving one table per data type: frees their memory
    /// for the checks, which read only the data type tables and the Sage tables.
    pub fn drop_work(&self) -> Result<(), RulesError> {
        self.conn()
            .execute_batch(&format!("DROP SCHEMA IF EXISTS {WORK_SCHEMA} CASCADE;"))
            .map_err(duck("dropping the working tables"))
    }

    /// Keeps the output file: closes the database and renames `OUT.partial` to `OUT`. Call it
    /// only once the checks have passed. Returns the path, or None for an in-memory workspace.
    pub fn keep(mut self) -> Result<Option<PathBuf>, RulesError> {
        let Some((partial, path)) = self.out.take() else {
            return Ok(None);
        };
        self.conn()
            .execute_batch("CHECKPOINT")
            .map_err(duck("checkpointing the output file"))?;
        drop(self.conn.take());
        remove_if_exists(&sibling(&path, WAL_SUFFIX))?;
        std::fs::rename(&partial, &path)
            .map_err(io_err("renaming the finished output file", &path))?;
        Ok(Some(path))
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
        let path = sql_literal(&staging.display().to_string());
        ws.conn()
            .execute_batch(&format!(
                "ATTACH {path} AS {STAGING_CATALOGUE} (READ_ONLY); ATTACH ':memory:' AS {SAGE_CATALOGUE};"
            ))
            .map_err(|e| staging_err(e.to_string()))?;
        let present: Vec<String> = {
            let mut stmt = ws
                .conn()
                .prepare(&format!(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = '{STAGING_CATALOGUE}'"
                ))
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
                ws.conn()
                    .execute_batch(&format!(
                        // `rowid` as a column, so that rules can name a row as they can in
                        // a table (a rule test case's Sage tables are tables)
                        "CREATE VIEW {SAGE_CATALOGUE}.{0} AS \
                         SELECT *, rowid AS rowid FROM {STAGING_CATALOGUE}.main.{0}",
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
        ws.conn()
            .execute_batch(&format!("ATTACH ':memory:' AS {SAGE_CATALOGUE};"))
            .map_err(duck("creating the sage catalogue"))?;
        for table in &schema.tables {
            ws.create_empty(table)?;
        }
        Ok(ws)
    }

    fn create_empty(&self, table: &crate::schema::Table) -> Result<(), RulesError> {
        self.conn()
            .execute_batch(&table.create_sql(&format!("{SAGE_CATALOGUE}.")))
            .map_err(duck(format!("creating empty table {}", table.name)))
    }

    /// The connection.
    pub fn conn(&self) -> &Connection {
        self.conn
            .as_ref()
            .expect("open until the workspace is kept or dropped")
    }
}
