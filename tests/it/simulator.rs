//! The simulator is a convincing Sage company: its books balance and agree with themselves.
//! Every check here is plain SQL over the SQLite file, independent of the generator's code.
//! Amounts are compared in hundredths of a penny (`ROUND(x * 10000)`): foreign document lines
//! may hold Sage-derived fractions of a penny, and every balance must add those up exactly.

use crate::support::{generated, sim, tempdir};

fn one_i64(c: &rusqlite::Connection, sql: &str) -> i64 {
    c.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[test]
fn every_header_posts_balanced_double_entry() {
    let dir = tempdir();
    let co = generated(dir.path(), 11, 3_000).sqlite();
    let unbalanced = one_i64(
        &co,
        "SELECT COUNT(*) FROM (SELECT HEADER_NUMBER FROM AUDIT_JOURNAL GROUP BY HEADER_NUMBER
         HAVING ABS(SUM(ROUND(AMOUNT * 10000))) > 0)",
    );
    assert_eq!(unbalanced, 0);
    let headers_without_journal = one_i64(
        &co,
        "SELECT COUNT(*) FROM AUDIT_HEADER h WHERE NOT EXISTS
         (SELECT 1 FROM AUDIT_JOURNAL j WHERE j.HEADER_NUMBER = h.HEADER_NUMBER)",
    );
    assert_eq!(headers_without_journal, 0);
}

#[test]
fn nominal_balances_and_monthly_balances_equal_the_journal() {
    let dir = tempdir();
    let co = generated(dir.path(), 12, 3_000).sqlite();
    let wrong_total = one_i64(
        &co,
        "SELECT COUNT(*) FROM NOMINAL_LEDGER n LEFT JOIN (SELECT NOMINAL_CODE, SUM(ROUND(AMOUNT*10000)) p
           FROM AUDIT_JOURNAL WHERE DELETED_FLAG = 0 GROUP BY NOMINAL_CODE) j ON j.NOMINAL_CODE = n.ACCOUNT_REF
         WHERE ROUND(n.BALANCE * 10000) <> COALESCE(j.p, 0)",
    );
    assert_eq!(
        wrong_total, 0,
        "NOMINAL_LEDGER.BALANCE differs from the journal"
    );
    let codes_not_in_chart = one_i64(
        &co,
        "SELECT COUNT(DISTINCT NOMINAL_CODE) FROM AUDIT_JOURNAL WHERE NOMINAL_CODE NOT IN (SELECT ACCOUNT_REF FROM NOMINAL_LEDGER)",
    );
    assert_eq!(codes_not_in_chart, 0);
    // Financial year from COMPANY: month k is k-1 months after FINANCIAL_YEAR.
    let wrong_months = one_i64(
        &co,
        "WITH fy AS (SELECT FINANCIAL_YEAR s FROM COMPANY),
         m AS (SELECT NOMINAL_CODE, (CAST(strftime('%Y', DATE) AS INT) - CAST(strftime('%Y', (SELECT s FROM fy)) AS INT)) * 12
                  + CAST(strftime('%m', DATE) AS INT) - CAST(strftime('%m', (SELECT s FROM fy)) AS INT) + 1 AS k,
                  ROUND(AMOUNT*10000) p FROM AUDIT_JOURNAL WHERE DELETED_FLAG = 0),
         per AS (SELECT NOMINAL_CODE, SUM(CASE WHEN k < 1 THEN p ELSE 0 END) bf,
                  SUM(CASE WHEN k = 1 THEN p ELSE 0 END) m1, SUM(CASE WHEN k = 6 THEN p ELSE 0 END) m6,
                  SUM(CASE WHEN k = 12 THEN p ELSE 0 END) m12 FROM m GROUP BY NOMINAL_CODE)
         SELECT COUNT(*) FROM NOMINAL_LEDGER n JOIN per ON per.NOMINAL_CODE = n.ACCOUNT_REF
         WHERE ROUND(n.BALANCE_BF*10000) <> per.bf OR ROUND(n.BALANCE_MTH1*10000) <> per.m1
            OR ROUND(n.BALANCE_MTH6*10000) <> per.m6 OR ROUND(n.BALANCE_MTH12*10000) <> per.m12",
    );
    assert_eq!(wrong_months, 0, "monthly balances differ from the journal");
    let bf_used = one_i64(
        &co,
        "SELECT COUNT(*) FROM NOMINAL_LEDGER WHERE BALANCE_BF <> 0",
    );
    assert!(
        bf_used > 0,
        "two financial years should give brought-forward balances"
    );
    let bank_wrong = one_i64(
        &co,
        "SELECT COUNT(*) FROM BANK b JOIN NOMINAL_LEDGER n ON n.ACCOUNT_REF = b.ACCOUNT_REF WHERE ROUND(b.BALANCE*10000) <> ROUND(n.BALANCE*10000)",
    );
    assert_eq!(bank_wrong, 0);
}

