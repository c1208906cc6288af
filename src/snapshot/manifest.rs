//! `manifest.json`: what a snapshot holds, as the server and `snapshot verify` read it.
//!
//! The format is defined by `schemas/manifest.schema.json` (JSON Schema); a golden example is
//! `fixtures/snapshot/manifest.json`. Money is written as decimal strings, never as JSON
//! numbers, so no reader turns it into a float. Readers ignore fields they do not know (a
//! compatible addition); an incompatible change bumps [`MANIFEST_VERSION`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the manifest format itself; bumped on an incompatible change.
/// Version 2: a data type is a list of files, one per part of its records (version 1 had one
/// file per data type).
pub const MANIFEST_VERSION: u32 = 2;

/// One snapshot's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_VERSION`] of the writer.
    pub manifest_version: u32,
    /// Time-ordered id: `YYYYMMDDTHHMMSSmmmZ-` and 8 hex digits; sorting ids sorts by time.
    pub snapshot_id: String,
    /// Our company id (the API's, not Sage's).
    pub company_id: String,
    /// When the snapshot was made, RFC 3339 UTC.
    pub created_at: String,
    /// The connector that made it.
    pub connector: ConnectorFacts,
    /// Version of the data model (`schemas/datatypes/`), see [`crate::model::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Where the data came from.
    pub source: SourceFacts,
    /// Per data type name: its file and figures.
    pub data_types: BTreeMap<String, DataTypeEntry>,
    /// Every check normalisation ran, and its outcome (a snapshot is only made when none
    /// failed; warnings are kept here).
    pub checks: Vec<CheckEntry>,
}

/// The program that wrote the snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorFacts {
    /// Its version (Cargo package version).
    pub version: String,
}

/// Facts about the Sage company the data came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceFacts {
    /// Sage's own "Unique Company Id" (COMPANY.COMPANYID): stable across moves of the data.
    pub sage_company_id: Option<String>,
    /// COMPANY.NAME.
    pub company_name: Option<String>,
    /// The data folder the connector read (Sage's DIR=), when the connection names one.
    pub data_path: Option<String>,
    /// Date of the latest transaction (AUDIT_HEADER.DATE), if there is any.
    pub last_transaction_date: Option<String>,
    /// When extraction finished, RFC 3339 UTC.
    pub extracted_at: String,
}

/// One data type in the snapshot: its figures and its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataTypeEntry {
    /// Rows in all its files (records, deleted ones included).
    pub rows: u64,
    /// Size of all its files in bytes.
    pub bytes: u64,
    /// Control totals from normalisation, over all its files.
    pub control_totals: ControlTotals,
    /// Its files, one per part of its records, in the order of their parts (at least one).
    /// Read together they are the data type: the same columns in every file, each record
    /// in exactly one.
    pub files: Vec<FileEntry>,
}

/// One Parquet file of a data type: the records of one part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    /// The part (see [`crate::snapshot::part_sql`]): the same records keep the same part from
    /// snapshot to snapshot, so an unchanged part is the same file.
    pub part: String,
    /// Object key of the Parquet file, relative to the store's root (content-addressed:
    /// `COMPANY/data/DATATYPE/SHA256.parquet`).
    pub key: String,
    /// Rows in the file (records, deleted ones included).
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
}

/// A data type's control totals, as normalisation computed them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlTotals {
    /// Records, deleted ones included.
    pub records: u64,
    /// Records with `isDeleted = true`.
    pub deleted: u64,
    /// Per top-level money field: the exact sum over live records, as a decimal string.
    pub sums: BTreeMap<String, String>,
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckEntry {
    /// Check name.
    pub name: String,
    /// "pass" or "warn".
    pub status: String,
    /// Rows the check reported as warnings.
    pub warnings: u64,
}

impl Manifest {
    /// Parses a manifest, naming the first field at fault.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Every data file, with its data type's name, in data type and part order.
    pub fn files(&self) -> impl Iterator<Item = (&str, &FileEntry)> {
        self.data_types
            .iter()
            .flat_map(|(name, entry)| entry.files.iter().map(move |f| (name.as_str(), f)))
    }

    /// The manifest as written to the store (pretty, stable key order).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a manifest always serialises");
        out.push(b'\n');
        out
    }
}

/// The content of a company's `latest` pointer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Latest {
    /// The snapshot now current.
    pub snapshot_id: String,
    /// Its manifest's key.
    pub manifest_key: String,
    /// SHA-256 of the manifest's bytes.
    pub manifest_sha256: String,
}

/// A new time-ordered snapshot id for `now`.
pub fn new_snapshot_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{:08x}",
        now.format("%Y%m%dT%H%M%S%3fZ"),
        rand::random::<u32>()
    )
}

/// A new snapshot id for `now` that sorts after `floor` even if the clock went back: the
/// millisecond after `floor`'s when `now` is not later.
pub fn new_snapshot_id_after(now: chrono::DateTime<chrono::Utc>, floor: Option<&str>) -> String {
    let floor_time = floor
        .and_then(|id| id.get(..19))
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%3fZ").ok())
        .map(|t| t.and_utc());
    match floor_time {
        Some(t) if t >= now => {
            tracing::warn!(clock = %now, last = %t, "The clock is behind the last snapshot's time; the new snapshot id follows the last one.");
            new_snapshot_id(t + chrono::Duration::milliseconds(1))
        }
        _ => new_snapshot_id(now),
    }
}

/// Whether `text` is a SHA-256 as manifests and pointers write it: 64 lowercase hex digits
/// (never a path, whatever a store's writer puts there).
pub fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `id` has the shape [`new_snapshot_id`] gives.
pub fn is_snapshot_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 28
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'T'
        && b[9..18].iter().all(u8::is_ascii_digit)
        && b[18] == b'Z'
        && b[19] == b'-'
        && b[20..].iter().all(|c| c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_sort_by_time_and_have_one_shape() {
        let early = chrono::DateTime::parse_from_rfc3339("2026-11-29T09:05:01.002Z")
            .unwrap()
            .to_utc();
        let late = early + chrono::Duration::milliseconds(1);
        let (a, b) = (new_snapshot_id(early), new_snapshot_id(late));
        assert!(a.starts_with("20261129T090501002Z-"), "{a}");
        assert!(a < b, "{a} !< {b}");
        assert!(is_snapshot_id(&a) && is_snapshot_id(&b));
        assert!(!is_snapshot_id("20261129T090501002Z"));
        assert!(!is_snapshot_id("../../etc/passwd-0000000000000000"));
    }

    #[test]
    fn ids_follow_the_last_one_when_the_clock_goes_back() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-29T09:00:00Z")
            .unwrap()
            .to_utc();
        let future = "20261130T120000000Z-00000000";
        let id = new_snapshot_id_after(now, Some(future));
        assert!(
            id.starts_with("20261130T120000001Z-") && id.as_str() > future,
            "{id}"
        );
        let past = "20261128T120000000Z-ffffffff";
        assert!(new_snapshot_id_after(now, Some(past)).starts_with("20261129T090000000Z-"));
        assert!(new_snapshot_id_after(now, None).starts_with("20261129T090000000Z-"));
    }
}
