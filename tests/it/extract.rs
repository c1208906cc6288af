//! Extraction stages every table faithfully and replaces the staging store whole or not at all.

use connector::schema::SourceSchema;
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
    // Kill a second extraction at three moments, found by what it says: as it reports its
    // 2nd, 8th and 15th table extracted (of more than 15). Each kill must land while the new
    // generation is being built, and leave the previous one as it was.
    let tables = SourceSchema::embedded().tables.len();
    assert!(tables > 15, "{tables} tables");
    for at in [2usize, 8, 15] {
        let mut child = Command::new(CONNECTOR)
            .args(["extract", "--odbc", &company.odbc, "--staging"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let said = std::io::BufRead::lines(std::io::BufReader::new(child.stderr.take().unwrap()));
        let mut extracted = 0;
        for line in said {
            if line.unwrap().contains("Extracted table.") {
                extracted += 1;
                if extracted == at {
                    break;
                }
            }
        }
        assert_eq!(extracted, at, "the extraction ended before table {at}");
        let building = dir.path().join("staging.duckdb.building").exists();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "the kill after table {at} did not land mid-extraction"
        );
        assert!(building, "no new generation was being built at table {at}");
        assert_eq!(generation(&path), before, "killed after table {at}");
    }
    extract_ok(&company.odbc, &path);
    assert_ne!(generation(&path), before);
}

#[test]
fn verify_counts_passes_on_an_unchanged_source_and_names_a_table_changed_during_the_extraction() {
    let dir = tempdir();
    let company = generated(dir.path(), 26, 400);
    let out = extract(
        &company.odbc,
        &dir.path().join("s.duckdb"),
        &["--verify-counts"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // A customer added in Sage after the connector read SALES_LEDGER and before it counted
    // the source again: the extraction is held at that moment (a pause point), the row goes
    // in, and the extraction fails naming the table.
    let staging = dir.path().join("changed.duckdb");
    let paused = dir.path().join("paused");
    let mut child = Command::new(CONNECTOR)
        .args([
            "extract",
            "--verify-counts",
            "--odbc",
            &company.odbc,
            "--staging",
        ])
        .arg(&staging)
        .env("CONNECTOR_PAUSE_AT", "verify-count/SALES_LEDGER")
        .env("CONNECTOR_PAUSE_FILE", &paused)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !paused.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the extraction ended before counting SALES_LEDGER"
        );
        assert!(Instant::now() < deadline, "never reached the count");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sage = company.sqlite();
    let before: i64 = sage
        .query_row("SELECT count(*) FROM SALES_LEDGER", [], |r| r.get(0))
        .unwrap();
    sage.execute(
        "INSERT INTO SALES_LEDGER (ACCOUNT_REF, NAME, BALANCE) VALUES ('ADDED01', 'Added while syncing', 0)",
        [],
    )
    .unwrap();
    drop(sage);
    std::fs::remove_file(&paused).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("SALES_LEDGER")
            && said.contains(&format!("the source now counts {} rows", before + 1))
            && said.contains("run it again"),
        "{said}"
    );
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

/// Runs SQL in the Windows-1252 test database with psql (its own client, UTF-8 on the wire):
/// the source is written by a path that is not the one under test.
fn psql_win1252(sql: &str) -> String {
    let port = std::env::var("CONNECTOR_TEST_PG_PORT").expect(
        "CONNECTOR_TEST_PG_PORT is set by `make test`, which starts PostgreSQL on loopback",
    );
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", "sage_manager"])
        .args([
            "-d",
            "sage_win1252",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
            "-c",
            sql,
        ])
        .env("PGPASSWORD", "correct-horse")
        .env("PGCLIENTENCODING", "UTF8")
        .output()
        .expect("psql runs");
    assert!(out.status.success(), "psql: {}", text(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn text_in_windows_1252_arrives_as_its_characters_through_ansi_and_unicode_drivers() {
    // Names a UK Sage company has, and a 60-character one (the column's declared length) made
    // of characters that are one byte in Windows-1252 and two or three in UTF-8.
    let names: Vec<String> = vec![
        "Caf\u{e9} \u{a3}5 \u{2019}Round\u{2019} \u{20ac}uro Ltd".to_owned(),
        "O\u{2019}Brien & Sons (\u{a3}) \u{2013} na\u{ef}ve r\u{e9}sum\u{e9}".to_owned(),
        "\u{20ac}\u{a3}\u{e9}\u{2019}".repeat(15),
        "plain ascii".to_owned(),
    ];
    assert_eq!(names[2].chars().count(), 60);
    let table = "enc_customers";
    assert_eq!(psql_win1252("SHOW server_encoding"), "WIN1252");
    let values: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("({i}, '{}')", n.replace('\'', "''")))
        .collect();
    psql_win1252(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id integer, name varchar(60)); \
         INSERT INTO {table} VALUES {}",
        values.join(", ")
    ));
    // The database holds them as Windows-1252 bytes: £ is A3, € is 80, ’ is 92.
    let hex = psql_win1252(&format!(
        "SELECT encode(convert_to(name, 'WIN1252'), 'hex') FROM {table} WHERE id = 2"
    ));
    assert!(hex.starts_with("80a3e992"), "{hex}");

    let dir = tempdir();
    let schema = dir.path().join("schema.toml");
    std::fs::write(
        &schema,
        format!(
            "[[table]]\nname = \"{table}\"\nkey = [\"id\"]\ncolumns = [\n  {{ name = \"id\", type = \"INTEGER\" }},\n  {{ name = \"name\", type = \"VARCHAR\", length = 60 }},\n]\n"
        ),
    )
    .unwrap();
    let port = std::env::var("CONNECTOR_TEST_PG_PORT").unwrap();
    let base = |driver: &str| {
        format!(
            "Driver={{{driver}}};Server=127.0.0.1;Port={port};Database=sage_win1252;SSLmode=disable;UID=sage_manager;PWD=correct-horse"
        )
    };
    // The ANSI driver with the database's own encoding on the wire: narrow text is
    // Windows-1252 bytes, as from Sage's driver on a UK PC.
    let ansi = format!(
        "{};ConnSettings=SET client_encoding TO 'WIN1252'",
        base("PostgreSQL ANSI")
    );
    let cases = [
        ("ANSI driver, default", ansi.clone()),
        (
            "ANSI driver, TextEncoding=windows-1252",
            format!("{ansi};TextEncoding=windows-1252"),
        ),
        (
            "ANSI driver, TextEncoding=1252 (a code page number)",
            format!("{ansi};TextEncoding=1252"),
        ),
        ("Unicode driver, default", base("PostgreSQL Unicode")),
    ];
    for (case, odbc) in &cases {
        let path = dir.path().join("staging.duckdb");
        let out = extract(odbc, &path, &["--schema", schema.to_str().unwrap()]);
        assert!(out.status.success(), "{case}: {}", text(&out));
        let db = staging(&path);
        let mut stmt = db
            .prepare(&format!("SELECT name FROM \"{table}\" ORDER BY id"))
            .unwrap();
        let staged: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(staged, names, "{case}");
    }
    // Told the wrong code page, the table fails naming the column and the setting to change.
    let path = dir.path().join("wrong.duckdb");
    let out = extract(
        &format!("{ansi};TextEncoding=utf-8"),
        &path,
        &["--schema", schema.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let message = text(&out);
    assert!(
        message.contains(&format!("reading table {table} failed"))
            && message.contains("column name")
            && message.contains("TextEncoding="),
        "{message}"
    );
    assert!(!message.contains("correct-horse"), "{message}");
}