#[test]
fn allocations_agree_with_paid_and_outstanding_amounts() {
    let dir = tempdir();
    let co = generated(dir.path(), 13, 3_000).sqlite();
    let wrong_split = one_i64(
        &co,
        "WITH u AS (SELECT s, SUM(a) a FROM (SELECT SPLIT_NUMBER s, ROUND(AMOUNT*10000) a FROM AUDIT_USAGE
                    UNION ALL SELECT SPLIT_CROSSREF, ROUND(AMOUNT*10000) FROM AUDIT_USAGE) GROUP BY s)
         SELECT COUNT(*) FROM AUDIT_SPLIT x LEFT JOIN u ON u.s = x.SPLIT_NUMBER
         WHERE ROUND(x.AMOUNT_PAID*10000) <> COALESCE(u.a, 0)
            OR ROUND(x.OUTSTANDING*10000) <> ROUND(x.GROSS_AMOUNT*10000) - COALESCE(u.a, 0)
            OR (x.PAID_FLAG = 'Y') <> (ROUND(x.OUTSTANDING*10000) = 0)",
    );
    assert_eq!(
        wrong_split, 0,
        "split AMOUNT_PAID/OUTSTANDING/PAID_FLAG disagree with AUDIT_USAGE"
    );
    let wrong_header = one_i64(
        &co,
        "SELECT COUNT(*) FROM AUDIT_HEADER h JOIN (SELECT HEADER_NUMBER, COUNT(*) n, SUM(ROUND(GROSS_AMOUNT*10000)) g,
           SUM(ROUND(OUTSTANDING*10000)) o, SUM(ROUND(AMOUNT_PAID*10000)) p FROM AUDIT_SPLIT GROUP BY HEADER_NUMBER) s
           USING (HEADER_NUMBER)
         WHERE h.ITEM_COUNT <> s.n OR ROUND(h.GROSS_AMOUNT*10000) <> s.g OR ROUND(h.OUTSTANDING*10000) <> s.o
            OR ROUND(h.AMOUNT_PAID*10000) <> s.p",
    );
    assert_eq!(wrong_header, 0, "header totals differ from their splits");
    let cross_account = one_i64(
        &co,
        "SELECT COUNT(*) FROM AUDIT_USAGE u JOIN AUDIT_SPLIT p ON p.SPLIT_NUMBER = u.SPLIT_NUMBER
         JOIN AUDIT_SPLIT t ON t.SPLIT_NUMBER = u.SPLIT_CROSSREF WHERE p.ACCOUNT_REF <> t.ACCOUNT_REF",
    );
    assert_eq!(
        cross_account, 0,
        "an allocation pays a document of another account"
    );
    let over_allocated = one_i64(
        &co,
        "SELECT COUNT(*) FROM AUDIT_SPLIT WHERE OUTSTANDING < -0.001",
    );
    assert_eq!(over_allocated, 0);
}

