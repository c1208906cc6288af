//! Records served from memory: a data type's rows in one snapshot, held as the Arrow columns
//! a served record is written from, in id order, answer a page of a listing and a record by
//! id without a query to DuckDB.
//!
//! - **Filters** are evaluated row by row from the parsed query ([`query::Expr`]), with SQL's
//!   meaning: a comparison with a NULL field does not hold (`!=` is `IS DISTINCT FROM`, so it
//!   does), text compares by bytes, decimals exactly, `~` lowercases the text.
//! - **Orderings** are a permutation of the rows per field sorted on (built on first use, kept
//!   with the rows): ascending with NULLs first and ties by id, walked forwards or backwards
//!   for `field` or `-field` (NULLs last either way). Comparisons of the query on the field
//!   sorted on (`issueDate >= …`) are found by binary search in it: only the rows between
//!   are tested, whatever the data type's size.
//! - **A record by id** is a binary search in the rows (their ids are checked to be strictly
//!   increasing when built, so unique).
//!
//! Contract: what [`Served::page`] answers is the page and total DuckDB gives for the same
//! query and ordering over the same rows (the differential fuzz in `server::fuzz` checks it
//! against a real DuckDB). What it cannot answer exactly as SQL would, it declines (None), and
//! DuckDB answers: a field whose column type is not the one its model type reads (or nested
//! beyond what is kept), `~` on a column holding non-ASCII text (DuckDB's `lower` and Rust's
//! differ on a few letters).
//!
//! [`ServedSet`] keeps them within a byte budget, least recently used out first, built on a
//! thread of its own when first asked for (one at a time): until then, DuckDB answers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{self as adt, DataType as ArrowType, TimeUnit};

use super::query::{self, Expr, Op};
use crate::model::{DataType, FieldType};

/// Decimals are compared as integers of this many places.
const DECIMAL_PLACES: u32 = 12;

/// A data type's rows of one snapshot, in memory.
pub struct Served {
    batch: RecordBatch,
    /// Per field sorted on (its path), the rows in its order.
    orders: Mutex<HashMap<Vec<String>, Arc<Sorted>>>,
    /// The rows the last few listings (query and ordering) matched, in order, the most
    /// recent last: the pages of a walk after its first are a slice of one.
    listings: Mutex<Vec<(String, Arc<Vec<u32>>)>>,
    /// The id column.
    ids: arrow::array::StringArray,
    bytes: usize,
}

/// Rows ascending by a field, NULLs first, ties in id order; `nulls` of them are NULL.
struct Sorted {
    rows: Vec<u32>,
    nulls: usize,
}

/// A field's values, typed as its model type reads them.
#[derive(Clone)]
enum Values {
    Text(arrow::array::StringArray),
    Int64(arrow::array::Int64Array),
    Int32(arrow::array::Int32Array),
    Int16(arrow::array::Int16Array),
    /// Decimal128 values and what they are multiplied by to have [`DECIMAL_PLACES`] places.
    Decimal(arrow::array::Decimal128Array, i128),
    Bool(arrow::array::BooleanArray),
    Date(arrow::array::Date32Array),
    Time(arrow::array::TimestampMicrosecondArray),
}

/// One row's value of a field, comparable with another of the same field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Key<'a> {
    Text(&'a str),
    Int(i64),
    Decimal(i128),
    Bool(bool),
    Date(i32),
    Time(i64),
}

/// A query's value, typed like the field it is compared with.
#[derive(Debug, Clone)]
enum Scalar {
    Text(String),
    Int(i64),
    Decimal(i128),
    Bool(bool),
    Date(i32),
    Time(i64),
}

