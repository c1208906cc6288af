//! The raw ODBC drain: the speed limit of a driver, for the extraction benchmark.
//!
//! Bulk-fetches every row of every table into plain columnar ODBC buffers (no Arrow, no
//! DuckDB) and throws it away. The buffers are the extractor's own ([`Layout`]), so the two
//! differ only by what the extractor does with the rows.

use odbc_api::Cursor;
use odbc_api::buffers::ColumnarDynBuffer;

use super::TextMode;
use super::convert::Layout;
use super::{ExtractError, MAX_BATCH_BYTES, MAX_BATCH_ROWS, environment, plan_table};
use crate::schema::SourceSchema;
use crate::source::SourceConfig;

/// Fetches and discards every table; returns the number of rows.
pub fn drain(source: &SourceConfig, schema: &SourceSchema) -> Result<u64, ExtractError> {
    let conn = source.connect(environment(source)?)?;
    let mut rows = 0u64;
    let encoding = source.text_encoding()?;
    let mut text = encoding.first_mode();
    for table in &schema.tables {
        let Some(plan) = plan_table(&conn, source, table)? else {
            continue;
        };
        let err = |e: odbc_api::Error| ExtractError::Fetch {
            table: table.name.clone(),
            column: None,
            rows_before: 0,
            detail: source.redact(&e.to_string()),
        };
        let attempt = |text: TextMode| -> Result<u64, odbc_api::Error> {
            let mut rows = 0u64;
            let mut cursor = conn
                .execute(&plan.query(), (), None)?
                .expect("a SELECT returns a result set");
            // Exactly the buffers the extractor fetches into.
            let layout = Layout::of(&mut cursor, &plan.present, text, &[])?;
            let capacity = layout.rows_per_batch(MAX_BATCH_BYTES, MAX_BATCH_ROWS);
            let buffer = ColumnarDynBuffer::from_descs(capacity, layout.descs.iter().copied());
            let mut block = cursor.bind_buffer(buffer)?;
            while let Some(batch) = block.fetch()? {
                rows += batch.num_rows() as u64;
            }
            Ok(rows)
        };
        rows += match attempt(text) {
            Ok(n) => n,
            // As the extractor does: a driver refusing wide text is read narrow.
            Err(e) => match (text, encoding.fallback()) {
                (TextMode::Wide, Some(narrow)) => {
                    text = narrow;
                    attempt(text).map_err(err)?
                }
                _ => return Err(err(e)),
            },
        };
    }
    Ok(rows)
}
