//! The hand-written golden company goes through the real driver and extraction, and its
//! staged figures equal the totals worked out by hand in `fixtures/golden/totals.toml`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::support::{extract_ok, sim, staging, tempdir};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/golden");

/// "-123.45" → -12345 pence, exactly (no floating point on the expected side).
fn pence(text: &str) -> i64 {
    let text = text.trim();
    let (sign, digits) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text),
    };
    let (units, cents) = digits.split_once('.').unwrap_or((digits, "00"));
    assert_eq!(
        cents.len(),
        2,
        "amount {text} in totals.toml must have two decimals"
    );
    sign * (units.parse::<i64>().unwrap() * 100 + cents.parse::<i64>().unwrap())
}

fn section(totals: &toml::Table, name: &str) -> BTreeMap<String, i64> {
    totals[name]
        .as_table()
        .unwrap_or_else(|| panic!("totals.toml has no [{name}]"))
        .iter()
        .map(|(k, v)| (k.clone(), pence(v.as_str().expect("amounts are strings"))))
        .collect()
}

fn staged_map(conn: &duckdb::Connection, sql: &str) -> BTreeMap<String, i64> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn golden_company_staged_totals_equal_the_hand_computed_ones() {
    let totals: toml::Table = std::fs::read_to_string(Path::new(FIXTURE).join("totals.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let dir = tempdir();
    let script = Path::new(FIXTURE).join("company.sql");
    let company = sim(dir.path(), &["--script", script.to_str().unwrap()]);
    let path = dir.path().join("golden.duckdb");
    extract_ok(&company.odbc, &path);
    let conn = staging(&path);

    for (table, rows) in totals["rows"].as_table().expect("[rows]") {
        let got: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM \"{table}\""), [], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        assert_eq!(got, rows.as_integer().unwrap(), "rows of {table}");
    }

    let trial_balance = staged_map(
        &conn,
        "SELECT NOMINAL_CODE, SUM(CAST(ROUND(AMOUNT * 100) AS BIGINT))::BIGINT FROM AUDIT_JOURNAL
         WHERE DELETED_FLAG = 0 GROUP BY 1 HAVING SUM(CAST(ROUND(AMOUNT * 100) AS BIGINT)) <> 0",
    );
    let mut expected = section(&totals, "trial_balance");
    expected.retain(|_, v| *v != 0);
    assert_eq!(trial_balance, expected, "trial balance");
    assert_eq!(
        expected.values().sum::<i64>(),
        0,
        "the hand-computed trial balance sums to zero"
    );

    let nominal = staged_map(
        &conn,
        "SELECT ACCOUNT_REF, CAST(ROUND(BALANCE * 100) AS BIGINT) FROM NOMINAL_LEDGER WHERE BALANCE <> 0",
    );
    assert_eq!(nominal, expected, "NOMINAL_LEDGER.BALANCE");

    let sums = totals["sums"].as_table().expect("[sums]");
    let (headers, deleted): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(*) FILTER (WHERE DELETED_FLAG = 1) FROM AUDIT_HEADER",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(headers, sums["headers"].as_integer().unwrap(), "headers");
    assert_eq!(
        deleted,
        sums["deleted_headers"].as_integer().unwrap(),
        "deleted headers"
    );
    let journal_total: i64 = conn
        .query_row("SELECT SUM(CAST(ROUND(AMOUNT * 100) AS BIGINT))::BIGINT FROM AUDIT_JOURNAL WHERE DELETED_FLAG = 0", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        journal_total,
        pence(sums["journal_total"].as_str().unwrap()),
        "journal total"
    );

    let customers = staged_map(
        &conn,
        "SELECT ACCOUNT_REF, CAST(ROUND(BALANCE * 100) AS BIGINT) FROM SALES_LEDGER",
    );
    assert_eq!(
        customers,
        section(&totals, "customers"),
        "customer balances"
    );
    let suppliers = staged_map(
        &conn,
        "SELECT ACCOUNT_REF, CAST(ROUND(BALANCE * 100) AS BIGINT) FROM PURCHASE_LEDGER",
    );
    assert_eq!(
        suppliers,
        section(&totals, "suppliers"),
        "supplier balances"
    );
}
