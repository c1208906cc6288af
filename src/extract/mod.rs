//! The extract stage: Sage tables over ODBC into the DuckDB staging store.
//!
//! Takes a [`SourceConfig`] and the [`SourceSchema`]; produces a new staging generation (see
//! [`crate::staging`]). How:
//! 1. A fetch thread owns the ODBC connection. For each table it checks the driver's
//!    catalogue against the schema (missing table, missing column, wrong type), then reads the
//!    rows in columnar batches of at most [`MAX_BATCH_BYTES`]: arrow-odbc's concurrent reader
//!    lets the driver fill one buffer while the previous one becomes an Arrow batch, which
//!    goes down a channel holding at most [`CHANNEL_BATCHES`].
//! 2. The calling thread appends every batch to DuckDB (one transaction for the whole
//!    generation, buffer pool capped, see [`crate::staging`]) while the next one is fetched,
//!    so the driver never waits on DuckDB and memory does not grow with the size of a table.
//! 3. Only when every table has arrived is the generation swapped in; any error leaves the
//!    previous one in place and names the table (and the column or row when known).

mod drain;
mod error;

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::{RecordBatch, RecordBatchReader};
use arrow_odbc::OdbcReaderBuilder;
use crossbeam_channel::{Receiver, Sender, bounded};
use odbc_api::{Connection, ConnectionTransitions, Environment, SharedConnection};
use tracing::{info, warn};

pub use drain::drain;
pub use error::ExtractError;

use crate::schema::{ColumnType, SourceSchema, Table};
use crate::source::SourceConfig;
use crate::staging::{self, Builder, StagedTable};

/// Batches that may wait between the fetching and the loading thread.
pub const CHANNEL_BATCHES: usize = 2;
/// Upper bound of one ODBC fetch buffer, in bytes.
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

enum Message {
    Begin {
        index: usize,
        schema: SchemaRef,
        missing: Vec<(String, String)>,
    },
    Skip {
        index: usize,
    },
    Batch(RecordBatch),
    End {
        rows: u64,
        source_rows: Option<u64>,
    },
}