impl Scalar {
    fn key(&self) -> Key<'_> {
        match self {
            Scalar::Text(s) => Key::Text(s),
            Scalar::Int(v) => Key::Int(*v),
            Scalar::Decimal(v) => Key::Decimal(*v),
            Scalar::Bool(v) => Key::Bool(*v),
            Scalar::Date(v) => Key::Date(*v),
            Scalar::Time(v) => Key::Time(*v),
        }
    }

    /// The value as the parser bound it, for a field of type `ty`; None if it does not read
    /// as one (DuckDB then answers, as it would have).
    fn of(ty: FieldType, value: &str) -> Option<Scalar> {
        Some(match ty {
            FieldType::String => Scalar::Text(value.to_owned()),
            FieldType::Integer => Scalar::Int(value.parse().ok()?),
            FieldType::Boolean => Scalar::Bool(match value {
                "true" => true,
                "false" => false,
                _ => return None,
            }),
            FieldType::Date => {
                let d = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").ok()?;
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1)?;
                Scalar::Date(i32::try_from(d.signed_duration_since(epoch).num_days()).ok()?)
            }
            FieldType::Datetime => {
                let t =
                    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S%.6f").ok()?;
                Scalar::Time(t.and_utc().timestamp_micros())
            }
            FieldType::Money | FieldType::Decimal => Scalar::Decimal(decimal(value)?),
            FieldType::Object | FieldType::Array => return None,
        })
    }
}

/// `-12.5` as an integer of [`DECIMAL_PLACES`] places.
fn decimal(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty()
        || fraction.len() > DECIMAL_PLACES as usize
        || !whole
            .bytes()
            .chain(fraction.bytes())
            .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let scale = 10i128.pow(DECIMAL_PLACES - fraction.len() as u32);
    let whole: i128 = whole.parse().ok()?;
    let fraction: i128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().ok()?
    };
    let v = whole
        .checked_mul(10i128.pow(DECIMAL_PLACES))?
        .checked_add(fraction.checked_mul(scale)?)?;
    Some(if negative { -v } else { v })
}

/// A field of the rows: its values and the objects it sits in (NULL when any of them is).
#[derive(Clone)]
struct Field {
    values: Values,
    parents: Vec<ArrayRef>,
}

impl Field {
    /// The field at `path` (a top-level column, then fields inside objects), if its column
    /// holds what type `ty` reads.
    fn of(batch: &RecordBatch, path: &[String], ty: FieldType) -> Option<Field> {
        let (first, rest) = path.split_first()?;
        let mut array = batch.column_by_name(first)?.clone();
        let mut parents = Vec::new();
        for name in rest {
            let child = array.as_struct_opt()?.column_by_name(name)?.clone();
            parents.push(array);
            array = child;
        }
        let values = match (ty, array.data_type()) {
            (FieldType::String, ArrowType::Utf8) => Values::Text(array.as_string::<i32>().clone()),
            (FieldType::Integer, ArrowType::Int64) => {
                Values::Int64(array.as_primitive::<adt::Int64Type>().clone())
            }
            (FieldType::Integer, ArrowType::Int32) => {
                Values::Int32(array.as_primitive::<adt::Int32Type>().clone())
            }
            (FieldType::Integer, ArrowType::Int16) => {
                Values::Int16(array.as_primitive::<adt::Int16Type>().clone())
            }
            // (only where every value fits in an i128 once it has DECIMAL_PLACES places)
            (FieldType::Money | FieldType::Decimal, ArrowType::Decimal128(precision, scale))
                if (0..=DECIMAL_PLACES as i8).contains(scale)
                    && *precision as u32 + DECIMAL_PLACES - *scale as u32 <= 38 =>
            {
                Values::Decimal(
                    array.as_primitive::<adt::Decimal128Type>().clone(),
                    10i128.pow(DECIMAL_PLACES - *scale as u32),
                )
            }
            (FieldType::Boolean, ArrowType::Boolean) => Values::Bool(array.as_boolean().clone()),
            (FieldType::Date, ArrowType::Date32) => {
                Values::Date(array.as_primitive::<adt::Date32Type>().clone())
            }
            (FieldType::Datetime, ArrowType::Timestamp(TimeUnit::Microsecond, None)) => {
                Values::Time(
                    array
                        .as_primitive::<adt::TimestampMicrosecondType>()
                        .clone(),
                )
            }
            _ => return None,
        };
        Some(Field { values, parents })
    }

