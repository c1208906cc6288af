//! The raw ODBC drain: the speed limit of a driver, for the extraction benchmark.
//!
//! Bulk-fetches every row of every table into plain columnar ODBC buffers (no Arrow, no
//! DuckDB) and throws it away. Buffers are sized as the extractor sizes them (text columns
//! hold four bytes per declared character), so the two differ only by what the extractor does
//! with the rows.

use odbc_api::buffers::{BufferDesc, ColumnarDynBuffer};
use odbc_api::{Cursor, ResultSetMetadata};

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
        let columns = cursor.num_result_cols().map_err(err)? as u16;
        let mut descs = Vec::with_capacity(columns as usize);
        for i in 1..=columns {
            let data_type = cursor.col_data_type(i).map_err(err)?;
            let desc = match BufferDesc::from_data_type(data_type, true) {
                Some(BufferDesc::Text { max_str_len }) => BufferDesc::Text {
                    max_str_len: max_str_len * 4,
                },
                Some(desc) => desc,
                None => BufferDesc::Text { max_str_len: 255 },
            };
            descs.push(desc);
        }
        let row_bytes: usize = descs
            .iter()
            .map(|d| d.bytes_per_row())
            .sum::<usize>()
            .max(1);
        let capacity = (MAX_BATCH_BYTES / row_bytes).clamp(1, MAX_BATCH_ROWS);
        let buffer = ColumnarDynBuffer::from_descs(capacity, descs);
        let mut block = cursor.bind_buffer(buffer).map_err(err)?;
        while let Some(batch) = block.fetch().map_err(err)? {
            rows += batch.num_rows() as u64;
        }
    }
    Ok(rows)
}
