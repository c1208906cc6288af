//! The extract stage: Sage tables over ODBC into the DuckDB staging store.
//!
//! Takes a [`SourceConfig`] and the [`SourceSchema`]; produces a new staging generation (see
//! [`crate::staging`]). How, table by table:
//! 1. The driver's catalogue is checked against the schema (missing table, missing column,
//!    wrong type) before any row is read.
//! 2. Rows are bulk-fetched into columnar ODBC buffers of at most [`MAX_BATCH_BYTES`]: a
//!    fetch thread (odbc-api's concurrent block cursor) drives the driver into one buffer
//!    while this thread turns the other into Arrow (`convert.rs`) and appends it to DuckDB. So the
//!    driver never waits on DuckDB, the two cores each have one busy thread, and memory holds
//!    two fetch buffers and one batch, whatever the table size (DuckDB's own share is capped
//!    in [`crate::staging`]).
//! 3. Text is fetched wide (UTF-16) where the driver allows, else narrow and decoded from the
//!    driver's code page (`text.rs`); a value longer than its buffer makes the table be fetched
//!    again with room for it, so nothing is cut short.
//! 4. Only when every table has arrived is the generation swapped in; any error leaves the
//!    previous one in place and names the table (and the column or row when known).

mod convert;
mod drain;
mod error;
mod probe;
pub(crate) mod text;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use odbc_api::buffers::ColumnarDynBuffer;
use odbc_api::{
    ConcurrentBlockCursor, Connection, ConnectionTransitions, Cursor, Environment, SharedConnection,
};
use tracing::{info, warn};

pub use drain::drain;
pub use error::ExtractError;
pub use probe::{Probe, probe};
pub use text::{TextEncoding, TextMode};

use crate::schema::{ColumnType, SourceSchema, Table};
use crate::source::SourceConfig;
use crate::staging::{Builder, StagedTable};

/// Upper bound of one ODBC fetch buffer, in bytes (two are in use at a time).
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Upper bound of rows in one batch.
pub const MAX_BATCH_ROWS: usize = 65_536;

/// Options of one extraction.
pub struct ExtractOptions<'a> {
    /// Where the Sage data is.
    pub source: &'a SourceConfig,
    /// The staging store to replace.
    pub staging: &'a std::path::Path,
    /// Tables and columns to read.
    pub schema: &'a SourceSchema,
    /// After each table, ask the source for COUNT(*) and fail on a mismatch.
    pub verify_counts: bool,
    /// Show a progress bar (only drawn when standard error is a terminal).
    pub progress: bool,
}

/// What an extraction did.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    /// Per table, in schema order.
    pub tables: Vec<StagedTable>,
    /// The new staging generation id.
    pub generation: String,
    /// Wall-clock seconds.
    pub seconds: f64,
}

impl ExtractReport {
    /// Rows over all tables.
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }
}

/// A table as found in the source, ready to query.
struct Plan<'s> {
    table: &'s Table,
    /// Columns present in the source, in schema order.
    present: Vec<String>,
    /// Optional columns absent from the source: (name, DDL type).
    missing: Vec<(String, String)>,
}

/// Extracts every table into a new staging generation.
pub fn extract(options: &ExtractOptions<'_>) -> Result<ExtractReport, ExtractError> {
    let started = Instant::now();
    let source = options.source;
    info!(source = %source.display(), staging = %options.staging.display(), "Starting extraction.");
    let builder = Builder::begin(options.staging)?;
    let tables = match load_all(&builder, options) {
        Ok(tables) => tables,
        Err(e) => {
            builder.abandon();
            return Err(e);
        }
    };
    let generation = builder.commit(&tables, &source.display())?;
    let report = ExtractReport {
        tables,
        generation,
        seconds: started.elapsed().as_secs_f64(),
    };
    info!(
        generation = %report.generation,
        rows = report.total_rows(),
        seconds = report.seconds,
        "Extraction finished and the new staging generation is in place."
    );
    Ok(report)
}