    fn key(&self, row: usize) -> Option<Key<'_>> {
        if self.parents.iter().any(|p| p.is_null(row)) {
            return None;
        }
        Some(match &self.values {
            Values::Text(a) => (!a.is_null(row)).then(|| Key::Text(a.value(row)))?,
            Values::Int64(a) => (!a.is_null(row)).then(|| Key::Int(a.value(row)))?,
            Values::Int32(a) => (!a.is_null(row)).then(|| Key::Int(a.value(row) as i64))?,
            Values::Int16(a) => (!a.is_null(row)).then(|| Key::Int(a.value(row) as i64))?,
            Values::Decimal(a, times) => {
                (!a.is_null(row)).then(|| Key::Decimal(a.value(row) * *times))?
            }
            Values::Bool(a) => (!a.is_null(row)).then(|| Key::Bool(a.value(row)))?,
            Values::Date(a) => (!a.is_null(row)).then(|| Key::Date(a.value(row)))?,
            Values::Time(a) => (!a.is_null(row)).then(|| Key::Time(a.value(row)))?,
        })
    }

    /// Whether every text value is ASCII (what `~` is answered for here).
    fn ascii(&self) -> bool {
        match &self.values {
            Values::Text(a) => a.values().is_ascii(),
            _ => false,
        }
    }
}

/// A query compiled against the rows.
enum Test {
    All(Vec<Test>),
    Any(Vec<Test>),
    Compare {
        path: Vec<String>,
        field: Field,
        op: Op,
        value: Scalar,
    },
}

impl Test {
    fn compile(batch: &RecordBatch, expr: &Expr) -> Option<Test> {
        Some(match expr {
            Expr::All(parts) => Test::All(
                parts
                    .iter()
                    .map(|e| Test::compile(batch, e))
                    .collect::<Option<_>>()?,
            ),
            Expr::Any(parts) => Test::Any(
                parts
                    .iter()
                    .map(|e| Test::compile(batch, e))
                    .collect::<Option<_>>()?,
            ),
            Expr::Compare {
                path,
                ty,
                op,
                value,
            } => {
                let field = Field::of(batch, path, *ty)?;
                if *op == Op::Contains && !field.ascii() {
                    return None;
                }
                let value = match op {
                    Op::Contains => Scalar::Text(value.clone()),
                    _ => Scalar::of(*ty, value)?,
                };
                Test::Compare {
                    path: path.clone(),
                    field,
                    op: *op,
                    value,
                }
            }
        })
    }

    fn holds(&self, row: usize) -> bool {
        match self {
            Test::All(parts) => parts.iter().all(|t| t.holds(row)),
            Test::Any(parts) => parts.iter().any(|t| t.holds(row)),
            Test::Compare {
                field, op, value, ..
            } => {
                let Some(key) = field.key(row) else {
                    return *op == Op::Ne;
                };
                match op {
                    Op::Contains => match (key, value) {
                        (Key::Text(text), Scalar::Text(needle)) => contains_ascii(text, needle),
                        _ => false,
                    },
                    _ => compare(*op, key.cmp(&value.key())),
                }
            }
        }
    }

    /// The comparisons every matching row meets on the field at `path` (a top-level AND's,
    /// or the query's only one): what narrows the rows to test in that field's order.
    fn bounds_on(&self, path: &[String]) -> Vec<(Op, &Scalar)> {
        fn on(t: &Test) -> Option<(Op, &Scalar)> {
            match t {
                Test::Compare { op, value, .. }
                    if matches!(op, Op::Eq | Op::Gt | Op::Ge | Op::Lt | Op::Le) =>
                {
                    Some((*op, value))
                }
                _ => None,
            }
        }
        match self {
            Test::All(parts) => parts
                .iter()
                .filter(|t| t.is_on(path))
                .filter_map(on)
                .collect(),
            t if t.is_on(path) => on(t).into_iter().collect(),
            _ => Vec::new(),
        }
    }

