//! Running the checks: the hand-written ones in `sql/checks/` and those generated from the
//! data model (`unique_ids`, `references`).

use std::time::Instant;

use super::{Rules, RulesError, SqlFile, Workspace, describe, duck};
use crate::model::{DataModel, DataType, Field, FieldType, ID_FIELD, LINEAGE_FIELD};
use crate::staging::ident;

/// Rows of a failing check shown in messages.
const SAMPLE_ROWS: usize = 5;
/// Temporary table holding a check's rows while they are counted and sampled.
const CHECK_ROWS: &str = "_check_rows";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// No rows.
    Pass,
    /// Only warning rows: the source disagrees with itself; published anyway.
    Warn,
    /// Error rows: nothing may be published.
    Fail,
}

/// The result of one check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    /// Check name (file stem, or the generated check's name).
    pub name: String,
    /// Pass, warn or fail.
    pub status: CheckStatus,
    /// Error rows.
    pub errors: u64,
    /// Warning rows.
    pub warnings: u64,
    /// Up to five rows, errors first, as `column=value` lists.
    pub sample: Vec<String>,
    /// Seconds it took.
    pub seconds: f64,
}

/// Runs the rules' checks, then the generated ones.
pub fn run_all(
    ws: &Workspace,
    rules: &Rules,
    model: &DataModel,
) -> Result<Vec<CheckResult>, RulesError> {
    let mut all: Vec<SqlFile> = rules.checks.clone();
    for check in generated_checks(model) {
        if all.iter().any(|c| c.name == check.name) {
            return Err(RulesError::CheckQuery {
                name: check.stem().to_owned(),
                message: "a check of this name is generated from the data model: rename the file in sql/checks/".into(),
            });
        }
        all.push(check);
    }
    all.iter().map(|c| run_one(ws, c)).collect()
}

