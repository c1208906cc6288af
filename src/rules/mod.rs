//! Normalisation: the SQL rules that turn staged Sage tables into our data model, and the
//! checks that prove the numbers did not change.
//!
//! Takes a staging store (or, for rule test cases, hand-written source rows) and produces one
//! DuckDB table per data type of [`crate::model`], a pass/warn/fail result per check and the
//! control totals for the snapshot manifest.
//!
//! * Rules are the `sql/*.sql` files, run in file-name order (`NN_name.sql`); checks are
//!   `sql/checks/*.sql`. Both are read from a folder at run time or embedded in the binary.
//! * The Sage tables are visible to the rules as `sage.TABLE` (read-only views over the
//!   staging store; an optional table the source lacked is an empty table). Rules create
//!   their working tables in the schema `work` (dropped before the checks) and the data type
//!   tables in `main`. DuckDB spills to a private temp folder above its memory limit, and the
//!   largest lists are built one slice of headers at a time: peak memory stays bounded
//!   whatever the company's size. With an output file, it appears only once kept.
//! * Guarantees: a rule that fails is reported with its file name and DuckDB's message; every
//!   data type table must have exactly the fields and types of its schema file; a check is a
//!   query returning the violating rows (zero rows = pass), rows whose `severity` column says
//!   `warning` are warnings (the source disagrees with itself), every other row is an error,
//!   and [`Report::ensure_passed`] stops the pipeline on any error, naming the check and
//!   showing a sample of rows. The staging store is never written.

mod cases;
mod checks;
mod workspace;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use cases::{CaseOutcome, RuleCase, run_cases};
pub use checks::{CheckResult, CheckStatus, generated_checks};
pub use workspace::{STAGING_CATALOGUE, Workspace};

use crate::model::{DataModel, EMBEDDED_CHECKS, EMBEDDED_RULES, FieldType, IS_DELETED_FIELD};
use crate::staging::ident;

/// Sub-folder of the rules folder holding the checks.
pub const CHECKS_DIR: &str = "checks";

/// Why normalisation failed.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// A rules file or folder could not be read.
    #[error("cannot read {path}: {source} (check --rules-dir / --cases)")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file operation other than reading rules failed.
    #[error("{doing} {path} failed: {source}")]
    Io {
        /// What we were doing.
        doing: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A rule test case file is malformed.
    #[error("rule test case {path}, line {line}: {message}")]
    Case {
        /// The case file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What to fix.
        message: String,
    },
    /// The staging store could not be opened.
    #[error("staging store {path}: {detail}")]
    Staging {
        /// The staging file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A rule's SQL failed.
    #[error("rule {file} failed: {message}")]
    Rule {
        /// The rule file.
        file: String,
        /// DuckDB's message.
        message: String,
    },
    /// A rule produced a table that does not match the data model.
    #[error(
        "data type {data_type}: {message} (fix the rule that creates table {data_type}, or {file})"
    )]
    Output {
        /// The data type.
        data_type: String,
        /// Its schema file.
        file: String,
        /// What differs.
        message: String,
    },
    /// A check's SQL failed.
    #[error("check {name} could not run: {message}")]
    CheckQuery {
        /// The check.
        name: String,
        /// DuckDB's message.
        message: String,
    },
    /// Checks found errors: nothing may be published.
    #[error("{}", failed_message(.failed))]
    ChecksFailed {
        /// The failed checks.
        failed: Vec<CheckResult>,
    },
    /// Any other DuckDB failure.
    #[error("DuckDB failed while {doing}: {detail}")]
    Duck {
        /// What we were doing.
        doing: String,
        /// DuckDB's message.
        detail: String,
    },
}

fn failed_message(failed: &[CheckResult]) -> String {
    let mut out = String::from("normalisation checks failed, nothing was published:");
    for c in failed {
        out.push_str(&format!(
            "\n  check {} found {} error row(s), e.g.:",
            c.name, c.errors
        ));
        for row in &c.sample {
            out.push_str(&format!("\n    {row}"));
        }
    }
    out
}

