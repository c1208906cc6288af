//! Extraction stages every table faithfully and replaces the staging store whole or not at all.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    CONNECTOR, extract, extract_ok, generated, generation, staging, tempdir, text,
};

const TABLES: &[&str] = &[
    "COMPANY",
    "NOMINAL_LEDGER",
    "SALES_LEDGER",
    "PURCHASE_LEDGER",
    "BANK",
    "TAX_CODE",
    "DEPARTMENT",
    "PROJECT",
    "CURRENCY",
    "STOCK",
    "AUDIT_HEADER",
    "AUDIT_SPLIT",
    "AUDIT_USAGE",
    "AUDIT_JOURNAL",
    "INVOICE",
    "INVOICE_ITEM",
    "DELETED_RECORDS",
];

#[test]
fn row_counts_in_staging_equal_the_source() {
    let dir = tempdir();
    let company = generated(dir.path(), 21, 2_500);
    let path = dir.path().join("staging.duckdb");
    let out = extract_ok(&company.odbc, &path);
    let source = company.sqlite();
    let staged = staging(&path);
    for table in TABLES {
        let want: i64 = source
            .query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .unwrap();
        let got: i64 = staged
            .query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(got, want, "{table}");
        assert!(
            want > 0,
            "{table} should not be empty in a generated company"
        );
    }
    let log = text(&out);
    assert!(
        log.contains("Extracted table.") && log.contains("rows_per_sec"),
        "per-table log lines missing: {log}"
    );
}

/// Every AUDIT_SPLIT value that matters (dates, DOUBLE amounts bit for bit, text) is equal.
#[test]
fn dates_amounts_and_non_ascii_text_are_staged_exactly() {
    let dir = tempdir();
    let company = generated(dir.path(), 22, 2_000);
    let path = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &path);
    type Row = (i64, String, f64, f64, String, String, String);
    let source: Vec<Row> = {
        let c = company.sqlite();
        let mut s = c
            .prepare("SELECT SPLIT_NUMBER, DATE, NET_AMOUNT, OUTSTANDING, DETAILS, ACCOUNT_REF, RECORD_MODIFY_DATE FROM AUDIT_SPLIT ORDER BY 1")
            .unwrap();
        s.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    let staged: Vec<Row> = {
        let c = staging(&path);
        let mut s = c
            .prepare(
                "SELECT SPLIT_NUMBER, CAST(DATE AS VARCHAR), NET_AMOUNT, OUTSTANDING, DETAILS, ACCOUNT_REF,
                 strftime(RECORD_MODIFY_DATE, '%Y-%m-%d %H:%M:%S') FROM AUDIT_SPLIT ORDER BY 1",
            )
            .unwrap();
        s.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
    };
    assert_eq!(staged.len(), source.len());
    for (s, t) in source.iter().zip(&staged) {
        assert_eq!(s.0, t.0);
        assert_eq!(s.1, t.1, "DATE of split {}", s.0);
        assert_eq!(s.2.to_bits(), t.2.to_bits(), "NET_AMOUNT of split {}", s.0);
        assert_eq!(s.3.to_bits(), t.3.to_bits(), "OUTSTANDING of split {}", s.0);
        assert_eq!(s.4, t.4, "DETAILS of split {}", s.0);
        assert_eq!(s.5, t.5, "ACCOUNT_REF of split {}", s.0);
        assert_eq!(s.6, t.6, "RECORD_MODIFY_DATE of split {}", s.0);
    }
    assert!(
        staged.iter().any(|r| !r.4.is_ascii()),
        "the sample should include non-ASCII text"
    );
    assert!(
        staged.iter().any(|r| r.5.is_empty()),
        "the sample should include empty strings"
    );
    // Names with non-ASCII characters survive too.
    let c = company.sqlite();
    let names: Vec<String> = c
        .prepare("SELECT NAME FROM SALES_LEDGER ORDER BY ACCOUNT_REF")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let staged_names: Vec<String> = staging(&path)
        .prepare("SELECT NAME FROM SALES_LEDGER ORDER BY ACCOUNT_REF")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(names, staged_names);
}

#[test]
fn staged_types_are_faithful_to_the_source() {
    let dir = tempdir();
    let company = generated(dir.path(), 23, 300);
    let path = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &path);
    let c = staging(&path);
    let ty = |table: &str, column: &str| -> String {
        c.query_row(
            "SELECT data_type FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
            [table, column],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{table}.{column}: {e}"))
    };
    assert_eq!(ty("AUDIT_SPLIT", "DATE"), "DATE");
    assert_eq!(ty("AUDIT_SPLIT", "NET_AMOUNT"), "DOUBLE");
    assert_eq!(ty("AUDIT_SPLIT", "SPLIT_NUMBER"), "INTEGER");
    assert_eq!(ty("AUDIT_SPLIT", "DEPT_NUMBER"), "SMALLINT");
    assert_eq!(ty("AUDIT_SPLIT", "DETAILS"), "VARCHAR");
    assert_eq!(ty("AUDIT_HEADER", "RECORD_CREATE_DATE"), "TIMESTAMP");
    assert_eq!(ty("NOMINAL_LEDGER", "ACCOUNT_REF"), "VARCHAR");
}