    fn is_on(&self, path: &[String]) -> bool {
        matches!(self, Test::Compare { path: p, .. } if p == path)
    }
}

fn compare(op: Op, ordering: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match op {
        Op::Eq => ordering == Equal,
        Op::Ne => ordering != Equal,
        Op::Gt => ordering == Greater,
        Op::Lt => ordering == Less,
        Op::Ge => ordering != Less,
        Op::Le => ordering != Greater,
        Op::Contains => false,
    }
}

/// Whether ASCII `text`, lowercased, holds `needle` (lowercased already).
fn contains_ascii(text: &str, needle: &str) -> bool {
    let (text, needle) = (text.as_bytes(), needle.as_bytes());
    needle.is_empty()
        || text.windows(needle.len()).any(|w| {
            w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

impl Served {
    /// Reads the rows of `view` (a data type's table, the columns `columns` give) in id
    /// order. An error says what kept them out of memory (DuckDB then answers).
    pub fn build(conn: &duckdb::Connection, view: &str, columns: &str) -> Result<Served, String> {
        Served::build_within(conn, view, columns, usize::MAX).map_err(|e| e.to_string())
    }

    /// [`Served::build`], giving up as soon as the rows read take more than `max_bytes`.
    fn build_within(
        conn: &duckdb::Connection,
        view: &str,
        columns: &str,
        max_bytes: usize,
    ) -> Result<Served, NotRead> {
        let id = crate::model::ID_FIELD;
        let failed = |e: &dyn std::fmt::Display| NotRead::Failed(e.to_string());
        let mut stmt = conn
            .prepare(&format!("SELECT {columns} FROM {view} ORDER BY \"{id}\""))
            .map_err(|e| failed(&e))?;
        let arrow = stmt.query_arrow([]).map_err(|e| failed(&e))?;
        let schema = arrow.get_schema();
        let (mut batches, mut read) = (Vec::new(), 0usize);
        for batch in arrow {
            read = read.saturating_add(batch.get_array_memory_size());
            if read > max_bytes {
                return Err(NotRead::TooBig(read));
            }
            batches.push(batch);
        }
        let batch = arrow::compute::concat_batches(&schema, &batches).map_err(|e| failed(&e))?;
        drop(batches);
        Served::of(batch).map_err(NotRead::Failed)
    }

    /// Rows read in id order, checked.
    fn of(batch: RecordBatch) -> Result<Served, String> {
        let id = crate::model::ID_FIELD;
        let Some(Field {
            values: Values::Text(ids),
            ..
        }) = Field::of(&batch, &[id.to_owned()], FieldType::String)
        else {
            return Err(format!("the column {id:?} is not text"));
        };
        if ids.null_count() > 0 {
            return Err(format!("a row has no {id:?}"));
        }
        // (in the byte order binary search uses; DuckDB sorts text the same way)
        if let Some(at) = (1..ids.len()).find(|&i| ids.value(i - 1) >= ids.value(i)) {
            return Err(format!(
                "ids are not strictly increasing at row {at} ({:?} then {:?})",
                ids.value(at - 1),
                ids.value(at)
            ));
        }
        let bytes = batch.get_array_memory_size();
        Ok(Served {
            batch,
            orders: Mutex::new(HashMap::new()),
            listings: Mutex::new(Vec::new()),
            ids,
            bytes,
        })
    }

    /// The rows, to write records from.
    pub fn batch(&self) -> &RecordBatch {
        &self.batch
    }

    /// The memory its rows take.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The row of record `id`, if there is one.
    pub fn row_of(&self, id: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.ids.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.ids.value(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The rows in the order of the field `column` names, built on first use.
    fn sorted(&self, column: &query::Column) -> Option<Arc<Sorted>> {
        if let Some(s) = self
            .orders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&column.path)
        {
            return Some(s.clone());
        }
        let field = Field::of(&self.batch, &column.path, column.ty)?;
        let mut rows: Vec<u32> = (0..self.batch.num_rows() as u32).collect();
        // stable: ties keep the id order the rows are in; NULL (None) sorts first
        rows.sort_by(|a, b| field.key(*a as usize).cmp(&field.key(*b as usize)));
        let nulls = rows.partition_point(|r| field.key(*r as usize).is_none());
        let sorted = Arc::new(Sorted { rows, nulls });
        self.orders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(column.path.clone(), sorted.clone());
        Some(sorted)
    }

    /// A page of the rows `filter` matches in `ordering`, skipping `offset` of them, at most
    /// `limit`, and how many match in all. None when it cannot be answered here exactly as
    /// SQL would (see the module's header).
    pub fn page(
        &self,
        filter: &query::Filter,
        ordering: &query::Ordering,
        offset: u64,
        limit: u64,
    ) -> Option<(u64, Vec<usize>)> {
        let key = format!("{}\n{:?}\n{}", filter.sql, filter.params, ordering.sql());
        let known = {
            let listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
            listings
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, rows)| rows.clone())
        };
        let matched = match known {
            Some(rows) => rows,
            None => {
                let rows = Arc::new(self.matching(filter, ordering)?);
                let mut listings = self.listings.lock().unwrap_or_else(|e| e.into_inner());
                listings.retain(|(k, _)| *k != key);
                if listings.len() >= LISTINGS_KEPT {
                    listings.remove(0);
                }
                listings.push((key, rows.clone()));
                rows
            }
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(matched.len());
        let end = start
            .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
            .min(matched.len());
        Some((
            matched.len() as u64,
            matched[start..end].iter().map(|r| *r as usize).collect(),
        ))
    }

    /// Every row `filter` matches, in `ordering`.
    fn matching(&self, filter: &query::Filter, ordering: &query::Ordering) -> Option<Vec<u32>> {
        let test = match &filter.expr {
            Some(expr) => Some(Test::compile(&self.batch, expr)?),
            None => None,
        };
        let column = ordering.column();
        let sorted = self.sorted(column)?;
        let field = Field::of(&self.batch, &column.path, column.ty)?;
        let (nulls, values) = sorted.rows.split_at(sorted.nulls);
        // The rows to test: the values within the query's bounds on the field sorted on
        // (NULL is never within a bound), or every row.
        let bounds = test
            .as_ref()
            .map(|t| t.bounds_on(&column.path))
            .unwrap_or_default();
        let (values, nulls) = if bounds.is_empty() {
            (values, nulls)
        } else {
            let (mut lo, mut hi) = (0, values.len());
            for (op, value) in bounds {
                let v = value.key();
                let key = |r: &u32| field.key(*r as usize);
                let below = |r: &u32| key(r) < Some(v);
                let not_above = |r: &u32| key(r) <= Some(v);
                match op {
                    Op::Gt => lo = lo.max(values.partition_point(not_above)),
                    Op::Ge => lo = lo.max(values.partition_point(below)),
                    Op::Lt => hi = hi.min(values.partition_point(below)),
                    Op::Le => hi = hi.min(values.partition_point(not_above)),
                    _ => {
                        lo = lo.max(values.partition_point(below));
                        hi = hi.min(values.partition_point(not_above));
                    }
                }
            }
            (&values[lo..hi.max(lo)], &nulls[..0])
        };
        let order: Box<dyn Iterator<Item = &u32>> = match ordering.descending() {
            false => Box::new(values.iter().chain(nulls.iter())),
            true => Box::new(values.iter().rev().chain(nulls.iter().rev())),
        };
        Some(match &test {
            Some(test) => order
                .filter(|r| test.holds(**r as usize))
                .copied()
                .collect(),
            None => order.copied().collect(),
        })
    }
}

/// Why a data type's rows were not read into memory.
enum NotRead {
    /// More than the budget: the bytes read when reading stopped.
    TooBig(usize),
    /// An error, said.
    Failed(String),
}

impl std::fmt::Display for NotRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotRead::TooBig(read) => write!(f, "more than the budget ({read} bytes read)"),
            NotRead::Failed(e) => f.write_str(e),
        }
    }
}