#[test]
fn customer_and_supplier_balances_match_outstanding_documents_and_control_accounts() {
    let dir = tempdir();
    let co = generated(dir.path(), 14, 3_000).sqlite();
    // Sage shows both ledgers' balances positive when owed; the creditors control account
    // holds them as a credit, hence the sign.
    for (ledger, plus, minus, control, sign) in [
        (
            "SALES_LEDGER",
            "'SI','SP'",
            "'SC','SR','SA','SD'",
            "1100",
            "-",
        ),
        (
            "PURCHASE_LEDGER",
            "'PI','PR'",
            "'PC','PP','PA','PD'",
            "2100",
            "+",
        ),
    ] {
        let sql = format!(
            "WITH o AS (SELECT ACCOUNT_REF, SUM(CASE WHEN TYPE IN ({plus}) THEN 1 ELSE -1 END * ROUND(OUTSTANDING*10000)) p
               FROM AUDIT_HEADER WHERE DELETED_FLAG = 0 AND TYPE IN ({plus}, {minus}) GROUP BY ACCOUNT_REF)
             SELECT COUNT(*) FROM {ledger} l LEFT JOIN o USING (ACCOUNT_REF) WHERE ROUND(l.BALANCE*10000) <> COALESCE(o.p, 0)"
        );
        assert_eq!(
            one_i64(&co, &sql),
            0,
            "{ledger} balances differ from outstanding documents"
        );
        let control_diff = one_i64(
            &co,
            &format!(
                "SELECT CAST((SELECT ROUND(SUM(BALANCE)*10000) FROM {ledger}) {sign} (SELECT ROUND(BALANCE*10000) FROM NOMINAL_LEDGER WHERE ACCOUNT_REF = '{control}') AS INTEGER)"
            ),
        );
        assert_eq!(
            control_diff, 0,
            "{ledger} total differs from control account {control}"
        );
    }
}