fn load_all(
    builder: &Builder,
    options: &ExtractOptions<'_>,
) -> Result<Vec<StagedTable>, ExtractError> {
    let source = options.source;
    // Shared, so a cursor can own its connection and be fetched from another thread.
    let conn: SharedConnection<'static> =
        Arc::new(Mutex::new(source.connect(environment(source)?)?));
    let mut staged = Vec::with_capacity(options.schema.tables.len());
    let mut text = source.text_encoding()?.first_mode();
    for table in &options.schema.tables {
        let plan = plan_table(&conn.lock().expect("connection lock"), source, table)?;
        let Some(plan) = plan else {
            warn!(table = %table.name, "Optional table is missing from this Sage version and was skipped.");
            staged.push(StagedTable {
                name: table.name.clone(),
                rows: 0,
                seconds: 0.0,
                skipped: true,
                missing_columns: vec![],
            });
            continue;
        };
        staged.push(load_table(builder, options, &conn, &plan, &mut text)?);
        crate::failpoint::hit("extract-table");
    }
    Ok(staged)
}

/// Longest text value the connector fetches, in bytes; a longer one fails its table.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;

/// Why one attempt at a table stopped.
enum Attempt {
    /// A text value did not fit its buffer: fetch again with `bytes` for that column.
    Truncated { column: usize, bytes: Option<usize> },
    /// The driver refused wide text buffers.
    WideRefused(ExtractError),
    /// Anything else: the table fails.
    Failed(ExtractError),
}

impl From<ExtractError> for Attempt {
    fn from(e: ExtractError) -> Self {
        Attempt::Failed(e)
    }
}

/// Streams one table into staging and checks that every row arrived. Fetches it again when a
/// text value was longer than its buffer (never cutting it short) or when the driver refuses
/// wide text and the setting allows narrow (`text` then stays narrow for later tables).
fn load_table(
    builder: &Builder,
    options: &ExtractOptions<'_>,
    conn: &SharedConnection<'static>,
    plan: &Plan<'_>,
    text: &mut TextMode,
) -> Result<StagedTable, ExtractError> {
    let name = plan.table.name.as_str();
    let mut lengths: Vec<Option<usize>> = vec![None; plan.present.len()];
    loop {
        let err = match attempt_table(builder, options, conn, plan, *text, &lengths) {
            Ok(staged) => return Ok(staged),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(e) => e,
        };
        builder.drop_table(name)?;
        match err {
            Attempt::Truncated { column, bytes } => {
                let before = lengths[column].unwrap_or(0);
                let needed = bytes
                    .map(|b| b + 16)
                    .unwrap_or(before.max(convert::MAX_TEXT_BYTES) * 4)
                    .max(before * 2);
                let column_name = plan.present[column].clone();
                if needed > MAX_VALUE_BYTES {
                    return Err(ExtractError::Fetch {
                        table: name.to_owned(),
                        column: Some(column_name),
                        rows_before: 0,
                        detail: format!(
                            "a text value is longer than {MAX_VALUE_BYTES} bytes, the most the \
                             connector reads; shorten it in Sage"
                        ),
                    });
                }
                warn!(table = %name, column = %column_name, bytes = needed, "A text value is longer than the column's declared length; the table is fetched again with room for it.");
                lengths[column] = Some(needed);
            }
            Attempt::WideRefused(e) => match options.source.text_encoding()?.fallback() {
                Some(narrow) => {
                    warn!(table = %name, driver_said = %e, text = %narrow.describe(), "The driver refuses wide (UTF-16) text; reading text narrow instead.");
                    *text = narrow;
                }
                None => return Err(e),
            },
            Attempt::Failed(e) => return Err(e),
        }
    }
}

