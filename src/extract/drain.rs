//! The raw ODBC drain: the speed limit of a driver, for the extraction benchmark.
//!
//! Bulk-fetches every row of every table into plain columnar ODBC buffers (no Arrow, no
//! DuckDB) and throws it away. The buffers are the extractor's own ([`Layout`]), so the two
//! differ only by what the extractor does with the rows.

use odbc_api::Cursor;
use odbc_api::buffers::ColumnarDynBuffer;

use super::convert::Layout;
use super::{ExtractError, MAX_BATCH_BYTES, MAX_BATCH_ROWS, environment, plan_table};
use crate::schema::SourceSchema;
use crate::source::SourceConfig;

/// Fetches and discards every table; returns the number of rows.
pub fn drain(source: &SourceConfig, schema: &SourceSchema) -> Result<u64, ExtractError> {
    let conn = source.connect(environment(source)?)?;
    let mut rows = 0u64;
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
        let mut cursor = conn
            .execute(&plan.query(), (), None)
            .map_err(err)?
            .expect("a SELECT returns a result set");
        // Exactly the buffers the extractor fetches into.
        let layout = Layout::of(&mut cursor, &plan.present).map_err(err)?;
        let capacity = layout.rows_per_batch(MAX_BATCH_BYTES, MAX_BATCH_ROWS);
        let buffer = ColumnarDynBuffer::from_descs(capacity, layout.descs.iter().copied());
        let mut block = cursor.bind_buffer(buffer).map_err(err)?;
        while let Some(batch) = block.fetch().map_err(err)? {
            rows += batch.num_rows() as u64;
        }
    }
    Ok(rows)
}