#[test]
fn all_transaction_types_and_awkward_cases_occur() {
    let dir = tempdir();
    let co = generated(dir.path(), 15, 5_000).sqlite();
    for ty in [
        "SI", "SC", "SR", "SA", "SD", "SP", "PI", "PC", "PP", "PA", "PD", "PR", "BP", "BR", "CP",
        "CR", "VP", "VR", "JD", "JC",
    ] {
        let n = one_i64(
            &co,
            &format!("SELECT COUNT(*) FROM AUDIT_SPLIT WHERE TYPE = '{ty}'"),
        );
        assert!(n > 0, "no {ty} splits");
    }
    let cases = [
        (
            "headers whose splits have different dates",
            "SELECT COUNT(*) FROM (SELECT HEADER_NUMBER FROM AUDIT_SPLIT GROUP BY HEADER_NUMBER HAVING COUNT(DISTINCT DATE) > 1)",
        ),
        (
            "journals mixing JD and JC",
            "SELECT COUNT(*) FROM (SELECT HEADER_NUMBER FROM AUDIT_SPLIT GROUP BY HEADER_NUMBER HAVING SUM(TYPE='JD') > 0 AND SUM(TYPE='JC') > 0)",
        ),
        (
            "receipts allocated to several invoices on different dates",
            "SELECT COUNT(*) FROM (SELECT h.HEADER_NUMBER FROM AUDIT_USAGE u JOIN AUDIT_SPLIT s ON s.SPLIT_NUMBER = u.SPLIT_NUMBER JOIN AUDIT_HEADER h ON h.HEADER_NUMBER = s.HEADER_NUMBER WHERE h.TYPE = 'SR' GROUP BY h.HEADER_NUMBER HAVING COUNT(DISTINCT u.SPLIT_CROSSREF) > 1 AND COUNT(DISTINCT u.DATE) > 1)",
        ),
        (
            "part-allocated receipts",
            "SELECT COUNT(*) FROM AUDIT_HEADER WHERE TYPE = 'SR' AND AMOUNT_PAID > 0 AND OUTSTANDING > 0",
        ),
        (
            "payments on account",
            "SELECT COUNT(*) FROM AUDIT_HEADER WHERE TYPE IN ('SA','PA')",
        ),
        (
            "credit notes allocated to invoices",
            "SELECT COUNT(*) FROM AUDIT_USAGE WHERE TYPE = 'SC'",
        ),
        (
            "payments on account later allocated to invoices",
            "SELECT COUNT(*) FROM AUDIT_USAGE u JOIN AUDIT_SPLIT t ON t.SPLIT_NUMBER = u.SPLIT_CROSSREF WHERE u.TYPE = 'SA' AND t.TYPE = 'SI'",
        ),
        (
            "deleted transactions with DELETED_RECORDS",
            "SELECT COUNT(*) FROM AUDIT_HEADER h JOIN DELETED_RECORDS d ON d.FOREIGN_REF = h.HEADER_NUMBER WHERE h.DELETED_FLAG = 1",
        ),
        (
            "bank transfers",
            "SELECT COUNT(*) FROM (SELECT s.HEADER_NUMBER FROM AUDIT_SPLIT s JOIN BANK b ON b.ACCOUNT_REF = s.NOMINAL_CODE WHERE s.TYPE IN ('JD','JC') GROUP BY s.HEADER_NUMBER HAVING COUNT(*) = 2)",
        ),
        (
            "foreign-currency invoices",
            "SELECT COUNT(*) FROM AUDIT_HEADER WHERE TYPE = 'SI' AND CURRENCY <> 1 AND FOREIGN_RATE <> 1",
        ),
        (
            "non-ASCII text",
            "SELECT (SELECT COUNT(*) FROM SALES_LEDGER WHERE NAME GLOB '*[^ -~]*') + (SELECT COUNT(*) FROM AUDIT_SPLIT WHERE DETAILS LIKE '%£%')",
        ),
        (
            "amounts not exactly representable as DOUBLE",
            "SELECT COUNT(*) FROM AUDIT_SPLIT WHERE ROUND(NET_AMOUNT * 100) % 25 <> 0",
        ),
        (
            "foreign document lines with a fraction of a penny, as Sage derives them",
            "SELECT COUNT(*) FROM AUDIT_SPLIT WHERE ABS(NET_AMOUNT * 100 - ROUND(NET_AMOUNT * 100)) > 0.001",
        ),
        (
            "empty strings where Sage has them",
            "SELECT COUNT(*) FROM AUDIT_HEADER WHERE INV_REF = '' AND ACCOUNT_REF = ''",
        ),
    ];
    for (case, sql) in cases {
        assert!(one_i64(&co, sql) > 0, "no {case}");
    }
}

#[test]
fn same_seed_gives_same_company_and_another_seed_another() {
    let dir = tempdir();
    let dump = |seed: u64, name: &str| {
        let co = generated(&dir.path().join(name), seed, 500).sqlite();
        let mut stmt = co
            .prepare("SELECT * FROM AUDIT_SPLIT ORDER BY SPLIT_NUMBER")
            .unwrap();
        let cols = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..cols)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        rows.join("\n")
    };
    let a = dump(5, "a");
    assert_eq!(a, dump(5, "b"));
    assert_ne!(a, dump(6, "c"));
}

#[test]
fn transactions_flag_sets_the_number_of_headers() {
    let dir = tempdir();
    let co = generated(dir.path(), 1, 100).sqlite();
    assert_eq!(one_i64(&co, "SELECT COUNT(*) FROM AUDIT_HEADER"), 100);
    let dir = tempdir();
    let co = sim(
        dir.path(),
        &["--transactions", "10000", "--max-splits", "1000"],
    )
    .sqlite();
    assert_eq!(
        one_i64(
            &co,
            "SELECT MAX(SPLIT_NUMBER) >= 1000 AND MAX(SPLIT_NUMBER) < 1010 FROM AUDIT_SPLIT"
        ),
        1
    );
}

