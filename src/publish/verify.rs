//! `snapshot verify`: re-reads a published snapshot from the store and checks that it is whole.
//!
//! Follows `latest.json` (or takes a named snapshot), checks the manifest's own hash against
//! the pointer, its format and schema versions and company, then every data file: present,
//! its size, its SHA-256, and the row count in its Parquet footer against the manifest's rows
//! and control totals. Every problem is listed; none means the snapshot is whole.

use sha2::{Digest, Sha256};

use super::{PublishError, Store};
use crate::model::SCHEMA_VERSION;
use crate::snapshot::manifest::{FileEntry, MANIFEST_VERSION, Manifest};
use crate::snapshot::{self, hex, parquet_row_count};

/// One thing wrong with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The object at fault.
    pub key: String,
    /// What is wrong.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.what)
    }
}

/// What verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The snapshot checked.
    pub snapshot_id: String,
    /// Its manifest, when it could be read.
    pub manifest: Option<Manifest>,
    /// Data files checked.
    pub files: usize,
    /// Bytes read.
    pub bytes: u64,
    /// Everything wrong; empty when the snapshot is whole.
    pub problems: Vec<Problem>,
}

impl Verified {
    /// Whether the snapshot is whole.
    pub fn is_whole(&self) -> bool {
        self.problems.is_empty() && self.manifest.is_some()
    }
}

/// Verifies the latest snapshot of `company_id`, or the one named.
pub async fn verify(
    store: &Store,
    company_id: &str,
    snapshot_id: Option<&str>,
) -> Result<Verified, PublishError> {
    let mut problems = Vec::new();
    let (snapshot_id, expected_sha) = match snapshot_id {
        Some(id) => (id.to_owned(), None),
        None => match store.latest(company_id).await? {
            Some((latest, _)) => {
                let key = snapshot::manifest_key(company_id, &latest.snapshot_id);
                if latest.manifest_key != key {
                    problems.push(Problem {
                        key: snapshot::latest_key(company_id),
                        what: format!("names manifest {}, expected {key}", latest.manifest_key),
                    });
                }
                (latest.snapshot_id, Some(latest.manifest_sha256))
            }
            None => {
                return Err(PublishError::Damaged {
                    url: store.url.clone(),
                    key: store.path(&snapshot::latest_key(company_id)).to_string(),
                    detail: format!(
                        "it does not exist: company {company_id} has no published snapshot in this store"
                    ),
                });
            }
        },
    };
    let manifest_key = snapshot::manifest_key(company_id, &snapshot_id);
    let mut report = Verified {
        snapshot_id: snapshot_id.clone(),
        manifest: None,
        files: 0,
        bytes: 0,
        problems: Vec::new(),
    };
    let Some(bytes) = store.get_bytes(&manifest_key).await? else {
        problems.push(Problem {
            key: manifest_key,
            what: "missing".into(),
        });
        report.problems = problems;
        return Ok(report);
    };
    let (manifest, found) =
        check_manifest(&bytes, company_id, &snapshot_id, expected_sha.as_deref());
    problems.extend(found.into_iter().map(|what| Problem {
        key: manifest_key.clone(),
        what,
    }));
    let Some(manifest) = manifest else {
        report.problems = problems;
        return Ok(report);
    };
    for (name, entry) in &manifest.data_types {
        let fault = |what: String| Problem {
            key: manifest_key.clone(),
            what: format!("{name}: {what}"),
        };
        if entry.rows != entry.control_totals.records {
            problems.push(fault(format!(
                "the manifest says {} rows but its control totals say {} records",
                entry.rows, entry.control_totals.records
            )));
        }
        let (rows, bytes) = entry
            .files
            .iter()
            .fold((0, 0), |(r, b), f| (r + f.rows, b + f.bytes));
        if (rows, bytes) != (entry.rows, entry.bytes) {
            problems.push(fault(format!(
                "its files hold {rows} rows in {bytes} bytes, the data type says {} rows in {} bytes",
                entry.rows, entry.bytes
            )));
        }
    }
    for (name, entry) in manifest.files() {
        let key = &entry.key;
        let fault = |what: String| Problem {
            key: key.clone(),
            what: format!("{name} part {}: {what}", entry.part),
        };
        if *key != snapshot::data_key(company_id, name, &entry.sha256) {
            problems.push(fault(
                "its key is not the content address of its SHA-256".into(),
            ));
        }
        let Some(data) = store.get_bytes(key).await? else {
            problems.push(fault("missing from the store".into()));
            continue;
        };
        report.files += 1;
        report.bytes += data.len() as u64;
        let found = check_data(entry, &data);
        let hash_ok = !found.iter().any(|p| p.starts_with("SHA-256"));
        problems.extend(found.into_iter().map(fault));
        if !hash_ok {
            continue;
        }
        match parquet_row_count(data) {
            Ok(rows) if rows == entry.rows => {}
            Ok(rows) => problems.push(fault(format!(
                "the Parquet footer counts {rows} rows, the manifest says {}",
                entry.rows
            ))),
            Err(e) => problems.push(fault(format!("not a readable Parquet file: {e}"))),
        }
    }
    report.manifest = Some(manifest);
    report.problems = problems;
    Ok(report)
}