pub(crate) fn duck(doing: impl Into<String>) -> impl FnOnce(duckdb::Error) -> RulesError {
    let doing = doing.into();
    move |e| RulesError::Duck {
        doing,
        detail: e.to_string(),
    }
}

/// One SQL file.
#[derive(Debug, Clone)]
pub struct SqlFile {
    /// File name, e.g. `10_splits.sql`; a check's name is its file stem.
    pub name: String,
    /// Its SQL.
    pub text: String,
}

impl SqlFile {
    /// The file name without `.sql`.
    pub fn stem(&self) -> &str {
        self.name.strip_suffix(".sql").unwrap_or(&self.name)
    }
}

/// The rules and checks, in run order.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Rule files in file-name order.
    pub steps: Vec<SqlFile>,
    /// Check files in file-name order.
    pub checks: Vec<SqlFile>,
}

fn to_files(list: &[(&str, &str)]) -> Vec<SqlFile> {
    list.iter()
        .map(|(name, text)| SqlFile {
            name: (*name).to_owned(),
            text: (*text).to_owned(),
        })
        .collect()
}

fn read_sql_dir(dir: &Path) -> Result<Vec<SqlFile>, RulesError> {
    let files = crate::files::read_with_extension(dir, "sql")
        .map_err(|(path, source)| RulesError::Read { path, source })?;
    Ok(files
        .into_iter()
        .map(|(name, text)| SqlFile { name, text })
        .collect())
}

impl Rules {
    /// The rules compiled into the binary (a copy of `sql/` at build time).
    pub fn embedded() -> Self {
        Rules {
            steps: to_files(EMBEDDED_RULES),
            checks: to_files(EMBEDDED_CHECKS),
        }
    }

    /// Reads `dir/*.sql` and `dir/checks/*.sql`.
    pub fn load(dir: &Path) -> Result<Self, RulesError> {
        let steps = read_sql_dir(dir)?;
        if steps.is_empty() {
            return Err(RulesError::Read {
                path: dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no *.sql rule files in this folder",
                ),
            });
        }
        Ok(Rules {
            steps,
            checks: read_sql_dir(&dir.join(CHECKS_DIR))?,
        })
    }

    /// The embedded rules, or those in `dir` when given.
    pub fn from_option(dir: Option<&Path>) -> Result<Self, RulesError> {
        dir.map_or_else(|| Ok(Self::embedded()), Self::load)
    }
}

/// Row counts of one data type.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DataTypeTotals {
    /// Data type name.
    pub data_type: String,
    /// Records, deleted included.
    pub rows: u64,
    /// Records with `isDeleted = true`.
    pub deleted: u64,
    /// Sum of each top-level money field over the live records, as exact decimal strings.
    pub sums: std::collections::BTreeMap<String, String>,
}

/// What a normalisation run produced (its JSON form is what `rules run --json` writes and the
/// snapshot manifest keeps).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Per data type: counts and control totals (kept for the snapshot manifest).
    pub data_types: Vec<DataTypeTotals>,
    /// Per check: its result.
    pub checks: Vec<CheckResult>,
    /// Seconds spent in the rules.
    pub rules_seconds: f64,
    /// Seconds spent in the checks.
    pub checks_seconds: f64,
}

impl Report {
    /// The checks that found errors.
    pub fn failed(&self) -> Vec<&CheckResult> {
        self.checks
            .iter()
            .filter(|c| c.status == CheckStatus::Fail)
            .collect()
    }

    /// Totals of one data type.
    pub fn totals(&self, data_type: &str) -> Option<&DataTypeTotals> {
        self.data_types.iter().find(|t| t.data_type == data_type)
    }

    /// `Err` naming every failed check and a sample of its rows when any check found errors.
    pub fn ensure_passed(&self) -> Result<(), RulesError> {
        let failed: Vec<CheckResult> = self.failed().into_iter().cloned().collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(RulesError::ChecksFailed { failed })
        }
    }
}

