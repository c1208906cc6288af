//! One data type table → one Parquet file, byte-for-byte reproducible from its rows.

use std::io::Write;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use duckdb::Connection;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::reader::{FileReader, SerializedFileReader};
use sha2::{Digest, Sha256};

use super::SnapshotError;
use crate::staging::ident;

/// Rows per row group: large enough for fast scans (the server reads whole columns), small
/// enough that the writer's buffered row group stays well inside the memory budget.
pub const ROW_GROUP_ROWS: usize = 262_144;
/// Rows handed to the writer per call. The writer's page boundaries depend on the calls it
/// gets, and DuckDB's batches may vary in size, so input is re-cut to this size (DuckDB's
/// usual chunk size, so that re-cutting is rarely needed).
const WRITE_ROWS: usize = 2_048;
/// zstd level: level 1 compresses these tables within a few percent of level 3, faster.
const ZSTD_LEVEL: i32 = 1;

/// What one export wrote.
pub struct Written {
    /// Rows.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_dictionary_enabled(false)
        .build()
}

/// Exports table `table` (rows ordered by `id`) to `path`. Rows stream from DuckDB to the
/// file: memory holds one row group being encoded, whatever the table's size.
pub fn export(conn: &Connection, table: &str, path: &Path) -> Result<Written, SnapshotError> {
    let started = std::time::Instant::now();
    let query_err = |detail: String| SnapshotError::Query {
        what: format!("data type table {table}"),
        detail,
    };
    let pq_err = |e: parquet::errors::ParquetError| SnapshotError::Parquet {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let io_err = |source| SnapshotError::Io {
        doing: "writing",
        path: path.to_owned(),
        source,
    };
    let mut stmt = conn
        .prepare(&format!(
            "SELECT * FROM main.{} ORDER BY {}",
            ident(table),
            ident(crate::model::ID_FIELD)
        ))
        .map_err(|e| query_err(e.to_string()))?;
    let mut batches = stmt
        .stream_arrow([])
        .map_err(|e| query_err(e.to_string()))?;
    let schema = batches.get_schema();
    let file = std::fs::File::create(path).map_err(io_err)?;
    let sink = Hashing {
        inner: std::io::BufWriter::with_capacity(1 << 20, file),
        hasher: Sha256::new(),
        bytes: 0,
    };
    let mut writer =
        ArrowWriter::try_new(sink, schema.clone(), Some(properties())).map_err(pq_err)?;
    let mut rows = 0u64;
    // Rows received but not yet written: always fewer than WRITE_ROWS between batches.
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0usize;
    loop {
        // DuckDB's stream panics on a failure after execution started: turn that into an error.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batches.next()))
            .map_err(|_| query_err("DuckDB failed while streaming the rows".into()))?;
        let Some(batch) = next else { break };
        rows += batch.num_rows() as u64;
        if pending.is_empty() && batch.num_rows() == WRITE_ROWS {
            // The usual case: DuckDB's chunks are already the size we write.
            writer.write(&batch).map_err(pq_err)?;
            continue;
        }
        pending_rows += batch.num_rows();
        pending.push(batch);
        if pending_rows >= WRITE_ROWS {
            pending_rows = write_whole_chunks(&mut writer, &schema, &mut pending, path)?;
        }
    }
    if pending_rows > 0 {
        let rest = concat_batches(&schema, pending.iter()).map_err(|e| SnapshotError::Parquet {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        writer.write(&rest).map_err(pq_err)?;
    }
    let mut sink = writer.into_inner().map_err(pq_err)?;
    sink.flush().map_err(io_err)?;
    let Hashing {
        inner,
        hasher,
        bytes,
    } = sink;
    let file = inner.into_inner().map_err(|e| io_err(e.into_error()))?;
    file.sync_all().map_err(io_err)?;
    tracing::debug!(
        table,
        rows,
        bytes,
        seconds = started.elapsed().as_secs_f64(),
        "Exported a data type to Parquet."
    );
    Ok(Written {
        rows,
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// Writes the pending rows in chunks of exactly [`WRITE_ROWS`], keeping the remainder
/// pending; returns how many rows remain.
fn write_whole_chunks<W: Write + Send>(
    writer: &mut ArrowWriter<W>,
    schema: &arrow::datatypes::SchemaRef,
    pending: &mut Vec<RecordBatch>,
    path: &Path,
) -> Result<usize, SnapshotError> {
    let err = |detail: String| SnapshotError::Parquet {
        path: path.to_owned(),
        detail,
    };
    let joined = concat_batches(schema, pending.iter()).map_err(|e| err(e.to_string()))?;
    pending.clear();
    let mut offset = 0;
    while joined.num_rows() - offset >= WRITE_ROWS {
        writer
            .write(&joined.slice(offset, WRITE_ROWS))
            .map_err(|e| err(e.to_string()))?;
        offset += WRITE_ROWS;
    }
    let rest = joined.num_rows() - offset;
    if rest > 0 {
        pending.push(joined.slice(offset, rest));
    }
    Ok(rest)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Rows a Parquet file says it holds (from its footer).
pub fn parquet_row_count(bytes: bytes::Bytes) -> Result<u64, parquet::errors::ParquetError> {
    let reader = SerializedFileReader::new(bytes)?;
    Ok(reader.metadata().file_metadata().num_rows() as u64)
}