/// Extracts every table into a new staging generation.
pub fn extract(options: &ExtractOptions<'_>) -> Result<ExtractReport, ExtractError> {
    let started = Instant::now();
    let source = options.source;
    info!(source = %source.display(), staging = %options.staging.display(), "Starting extraction.");
    let builder = Builder::begin(options.staging)?;
    let (tx, rx) = bounded::<Message>(CHANNEL_BATCHES);
    let tables = match std::thread::scope(|scope| {
        let fetcher = scope.spawn(|| fetch_all(source, options.schema, options.verify_counts, tx));
        let loaded = load_all(&builder, options, rx);
        let fetched = fetcher.join().unwrap_or_else(|_| {
            Err(ExtractError::Connect {
                detail: "the ODBC fetch thread panicked".to_owned(),
            })
        });
        // A loader failure makes the fetcher stop with a mere "loading stopped": report the
        // loader's own error first. A fetch failure ends the loader's input cleanly.
        let tables = loaded?;
        fetched?;
        Ok(tables)
    }) {
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

fn fetch_all(
    source: &SourceConfig,
    schema: &SourceSchema,
    verify_counts: bool,
    tx: Sender<Message>,
) -> Result<(), ExtractError> {
    let conn: SharedConnection<'static> =
        Arc::new(Mutex::new(source.connect(environment(source)?)?));
    // Sending fails only when the loader gave up; its own error is then reported.
    let closed = || ExtractError::Connect {
        detail: "loading into staging stopped".to_owned(),
    };
    for (index, table) in schema.tables.iter().enumerate() {
        let plan = plan_table(&conn.lock().expect("connection lock"), source, table)?;
        let Some(plan) = plan else {
            tx.send(Message::Skip { index }).map_err(|_| closed())?;
            continue;
        };
        let missing = plan.missing.clone();
        let rows = fetch_table(
            conn.clone(),
            source,
            &plan,
            &mut |schema| {
                tx.send(Message::Begin {
                    index,
                    schema,
                    missing: missing.clone(),
                })
                .map_err(|_| closed())
            },
            &mut |batch| tx.send(Message::Batch(batch)).map_err(|_| closed()),
        )?;
        let source_rows = if verify_counts {
            Some(count_rows(
                &conn.lock().expect("connection lock"),
                source,
                table,
            )?)
        } else {
            None
        };
        tx.send(Message::End { rows, source_rows })
            .map_err(|_| closed())?;
    }
    Ok(())
}

/// One table being appended to staging.
struct TableLoad<'b> {
    name: &'b str,
    appender: duckdb::Appender<'b>,
    schema: SchemaRef,
    started: Instant,
    bar: indicatif::ProgressBar,
    rows: u64,
    /// Seconds spent appending, to tell a slow driver from a slow load.
    busy: f64,
    missing: Vec<(String, String)>,
}

fn load_all(
    builder: &Builder,
    options: &ExtractOptions<'_>,
    rx: Receiver<Message>,
) -> Result<Vec<StagedTable>, ExtractError> {
    let mut staged: Vec<StagedTable> = Vec::new();
    let mut current: Option<TableLoad<'_>> = None;
    let staging_err = |table: &str, detail: String| ExtractError::Staging {
        path: builder.target().to_owned(),
        detail: format!("table {table}: {detail}"),
    };
    for message in rx {
        match message {
            Message::Skip { index } => {
                let name = &options.schema.tables[index].name;
                warn!(table = %name, "Optional table is missing from this Sage version and was skipped.");
                staged.push(StagedTable {
                    name: name.clone(),
                    rows: 0,
                    seconds: 0.0,
                    skipped: true,
                    missing_columns: vec![],
                });
            }
            Message::Begin {
                index,
                schema,
                missing,
            } => {
                let name = options.schema.tables[index].name.as_str();
                let schema = staging::staged_schema(&schema);
                builder.create_table(name, &schema)?;
                for (column, _) in &missing {
                    warn!(table = %name, column = %column, "Optional column is missing from this Sage version; it is staged as NULL.");
                }
                current = Some(TableLoad {
                    name,
                    appender: builder.appender(name)?,
                    schema,
                    started: Instant::now(),
                    bar: crate::telemetry::table_progress(name, options.progress),
                    rows: 0,
                    busy: 0.0,
                    missing,
                });
            }
            Message::Batch(batch) => {
                let Some(load) = current.as_mut() else {
                    continue;
                };
                let n = batch.num_rows() as u64;
                let batch = staging::to_staged(batch, &load.schema)
                    .map_err(|e| staging_err(load.name, format!("converting a batch: {e}")))?;
                let appending = Instant::now();
                load.appender.append_record_batch(batch).map_err(|e| {
                    staging_err(
                        load.name,
                        format!("appending rows after row {}: {e}", load.rows),
                    )
                })?;
                load.rows += n;
                load.busy += appending.elapsed().as_secs_f64();
                load.bar.set_position(load.rows);
            }
            Message::End { rows, source_rows } => {
                let Some(mut load) = current.take() else {
                    continue;
                };
                let name = load.name;
                load.appender
                    .flush()
                    .map_err(|e| staging_err(name, e.to_string()))?;
                drop(load.appender);
                // Columns this Sage version lacks read as NULL, so later SQL sees one shape.
                builder.add_missing_columns(name, &load.missing)?;
                load.bar.finish_and_clear();
                let counted = builder.count(name)?;
                if counted != rows || load.rows != rows {
                    return Err(staging_err(
                        name,
                        format!("fetched {rows} rows but staged {counted}"),
                    ));
                }
                if let Some(source_rows) = source_rows
                    && source_rows != rows
                {
                    return Err(ExtractError::Fetch {
                        table: name.to_owned(),
                        column: None,
                        rows_before: rows,
                        detail: format!(
                            "the source now counts {source_rows} rows: Sage data changed during the sync; run it again"
                        ),
                    });
                }
                let seconds = load.started.elapsed().as_secs_f64();
                info!(
                    table = %name,
                    rows,
                    seconds = format!("{seconds:.3}"),
                    load_seconds = format!("{:.3}", load.busy),
                    rows_per_sec = (rows as f64 / seconds.max(1e-9)) as u64,
                    "Extracted table."
                );
                staged.push(StagedTable {
                    name: name.to_owned(),
                    rows,
                    seconds,
                    skipped: false,
                    missing_columns: load.missing.into_iter().map(|(c, _)| c).collect(),
                });
            }
        }
    }
    Ok(staged)
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

/// The ODBC environment: one per process, alive as long as the process, so cursors that own
/// their connection can be handed to other threads.
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

/// Streams one table; calls `begin` with its Arrow schema, then `on_batch` per batch.
fn fetch_table(
    conn: SharedConnection<'static>,
    source: &SourceConfig,
    plan: &Plan<'_>,
    begin: &mut dyn FnMut(SchemaRef) -> Result<(), ExtractError>,
    on_batch: &mut dyn FnMut(RecordBatch) -> Result<(), ExtractError>,
) -> Result<u64, ExtractError> {
    let name = &plan.table.name;
    let query = plan.query();
    let fetch_err = |rows_before: u64, detail: String| {
        let column = plan
            .present
            .iter()
            .find(|c| mentions_word(&detail, c))
            .cloned();
        ExtractError::Fetch {
            table: name.clone(),
            column,
            rows_before,
            detail: source.redact(&detail),
        }
    };
    // The cursor owns a handle on the shared connection, so fetching can move to its own
    // thread: the driver fills one buffer while the previous one is converted to Arrow.
    let cursor = conn
        .into_cursor(&query, (), None)
        .map_err(|e| match source.classify_query(&e.error) {
            ExtractError::Connect { detail } => fetch_err(0, detail),
            other => other,
        })?
        .ok_or_else(|| fetch_err(0, "the query returned no result set".to_owned()))?;
    let reader = OdbcReaderBuilder::new()
        .with_max_bytes_per_batch(MAX_BATCH_BYTES)
        .with_max_num_rows_per_batch(MAX_BATCH_ROWS)
        .build(cursor)
        .map_err(|e| fetch_err(0, e.to_string()))?;
    begin(reader.schema())?;
    let reader = reader
        .into_concurrent()
        .map_err(|e| fetch_err(0, e.to_string()))?;
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| {
            let mut detail = e.to_string();
            if detail.contains("truncation") {
                detail.push_str(
                    " (a text value is longer than the column length the driver declares)",
                );
            }
            fetch_err(rows, detail)
        })?;
        rows += batch.num_rows() as u64;
        on_batch(batch)?;
    }
    Ok(rows)
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
