//! The Sage 50 simulator: our stand-in for a customer's Sage company.
//!
//! Takes a seed and a size and writes `DIR/ACCDATA/SAGE50.DB`, a SQLite database with Sage 50's
//! table and column names (from `schemas/sage50-source.toml`), read through the SQLite3 ODBC
//! driver exactly as the connector reads Sage through Sage's driver. Guarantees:
//! - deterministic: the same seed and size give the same bytes of data;
//! - real bookkeeping: every transaction posts balanced double entry to AUDIT_JOURNAL, and the
//!   nominal, customer, supplier and bank balances, monthly balances, outstanding amounts and
//!   paid flags all agree with the journal and the allocations;
//! - Sage's awkward cases at realistic rates (see `ledger.rs`);
//! - atomic: the database is built under a temporary name and renamed into place.
//!
//! A company can also be loaded from a readable SQL script (`--script`), which is how the small
//! golden company under `fixtures/golden/` is made.

pub mod company;
pub mod ledger;
mod write;

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::schema::SourceSchema;

/// The folder Sage keeps a company's data in, inside the company directory.
pub const DATA_FOLDER: &str = "ACCDATA";
/// The simulator's database file inside [`DATA_FOLDER`].
pub const DATABASE_FILE: &str = "SAGE50.DB";

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file or folder could not be written.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// SQLite refused a statement.
    #[error("SQLite error while {doing}: {source}")]
    Sqlite {
        /// What the simulator was doing.
        doing: String,
        /// SQLite's message.
        source: rusqlite::Error,
    },
    /// The golden script could not be read.
    #[error("cannot read script {path}: {source}")]
    Script {
        /// The script.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Options out of range.
    #[error("{0}")]
    Options(String),
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Seed; the same seed gives the same company.
    pub seed: u64,
    /// Number of transaction headers (100 to 5,000,000).
    pub transactions: u64,
    /// Stop early once this many splits exist (for benchmarks sized by AUDIT_SPLIT rows).
    pub max_splits: Option<u64>,
    /// Per mille of the unpaid foreign-currency invoice, credit note, bill and bill credit
    /// note splits whose base amounts are stored as Sage derives them from the foreign ones,
    /// unrounded (`foreign / rate`, e.g. 12.3457): 0 to 1000.
    pub sub_penny_permille: u16,
    /// Run Sage's Year End at the end of the prior financial year (the company spans two):
    /// a journal moving every P&L nominal to retained earnings, as real companies have.
    pub year_end: bool,
    /// Run Sage's Clear Audit Trail for transactions dated before this day (see
    /// [`ledger::clear_audit_trail`]).
    pub clear_audit_trail_before: Option<chrono::NaiveDate>,
    /// Exchange rates move every 30 days: foreign receipts and payments settle documents at
    /// their day's rate with exchange differences (REVAL) posted to 7906, and the euro bank
    /// is revalued; otherwise each currency keeps one rate.
    pub exchange_differences: bool,
}

/// Default of [`SimOptions::sub_penny_permille`]: one in five unpaid foreign documents' lines.
pub const DEFAULT_SUB_PENNY_PERMILLE: u16 = 200;

/// What was written.
#[derive(Debug, Clone)]
pub struct SimSummary {
    /// The SQLite database file.
    pub database: PathBuf,
    /// The ODBC connection string that reaches it through the SQLite3 driver.
    pub connection_string: String,
    /// Rows per table, in schema order.
    pub counts: Vec<(String, u64)>,
}

/// The ODBC connection string for a simulated company's database file.
///
/// `StepAPI=1` makes the SQLite3 driver stream rows instead of materialising the whole result
/// set in memory; `NoCreat=1` makes a wrong path fail instead of creating an empty database;
/// `Timeout` is how long a locked database is waited for, in milliseconds.
pub fn connection_string(database: &Path) -> String {
    format!(
        "Driver={{SQLite3}};Database={};NoCreat=1;StepAPI=1;Timeout=2000",
        database.display()
    )
}