/// One pass over a table, fetching text as `text` says.
fn attempt_table(
    builder: &Builder,
    options: &ExtractOptions<'_>,
    conn: &SharedConnection<'static>,
    plan: &Plan<'_>,
    text: TextMode,
    lengths: &[Option<usize>],
) -> Result<StagedTable, Attempt> {
    let started = Instant::now();
    let source = options.source;
    let name = plan.table.name.as_str();
    let fetch_err = |rows_before: u64, detail: String| {
        let column = plan
            .present
            .iter()
            .find(|c| mentions_word(&detail, c))
            .cloned();
        ExtractError::Fetch {
            table: name.to_owned(),
            column,
            rows_before,
            detail: source.redact(&detail),
        }
    };
    let staging_err = |detail: String| ExtractError::Staging {
        path: builder.target().to_owned(),
        detail: format!("table {name}: {detail}"),
    };
    // A failure before the first row while fetching wide is the driver refusing wide text.
    let refused = |rows: u64, e: ExtractError| {
        if rows == 0 && text == TextMode::Wide {
            Attempt::WideRefused(e)
        } else {
            Attempt::Failed(e)
        }
    };
    let mut cursor = conn
        .clone()
        .into_cursor(&plan.query(), (), None)
        .map_err(|e| match source.classify_query(&e.error) {
            ExtractError::Connect { detail } => fetch_err(0, detail),
            other => other,
        })?
        .ok_or_else(|| fetch_err(0, "the query returned no result set".to_owned()))?;
    let layout = convert::Layout::of(&mut cursor, &plan.present, text, lengths)
        .map_err(|e| fetch_err(0, e.to_string()))?;
    let capacity = layout.rows_per_batch(MAX_BATCH_BYTES, MAX_BATCH_ROWS);
    let buffer = || ColumnarDynBuffer::from_descs(capacity, layout.descs.iter().copied());
    let block = cursor
        .bind_buffer(buffer())
        .map_err(|e| refused(0, fetch_err(0, e.to_string())))?;
    // The driver fills one buffer on its own thread while this one converts and loads the
    // other.
    let mut fetcher = ConcurrentBlockCursor::from_block_cursor(block);
    let mut filled = buffer();
    builder.create_table(name, &layout.schema)?;
    for (column, _) in &plan.missing {
        warn!(table = %name, column = %column, "Optional column is missing from this Sage version; it is staged as NULL.");
    }
    let mut appender = builder.appender(name)?;
    let bar = crate::telemetry::table_progress(name, options.progress);
    let (mut rows, mut loading) = (0u64, 0f64);
    loop {
        let more = match fetcher.fetch_into(&mut filled) {
            Ok(more) => more,
            Err(odbc_api::Error::TooLargeValueForBuffer {
                buffer_index,
                indicator,
            }) => {
                return Err(Attempt::Truncated {
                    column: buffer_index,
                    bytes: indicator,
                });
            }
            Err(e) => return Err(refused(rows, fetch_err(rows, e.to_string()))),
        };
        if !more {
            break;
        }
        let batch = layout
            .convert(&filled)
            .map_err(|e| refused(rows, fetch_err(rows, e)))?;
        let n = batch.num_rows() as u64;
        let appending = Instant::now();
        appender
            .append_record_batch(batch)
            .map_err(|e| staging_err(format!("appending rows after row {rows}: {e}")))?;
        loading += appending.elapsed().as_secs_f64();
        rows += n;
        bar.set_position(rows);
    }
    appender.flush().map_err(|e| staging_err(e.to_string()))?;
    drop(appender);
    // Columns this Sage version lacks read as NULL, so later SQL sees one shape.
    builder.add_missing_columns(name, &plan.missing)?;
    bar.finish_and_clear();

    let counted = builder.count(name)?;
    if counted != rows {
        return Err(staging_err(format!("fetched {rows} rows but staged {counted}")).into());
    }
    if options.verify_counts {
        crate::failpoint::hit(&format!("verify-count/{name}"));
        let source_rows = count_rows(&conn.lock().expect("connection lock"), source, plan.table)?;
        if source_rows != rows {
            return Err(fetch_err(
                rows,
                format!(
                    "the source now counts {source_rows} rows: Sage data changed during the sync; run it again"
                ),
            )
            .into());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    info!(
        table = %name,
        rows,
        seconds = format!("{seconds:.3}"),
        load_seconds = format!("{loading:.3}"),
        rows_per_sec = (rows as f64 / seconds.max(1e-9)) as u64,
        text = %text.describe(),
        "Extracted table."
    );
    Ok(StagedTable {
        name: name.to_owned(),
        rows,
        seconds,
        skipped: false,
        missing_columns: plan.missing.iter().map(|(c, _)| c.clone()).collect(),
    })
}

/// Whether `text` names `word` as a whole identifier (so `DATE` is not found in `DUE_DATE`).
fn mentions_word(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        let after = text[i + word.len()..]
            .chars()
            .next()
            .is_none_or(|c| !is_ident(c));
        before && after
    })
}