#[test]
fn a_failed_extraction_leaves_the_previous_staging_intact() {
    let dir = tempdir();
    let company = generated(dir.path(), 24, 1_500);
    let path = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &path);
    let before = generation(&path);
    let splits: i64 = staging(&path)
        .query_row("SELECT COUNT(*) FROM AUDIT_SPLIT", [], |r| r.get(0))
        .unwrap();
    // A value longer than any the connector reads, late in the table order.
    company
        .sqlite()
        .execute(
            "UPDATE AUDIT_JOURNAL SET ACCOUNT_REF = printf('%.5000000c', 'x') WHERE rowid = 50",
            [],
        )
        .unwrap();
    let out = extract(&company.odbc, &path, &[]);
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains("reading table AUDIT_JOURNAL failed")
            && message.contains("column ACCOUNT_REF"),
        "{message}"
    );
    assert_eq!(
        generation(&path),
        before,
        "the previous generation must stay in place"
    );
    let after: i64 = staging(&path)
        .query_row("SELECT COUNT(*) FROM AUDIT_SPLIT", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, splits);
    assert!(
        !dir.path().join("staging.duckdb.building").exists(),
        "the abandoned generation is removed"
    );
}

#[test]
fn a_value_longer_than_its_declared_column_arrives_whole() {
    let dir = tempdir();
    let company = generated(dir.path(), 25, 300);
    let path = dir.path().join("staging.duckdb");
    // ACCOUNT_REF is declared 8 characters; a Sage user's 300 and 20,000 still arrive whole.
    let long: String = "\u{e9}x\u{2019}".repeat(100);
    let longer = "y".repeat(20_000);
    let sage = company.sqlite();
    sage.execute(
        "UPDATE AUDIT_JOURNAL SET ACCOUNT_REF = ?1 WHERE rowid = 7",
        [&long],
    )
    .unwrap();
    sage.execute(
        "UPDATE AUDIT_JOURNAL SET ACCOUNT_REF = ?1 WHERE rowid = 9",
        [&longer],
    )
    .unwrap();
    extract_ok(&company.odbc, &path);
    let db = staging(&path);
    for value in [&long, &longer] {
        let n: i64 = db
            .query_row(
                "SELECT COUNT(*) FROM AUDIT_JOURNAL WHERE ACCOUNT_REF = ?",
                [value],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "a value of {} characters", value.chars().count());
    }
}

#[test]
fn a_killed_extraction_leaves_the_previous_staging_intact_and_a_rerun_completes() {
    let dir = tempdir();
    let company = generated(dir.path(), 25, 60_000);
    let path = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &path);
    let before = generation(&path);
    // Kill at several points of a second extraction.
    let mut killed_mid_way = 0;
    for delay_ms in [30u64, 150, 400] {
        let mut child = Command::new(CONNECTOR)
            .args(["extract", "--odbc", &company.odbc, "--staging"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let building = dir.path().join("staging.duckdb.building").exists();
        let finished_already = child.try_wait().unwrap().is_some();
        child.kill().unwrap();
        child.wait().unwrap();
        if building && !finished_already {
            killed_mid_way += 1;
            assert_eq!(
                generation(&path),
                before,
                "killed after {:?}",
                started.elapsed()
            );
        }
    }
    assert!(
        killed_mid_way > 0,
        "no kill landed while a new generation was being built: use a larger company"
    );
    extract_ok(&company.odbc, &path);
    assert_ne!(generation(&path), before);
}

#[test]
fn verify_counts_checks_each_table_against_the_source() {
    let dir = tempdir();
    let company = generated(dir.path(), 26, 400);
    let out = extract(
        &company.odbc,
        &dir.path().join("s.duckdb"),
        &["--verify-counts"],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_second_extraction_into_the_same_store_waits_its_turn() {
    let dir = tempdir();
    let company = generated(dir.path(), 27, 60_000);
    let path = dir.path().join("staging.duckdb");
    let mut first = Command::new(CONNECTOR)
        .args(["extract", "--odbc", &company.odbc, "--staging"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let building = dir.path().join("staging.duckdb.building");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !building.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        building.exists(),
        "the first extraction never started building"
    );
    let second = extract(&company.odbc, &path, &[]);
    assert!(!second.status.success());
    assert!(
        text(&second).contains("another extraction into this staging store is running"),
        "{}",
        text(&second)
    );
    assert!(
        first.wait().unwrap().success(),
        "the first extraction must not be disturbed"
    );
    assert!(
        staging(&path)
            .query_row("SELECT COUNT(*) FROM AUDIT_SPLIT", [], |r| r
                .get::<_, i64>(0))
            .unwrap()
            > 0
    );
}