/// Runs every rule, validates the data type tables against the model, runs every check and
/// computes the control totals. Check errors are in the report, not an `Err`: call
/// [`Report::ensure_passed`] before publishing.
pub fn normalise(ws: &Workspace, rules: &Rules, model: &DataModel) -> Result<Report, RulesError> {
    let started = Instant::now();
    run_rules(ws, rules)?;
    // The checks read only the data type tables and the Sage tables: the working tables'
    // memory is theirs.
    ws.drop_work()?;
    validate_outputs(ws, model)?;
    let rules_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let checks = checks::run_all(ws, rules, model)?;
    let checks_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let data_types = control_totals(ws, model)?;
    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        "Computed the control totals."
    );
    Ok(Report {
        data_types,
        checks,
        rules_seconds,
        checks_seconds,
    })
}

/// Line opening a block that runs once per slice (see `sql/00_conventions.sql`).
const FOR_EACH_SLICE: &str = "-- for each slice";
/// Line closing it.
const END_FOR_EACH_SLICE: &str = "-- end for each slice";

/// A rule file cut into parts run once, and blocks run once per slice.
fn segments(step: &SqlFile) -> Result<Vec<(bool, String)>, RulesError> {
    let mut out = vec![(false, String::new())];
    for line in step.text.lines() {
        let marker = line.trim();
        let in_block = out.last().is_some_and(|(repeat, _)| *repeat);
        if marker.eq_ignore_ascii_case(FOR_EACH_SLICE)
            || marker.eq_ignore_ascii_case(END_FOR_EACH_SLICE)
        {
            let opening = marker.eq_ignore_ascii_case(FOR_EACH_SLICE);
            if opening == in_block {
                return Err(RulesError::Rule {
                    file: step.name.clone(),
                    message: format!(
                        "`{marker}` {}: blocks are `{FOR_EACH_SLICE}` … `{END_FOR_EACH_SLICE}`, not nested",
                        if opening {
                            "inside a block"
                        } else {
                            "without a block to close"
                        }
                    ),
                });
            }
            out.push((opening, String::new()));
        } else if let Some((_, text)) = out.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    if out.last().is_some_and(|(repeat, _)| *repeat) {
        return Err(RulesError::Rule {
            file: step.name.clone(),
            message: format!("`{FOR_EACH_SLICE}` is never closed by `{END_FOR_EACH_SLICE}`"),
        });
    }
    out.retain(|(_, text)| !text.trim().is_empty());
    Ok(out)
}

/// Runs the rule files in order; a failure names the file (and the slice, in a block).
fn run_rules(ws: &Workspace, rules: &Rules) -> Result<(), RulesError> {
    let conn = ws.conn();
    for step in &rules.steps {
        crate::failpoint::hit("rule-file");
        let started = Instant::now();
        let rule_err = |slice: Option<i64>| {
            let file = match slice {
                Some(k) => format!("{} (slice {k})", step.name),
                None => step.name.clone(),
            };
            move |e: duckdb::Error| RulesError::Rule {
                file,
                message: e.to_string(),
            }
        };
        for (repeat, sql) in segments(step)? {
            if !repeat {
                conn.execute_batch(&sql).map_err(rule_err(None))?;
                continue;
            }
            let slices: Option<i64> = conn
                .query_row("SELECT getvariable('slices')::BIGINT", [], |r| r.get(0))
                .map_err(rule_err(None))?;
            let slices = slices.ok_or_else(|| RulesError::Rule {
                file: step.name.clone(),
                message: "uses `-- for each slice` but no earlier rule set the variable `slices`"
                    .into(),
            })?;
            // slices 0 .. slices-1 are header ranges, slice `slices` the rows without a header
            for k in 0..=slices {
                conn.execute_batch(&format!("SET VARIABLE slice = {k};\n{sql}"))
                    .map_err(rule_err(Some(k)))?;
            }
        }
        tracing::debug!(rule = %step.name, seconds = started.elapsed().as_secs_f64(), "Ran a rule.");
    }
    Ok(())
}

/// Checks that each data type's table has exactly the schema's fields with the schema's types.
fn validate_outputs(ws: &Workspace, model: &DataModel) -> Result<(), RulesError> {
    let conn = ws.conn();
    for dt in &model.types {
        let err = |message: String| RulesError::Output {
            data_type: dt.name.clone(),
            file: dt.origin.clone(),
            message,
        };
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM duckdb_tables() WHERE database_name = current_database() \
                 AND schema_name = 'main' AND table_name = ?",
                [&dt.name],
                |r| r.get(0),
            )
            .map_err(duck("listing the rules' output tables"))?;
        if !exists {
            return Err(err("no rule creates this table".into()));
        }
        let actual = describe(
            conn,
            &format!("SELECT * FROM main.{} LIMIT 0", ident(&dt.name)),
        )
        .map_err(|e| err(format!("cannot read the table: {e}")))?;
        let expected = model_columns(conn, dt).map_err(|e| {
            err(format!(
                "the schema's types are not valid DuckDB types: {e}"
            ))
        })?;
        if let Some(first) = field_differences(&expected, &actual).into_iter().next() {
            return Err(err(match first {
                FieldDifference::Missing { name, ty } => format!("field {name} ({ty}) is missing"),
                FieldDifference::WrongType {
                    name,
                    found,
                    wanted,
                } => {
                    format!("field {name} has type {found}, the schema says {wanted}")
                }
                FieldDifference::Extra { name } => format!(
                    "column {name} is not a field of the data type (add it to the schema or drop it)"
                ),
            }));
        }
    }
    Ok(())
}