/// Writes a generated company under `out` (`out/ACCDATA/SAGE50.DB`).
pub fn generate(out: &Path, options: &SimOptions) -> Result<SimSummary, SimError> {
    if !(1..=50_000_000).contains(&options.transactions) {
        return Err(SimError::Options(format!(
            "--transactions {} is out of range: use 1 to 50000000",
            options.transactions
        )));
    }
    let schema = SourceSchema::embedded();
    if options.sub_penny_permille > 1000 {
        return Err(SimError::Options(format!(
            "--sub-penny {} is out of range: use 0 to 1000 (per mille of foreign document lines)",
            options.sub_penny_permille
        )));
    }
    if let Some(before) = options.clear_audit_trail_before {
        let day = write::day_number(before);
        if !(-write::SPAN_DAYS..=0).contains(&day) {
            return Err(SimError::Options(format!(
                "--clear-audit-trail-before {before} is outside the company's two financial years: \
                 use a date from 2024-04-01 to 2026-04-01"
            )));
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let n = options.transactions as usize;
    let company = write::Company::new(&mut rng, options.seed, n);
    let size = ledger::Size {
        headers: options.transactions,
        splits: options.max_splits.unwrap_or(u64::MAX),
        span_days: write::SPAN_DAYS,
        customers: company.customers.len(),
        suppliers: company.suppliers.len(),
        projects: company.projects,
        year_end: options.year_end.then_some(write::PRIOR_YEAR_END),
        exchange_differences: options.exchange_differences,
    };
    let customer_currency: Vec<u8> = company.customers.iter().map(|p| p.currency).collect();
    let supplier_currency: Vec<u8> = company.suppliers.iter().map(|p| p.currency).collect();
    let customer_due: Vec<i16> = company.customers.iter().map(|p| p.due_days).collect();
    let supplier_due: Vec<i16> = company.suppliers.iter().map(|p| p.due_days).collect();
    let mut ledger = ledger::generate(
        &mut rng,
        &size,
        &customer_currency,
        &supplier_currency,
        &customer_due,
        &supplier_due,
    );
    if let Some(before) = options.clear_audit_trail_before {
        ledger::clear_audit_trail(&mut ledger, write::day_number(before));
    }
    write_atomically(out, |tmp| {
        write::write(tmp, &schema, &company, &ledger, options.sub_penny_permille)
    })
}

/// Writes a company from a SQL script of INSERT statements over the schema's tables.
pub fn from_script(out: &Path, script: &Path) -> Result<SimSummary, SimError> {
    let sql = std::fs::read_to_string(script).map_err(|source| SimError::Script {
        path: script.to_owned(),
        source,
    })?;
    let schema = SourceSchema::embedded();
    write_atomically(out, |tmp| write::write_script(tmp, &schema, &sql))
}

/// Builds the database under a temporary name with `write`, then renames it into place.
fn write_atomically(
    out: &Path,
    write: impl FnOnce(&Path) -> Result<Vec<(String, u64)>, SimError>,
) -> Result<SimSummary, SimError> {
    let database = prepare_folder(out)?;
    let tmp = database.with_extension("DB.tmp");
    remove_if_exists(&tmp)?;
    let counts = write(&tmp)?;
    std::fs::rename(&tmp, &database).map_err(|source| SimError::Io {
        path: database.clone(),
        source,
    })?;
    Ok(SimSummary {
        connection_string: connection_string(&database),
        database,
        counts,
    })
}

fn prepare_folder(out: &Path) -> Result<PathBuf, SimError> {
    let folder = out.join(DATA_FOLDER);
    std::fs::create_dir_all(&folder).map_err(|source| SimError::Io {
        path: folder.clone(),
        source,
    })?;
    Ok(folder.join(DATABASE_FILE))
}

fn remove_if_exists(path: &Path) -> Result<(), SimError> {
    crate::files::remove_if_exists(path).map_err(|source| SimError::Io {
        path: path.to_owned(),
        source,
    })
}