fn run_one(ws: &Workspace, check: &SqlFile) -> Result<CheckResult, RulesError> {
    let started = Instant::now();
    let name = check.stem().to_owned();
    let query_err = |e: duckdb::Error| RulesError::CheckQuery {
        name: name.clone(),
        message: e.to_string(),
    };
    let body = check.text.trim().trim_end_matches(';');
    let conn = ws.conn();
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE {CHECK_ROWS} AS\n{body}\n"
    ))
    .map_err(query_err)?;
    let columns =
        column_names(conn, &format!("SELECT * FROM {CHECK_ROWS} LIMIT 0")).map_err(query_err)?;
    let has_severity = columns.iter().any(|c| c == "severity");
    let is_warning = if has_severity {
        "coalesce(severity = 'warning', false)"
    } else {
        "false"
    };
    let (errors, warnings): (u64, u64) = conn
        .query_row(
            &format!(
                "SELECT count(*) FILTER (WHERE NOT {is_warning}), count(*) FILTER (WHERE {is_warning}) FROM {CHECK_ROWS}"
            ),
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .map_err(query_err)?;
    let sample = sample_rows(
        conn,
        // errors first, then a stable order, so the same data gives the same message
        &format!(
            "SELECT * FROM {CHECK_ROWS} ORDER BY {} LIMIT {SAMPLE_ROWS}",
            std::iter::once(is_warning.to_owned())
                .chain((1..=columns.len()).map(|i| i.to_string()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
    .map_err(query_err)?;
    conn.execute_batch(&format!("DROP TABLE {CHECK_ROWS}"))
        .map_err(duck("dropping a check's rows"))?;
    let status = match (errors, warnings) {
        (0, 0) => CheckStatus::Pass,
        (0, _) => CheckStatus::Warn,
        _ => CheckStatus::Fail,
    };
    let seconds = started.elapsed().as_secs_f64();
    match status {
        CheckStatus::Pass => tracing::debug!(check = %name, seconds, "Check passed."),
        CheckStatus::Warn => {
            tracing::warn!(check = %name, warnings, sample = ?sample, "Check found the source inconsistent.")
        }
        CheckStatus::Fail => {
            tracing::error!(check = %name, errors, sample = ?sample, "Check failed.")
        }
    }
    Ok(CheckResult {
        name,
        status,
        errors,
        warnings,
        sample,
        seconds,
    })
}

fn column_names(conn: &duckdb::Connection, sql: &str) -> Result<Vec<String>, duckdb::Error> {
    Ok(describe(conn, sql)?
        .into_iter()
        .map(|(name, _)| name)
        .collect())
}

/// Runs `sql` and renders each row as `column=value, …` (values cast to text by DuckDB).
fn sample_rows(conn: &duckdb::Connection, sql: &str) -> Result<Vec<String>, duckdb::Error> {
    let (columns, rows) = text_rows(conn, sql)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            columns
                .iter()
                .zip(row)
                .map(|(c, v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect())
}

/// A query's result as text: (column names, rows; NULL is None).
pub(crate) type TextRows = (Vec<String>, Vec<Vec<Option<String>>>);

/// Runs `sql` with every column cast to VARCHAR.
pub(crate) fn text_rows(conn: &duckdb::Connection, sql: &str) -> Result<TextRows, duckdb::Error> {
    let columns = column_names(conn, &format!("SELECT * FROM ({sql}) LIMIT 0"))?;
    if columns.is_empty() {
        return Ok((columns, Vec::new()));
    }
    let cast: Vec<String> = columns
        .iter()
        .map(|c| format!("CAST({} AS VARCHAR)", ident(c)))
        .collect();
    let mut stmt = conn.prepare(&format!("SELECT {} FROM ({sql})", cast.join(", ")))?;
    let n = columns.len();
    let rows = stmt.query_map([], |r| {
        (0..n).map(|i| r.get::<_, Option<String>>(i)).collect()
    })?;
    Ok((columns, rows.collect::<Result<_, _>>()?))
}

/// Checks generated from the data model: `required_fields` (no top-level field that is not
/// `nullable` is NULL: the API's contract), `unique_ids` (every record `id`, and every `id`
/// marked `unique` in a list of objects, is unique within its data type) and `references` (every object marked `ref`
/// names an existing record). References to master data come straight from Sage columns, so
/// a dangling one is a source problem: a warning.
pub fn generated_checks(model: &DataModel) -> Vec<SqlFile> {
    let (id, lineage) = (ident(ID_FIELD), ident(LINEAGE_FIELD));
    let mut unique = Vec::new();
    let mut references = Vec::new();
    let mut required = Vec::new();
    for dt in &model.types {
        let fields: Vec<&Field> = dt.fields.iter().filter(|f| !f.nullable).collect();
        if !fields.is_empty() {
            let which: Vec<String> = fields
                .iter()
                .map(|f| format!("WHEN {} IS NULL THEN '{}'", ident(&f.name), f.name))
                .collect();
            let any: Vec<String> = fields
                .iter()
                .map(|f| format!("{} IS NULL", ident(&f.name)))
                .collect();
            required.push(format!(
                "SELECT 'error' AS severity, '{0}' AS data_type, {id}::VARCHAR AS id, CASE {1} END AS field, \
                 {lineage}::VARCHAR AS lineage FROM main.{2} WHERE {3}",
                dt.name,
                which.join(" "),
                ident(&dt.name),
                any.join(" OR ")
            ));
        }
        let from = format!("SELECT {id} AS record, * FROM main.{}", ident(&dt.name));
        unique.push(format!(
            "SELECT 'error' AS severity, '{0}' AS data_type, 'id' AS field, record AS id, count(*) AS copies \
             FROM ({from}) GROUP BY record HAVING count(*) > 1",
            dt.name
        ));
        walk(
            dt,
            &dt.fields,
            &from,
            None,
            "",
            0,
            &mut unique,
            &mut references,
        );
    }
    let union = |queries: Vec<String>| {
        if queries.is_empty() {
            "SELECT 'pass' AS severity WHERE false".to_owned()
        } else {
            queries.join("\nUNION ALL\n")
        }
    };
    vec![
        SqlFile {
            name: "unique_ids.sql".into(),
            text: union(unique),
        },
        SqlFile {
            name: "references.sql".into(),
            text: union(references),
        },
        SqlFile {
            name: "required_fields.sql".into(),
            text: union(required),
        },
    ]
}

/// Walks the fields below `from` (rows with `record` and either the table's columns, when
/// `value` is None, or a struct column named by `value`).
#[allow(clippy::too_many_arguments)]
fn walk(
    dt: &DataType,
    fields: &[Field],
    from: &str,
    value: Option<&str>,
    path: &str,
    depth: usize,
    unique: &mut Vec<String>,
    references: &mut Vec<String>,
) {
    let access = |name: &str| match value {
        None => ident(name),
        Some(v) => format!("struct_extract({v}, '{name}')"),
    };
    for f in fields {
        let expr = access(&f.name);
        let here = format!("{path}{}", f.name);
        match f.ty {
            FieldType::Object => {
                if let Some(target) = &f.reference {
                    references.push(reference_query(
                        dt,
                        from,
                        &format!("struct_extract({expr}, 'id')"),
                        &here,
                        target,
                    ));
                }
                let nested_from = format!("SELECT record, {expr} AS o{depth} FROM ({from})");
                walk(
                    dt,
                    &f.fields,
                    &nested_from,
                    Some(&format!("o{depth}")),
                    &format!("{here}."),
                    depth + 1,
                    unique,
                    references,
                );
            }
            FieldType::Array if !f.fields.is_empty() => {
                let v = format!("v{depth}");
                let nested_from = format!("SELECT record, unnest({expr}) AS {v} FROM ({from})");
                if let Some(target) = &f.reference {
                    references.push(reference_query(
                        dt,
                        &nested_from,
                        &format!("struct_extract({v}, 'id')"),
                        &here,
                        target,
                    ));
                } else if f.fields.iter().any(|x| x.name == ID_FIELD && x.unique) {
                    unique.push(format!(
                        "SELECT 'error' AS severity, '{0}' AS data_type, '{here}.id' AS field, struct_extract({v}, 'id')::VARCHAR AS id, count(*) AS copies \
                         FROM ({nested_from}) GROUP BY ALL HAVING count(*) > 1",
                        dt.name
                    ));
                }
                walk(
                    dt,
                    &f.fields,
                    &nested_from,
                    Some(&v),
                    &format!("{here}."),
                    depth + 1,
                    unique,
                    references,
                );
            }
            _ => {}
        }
    }
}

fn reference_query(dt: &DataType, from: &str, id_expr: &str, field: &str, target: &str) -> String {
    let id = ident(ID_FIELD);
    format!(
        "SELECT 'warning' AS severity, '{0}' AS data_type, r.record::VARCHAR AS record, '{field}' AS field, r.target AS missing \
         FROM (SELECT record, {id_expr} AS target FROM ({from})) r \
         LEFT JOIN main.{1} t ON t.{id} = r.target \
         WHERE r.target IS NOT NULL AND r.target <> '' AND t.{id} IS NULL",
        dt.name,
        ident(target)
    )
}