/// How a table's or file's columns differ from a data type's fields.
pub(crate) enum FieldDifference {
    /// A field with no column.
    Missing { name: String, ty: String },
    /// A column of another DuckDB type than the field's.
    WrongType {
        name: String,
        found: String,
        wanted: String,
    },
    /// A column that is no field.
    Extra { name: String },
}

/// A data type's fields as (name, DuckDB type), as DuckDB spells the types.
pub(crate) fn model_columns(
    conn: &duckdb::Connection,
    dt: &crate::model::DataType,
) -> Result<Vec<(String, String)>, duckdb::Error> {
    let wanted: Vec<String> = dt
        .fields
        .iter()
        .map(|f| format!("NULL::{} AS {}", f.duckdb_type(), ident(&f.name)))
        .collect();
    describe(conn, &format!("SELECT {}", wanted.join(", ")))
}

/// The differences between `expected` and `actual` (name, type) columns: missing and wrongly
/// typed fields in the fields' order, then extra columns.
pub(crate) fn field_differences(
    expected: &[(String, String)],
    actual: &[(String, String)],
) -> Vec<FieldDifference> {
    let mut out = Vec::new();
    for (name, ty) in expected {
        match actual.iter().find(|(n, _)| n == name) {
            None => out.push(FieldDifference::Missing {
                name: name.clone(),
                ty: ty.clone(),
            }),
            Some((_, found)) if found != ty => out.push(FieldDifference::WrongType {
                name: name.clone(),
                found: found.clone(),
                wanted: ty.clone(),
            }),
            Some(_) => {}
        }
    }
    for (name, _) in actual {
        if !expected.iter().any(|(e, _)| e == name) {
            out.push(FieldDifference::Extra { name: name.clone() });
        }
    }
    out
}

/// Column names and DuckDB types of a query's result.
pub(crate) fn describe(
    conn: &duckdb::Connection,
    sql: &str,
) -> Result<Vec<(String, String)>, duckdb::Error> {
    let mut stmt = conn.prepare(&format!("DESCRIBE {sql}"))?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
    rows.collect()
}

fn control_totals(ws: &Workspace, model: &DataModel) -> Result<Vec<DataTypeTotals>, RulesError> {
    model
        .types
        .iter()
        .map(|dt| {
            totals_of(ws.conn(), dt, &format!("main.{}", ident(&dt.name)))
                .map_err(duck(format!("computing the control totals of {}", dt.name)))
        })
        .collect()
}

