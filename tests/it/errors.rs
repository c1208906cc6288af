//! Each error a Sage user meets is classified and explained, and no secret is ever printed.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use crate::support::{CONNECTOR, extract, extract_ok, generated, staging, tempdir, text};

fn failure(odbc: &str, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let dir = tempdir();
    let out = Command::new(CONNECTOR)
        .args(["extract", "--odbc", odbc, "--staging"])
        .arg(dir.path().join("s.duckdb"))
        .args(extra)
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "expected a failure, got: {}",
        text(&out)
    );
    text(&out)
}

#[test]
fn missing_data_folder_is_named() {
    let message = failure(
        "Driver={SQLite3};Database=/nonexistent/Company.000/ACCDATA/SAGE50.DB;NoCreat=1",
        &[],
        &[],
    );
    assert!(
        message.contains("Sage data folder not found: /nonexistent/Company.000/ACCDATA"),
        "{message}"
    );
}

#[test]
fn missing_data_file_in_an_existing_folder_is_reported_as_not_found() {
    let dir = tempdir();
    let odbc = format!(
        "Driver={{SQLite3}};Database={}/SAGE50.DB;NoCreat=1",
        dir.path().display()
    );
    let message = failure(&odbc, &[], &[]);
    assert!(message.contains("Sage data folder not found"), "{message}");
}

#[test]
fn missing_odbc_driver_is_named() {
    let dir = tempdir();
    let odbc = format!(
        "Driver={{Sage Line 50 v99}};DIR={};UID=MANAGER",
        dir.path().display()
    );
    let message = failure(&odbc, &[], &[]);
    assert!(
        message.contains("ODBC driver 'Sage Line 50 v99' is not installed"),
        "{message}"
    );
}

fn postgres() -> String {
    let port = std::env::var("CONNECTOR_TEST_PG_PORT").expect(
        "CONNECTOR_TEST_PG_PORT is set by `make test`, which starts PostgreSQL on loopback",
    );
    format!(
        "Driver={{PostgreSQL Unicode}};Server=127.0.0.1;Port={port};Database=postgres;SSLmode=disable"
    )
}

#[test]
fn rejected_credentials_are_explained_without_the_password() {
    let odbc = postgres();
    let args = [
        "--user",
        "sage_manager",
        "--password-env",
        "SAGE_TEST_PASSWORD",
    ];
    let message = failure(&odbc, &args, &[("SAGE_TEST_PASSWORD", "wrong-Pa55word")]);
    assert!(
        message.contains("Sage rejected the credentials of user 'sage_manager'"),
        "{message}"
    );
    assert!(
        !message.contains("wrong-Pa55word"),
        "the password leaked: {message}"
    );
    // The same driver with the right password gets past authentication: the check is real.
    let message = failure(&odbc, &args, &[("SAGE_TEST_PASSWORD", "correct-horse")]);
    assert!(
        message.contains("table COMPANY is missing from the Sage data"),
        "{message}"
    );
    assert!(
        !message.contains("correct-horse"),
        "the password leaked: {message}"
    );
}

#[test]
fn password_in_the_connection_string_never_reaches_logs_or_errors() {
    let odbc = format!("{};UID=sage_manager;PWD=Sup3r-s3cret", postgres());
    let message = failure(&odbc, &[], &[("RUST_LOG", "debug")]);
    assert!(message.contains("rejected the credentials"), "{message}");
    assert!(
        !message.contains("Sup3r-s3cret"),
        "the password leaked: {message}"
    );
}

#[test]
fn unset_password_variable_is_named() {
    let message = failure(&postgres(), &["--password-env", "NO_SUCH_VARIABLE_X"], &[]);
    assert!(
        message.contains("environment variable NO_SUCH_VARIABLE_X"),
        "{message}"
    );
}

#[test]
fn dataset_locked_by_another_process_is_explained() {
    let dir = tempdir();
    let company = generated(dir.path(), 31, 200);
    // Another process holds an exclusive lock, as Sage does during some operations.
    let mut holder = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\nc.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\nsys.stdin.read()",
        ])
        .arg(company.database())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    let message = failure(&company.odbc, &[], &[]);
    holder.stdin.take().unwrap().write_all(b"").unwrap();
    holder.wait().unwrap();
    assert!(
        message.contains("the Sage data is locked or in use"),
        "{message}"
    );
    // Once the lock is gone the same extraction works.
    extract_ok(&company.odbc, &dir.path().join("after.duckdb"));
}