/// How many listings' matching rows a data type's rows in memory keep (4 bytes a row each).
const LISTINGS_KEPT: usize = 4;

/// What a data type's rows in memory are, for one snapshot.
enum Entry {
    /// Being read (DuckDB answers meanwhile).
    Building,
    /// In memory; the tick it was last asked for.
    Ready(Arc<Served>, u64),
    /// Not kept: when (tried again once [`RETRY`] has passed).
    Failed(std::time::Instant),
    /// Larger than the whole budget: not tried again for this snapshot.
    TooBig,
}

/// How long after rows could not be kept in memory they are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// The rows in memory of the data types asked for, per company and snapshot, within a
/// budget of bytes: the least recently asked for go first, and a company's data type is kept
/// for one snapshot (the newest read).
pub struct ServedSet {
    capacity: usize,
    inner: Mutex<SetInner>,
}

#[derive(Default)]
struct SetInner {
    entries: HashMap<(String, String), (String, Entry)>,
    bytes: usize,
    tick: u64,
    building: bool,
}

/// What a server keeps in memory this way without a memory limit.
pub const SERVED_BYTES: usize = 1 << 30;

impl Default for ServedSet {
    fn default() -> Self {
        ServedSet::holding(SERVED_BYTES)
    }
}

impl ServedSet {
    /// A set holding at most `capacity` bytes of rows.
    pub fn holding(capacity: usize) -> Self {
        ServedSet {
            capacity,
            inner: Mutex::new(SetInner::default()),
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }

    /// The rows of `data_type` in `live` (of `company`) if they are in memory; if not, and no
    /// other is being read, starts reading them on a thread of its own. `newest`: `live` is
    /// the company's snapshot served now (an older one, named by a request, is not read in
    /// place of a newer one).
    pub fn get(
        self: &Arc<Self>,
        company: &str,
        live: &Arc<super::ingest::Live>,
        data_type: &DataType,
        newest: bool,
    ) -> Option<Arc<Served>> {
        let key = (company.to_owned(), data_type.name.clone());
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.tick += 1;
        let tick = inner.tick;
        match inner.entries.get_mut(&key) {
            Some((snapshot, entry)) if *snapshot == live.snapshot_id => match entry {
                Entry::Ready(served, used) => {
                    *used = tick;
                    return Some(served.clone());
                }
                Entry::Building | Entry::TooBig => return None,
                Entry::Failed(at) if at.elapsed() < RETRY => return None,
                Entry::Failed(_) => {}
            },
            // an older snapshot a request named is not read in place of the one kept
            _ if !newest => return None,
            _ => {}
        }
        if inner.building || self.capacity == 0 {
            return None;
        }
        inner.building = true;
        if let Some((_, Entry::Ready(old, _))) = inner
            .entries
            .insert(key.clone(), (live.snapshot_id.clone(), Entry::Building))
        {
            inner.bytes -= old.bytes();
        }
        drop(inner);
        let (set, live, columns) = (self.clone(), live.clone(), columns(data_type));
        let view = live.table(&data_type.name);
        let (capacity, snapshot) = (self.capacity, live.snapshot_id.clone());
        let (set_then, key_then) = (set.clone(), key.clone());
        let spawned = std::thread::Builder::new()
            .name("rows-into-memory".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                // (a panic is an error like any other: the next read is never held up by it)
                let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    let conn = live
                        .connection()
                        .map_err(|e| NotRead::Failed(e.to_string()))?;
                    Served::build_within(&conn, &view, &columns, capacity)
                }))
                .unwrap_or_else(|_| Err(NotRead::Failed("reading the rows panicked".into())));
                set.built(key, &live.snapshot_id, built, started);
            });
        if let Err(e) = spawned {
            let failed = Err(NotRead::Failed(format!("no thread to read the rows: {e}")));
            set_then.built(key_then, &snapshot, failed, std::time::Instant::now());
        }
        None
    }

    fn built(
        &self,
        key: (String, String),
        snapshot: &str,
        built: Result<Served, NotRead>,
        started: std::time::Instant,
    ) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.building = false;
        let still_wanted =
            matches!(inner.entries.get(&key), Some((s, Entry::Building)) if s.as_str() == snapshot);
        if !still_wanted {
            return;
        }
        let entry = match built {
            Ok(served) if served.bytes() <= self.capacity => {
                tracing::debug!(company = %key.0, data_type = %key.1, snapshot, rows = served.batch.num_rows(), bytes = served.bytes(), seconds = started.elapsed().as_secs_f64(), "Read a data type's rows into memory: its pages are answered from there.");
                inner.bytes += served.bytes();
                inner.tick += 1;
                Entry::Ready(Arc::new(served), inner.tick)
            }
            Ok(served) => {
                tracing::info!(company = %key.0, data_type = %key.1, snapshot, bytes = served.bytes(), budget = self.capacity, "A data type's rows are larger than the memory kept for them: DuckDB answers its pages.");
                Entry::TooBig
            }
            Err(NotRead::TooBig(read)) => {
                tracing::info!(company = %key.0, data_type = %key.1, snapshot, bytes_read = read, budget = self.capacity, "A data type's rows are larger than the memory kept for them (reading stopped there): DuckDB answers its pages.");
                Entry::TooBig
            }
            Err(NotRead::Failed(e)) => {
                tracing::warn!(company = %key.0, data_type = %key.1, snapshot, error = %e, "Could not read a data type's rows into memory: DuckDB answers its pages.");
                Entry::Failed(std::time::Instant::now())
            }
        };
        inner
            .entries
            .insert(key.clone(), (snapshot.to_owned(), entry));
        // the least recently asked for go until the rest fit
        while inner.bytes > self.capacity {
            let Some(oldest) = inner
                .entries
                .iter()
                .filter_map(|(k, (_, e))| match e {
                    Entry::Ready(_, used) if *k != key => Some((*used, k.clone())),
                    _ => None,
                })
                .min()
                .map(|(_, k)| k)
            else {
                break;
            };
            if let Some((_, Entry::Ready(old, _))) = inner.entries.remove(&oldest) {
                inner.bytes -= old.bytes();
            }
        }
    }
}