/// The control totals of data type `dt` held in `table` (a quoted table expression): records,
/// deleted records, and the exact sum of each top-level money field over the live records.
/// The server recomputes them the same way from the published Parquet.
pub fn totals_of(
    conn: &duckdb::Connection,
    dt: &crate::model::DataType,
    table: &str,
) -> duckdb::Result<DataTypeTotals> {
    let money: Vec<&str> = dt
        .fields
        .iter()
        .filter(|f| f.ty == FieldType::Money)
        .map(|f| f.name.as_str())
        .collect();
    let deleted = ident(IS_DELETED_FIELD);
    let mut cols = vec![
        "count(*)".to_owned(),
        format!("count(*) FILTER (WHERE {deleted})"),
    ];
    cols.extend(money.iter().map(|m| {
        format!(
            "coalesce(sum({}) FILTER (WHERE NOT {deleted}), 0)::DECIMAL(38, 2)::VARCHAR",
            ident(m)
        )
    }));
    let sql = format!("SELECT {} FROM {table}", cols.join(", "));
    conn.query_row(&sql, [], |r| {
        let sums = (2..cols.len())
            .map(|i| r.get::<_, String>(i))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DataTypeTotals {
            data_type: dt.name.clone(),
            rows: r.get::<_, i64>(0)? as u64,
            deleted: r.get::<_, i64>(1)? as u64,
            sums: money.iter().map(|m| (*m).to_owned()).zip(sums).collect(),
        })
    })
}

impl Report {
    /// A plain-text summary: rows per data type, then each check's result.
    pub fn summary(&self) -> String {
        let mut out = format!("{:<20} {:>10} {:>9}\n", "data type", "records", "deleted");
        for t in &self.data_types {
            out.push_str(&format!(
                "{:<20} {:>10} {:>9}\n",
                t.data_type, t.rows, t.deleted
            ));
        }
        out.push_str(&format!(
            "\n{:<22} {:<6} {:>8} {:>9} {:>8}\n",
            "check", "result", "errors", "warnings", "seconds"
        ));
        for c in &self.checks {
            let result = match c.status {
                CheckStatus::Pass => "pass",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            out.push_str(&format!(
                "{:<22} {:<6} {:>8} {:>9} {:>8.2}\n",
                c.name, result, c.errors, c.warnings, c.seconds
            ));
            if c.status != CheckStatus::Pass {
                for row in &c.sample {
                    out.push_str(&format!("    {row}\n"));
                }
            }
        }
        out.push_str(&format!(
            "\nrules {:.2}s, checks {:.2}s\n",
            self.rules_seconds, self.checks_seconds
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SqlFile {
        SqlFile {
            name: "70_x.sql".into(),
            text: text.into(),
        }
    }

    #[test]
    fn slice_blocks_are_cut_out_of_a_rule() {
        let parts = segments(&file(
            "CREATE TABLE a AS SELECT 1;\n-- for each slice\nINSERT INTO a SELECT 2;\n-- end for each slice\nSELECT 3;\n",
        ))
        .unwrap();
        let repeat: Vec<bool> = parts.iter().map(|(r, _)| *r).collect();
        assert_eq!(repeat, [false, true, false]);
        assert_eq!(parts[1].1.trim(), "INSERT INTO a SELECT 2;");
    }

    #[test]
    fn an_unclosed_or_nested_slice_block_names_the_file() {
        for text in [
            "-- for each slice\nSELECT 1;\n",
            "-- for each slice\n-- for each slice\nSELECT 1;\n-- end for each slice\n",
            "SELECT 1;\n-- end for each slice\n",
        ] {
            let err = segments(&file(text)).unwrap_err().to_string();
            assert!(
                err.contains("70_x.sql") && err.contains("for each slice"),
                "{err}"
            );
        }
    }
}
