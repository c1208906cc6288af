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

/// A two-column query (key, value) as a map.
fn query_map<V: duckdb::types::FromSql>(
    conn: &duckdb::Connection,
    sql: &str,
) -> BTreeMap<String, V> {
    let mut stmt = conn.prepare(sql).unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, V>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn staged_map(conn: &duckdb::Connection, sql: &str) -> BTreeMap<String, i64> {
    query_map(conn, sql)
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

fn text_map(conn: &duckdb::Connection, sql: &str) -> BTreeMap<String, String> {
    query_map(conn, sql)
}

fn expected_text(table: &toml::Table, name: &str) -> BTreeMap<String, String> {
    table[name]
        .as_table()
        .unwrap_or_else(|| panic!("normalised.toml has no [{name}]"))
        .iter()
        .map(|(k, v)| {
            let v = v
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            (k.clone(), v)
        })
        .collect()
}

#[test]
fn golden_company_normalises_to_the_hand_computed_figures() {
    use connector::model::DataModel;
    use connector::rules::{self, Rules, Workspace};
    use connector::schema::SourceSchema;

    let expected: toml::Table = std::fs::read_to_string(Path::new(FIXTURE).join("normalised.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let dir = tempdir();
    let script = Path::new(FIXTURE).join("company.sql");
    let company = sim(dir.path(), &["--script", script.to_str().unwrap()]);
    let path = dir.path().join("golden.duckdb");
    extract_ok(&company.odbc, &path);
    let out = dir.path().join("normalised.duckdb");
    let ws = Workspace::over_staging(&path, Some(&out), &SourceSchema::embedded()).unwrap();
    let report = rules::normalise(&ws, &Rules::embedded(), &DataModel::embedded()).unwrap();
    assert!(report.failed().is_empty(), "{}", report.summary());
    assert!(
        report.checks.iter().all(|c| c.warnings == 0),
        "the golden company is consistent: no warnings expected\n{}",
        report.summary()
    );

    ws.keep().unwrap();
    let records = expected["records"].as_table().unwrap();
    let mut listed: Vec<&String> = records.keys().collect();
    let mut model: Vec<String> = DataModel::embedded()
        .types
        .into_iter()
        .map(|t| t.name)
        .collect();
    listed.sort();
    model.sort();
    assert_eq!(
        listed,
        model.iter().collect::<Vec<_>>(),
        "normalised.toml [records] lists every data type"
    );
    for (data_type, rows) in records {
        let got = report
            .totals(data_type)
            .unwrap_or_else(|| panic!("{data_type}"));
        assert_eq!(
            got.rows as i64,
            rows.as_integer().unwrap(),
            "records of {data_type}"
        );
        let deleted = expected["deleted"]
            .get(data_type)
            .and_then(|v| v.as_integer())
            .unwrap_or(0);
        assert_eq!(
            got.deleted as i64, deleted,
            "deleted records of {data_type}"
        );
    }

    let conn = duckdb::Connection::open(&out).unwrap();
    let invoices = text_map(
        &conn,
        "SELECT id, status || ' ' || totalAmount::VARCHAR || ' ' || amountDue::VARCHAR || ' ' || issueDate::VARCHAR FROM invoices",
    );
    assert_eq!(
        invoices,
        expected_text(&expected, "invoice_ids"),
        "invoices"
    );

    let sums = section(&expected, "sums");
    let live_sum = |sql: &str| -> i64 {
        conn.query_row(
            &format!("SELECT (coalesce(({sql}), 0) * 100)::BIGINT"),
            [],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    };
    for (key, want) in &sums {
        let sql = match key.as_str() {
            "bankTransactions_1200" | "bankTransactions_1210" => format!(
                "SELECT sum(amount) FROM bankTransactions WHERE NOT isDeleted AND bankAccountRef.id = '{}'",
                &key[key.len() - 4..]
            ),
            "journalEntries_totalDebit" => {
                "SELECT sum(totalDebit) FROM journalEntries WHERE NOT isDeleted".to_owned()
            }
            other => {
                let (table, field) = other.split_once('_').unwrap();
                format!("SELECT sum({field}) FROM {table} WHERE NOT isDeleted")
            }
        };
        assert_eq!(live_sum(&sql), *want, "{key}");
    }

    let lines = text_map(
        &conn,
        "SELECT id, len(lines)::VARCHAR || ' lines, ' || coalesce(
                'on account ' || list_filter(lines, l -> l.links[1].type = 'PaymentOnAccount')[1].amount::VARCHAR,
                'no on account')
         FROM (SELECT id, lines FROM payments UNION ALL SELECT id, lines FROM billPayments)",
    );
    assert_eq!(
        lines,
        expected_text(&expected, "payment_lines"),
        "payment lines"
    );

    let allocations = text_map(
        &conn,
        "SELECT 'invoices/' || id, len(paymentAllocations)::VARCHAR FROM invoices
         UNION ALL SELECT 'creditNotes/' || id, len(paymentAllocations)::VARCHAR FROM creditNotes
         UNION ALL SELECT 'bills/' || id, len(paymentAllocations)::VARCHAR FROM bills
         UNION ALL SELECT 'billCreditNotes/' || id, len(paymentAllocations)::VARCHAR FROM billCreditNotes",
    );
    assert_eq!(
        allocations,
        expected_text(&expected, "payment_allocations"),
        "allocations"
    );

    let outstanding = |sql: &str| -> BTreeMap<String, i64> {
        staged_map(
            &conn,
            &format!("SELECT account, (sum(amount) * 100)::BIGINT FROM ({sql}) GROUP BY account"),
        )
    };
    let customers = outstanding(
        "SELECT customerRef.id AS account, amountDue AS amount FROM invoices WHERE NOT isDeleted
         UNION ALL SELECT customerRef.id, -remainingCredit FROM creditNotes WHERE NOT isDeleted
         UNION ALL SELECT customerRef.id, -unallocatedAmount FROM payments WHERE NOT isDeleted
         UNION ALL SELECT id, 0 FROM customers",
    );
    assert_eq!(
        customers,
        section(&expected, "customer_outstanding"),
        "customers"
    );
    let suppliers = outstanding(
        "SELECT supplierRef.id AS account, amountDue AS amount FROM bills WHERE NOT isDeleted
         UNION ALL SELECT supplierRef.id, -remainingCredit FROM billCreditNotes WHERE NOT isDeleted
         UNION ALL SELECT supplierRef.id, -unallocatedAmount FROM billPayments WHERE NOT isDeleted
         UNION ALL SELECT id, 0 FROM suppliers",
    );
    assert_eq!(
        suppliers,
        section(&expected, "supplier_outstanding"),
        "suppliers"
    );
    // Sage's own balances, published as is, equal the hand-worked ones too.
    let balances = staged_map(&conn, "SELECT id, (balance * 100)::BIGINT FROM customers");
    assert_eq!(balances, section(&expected, "customer_outstanding"));
}
