//! Shared helpers: run the binaries, make companies, open the source and the staging store.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SIM: &str = env!("CARGO_BIN_EXE_sage50-sim");
pub const CONNECTOR: &str = env!("CARGO_BIN_EXE_connector");

/// A temporary folder that lives as long as the value.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("connector-it-")
        .tempdir()
        .expect("temp dir")
}

/// A generated company: its folder and ODBC connection string.
pub struct Company {
    pub dir: PathBuf,
    pub odbc: String,
}

impl Company {
    pub fn database(&self) -> PathBuf {
        self.dir.join("ACCDATA").join("SAGE50.DB")
    }

    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.database()).expect("open source")
    }
}

/// Runs `sage50-sim` with extra arguments and returns the company.
pub fn sim(dir: &Path, args: &[&str]) -> Company {
    let out = Command::new(SIM)
        .arg("--out")
        .arg(dir)
        .args(args)
        .output()
        .expect("run sage50-sim");
    assert!(
        out.status.success(),
        "sage50-sim failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let odbc = String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned();
    Company {
        dir: dir.to_owned(),
        odbc,
    }
}

/// Generates a company from a seed and a number of transactions.
pub fn generated(dir: &Path, seed: u64, transactions: u64) -> Company {
    sim(
        dir,
        &[
            "--seed",
            &seed.to_string(),
            "--transactions",
            &transactions.to_string(),
        ],
    )
}

/// Runs `connector extract` and returns its output (success or not).
pub fn extract(odbc: &str, staging: &Path, extra: &[&str]) -> Output {
    Command::new(CONNECTOR)
        .args(["extract", "--odbc", odbc, "--staging"])
        .arg(staging)
        .args(extra)
        .env("RUST_LOG", "info")
        .output()
        .expect("run connector")
}

/// Runs `connector extract`, asserting success.
pub fn extract_ok(odbc: &str, staging: &Path) -> Output {
    let out = extract(odbc, staging, &[]);
    assert!(out.status.success(), "extract failed: {}", text(&out));
    out
}

/// Standard output and error together, for messages and assertions.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Opens a staging store read-only.
pub fn staging(path: &Path) -> duckdb::Connection {
    let config = duckdb::Config::default()
        .access_mode(duckdb::AccessMode::ReadOnly)
        .expect("config");
    duckdb::Connection::open_with_flags(path, config).expect("open staging")
}

/// The generation id recorded in a staging store.
pub fn generation(path: &Path) -> String {
    staging(path)
        .query_row("SELECT generation FROM _connector_generation", [], |r| {
            r.get(0)
        })
        .expect("generation row")
}