#[test]
fn missing_required_table_fails_naming_it() {
    let dir = tempdir();
    let company = generated(dir.path(), 32, 200);
    company
        .sqlite()
        .execute_batch("DROP TABLE AUDIT_USAGE")
        .unwrap();
    let message = failure(&company.odbc, &[], &[]);
    assert!(
        message.contains("table AUDIT_USAGE is missing from the Sage data"),
        "{message}"
    );
}

#[test]
fn missing_optional_table_is_skipped_with_a_warning() {
    let dir = tempdir();
    let company = generated(dir.path(), 33, 200);
    company
        .sqlite()
        .execute_batch("DROP TABLE PROJECT")
        .unwrap();
    let path = dir.path().join("s.duckdb");
    let out = extract_ok(&company.odbc, &path);
    assert!(
        text(&out).contains(
            "WARN Optional table is missing from this Sage version and was skipped. table=PROJECT"
        ),
        "{}",
        text(&out)
    );
    let skipped: bool = staging(&path)
        .query_row(
            "SELECT skipped FROM _connector_tables WHERE table_name = 'PROJECT'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(skipped);
}

#[test]
fn missing_required_column_fails_naming_table_and_column() {
    let dir = tempdir();
    let company = generated(dir.path(), 34, 200);
    company
        .sqlite()
        .execute_batch("ALTER TABLE AUDIT_SPLIT DROP COLUMN NET_AMOUNT")
        .unwrap();
    let message = failure(&company.odbc, &[], &[]);
    assert!(
        message.contains("table AUDIT_SPLIT has no column NET_AMOUNT"),
        "{message}"
    );
}

#[test]
fn missing_optional_column_is_staged_as_null_with_a_warning() {
    let dir = tempdir();
    let company = generated(dir.path(), 35, 200);
    company
        .sqlite()
        .execute_batch("ALTER TABLE COMPANY DROP COLUMN PROGRAM_VERSION")
        .unwrap();
    let path = dir.path().join("s.duckdb");
    let out = extract(&company.odbc, &path, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("PROGRAM_VERSION"), "{}", text(&out));
    let version: Option<String> = staging(&path)
        .query_row("SELECT PROGRAM_VERSION FROM COMPANY", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, None);
}

#[test]
fn column_of_the_wrong_type_fails_naming_it() {
    let dir = tempdir();
    let company = generated(dir.path(), 36, 200);
    company
        .sqlite()
        .execute_batch("DROP TABLE CURRENCY; CREATE TABLE CURRENCY (NUMBER SMALLINT, CODE VARCHAR(4), NAME VARCHAR(30), SYMBOL VARCHAR(4), EXCHANGE_RATE DATE);")
        .unwrap();
    let message = failure(&company.odbc, &[], &[]);
    assert!(
        message.contains("table CURRENCY column EXCHANGE_RATE"),
        "{message}"
    );
}

#[test]
fn a_staging_store_torn_by_a_power_cut_is_replaced_by_the_next_sync_never_opened() {
    let dir = crate::support::tempdir();
    let company = crate::support::golden(&dir.path().join("golden"));
    let state = dir.path().join("state");
    crate::support::sync_ok(&company.odbc, "torn", &state, None, &[]);
    let staging = state.join("companies").join("torn").join("staging.duckdb");
    // A power cut: the file cut in half and a write-ahead log of garbage beside it.
    let bytes = std::fs::read(&staging).unwrap();
    std::fs::write(&staging, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        crate::support::sibling_path(&staging, "wal"),
        b"not a write-ahead log",
    )
    .unwrap();
    let out = crate::support::sync_ok(&company.odbc, "torn", &state, None, &[]);
    let log = crate::support::text(&out);
    assert!(log.contains("Setting aside the write-ahead log"), "{log}");
    assert!(!crate::support::sibling_path(&staging, "wal").exists());
    let rows: i64 = crate::support::staging(&staging)
        .query_row("SELECT count(*) FROM AUDIT_HEADER", [], |r| r.get(0))
        .unwrap();
    let source: i64 = company
        .sqlite()
        .query_row("SELECT count(*) FROM AUDIT_HEADER", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, source);
}
