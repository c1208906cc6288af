//! One data type table → one Parquet file per part, each byte-for-byte reproducible from
//! its rows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use arrow::datatypes::SchemaRef;
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
/// The column the export query adds with each row's part (not written).
const PART_COLUMN: &str = "_connector_part";

/// One Parquet file an export wrote: a part of a data type.
pub struct Written {
    /// The part's label (see [`super::part_sql`]).
    pub part: String,
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

type Sink = Hashing<std::io::BufWriter<std::fs::File>>;

/// One part's file being written: rows arrive in any batch sizes and are handed to the
/// Parquet writer in chunks of exactly [`WRITE_ROWS`], so its bytes depend on its rows only.
struct PartFile {
    part: String,
    path: PathBuf,
    writer: ArrowWriter<Sink>,
    /// Rows received but not yet written: always fewer than WRITE_ROWS between batches.
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    rows: u64,
}

impl PartFile {
    fn create(dir: &Path, part: &str, schema: &SchemaRef) -> Result<Self, SnapshotError> {
        let path = dir.join(format!("{part}.parquet"));
        let file = std::fs::File::create(&path).map_err(|source| SnapshotError::Io {
            doing: "writing",
            path: path.clone(),
            source,
        })?;
        let sink = Hashing {
            inner: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = ArrowWriter::try_new(sink, schema.clone(), Some(properties()))
            .map_err(|e| pq_err(&path, e))?;
        Ok(PartFile {
            part: part.to_owned(),
            path,
            writer,
            pending: Vec::new(),
            pending_rows: 0,
            rows: 0,
        })
    }

    fn push(&mut self, batch: RecordBatch, schema: &SchemaRef) -> Result<(), SnapshotError> {
        self.rows += batch.num_rows() as u64;
        if self.pending.is_empty() && batch.num_rows() == WRITE_ROWS {
            // The usual case: DuckDB's chunks are already the size we write.
            return self.writer.write(&batch).map_err(|e| pq_err(&self.path, e));
        }
        self.pending_rows += batch.num_rows();
        self.pending.push(batch);
        if self.pending_rows >= WRITE_ROWS {
            self.pending_rows =
                write_whole_chunks(&mut self.writer, schema, &mut self.pending, &self.path)?;
        }
        Ok(())
    }

    fn finish(mut self, schema: &SchemaRef) -> Result<Written, SnapshotError> {
        if self.pending_rows > 0 {
            let rest = concat_batches(schema, self.pending.iter())
                .map_err(|e| pq_err(&self.path, e.into()))?;
            self.writer
                .write(&rest)
                .map_err(|e| pq_err(&self.path, e))?;
        }
        let io_err = |source| SnapshotError::Io {
            doing: "writing",
            path: self.path.clone(),
            source,
        };
        let mut sink = self
            .writer
            .into_inner()
            .map_err(|e| pq_err(&self.path, e))?;
        sink.flush().map_err(io_err)?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = sink;
        let file = inner.into_inner().map_err(|e| io_err(e.into_error()))?;
        file.sync_all().map_err(io_err)?;
        Ok(Written {
            part: self.part,
            rows: self.rows,
            bytes,
            sha256: hex(&hasher.finalize()),
        })
    }
}

fn pq_err(path: &Path, e: parquet::errors::ParquetError) -> SnapshotError {
    SnapshotError::Parquet {
        path: path.to_owned(),
        detail: e.to_string(),
    }
}

/// Exports table `table` into `dir`, one file `PART.parquet` per part of its records (see
/// [`super::part_sql`]), rows ordered by `id` within each. Rows stream from DuckDB to the
/// files: memory holds one row group being encoded, whatever the table's size. A table
/// without rows gives one empty file of part [`super::FIRST_PART`], so that every data type
/// has at least one file and its schema.
pub fn export(conn: &Connection, table: &str, dir: &Path) -> Result<Vec<Written>, SnapshotError> {
    let started = std::time::Instant::now();
    let query_err = |detail: String| SnapshotError::Query {
        what: format!("data type table {table}"),
        detail,
    };
    std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
        doing: "creating",
        path: dir.to_owned(),
        source,
    })?;
    let id = ident(crate::model::ID_FIELD);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT *, {part} AS {PART_COLUMN} FROM main.{t} ORDER BY {PART_COLUMN}, {id}",
            part = super::part_sql(&id),
            t = ident(table),
        ))
        .map_err(|e| query_err(e.to_string()))?;
    let mut batches = stmt
        .stream_arrow([])
        .map_err(|e| query_err(e.to_string()))?;
    let with_part = batches.get_schema();
    let last = with_part.fields().len() - 1;
    let columns: Vec<usize> = (0..last).collect();
    let schema: SchemaRef = Arc::new(
        with_part
            .project(&columns)
            .map_err(|e| query_err(e.to_string()))?,
    );
    let mut written = Vec::new();
    let mut current: Option<PartFile> = None;
    loop {
        // DuckDB's stream panics on a failure after execution started: turn that into an error.
        let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batches.next()))
            .map_err(|_| query_err("DuckDB failed while streaming the rows".into()))?;
        let Some(batch) = next else { break };
        let parts = arrow::compute::cast(batch.column(last), &arrow::datatypes::DataType::Utf8)
            .map_err(|e| query_err(e.to_string()))?;
        let parts = parts
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .ok_or_else(|| query_err("the part column is not text".into()))?;
        let rows = batch
            .project(&columns)
            .map_err(|e| query_err(e.to_string()))?;
        // runs of one part (rows come sorted by part)
        let mut from = 0;
        while from < rows.num_rows() {
            let part = parts.value(from);
            let mut to = from + 1;
            while to < rows.num_rows() && parts.value(to) == part {
                to += 1;
            }
            if current.as_ref().is_none_or(|f| f.part != part) {
                if let Some(done) = current.take() {
                    written.push(done.finish(&schema)?);
                }
                current = Some(PartFile::create(dir, part, &schema)?);
            }
            let file = current.as_mut().expect("a part file is open");
            file.push(rows.slice(from, to - from), &schema)?;
            from = to;
        }
    }
    match current {
        Some(file) => written.push(file.finish(&schema)?),
        None => written.push(PartFile::create(dir, super::FIRST_PART, &schema)?.finish(&schema)?),
    }
    tracing::debug!(
        table,
        parts = written.len(),
        rows = written.iter().map(|w| w.rows).sum::<u64>(),
        bytes = written.iter().map(|w| w.bytes).sum::<u64>(),
        seconds = started.elapsed().as_secs_f64(),
        "Exported a data type to Parquet."
    );
    Ok(written)
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