#[test]
fn clear_audit_trail_moves_settled_transactions_to_history_and_keeps_every_balance() {
    let dir = tempdir();
    let args = ["--seed", "16", "--transactions", "3000"];
    let kept = sim(&dir.path().join("kept"), &args).sqlite();
    let cleared = sim(
        &dir.path().join("cleared"),
        &[&args[..], &["--clear-audit-trail-before", "2025-01-01"]].concat(),
    )
    .sqlite();
    let moved = one_i64(&cleared, "SELECT COUNT(*) FROM AUDIT_HISTORY_HEADER");
    assert!(moved > 100, "transactions archived: {moved}");
    // Moved, not copied: every header is in exactly one of the two tables, and so are its
    // splits, postings and allocations.
    for (table, key) in [
        ("HEADER", "HEADER_NUMBER"),
        ("SPLIT", "SPLIT_NUMBER"),
        ("USAGE", "USAGE_NUMBER"),
    ] {
        let both = one_i64(
            &cleared,
            &format!(
                "SELECT COUNT(*) FROM AUDIT_{table} WHERE {key} IN (SELECT {key} FROM AUDIT_HISTORY_{table})"
            ),
        );
        assert_eq!(both, 0, "{table} rows both live and archived");
        let all =
            |c: &rusqlite::Connection, t: &str| one_i64(c, &format!("SELECT COUNT(*) FROM {t}"));
        let before = all(&kept, &format!("AUDIT_{table}"));
        let after = all(&cleared, &format!("AUDIT_{table}"))
            + all(&cleared, &format!("AUDIT_HISTORY_{table}"));
        let opening = if table == "USAGE" {
            0
        } else if table == "HEADER" {
            1
        } else {
            one_i64(
                &cleared,
                "SELECT ITEM_COUNT FROM AUDIT_HEADER WHERE INV_REF = 'O/Bal'",
            )
        };
        assert_eq!(
            after,
            before + opening,
            "{table}: nothing lost, one O/Bal journal added"
        );
    }
    // Only settled transactions dated before the clearing date were moved.
    let unsettled = one_i64(
        &cleared,
        "SELECT COUNT(*) FROM AUDIT_HISTORY_SPLIT WHERE DATE >= '2025-01-01'
            OR (TYPE NOT IN ('BP','BR','CP','CR','VP','VR','JD','JC') AND ROUND(OUTSTANDING * 100) <> 0)",
    );
    assert_eq!(unsettled, 0);
    // Every balance Sage shows is what it was, and the live journal still adds up to it.
    for sql in [
        "SELECT group_concat(ACCOUNT_REF || ':' || ROUND(BALANCE * 10000), ',') FROM (SELECT * FROM NOMINAL_LEDGER ORDER BY ACCOUNT_REF)",
        "SELECT group_concat(ACCOUNT_REF || ':' || ROUND(BALANCE * 10000), ',') FROM (SELECT * FROM SALES_LEDGER ORDER BY ACCOUNT_REF)",
        "SELECT group_concat(ACCOUNT_REF || ':' || ROUND(BALANCE * 10000), ',') FROM (SELECT * FROM PURCHASE_LEDGER ORDER BY ACCOUNT_REF)",
        "SELECT group_concat(ACCOUNT_REF || ':' || ROUND(BALANCE * 10000), ',') FROM (SELECT * FROM BANK ORDER BY ACCOUNT_REF)",
        "SELECT group_concat(n || ':' || p, ',') FROM (SELECT NOMINAL_CODE n, SUM(ROUND(AMOUNT * 10000)) p FROM AUDIT_JOURNAL
           WHERE DELETED_FLAG = 0 GROUP BY NOMINAL_CODE ORDER BY NOMINAL_CODE)",
    ] {
        let read = |c: &rusqlite::Connection| -> String { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(read(&kept), read(&cleared), "{sql}");
    }
}