/// Checks a manifest's bytes: its SHA-256 against the one `latest.json` records (when known),
/// that it parses, its format and schema versions, and that it describes this company and
/// snapshot. Returns the manifest when it parses, and every problem found. The server runs
/// the same checks before a snapshot goes live.
pub fn check_manifest(
    bytes: &[u8],
    company_id: &str,
    snapshot_id: &str,
    expected_sha: Option<&str>,
) -> (Option<Manifest>, Vec<String>) {
    let mut problems = Vec::new();
    if let Some(sha) = expected_sha.filter(|sha| *sha != hex(&Sha256::digest(bytes))) {
        problems.push(format!(
            "its SHA-256 differs from the {sha} that latest.json records"
        ));
    }
    let manifest = match Manifest::from_json(bytes) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("not a valid manifest: {e}"));
            return (None, problems);
        }
    };
    if manifest.manifest_version != MANIFEST_VERSION {
        problems.push(format!(
            "manifestVersion {} is not {MANIFEST_VERSION}, the one this connector reads",
            manifest.manifest_version
        ));
    }
    if manifest.schema_version > SCHEMA_VERSION {
        problems.push(format!(
            "schemaVersion {} is newer than this connector's {SCHEMA_VERSION}",
            manifest.schema_version
        ));
    }
    for (name, entry) in &manifest.data_types {
        if entry.files.is_empty() {
            problems.push(format!("data type {name}: it lists no files"));
        }
        let mut parts: Vec<&str> = entry.files.iter().map(|f| f.part.as_str()).collect();
        parts.sort_unstable();
        if parts.windows(2).any(|w| w[0] == w[1]) {
            problems.push(format!("data type {name}: a part is listed twice"));
        }
        for file in &entry.files {
            if !crate::snapshot::manifest::is_sha256(&file.sha256) {
                problems.push(format!(
                    "data type {name} part {}: its sha256 {:?} is not a SHA-256 (64 lowercase hex digits)",
                    file.part.chars().take(40).collect::<String>(),
                    file.sha256.chars().take(80).collect::<String>()
                ));
            }
            if !crate::snapshot::is_part(&file.part) {
                problems.push(format!(
                    "data type {name}: part {:?} is not a part's name (n and six digits, or other)",
                    file.part.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    if manifest.company_id != company_id || manifest.snapshot_id != snapshot_id {
        problems.push(format!(
            "it describes company {} snapshot {}, not {company_id} {snapshot_id}",
            manifest.company_id, manifest.snapshot_id
        ));
    }
    (Some(manifest), problems)
}

/// What is wrong with a data file's bytes against its manifest entry: its size, its SHA-256
/// (a problem starting "SHA-256").
pub fn check_data(entry: &FileEntry, data: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    if data.len() as u64 != entry.bytes {
        problems.push(format!(
            "{} bytes, the manifest says {}",
            data.len(),
            entry.bytes
        ));
    }
    let sha = hex(&Sha256::digest(data));
    if sha != entry.sha256 {
        problems.push(format!("SHA-256 {sha}, the manifest says {}", entry.sha256));
    }
    problems
}
