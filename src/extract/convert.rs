//! ODBC column buffers to Arrow record batches.
//!
//! Takes a result set's column types and produces (1) the ODBC buffer description to bulk-fetch
//! into and (2) the Arrow schema, then converts each fetched buffer into a batch. Every column
//! is bound nullable: Sage leaves values out more often than its catalogue admits. Text is
//! fetched wide or narrow as [`TextMode`] says and decoded to UTF-8 (`text.rs`), dates are
//! checked, and a bad value is reported with its column and row.

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, PrimitiveArray, StringArray, StringBuilder};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Date32Type, Field, Float32Type, Float64Type, Int8Type, Int16Type,
    Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;
use odbc_api::buffers::{AnyColumnBufferSlice, BufferDesc, ColumnarDynBuffer, NullableSlice};
use odbc_api::{Bit, ResultSetMetadata};

use super::text::{SETTING, TextMode, push_utf16};

/// First buffer for a text value, in bytes, for columns whose declared size is unknown or
/// huge; a longer value makes the table be fetched again with a buffer that fits it.
pub const MAX_TEXT_BYTES: usize = 8_192;

/// How to fetch and convert one result set.
pub struct Layout {
    /// Buffer description per column, in column order.
    pub descs: Vec<BufferDesc>,
    /// The Arrow schema of the converted batches.
    pub schema: SchemaRef,
    /// How text columns are fetched and decoded.
    pub text: TextMode,
}