/// The columns a served record is written from: every model field and `modifiedDate`, quoted.
pub fn columns(dt: &DataType) -> String {
    dt.fields
        .iter()
        .map(|f| f.name.as_str())
        .chain([query::MODIFIED_DATE])
        .map(crate::staging::ident)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_past_the_budget_stop_being_read_and_ids_out_of_order_are_refused() {
        let conn = duckdb::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t AS SELECT 'r' || lpad(i::VARCHAR, 7, '0') AS id, i AS n, TIMESTAMP '2025-01-01' AS \"modifiedDate\" FROM range(200000) r(i);",
        )
        .unwrap();
        let columns = "\"id\", \"n\", \"modifiedDate\"";
        let whole = Served::build(&conn, "t", columns).unwrap();
        assert_eq!(whole.batch().num_rows(), 200_000);
        assert_eq!(whole.row_of("r0123456"), Some(123_456));
        assert_eq!(whole.row_of("r9"), None);
        match Served::build_within(&conn, "t", columns, whole.bytes() / 4) {
            Err(NotRead::TooBig(read)) => assert!(read < whole.bytes(), "{read}"),
            Err(NotRead::Failed(e)) => panic!("{e}"),
            Ok(_) => panic!("read past the budget"),
        }
        // two rows with one id: not kept (a record by id would be ambiguous)
        conn.execute_batch("INSERT INTO t VALUES ('r0000001', -1, NULL);")
            .unwrap();
        let e = Served::build(&conn, "t", columns).err().unwrap();
        assert!(e.contains("strictly increasing"), "{e}");
    }
}