/// The ODBC drivers installed for this process (its bitness): each name with its library,
/// where the driver manager says (`connector doctor`).
pub fn installed_drivers() -> Result<Vec<(String, Option<std::path::PathBuf>)>, String> {
    let env = environment(&SourceConfig::new("", None, None)).map_err(|e| e.to_string())?;
    let drivers = env.drivers().map_err(|e| e.to_string())?;
    Ok(drivers
        .into_iter()
        .map(|d| {
            let library = d
                .attributes
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("Driver"))
                .map(|(_, v)| std::path::PathBuf::from(v));
            (d.description, library)
        })
        .collect())
}

/// The ODBC environment: one per process, created on first use.
fn environment(source: &SourceConfig) -> Result<&'static Environment, ExtractError> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let env = Environment::new().map_err(|e| source.classify(&e))?;
    Ok(ENVIRONMENT.get_or_init(|| env))
}

impl Plan<'_> {
    /// Plain `SELECT cols FROM TABLE`: the one form every Sage driver version accepts.
    fn query(&self) -> String {
        format!(
            "SELECT {} FROM {}",
            self.present.join(", "),
            self.table.name
        )
    }
}

/// Checks a table against the driver's catalogue. `None`: an optional table that is absent.
fn plan_table<'s>(
    conn: &Connection<'_>,
    source: &SourceConfig,
    table: &'s Table,
) -> Result<Option<Plan<'s>>, ExtractError> {
    let mut found: Vec<(String, i16, String)> = Vec::new();
    let rows = conn
        .columns("", "", &table.name, "")
        .map_err(|e| source.classify_query(&e))?;
    for row in rows {
        let row = row.map_err(|e| source.classify_query(&e))?;
        let name = row
            .column_name
            .as_str()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned();
        let type_name = row
            .type_name
            .as_str()
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_owned();
        found.push((name, row.data_type, type_name));
    }
    if found.is_empty() {
        if table.required {
            return Err(ExtractError::TableMissing {
                table: table.name.clone(),
            });
        }
        return Ok(None);
    }
    let mut present = Vec::new();
    let mut missing = Vec::new();
    for column in &table.columns {
        match found
            .iter()
            .find(|(n, _, _)| n.eq_ignore_ascii_case(&column.name))
        {
            Some((_, data_type, type_name)) => {
                if !type_fits(column.ty, *data_type) {
                    return Err(ExtractError::ColumnType {
                        table: table.name.clone(),
                        column: column.name.clone(),
                        expected: column.ty.sql_name().to_owned(),
                        found: format!("{type_name} (ODBC type {data_type})"),
                    });
                }
                present.push(column.name.clone());
            }
            None if column.required => {
                return Err(ExtractError::ColumnMissing {
                    table: table.name.clone(),
                    column: column.name.clone(),
                });
            }
            None => missing.push((column.name.clone(), column.ddl_type())),
        }
    }
    Ok(Some(Plan {
        table,
        present,
        missing,
    }))
}

/// Whether an ODBC SQL data type can be read as the expected column type.
fn type_fits(expected: ColumnType, odbc: i16) -> bool {
    const INTEGERS: &[i16] = &[4, 5, -5, -6, -7, 2, 3];
    const FLOATS: &[i16] = &[8, 6, 7, 2, 3];
    const DATES: &[i16] = &[91, 9, 93, 11];
    const TEXT: &[i16] = &[12, 1, -9, -8, -1, -10];
    match expected {
        ColumnType::Integer | ColumnType::Smallint => INTEGERS.contains(&odbc),
        ColumnType::Double => FLOATS.contains(&odbc) || INTEGERS.contains(&odbc),
        ColumnType::Date | ColumnType::Timestamp => DATES.contains(&odbc),
        ColumnType::Varchar => TEXT.contains(&odbc),
    }
}

fn count_rows(
    conn: &Connection<'_>,
    source: &SourceConfig,
    table: &Table,
) -> Result<u64, ExtractError> {
    let err = |detail: String| ExtractError::Fetch {
        table: table.name.clone(),
        column: None,
        rows_before: 0,
        detail: source.redact(&detail),
    };
    let mut cursor = conn
        .execute(&format!("SELECT COUNT(*) FROM {}", table.name), (), None)
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("COUNT(*) returned no result".to_owned()))?;
    let mut n: i64 = 0;
    if let Some(mut row) =
        odbc_api::Cursor::next_row(&mut cursor).map_err(|e| err(e.to_string()))?
    {
        row.get_data(1, &mut n).map_err(|e| err(e.to_string()))?;
    }
    Ok(n as u64)
}