impl Layout {
    /// Describes the columns of a result set; `names` are their names in order. `lengths`
    /// holds, per column, a text length in bytes known to be needed (after a value did not
    /// fit), overriding the declared one.
    pub fn of(
        cursor: &mut impl ResultSetMetadata,
        names: &[String],
        text: TextMode,
        lengths: &[Option<usize>],
    ) -> Result<Self, odbc_api::Error> {
        let text_desc = |declared: Option<usize>, column: usize| {
            let needed = lengths.get(column).copied().flatten();
            match text {
                // Declared lengths count characters: at most two UTF-16 units each.
                TextMode::Wide => BufferDesc::WText {
                    max_str_len: needed.map(|b| b.div_ceil(2)).unwrap_or_else(|| {
                        declared.map_or(MAX_TEXT_BYTES / 2, |d| (d * 2).min(MAX_TEXT_BYTES / 2))
                    }),
                },
                // And at most four bytes each in a narrow encoding (UTF-8's worst case).
                TextMode::Narrow(_) => BufferDesc::Text {
                    max_str_len: needed.unwrap_or_else(|| {
                        declared.map_or(MAX_TEXT_BYTES, |d| (d * 4).min(MAX_TEXT_BYTES))
                    }),
                },
            }
        };
        let mut descs = Vec::with_capacity(names.len());
        let mut fields = Vec::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            let data_type = cursor.col_data_type(i as u16 + 1)?;
            let (desc, arrow) = match BufferDesc::from_data_type(data_type, true) {
                Some(d @ BufferDesc::I8 { .. }) => (d, DataType::Int8),
                Some(d @ BufferDesc::I16 { .. }) => (d, DataType::Int16),
                Some(d @ BufferDesc::I32 { .. }) => (d, DataType::Int32),
                Some(d @ BufferDesc::I64 { .. }) => (d, DataType::Int64),
                Some(d @ BufferDesc::F32 { .. }) => (d, DataType::Float32),
                Some(d @ BufferDesc::F64 { .. }) => (d, DataType::Float64),
                Some(d @ BufferDesc::Date { .. }) => (d, DataType::Date32),
                Some(d @ BufferDesc::Timestamp { .. }) => {
                    (d, DataType::Timestamp(TimeUnit::Microsecond, None))
                }
                Some(d @ BufferDesc::Bit { .. }) => (d, DataType::Boolean),
                Some(BufferDesc::Text { max_str_len } | BufferDesc::WText { max_str_len }) => {
                    (text_desc(Some(max_str_len), i), DataType::Utf8)
                }
                _ => (text_desc(None, i), DataType::Utf8),
            };
            descs.push(desc);
            fields.push(Field::new(name, arrow, true));
        }
        Ok(Layout {
            descs,
            schema: Arc::new(Schema::new(fields)),
            text,
        })
    }

    /// Rows per fetch so that one buffer stays within `max_bytes` (and `max_rows`).
    pub fn rows_per_batch(&self, max_bytes: usize, max_rows: usize) -> usize {
        let per_row: usize = self
            .descs
            .iter()
            .map(|d| d.bytes_per_row())
            .sum::<usize>()
            .max(1);
        (max_bytes / per_row).clamp(1, max_rows)
    }

    /// Converts one fetched buffer. The error names the column and the row within the batch.
    pub fn convert(&self, buffer: &ColumnarDynBuffer) -> Result<RecordBatch, String> {
        let rows = buffer.num_rows();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.descs.len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            let view = buffer.column(i);
            let bad = || format!("column {}: unexpected buffer type", field.name());
            let array: ArrayRef = match field.data_type() {
                DataType::Int8 => {
                    primitive::<Int8Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Int16 => {
                    primitive::<Int16Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Int32 => {
                    primitive::<Int32Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Int64 => {
                    primitive::<Int64Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Float32 => {
                    primitive::<Float32Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Float64 => {
                    primitive::<Float64Type>(view.as_nullable_slice().ok_or_else(bad)?, rows)
                }
                DataType::Date32 => {
                    let slice = view
                        .as_nullable_slice::<odbc_api::sys::Date>()
                        .ok_or_else(bad)?;
                    mapped::<Date32Type, _>(slice, rows, |d| {
                        date(d.year, d.month, d.day)
                            .map(|n| n.signed_duration_since(epoch()).num_days() as i32)
                    })
                    .map_err(|row| {
                        format!("column {}: row {row} is not a valid date", field.name())
                    })?
                }
                DataType::Timestamp(_, _) => {
                    let slice = view
                        .as_nullable_slice::<odbc_api::sys::Timestamp>()
                        .ok_or_else(bad)?;
                    mapped::<TimestampMicrosecondType, _>(slice, rows, |t| {
                        let day = date(t.year, t.month, t.day)?;
                        let time = day.and_hms_nano_opt(
                            t.hour.into(),
                            t.minute.into(),
                            t.second.into(),
                            t.fraction,
                        )?;
                        Some(time.and_utc().timestamp_micros())
                    })
                    .map_err(|row| {
                        format!(
                            "column {}: row {row} is not a valid timestamp",
                            field.name()
                        )
                    })?
                }
                DataType::Boolean => {
                    let slice = view.as_nullable_slice::<Bit>().ok_or_else(bad)?;
                    let values: BooleanArray = (0..rows)
                        .map(|r| slice.get(r).map(|b| b.as_bool()))
                        .collect();
                    Arc::new(values)
                }
                _ => Arc::new(self.text_column(view, field.name(), rows)?),
            };
            columns.push(array);
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }
}

impl Layout {
    /// One text column, decoded to UTF-8 as the layout's [`TextMode`] says.
    fn text_column(
        &self,
        view: AnyColumnBufferSlice<'_>,
        name: &str,
        rows: usize,
    ) -> Result<StringArray, String> {
        let mut builder = StringBuilder::with_capacity(rows, rows * 16);
        match self.text {
            TextMode::Wide => {
                let text = view
                    .as_wide_text()
                    .ok_or_else(|| format!("column {name}: unexpected buffer type"))?;
                let mut scratch = String::new();
                for row in 0..rows {
                    match text.get(row) {
                        None => builder.append_null(),
                        Some(units) => {
                            scratch.clear();
                            if !push_utf16(&mut scratch, units) {
                                return Err(format!(
                                    "column {name}: row {row} is not valid UTF-16 text (an \
                                     unpaired surrogate); set {SETTING}= in the connection \
                                     string to the driver's code page to read it narrow"
                                ));
                            }
                            builder.append_value(&scratch);
                        }
                    }
                }
            }
            TextMode::Narrow(narrow) => {
                let text = view
                    .as_text()
                    .ok_or_else(|| format!("column {name}: unexpected buffer type"))?;
                for row in 0..rows {
                    match text.get(row) {
                        None => builder.append_null(),
                        Some(bytes) => match narrow.decode(bytes) {
                            Some(s) => builder.append_value(s),
                            None => {
                                return Err(format!(
                                    "column {name}: row {row} is not valid {} text; set \
                                     {SETTING}= in the connection string to the driver's code \
                                     page (windows-1252 on UK PCs) or to auto",
                                    narrow.encoding.name()
                                ));
                            }
                        },
                    }
                }
            }
        }
        Ok(builder.finish())
    }
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

fn date(year: i16, month: u16, day: u16) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year.into(), month.into(), day.into())
}

/// Nulls from ODBC indicators; `None` when there is no null.
fn nulls(indicators: &[isize]) -> Option<NullBuffer> {
    let nulls = NullBuffer::from_iter(indicators.iter().map(|i| *i != odbc_api::sys::NULL_DATA));
    (nulls.null_count() > 0).then_some(nulls)
}

/// A primitive column: the values are copied as they are.
fn primitive<T: ArrowPrimitiveType>(slice: NullableSlice<'_, T::Native>, rows: usize) -> ArrayRef {
    let (values, indicators) = slice.raw_values();
    let values = ScalarBuffer::from(values[..rows].to_vec());
    Arc::new(PrimitiveArray::<T>::new(values, nulls(&indicators[..rows])))
}

/// A column whose values need converting; `Err(row)` for the first value that cannot be.
fn mapped<T: ArrowPrimitiveType, S>(
    slice: NullableSlice<'_, S>,
    rows: usize,
    convert: impl Fn(&S) -> Option<T::Native>,
) -> Result<ArrayRef, usize> {
    let (values, indicators) = slice.raw_values();
    let mut out = Vec::with_capacity(rows);
    for row in 0..rows {
        if indicators[row] == odbc_api::sys::NULL_DATA {
            out.push(T::Native::default());
        } else {
            out.push(convert(&values[row]).ok_or(row)?);
        }
    }
    Ok(Arc::new(PrimitiveArray::<T>::new(
        ScalarBuffer::from(out),
        nulls(&indicators[..rows]),
    )))
}
