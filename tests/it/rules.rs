//! Normalisation: the SQL rules and checks over real staging stores made by real extraction,
//! the rule test cases, and what happens when the data or a rule is broken.

use std::path::{Path, PathBuf};
use std::process::Command;

use connector::model::DataModel;
use connector::rules::{self, CheckResult, CheckStatus, Report, Rules, RulesError, Workspace};
use connector::schema::SourceSchema;

use crate::support::{CONNECTOR, extract_ok, generated, tempdir, text};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every check, hand-written (sql/checks/) and generated from the data model, by name.
const EVERY_CHECK: [&str; 18] = [
    "account_balances",
    "account_categories",
    "bank_balances",
    "control_accounts",
    "documents_settle",
    "foreign_currency",
    "known_types",
    "links_exist",
    "nominal_months",
    "payments_net_to_zero",
    "references",
    "required_fields",
    "split_headers",
    "split_postings",
    "sub_penny",
    "trial_balance",
    "unique_ids",
    "vat_postings",
];

/// Generates a company, extracts it, and returns the staging path (inside `dir`).
fn staged_company(dir: &Path, seed: u64, transactions: u64) -> PathBuf {
    let company = generated(&dir.join("company"), seed, transactions);
    let staging = dir.join("staging.duckdb");
    extract_ok(&company.odbc, &staging);
    staging
}

fn normalise(staging: &Path, rules: &Rules) -> Result<Report, RulesError> {
    let ws = Workspace::over_staging(staging, None, &SourceSchema::embedded())?;
    rules::normalise(&ws, rules, &DataModel::embedded())
}

/// A copy of the staging store with `mutation` (SQL) applied to it.
fn mutated(staging: &Path, name: &str, mutation: &str) -> PathBuf {
    let copy = staging.with_file_name(format!("{name}.duckdb"));
    std::fs::copy(staging, &copy).expect("copy staging");
    let conn = duckdb::Connection::open(&copy).expect("open copy");
    conn.execute_batch(mutation).expect("apply mutation");
    copy
}

/// A check's result in a report, by name.
fn check<'r>(report: &'r Report, name: &str) -> &'r CheckResult {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check named {name}"))
}

fn status_of(report: &Report, name: &str) -> CheckStatus {
    check(report, name).status
}

/// The one value a query over the normalised tables returns.
fn scalar<T: duckdb::types::FromSql>(conn: &duckdb::Connection, sql: &str) -> T {
    conn.query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The one value a query over the simulated Sage database returns.
fn sage_scalar<T: rusqlite::types::FromSql>(sqlite: &rusqlite::Connection, sql: &str) -> T {
    sqlite
        .query_row(sql, [], |r| r.get(0))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// The first column of every row a query returns, in order.
fn column<T: duckdb::types::FromSql>(conn: &duckdb::Connection, sql: &str) -> Vec<T> {
    conn.prepare(sql)
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn failed_names(report: &Report) -> Vec<String> {
    report.failed().iter().map(|c| c.name.clone()).collect()
}

#[test]
fn generated_companies_of_many_seeds_and_sizes_pass_every_check() {
    // Every simulator option on (sub-penny amounts, Year End, Clear Audit Trail at a
    // different point of the two years each time), over several seeds and sizes.
    let sizes = [
        (11, 40, "2024-10-01"),
        (12, 400, "2025-04-01"),
        (13, 2_500, "2025-01-01"),
        (14, 9_000, "2025-11-15"),
    ];
    for (seed, transactions, cleared) in sizes {
        let dir = tempdir();
        let company = crate::support::sim(
            &dir.path().join("company"),
            &[
                "--seed",
                &seed.to_string(),
                "--transactions",
                &transactions.to_string(),
                "--sub-penny",
                "500",
                "--clear-audit-trail-before",
                cleared,
            ],
        );
        let staging = dir.path().join("staging.duckdb");
        extract_ok(&company.odbc, &staging);
        let report = normalise(&staging, &Rules::embedded()).expect("normalise");
        assert!(
            report.failed().is_empty(),
            "seed {seed}, {transactions} transactions: {}",
            report.summary()
        );
        // Every check ran, and the documents exist: a property test that checks nothing
        // would pass too.
        let mut names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        names.sort();
        assert_eq!(names, EVERY_CHECK, "{}", report.summary());
        let invoices = report.totals("invoices").unwrap();
        assert!(invoices.rows > 0, "seed {seed}: no invoices");
        let journal = report.totals("journalEntries").unwrap();
        assert!(journal.rows >= invoices.rows, "seed {seed}");
    }
}

/// One way to make a check give one of its outcomes: the staged data changed (`data`, SQL),
/// a rule file edited (`rule`: file, text, replacement), or both.
struct Firing {
    name: &'static str,
    data: Option<&'static str>,
    rule: Option<(&'static str, &'static str, &'static str)>,
    check: &'static str,
    status: CheckStatus,
    /// Text a row of the check's sample must contain: the check names what it found.
    named: &'static str,
}

/// The outcomes a check's SQL can give: `fail` for a literal `'error'` severity, `warn` for
/// `'warning'` (comments left out).
fn outcomes_written(sql: &str) -> Vec<CheckStatus> {
    let code: String = sql
        .lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    if code.contains("'error'") {
        out.push(CheckStatus::Fail);
    }
    if code.contains("'warning'") {
        out.push(CheckStatus::Warn);
    }
    out
}

/// The check outcomes the rule test cases state (`-- expect check: NAME warn|fail`), with the
/// case that states each. `rule_test_cases_pass_and_a_wrong_expectation_shows_a_diff` runs
/// every case, so each stated outcome is produced.
fn outcomes_stated_by_cases() -> Vec<(String, CheckStatus, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(Path::new(ROOT).join("fixtures/rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "case") {
            continue;
        }
        let case = path.file_stem().unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let Some(rest) = line.strip_prefix("-- expect check:") else {
                continue;
            };
            let mut words = rest.split_whitespace();
            let (Some(name), Some(status)) = (words.next(), words.next()) else {
                panic!("{case}: `{line}` names no check and outcome");
            };
            let status = match status {
                "fail" => CheckStatus::Fail,
                "warn" => CheckStatus::Warn,
                _ => continue,
            };
            out.push((name.to_owned(), status, case.clone()));
        }
    }
    out
}

/// Every check, hand-written or generated, gives each outcome its SQL can write (error and
/// warning) on a named case: a rule test case that states it, or one of the firings below,
/// each asserting that exact check and severity and what the check names. A check or an
/// outcome added without a firing case fails this test, naming it.
#[test]
fn every_check_gives_each_of_its_outcomes_on_a_named_case() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 21, 1_500);
    let clean = normalise(&staging, &Rules::embedded()).unwrap();
    assert!(clean.failed().is_empty(), "{}", clean.summary());

    let firings = [
        // Sage's own figures made to disagree: warnings, published anyway.
        Firing {
            name: "ledger_balance",
            data: Some(
                "UPDATE SALES_LEDGER SET BALANCE = BALANCE + 0.01 WHERE ACCOUNT_REF = (SELECT min(ACCOUNT_REF) FROM SALES_LEDGER)",
            ),
            rule: None,
            check: "account_balances",
            status: CheckStatus::Warn,
            named: "ledger=customer",
        },
        Firing {
            name: "bank_balance",
            data: Some("UPDATE BANK SET BALANCE = BALANCE + 10 WHERE ACCOUNT_REF = '1200'"),
            rule: None,
            check: "bank_balances",
            status: CheckStatus::Warn,
            named: "bank=1200",
        },
        Firing {
            name: "split_nominal",
            data: Some(
                "UPDATE AUDIT_SPLIT SET NOMINAL_CODE = '4009' WHERE SPLIT_NUMBER = (SELECT min(SPLIT_NUMBER) FROM AUDIT_SPLIT WHERE TYPE = 'SI' AND DELETED_FLAG = 0)",
            ),
            rule: None,
            check: "split_postings",
            status: CheckStatus::Warn,
            named: "on nominal 4009",
        },
        Firing {
            name: "split_vat",
            data: Some(
                "UPDATE AUDIT_SPLIT SET TAX_AMOUNT = TAX_AMOUNT + 1 WHERE SPLIT_NUMBER = (SELECT min(SPLIT_NUMBER) FROM AUDIT_SPLIT WHERE TYPE = 'SI' AND DELETED_FLAG = 0)",
            ),
            rule: None,
            check: "vat_postings",
            status: CheckStatus::Warn,
            named: "account=2200",
        },
        Firing {
            name: "foreign_header_total",
            data: Some(
                "UPDATE AUDIT_HEADER SET FOREIGN_GROSS_AMOUNT = FOREIGN_GROSS_AMOUNT + 1 WHERE HEADER_NUMBER = (SELECT min(HEADER_NUMBER) FROM AUDIT_HEADER WHERE TYPE = 'SI' AND FOREIGN_GROSS_AMOUNT <> GROSS_AMOUNT AND DELETED_FLAG = 0)",
            ),
            rule: None,
            check: "foreign_currency",
            status: CheckStatus::Warn,
            named: "severity=warning",
        },
        // Data that breaks double entry or identity: errors, nothing published.
        Firing {
            name: "duplicate_split",
            data: Some(
                "INSERT INTO AUDIT_SPLIT SELECT * FROM AUDIT_SPLIT WHERE SPLIT_NUMBER = (SELECT min(SPLIT_NUMBER) FROM AUDIT_SPLIT WHERE TYPE = 'SI')",
            ),
            rule: None,
            check: "unique_ids",
            status: CheckStatus::Fail,
            named: "data_type=invoices",
        },
        // Rules that change a number, lose a record or a link: errors, nothing published.
        Firing {
            name: "amount_due_changed",
            data: None,
            rule: Some((
                "31_document_types.sql",
                "d.amount_due AS amountDue,",
                "d.amount_due + 0.01 AS amountDue,",
            )),
            check: "account_balances",
            status: CheckStatus::Fail,
            named: "severity=error",
        },
        Firing {
            name: "allocation_lost",
            data: None,
            rule: Some((
                "31_document_types.sql",
                "d.allocations AS paymentAllocations,",
                "d.allocations[2:] AS paymentAllocations,",
            )),
            check: "documents_settle",
            status: CheckStatus::Fail,
            named: "data_type=invoices",
        },
        Firing {
            name: "posting_moved_nominal",
            data: None,
            rule: Some((
                "60_journal_entries.sql",
                "'accountRef': {'id': x.nominal},",
                "'accountRef': {'id': CASE WHEN x.nominal = '4000' THEN '4001' ELSE x.nominal END},",
            )),
            check: "nominal_months",
            status: CheckStatus::Fail,
            named: "nominal=4000",
        },
        Firing {
            name: "payment_link_changed",
            data: None,
            rule: Some((
                "40_payments.sql",
                "'amount': -x.amount}]",
                "'amount': -x.amount + 0.01}]",
            )),
            check: "payments_net_to_zero",
            status: CheckStatus::Fail,
            named: "severity=error",
        },
        Firing {
            name: "party_name_lost",
            data: None,
            rule: Some((
                "22_parties.sql",
                "txt(p.NAME) AS name,",
                "NULL::VARCHAR AS name,",
            )),
            check: "required_fields",
            status: CheckStatus::Fail,
            named: "field=customerName",
        },
        Firing {
            name: "split_lost",
            data: None,
            rule: Some((
                "30_documents.sql",
                "WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes')",
                "WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes') AND split_number <> (SELECT min(split_number) FROM work.splits WHERE data_type = 'invoices')",
            )),
            check: "split_headers",
            status: CheckStatus::Fail,
            named: "severity=error",
        },
        Firing {
            name: "bank_transaction_lost",
            data: None,
            rule: Some((
                "50_bank_transactions.sql",
                "ON x.header_number = j.header_number;",
                "ON x.header_number = j.header_number WHERE j.tran_number <> (SELECT min(TRAN_NUMBER) FROM sage.AUDIT_JOURNAL WHERE NOMINAL_CODE = '1200' AND DELETED_FLAG = 0 AND AMOUNT <> 0);",
            )),
            check: "bank_balances",
            status: CheckStatus::Fail,
            named: "bank=1200",
        },
        Firing {
            name: "sub_penny_rounded_alone",
            // an invoice's postings that balance at Sage's precision, not penny by penny
            data: Some(
                "UPDATE AUDIT_JOURNAL SET AMOUNT = CASE WHEN AMOUNT > 0 THEN 12.008 WHEN NOMINAL_CODE = '2200' THEN -2.004 ELSE -10.004 END \
                 WHERE SPLIT_NUMBER = (SELECT min(SPLIT_NUMBER) FROM AUDIT_JOURNAL WHERE TYPE = 'SI' AND DELETED_FLAG = 0 AND NOMINAL_CODE = '2200' AND AMOUNT <> 0)",
            ),
            rule: Some((
                "12_journal.sql",
                "coalesce(r.rounded_amount, money(j.AMOUNT))",
                "money(j.AMOUNT)",
            )),
            check: "sub_penny",
            status: CheckStatus::Fail,
            named: "severity=error",
        },
        Firing {
            name: "exchange_adjustment_unmarked",
            data: None,
            rule: Some((
                "15_exchange_adjustments.sql",
                "HAVING bool_and(",
                "HAVING false AND bool_and(",
            )),
            check: "foreign_currency",
            status: CheckStatus::Fail,
            named: "published unmarked",
        },
        Firing {
            name: "chart_categories_ignored",
            data: Some("INSERT INTO CATEGORY VALUES (4, 'Long Term Liabilities', '1230', '1230')"),
            rule: Some((
                "21_accounts.sql",
                "coalesce(c.class, account_class(n.code)) AS classification",
                "account_class(n.code) AS classification",
            )),
            check: "account_categories",
            status: CheckStatus::Fail,
            named: "account=1230",
        },
    ];
    for (k, f) in firings.iter().enumerate() {
        let source = match f.data {
            Some(sql) => mutated(&staging, f.name, sql),
            None => staging.clone(),
        };
        let rules = match f.rule {
            Some((file, from, to)) => {
                let rules_dir = edited_rules(&dir.path().join(format!("rules{k}")), file, |sql| {
                    sql.replacen(from, to, 1)
                });
                Rules::load(&rules_dir).unwrap()
            }
            None => Rules::embedded(),
        };
        // the outcome is the firing's own: on the company as generated no check fails, and
        // the check a warning is expected of passes
        if f.status == CheckStatus::Warn {
            assert_eq!(status_of(&clean, f.check), CheckStatus::Pass, "{}", f.check);
        }
        let report = normalise(&source, &rules).unwrap();
        let result = check(&report, f.check);
        assert_eq!(
            result.status,
            f.status,
            "{}: {} should give {:?}:\n{}",
            f.name,
            f.check,
            f.status,
            report.summary()
        );
        match f.status {
            CheckStatus::Fail => {
                assert!(result.errors > 0, "{}", f.name);
                let err = report.ensure_passed().unwrap_err().to_string();
                assert!(
                    err.contains(f.check) && err.contains("nothing was published"),
                    "{}: {err}",
                    f.name
                );
            }
            _ => {
                assert!(result.errors == 0 && result.warnings > 0, "{}", f.name);
                assert!(
                    report.failed().is_empty(),
                    "{}: {}",
                    f.name,
                    report.summary()
                );
            }
        }
        assert!(
            result.sample.iter().any(|row| row.contains(f.named)),
            "{}: {} should name `{}`: {:?}",
            f.name,
            f.check,
            f.named,
            result.sample
        );
    }

    // Coverage: every outcome of every check has a firing case.
    let stated = outcomes_stated_by_cases();
    let rules = Rules::embedded();
    let mut checks: Vec<(String, String)> = rules
        .checks
        .iter()
        .chain(rules::generated_checks(&DataModel::embedded()).iter())
        .map(|c| (c.stem().to_owned(), c.text.clone()))
        .collect();
    checks.sort();
    let names: Vec<&str> = checks.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, EVERY_CHECK);
    let mut missing = Vec::new();
    for (name, sql) in &checks {
        let written = outcomes_written(sql);
        assert!(!written.is_empty(), "{name} writes no severity");
        for outcome in written {
            let by_case = stated.iter().any(|(n, s, _)| n == name && *s == outcome);
            let by_firing = firings
                .iter()
                .any(|f| f.check == name && f.status == outcome);
            if !by_case && !by_firing {
                missing.push(format!("{name} {outcome:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "check outcomes no rule test case (fixtures/rules/*.case, `-- expect check: NAME warn|fail`) or firing above produces: {missing:?}"
    );
}

#[test]
fn a_transaction_type_the_rules_do_not_know_is_warned_by_name_and_totals_hold() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 23, 600);
    let clean = normalise(&staging, &Rules::embedded()).unwrap();
    assert_eq!(status_of(&clean, "known_types"), CheckStatus::Pass);
    // A journal's header, splits and postings retyped to a code no Sage release documents.
    let header = "(SELECT min(HEADER_NUMBER) FROM AUDIT_HEADER WHERE TYPE = 'JD')";
    let broken = mutated(
        &staging,
        "unknown_type",
        &format!(
            "UPDATE AUDIT_HEADER SET TYPE = 'XJ' WHERE HEADER_NUMBER = {header}; \
             UPDATE AUDIT_SPLIT SET TYPE = 'XJ' WHERE HEADER_NUMBER = {header}; \
             UPDATE AUDIT_JOURNAL SET TYPE = 'XJ' WHERE HEADER_NUMBER = {header}"
        ),
    );
    let report = normalise(&broken, &Rules::embedded()).unwrap();
    assert_eq!(status_of(&report, "known_types"), CheckStatus::Warn);
    assert!(report.failed().is_empty(), "{}", report.summary());
    let sample = &check(&report, "known_types").sample;
    assert!(
        sample
            .iter()
            .any(|row| row.contains("TYPE 'XJ' in AUDIT_HEADER")),
        "the warning names the type and the table: {sample:?}"
    );
}

/// Copies the embedded rules to a folder, applies `edit` to one file, and loads them from there.
fn edited_rules(dir: &Path, file: &str, edit: impl Fn(&str) -> String) -> PathBuf {
    let rules_dir = dir.join("sql");
    std::fs::create_dir_all(rules_dir.join("checks")).unwrap();
    let embedded = Rules::embedded();
    for f in &embedded.steps {
        let text = if f.name == file {
            let edited = edit(&f.text);
            assert_ne!(edited, f.text, "the edit of {file} must change it");
            edited
        } else {
            f.text.clone()
        };
        std::fs::write(rules_dir.join(&f.name), text).unwrap();
    }
    for f in &embedded.checks {
        std::fs::write(rules_dir.join("checks").join(&f.name), &f.text).unwrap();
    }
    rules_dir
}

#[test]
fn a_rule_that_loses_a_split_is_caught_by_split_headers() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 23, 600);
    let rules_dir = edited_rules(dir.path(), "30_documents.sql", |sql| {
        sql.replacen(
            "WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes')",
            "WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes') AND split_number <> (SELECT min(split_number) FROM work.splits WHERE data_type = 'invoices')",
            2,
        )
    });
    let report = normalise(&staging, &Rules::load(&rules_dir).unwrap()).unwrap();
    let failed = failed_names(&report);
    assert!(
        failed.contains(&"split_headers".to_owned()),
        "{}",
        report.summary()
    );
}

#[test]
fn rules_run_prints_counts_and_checks_and_fails_on_a_failed_check() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 24, 500);
    let run = |staging: &Path| {
        Command::new(CONNECTOR)
            .args(["rules", "run", "--staging"])
            .arg(staging)
            .output()
            .unwrap()
    };
    let out = run(&staging);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    for expected in ["invoices", "journalEntries", "trial_balance", "pass"] {
        assert!(stdout.contains(expected), "missing {expected}:\n{stdout}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");

    let broken = mutated(
        &staging,
        "flipped",
        "UPDATE AUDIT_JOURNAL SET AMOUNT = -AMOUNT WHERE rowid = (SELECT min(rowid) FROM AUDIT_JOURNAL WHERE AMOUNT <> 0 AND DELETED_FLAG = 0)",
    );
    let out = run(&broken);
    assert!(
        !out.status.success(),
        "a failed check must fail the command"
    );
    let kept = dir.path().join("kept.duckdb");
    let out_with_file = Command::new(CONNECTOR)
        .args(["rules", "run", "--staging"])
        .arg(&broken)
        .arg("--out")
        .arg(&kept)
        .output()
        .unwrap();
    assert!(!out_with_file.status.success());
    assert!(
        !kept.exists() && !dir.path().join("kept.duckdb.partial").exists(),
        "no output file when a check failed"
    );
    let all = text(&out);
    assert!(
        all.contains("trial_balance") && all.contains("FAIL"),
        "{all}"
    );
}

#[test]
fn a_broken_rule_is_reported_with_its_file_name() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 25, 100);
    let rules_dir = edited_rules(dir.path(), "40_payments.sql", |sql| {
        sql.replacen("SELECT", "SELEC", 1)
    });
    let out = Command::new(CONNECTOR)
        .args(["rules", "run", "--staging"])
        .arg(&staging)
        .arg("--rules-dir")
        .arg(&rules_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("rule 40_payments.sql failed") && all.contains("SELEC"),
        "{all}"
    );
}

#[test]
fn a_rule_output_that_differs_from_the_schema_names_the_field() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 26, 100);
    let rules_dir = edited_rules(dir.path(), "31_document_types.sql", |sql| {
        sql.replacen("    d.due_date AS dueDate,\n", "", 1)
    });
    let err = normalise(&staging, &Rules::load(&rules_dir).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data type invoices")
            && err.contains("field dueDate")
            && err.contains("invoices.toml"),
        "{err}"
    );
}

#[test]
fn rules_run_names_a_missing_staging_store() {
    let dir = tempdir();
    let missing = dir.path().join("nowhere.duckdb");
    let out = Command::new(CONNECTOR)
        .args(["rules", "run", "--staging"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = text(&out);
    assert!(
        all.contains("nowhere.duckdb") && all.contains("connector extract"),
        "{all}"
    );
}

#[test]
fn rule_test_cases_pass_and_a_wrong_expectation_shows_a_diff() {
    let out = Command::new(CONNECTOR)
        .args(["rules", "test", "--cases"])
        .arg(Path::new(ROOT).join("fixtures/rules"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", text(&out));
    let cases = std::fs::read_dir(Path::new(ROOT).join("fixtures/rules"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "case")
        })
        .count();
    assert!(cases >= 5, "one case per splitting rule at least");
    assert!(
        stdout.contains(&format!("\n{cases} case(s), 0 failed")),
        "every case ran and passed:\n{stdout}"
    );

    // The same case with one expected amount changed fails, showing both rows.
    let dir = tempdir();
    let original =
        std::fs::read_to_string(Path::new(ROOT).join("fixtures/rules/split_by_date.case")).unwrap();
    let wrong = original.replace("| 120.12      | 120.12    |", "| 120.13      | 120.12    |");
    assert_ne!(wrong, original, "the edit must change the case");
    std::fs::write(dir.path().join("split_by_date.case"), wrong).unwrap();
    let out = Command::new(CONNECTOR)
        .args(["rules", "test", "--cases"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("FAIL  split_by_date")
            && stdout.contains(
                "- 7-SI-20250509 | 1001 | 2025-05-09 | 2025-06-08 | 100.10 | 20.02 | 120.13"
            )
            && stdout.contains(
                "+ 7-SI-20250509 | 1001 | 2025-05-09 | 2025-06-08 | 100.10 | 20.02 | 120.12"
            ),
        "{stdout}"
    );
}

#[test]
fn normalised_tables_can_be_kept_in_a_file_without_working_tables() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 27, 300);
    let out_path = dir.path().join("normalised.duckdb");
    {
        let ws =
            Workspace::over_staging(&staging, Some(&out_path), &SourceSchema::embedded()).unwrap();
        let report = rules::normalise(&ws, &Rules::embedded(), &DataModel::embedded()).unwrap();
        assert!(report.failed().is_empty());
        assert!(!out_path.exists(), "the file appears only when kept");
        assert_eq!(ws.keep().unwrap().as_deref(), Some(out_path.as_path()));
    }
    let conn = duckdb::Connection::open(&out_path).unwrap();
    let mut stmt = conn
        .prepare("SELECT schema_name || '.' || table_name FROM duckdb_tables() ORDER BY 1")
        .unwrap();
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let model = DataModel::embedded();
    let expected: Vec<String> = {
        let mut v: Vec<String> = model
            .types
            .iter()
            .map(|t| format!("main.{}", t.name))
            .collect();
        v.sort();
        v
    };
    assert_eq!(tables, expected);
    // Money is exact decimal in the output, never a float.
    let ty: String = scalar(
        &conn,
        "SELECT data_type FROM duckdb_columns() WHERE table_name = 'invoices' AND column_name = 'totalAmount'",
    );
    assert_eq!(ty, "DECIMAL(18,2)");
}

/// A fingerprint of every record of every data type, rows in id order.
fn fingerprint(path: &Path) -> Vec<(String, String)> {
    let conn = duckdb::Connection::open(path).unwrap();
    DataModel::embedded()
        .types
        .iter()
        .map(|t| {
            let sql = format!(
                "SELECT md5(coalesce(string_agg(r::VARCHAR, chr(10) ORDER BY r.id), '')) FROM \"{}\" r",
                t.name
            );
            let hash: String = conn.query_row(&sql, [], |r| r.get(0)).unwrap();
            (t.name.clone(), hash)
        })
        .collect()
}

#[test]
fn the_same_staging_normalises_to_identical_records_every_time() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 28, 4_000);
    let run = |name: &str| {
        let out = dir.path().join(name);
        let ws = Workspace::over_staging(&staging, Some(&out), &SourceSchema::embedded()).unwrap();
        let report = rules::normalise(&ws, &Rules::embedded(), &DataModel::embedded()).unwrap();
        assert!(report.failed().is_empty());
        ws.keep().unwrap();
        fingerprint(&out)
    };
    let (first, second) = (run("first.duckdb"), run("second.duckdb"));
    assert_eq!(
        first, second,
        "ids, fields and the order inside lists are deterministic"
    );
    assert!(first.iter().all(|(_, h)| h.len() == 32));
}

#[test]
fn sub_penny_amounts_are_rounded_so_every_split_balances_and_each_split_is_named() {
    let dir = tempdir();
    // Every unpaid foreign-currency document line stored as Sage derives it from the foreign
    // amount (foreign / rate), usually with a fraction of a penny.
    let company = crate::support::sim(
        &dir.path().join("company"),
        &[
            "--seed",
            "31",
            "--transactions",
            "4000",
            "--sub-penny",
            "1000",
        ],
    );
    let sqlite = rusqlite::Connection::open(company.database()).unwrap();
    let frac = |c: &str| format!("abs({c} * 100 - round({c} * 100)) > 0.001");
    let expected: u64 = sage_scalar(
        &sqlite,
        &format!(
            "SELECT count(DISTINCT SPLIT_NUMBER) FROM (
                   SELECT SPLIT_NUMBER FROM AUDIT_SPLIT
                   WHERE {} OR {} OR {} OR {} OR {}
                   UNION ALL SELECT SPLIT_NUMBER FROM AUDIT_JOURNAL WHERE {})",
            frac("NET_AMOUNT"),
            frac("TAX_AMOUNT"),
            frac("GROSS_AMOUNT"),
            frac("AMOUNT_PAID"),
            frac("OUTSTANDING"),
            frac("AMOUNT")
        ),
    );
    assert!(
        expected >= 20,
        "the simulator wrote sub-penny splits: {expected}"
    );
    let staging = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &staging);

    let report = normalise(&staging, &Rules::embedded()).unwrap();
    assert!(report.failed().is_empty(), "{}", report.summary());
    let result = check(&report, "sub_penny");
    assert_eq!(result.status, CheckStatus::Warn, "{}", report.summary());
    assert_eq!(result.warnings, expected, "one warning per split");
    assert!(
        result.sample[0].contains("split=") && result.sample[0].contains("header="),
        "{:?}",
        result.sample
    );

    // Rounding each posting on its own (what the rules did before) breaks double entry on
    // this company, and the checks stop the sync.
    let rules_dir = edited_rules(dir.path(), "12_journal.sql", |sql| {
        sql.replace(
            "coalesce(r.rounded_amount, money(j.AMOUNT))",
            "money(j.AMOUNT)",
        )
    });
    let report = normalise(&staging, &Rules::load(&rules_dir).unwrap()).unwrap();
    let failed = failed_names(&report);
    assert!(
        failed.contains(&"trial_balance".to_owned()) && failed.contains(&"sub_penny".to_owned()),
        "{}",
        report.summary()
    );
}

/// Normalises a staging store into a kept DuckDB file and opens it.
fn normalised_file(staging: &Path, out: &Path) -> duckdb::Connection {
    let ws = Workspace::over_staging(staging, Some(out), &SourceSchema::embedded()).unwrap();
    let report = rules::normalise(&ws, &Rules::embedded(), &DataModel::embedded()).unwrap();
    assert!(report.failed().is_empty(), "{}", report.summary());
    ws.keep().unwrap();
    duckdb::Connection::open(out).unwrap()
}

#[test]
fn the_year_end_journal_is_marked_and_a_pl_without_it_is_the_years_result() {
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 41, 3_000);
    let sqlite = rusqlite::Connection::open(company.database()).unwrap();
    // The simulator's Year End, found by its wording (the rules never look at wording).
    let (header, date): (i64, String) = sqlite
        .query_row(
            "SELECT HEADER_NUMBER, DATE FROM AUDIT_HEADER WHERE DETAILS LIKE 'Year End%'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the simulator ran a year end");
    // The prior year's P&L in Sage, in pence, without the Year End journal (with it: zero).
    let pl = |with_year_end: bool| -> i64 {
        sqlite
            .query_row(
                &format!(
                    "SELECT CAST(ROUND(SUM(j.AMOUNT) * 100) AS INTEGER) FROM AUDIT_JOURNAL j
                     JOIN AUDIT_HEADER h USING (HEADER_NUMBER)
                     WHERE j.DATE <= ?1 AND h.DELETED_FLAG = 0 AND j.DELETED_FLAG = 0
                       AND CAST(j.NOMINAL_CODE AS INTEGER) BETWEEN 4000 AND 9997
                       AND ({with_year_end} OR j.HEADER_NUMBER <> ?2)"
                ),
                rusqlite::params![date, header],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(pl(true), 0, "Year End closes the P&L");
    let result = pl(false);
    assert_ne!(result, 0);

    let staging = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &staging);
    let conn = normalised_file(&staging, &dir.path().join("normalised.duckdb"));
    let marked: Vec<String> = column(
        &conn,
        "SELECT id FROM journalEntries WHERE isYearEnd ORDER BY id",
    );
    assert_eq!(marked, [header.to_string()]);
    let published_pl: i64 = conn
        .query_row(
            "SELECT CAST(sum(l.netAmount) * 100 AS BIGINT)
             FROM journalEntries e, unnest(e.journalLines) AS t(l)
             WHERE NOT e.isDeleted AND NOT e.isYearEnd AND e.postedOn <= CAST(? AS DATE)
               AND TRY_CAST(l.accountRef.id AS INTEGER) BETWEEN 4000 AND 9997",
            [&date],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(published_pl, result, "the year's P&L, from journalEntries");

    // Sage's prior-year month figures are published on accounts, and checked.
    let sage_prior: Vec<i64> = sqlite
        .query_row(
            &format!(
                "SELECT {} FROM NOMINAL_LEDGER WHERE ACCOUNT_REF = '4000'",
                (1..=12)
                    .map(|m| format!("CAST(ROUND(PRIOR_YR_MTH{m} * 100) AS INTEGER)"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            [],
            |r| (0..12).map(|i| r.get(i)).collect(),
        )
        .unwrap();
    assert!(sage_prior.iter().any(|p| *p != 0));
    let published_prior: Vec<i64> = column(
        &conn,
        "SELECT CAST(unnest(priorYearMonthlyBalances) * 100 AS BIGINT) FROM accounts WHERE id = '4000'",
    );
    assert_eq!(published_prior, sage_prior);
    let broken = mutated(
        &staging,
        "prior_year_changed",
        "UPDATE NOMINAL_LEDGER SET PRIOR_YR_MTH3 = PRIOR_YR_MTH3 + 1 WHERE ACCOUNT_REF = '4000'",
    );
    let report = normalise(&broken, &Rules::embedded()).unwrap();
    let result = check(&report, "nominal_months");
    assert_eq!(result.status, CheckStatus::Warn, "{}", report.summary());
    assert!(
        result
            .sample
            .iter()
            .any(|r| r.contains("nominal=4000") && r.contains("period=PRIOR3")),
        "{:?}",
        result.sample
    );

    // A company whose Year End was never run has no entry marked.
    let other = crate::support::sim(
        &dir.path().join("other"),
        &["--seed", "41", "--transactions", "3000", "--no-year-end"],
    );
    let staging = dir.path().join("other.duckdb");
    extract_ok(&other.odbc, &staging);
    let conn = normalised_file(&staging, &dir.path().join("other-normalised.duckdb"));
    let count: i64 = scalar(&conn, "SELECT count(*) FROM journalEntries WHERE isYearEnd");
    assert_eq!(count, 0);
}

#[test]
fn clear_audit_trail_archives_records_under_the_ids_they_had_and_deletes_none() {
    let dir = tempdir();
    let args = ["--seed", "43", "--transactions", "3000"];
    let normalised = |name: &str, extra: &[&str]| {
        let company = crate::support::sim(&dir.path().join(name), &[&args[..], extra].concat());
        let staging = dir.path().join(format!("{name}.duckdb"));
        extract_ok(&company.odbc, &staging);
        normalised_file(
            &staging,
            &dir.path().join(format!("{name}-normalised.duckdb")),
        )
    };
    let before = normalised("before", &[]);
    let after = normalised("after", &["--clear-audit-trail-before", "2025-06-01"]);
    let model = DataModel::embedded();
    let mut archived_total = 0;
    for t in &model.types {
        // (id, isDeleted, amount fields as text) of every record, and which are archived
        let rows = |c: &duckdb::Connection, archived: bool| -> Vec<String> {
            column(
                c,
                &format!(
                    "SELECT id || ' deleted=' || isDeleted FROM {} WHERE isArchived = {archived} ORDER BY id",
                    t.name
                ),
            )
        };
        let (was, archived, live) = (
            rows(&before, false),
            rows(&after, true),
            rows(&after, false),
        );
        assert!(
            rows(&before, true).is_empty(),
            "{}: nothing archived before clearing",
            t.name
        );
        archived_total += archived.len();
        // every record published before is published after, under the same id, deleted or
        // not as before: none disappears, none becomes deleted
        for r in &was {
            assert!(
                archived.binary_search(r).is_ok() || live.binary_search(r).is_ok(),
                "{}: {r} is gone after Clear Audit Trail",
                t.name
            );
        }
    }
    assert!(archived_total > 500, "records archived: {archived_total}");
    // An archived invoice is the same invoice: same amounts, still paid by the same payment.
    let invoice = |c: &duckdb::Connection, id: &str| -> String {
        c.query_row(
            "SELECT totalAmount::VARCHAR || ' ' || amountDue || ' ' || status || ' ' || \
             to_json([a.paymentRef.id FOR a IN paymentAllocations]) FROM invoices WHERE id = ?",
            [id],
            |r| r.get(0),
        )
        .unwrap()
    };
    let id: String = scalar(
        &after,
        "SELECT id FROM invoices WHERE isArchived AND len(paymentAllocations) > 0 ORDER BY id LIMIT 1",
    );
    assert_eq!(invoice(&before, &id), invoice(&after, &id));
}

#[test]
fn sage_figures_that_disagree_with_their_detail_are_named_by_checks_and_marked_on_the_record() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 45, 1_500);
    let clean = normalised_file(&staging, &dir.path().join("clean.duckdb"));
    for (table, flag) in [
        ("customers", "balanceMatchesDetail"),
        ("suppliers", "balanceMatchesDetail"),
        ("accounts", "balanceMatchesDetail"),
        ("bankAccounts", "balanceMatchesDetail"),
    ] {
        let wrong: i64 = scalar(
            &clean,
            &format!("SELECT count(*) FROM {table} WHERE NOT {flag}"),
        );
        assert_eq!(
            wrong, 0,
            "{table}: a consistent company has every summary matching"
        );
    }
    drop(clean);
    // Sage's own figures changed, one at a time: a bank balance, a customer balance, a
    // split's nominal code, a posting's date.
    let customer = "(SELECT min(ACCOUNT_REF) FROM SALES_LEDGER WHERE BALANCE <> 0)";
    let split =
        "(SELECT min(SPLIT_NUMBER) FROM AUDIT_SPLIT WHERE TYPE = 'SI' AND DELETED_FLAG = 0)";
    let cases = [
        (
            "bank_balance",
            "UPDATE BANK SET BALANCE = BALANCE + 10 WHERE ACCOUNT_REF = '1200'".to_owned(),
            "bank_balances",
            "bank=1200",
            Some(("bankAccounts", "1200")),
        ),
        (
            "customer_balance",
            format!("UPDATE SALES_LEDGER SET BALANCE = BALANCE + 5 WHERE ACCOUNT_REF = {customer}"),
            "account_balances",
            "ledger=customer",
            Some(("customers", customer)),
        ),
        (
            "split_nominal",
            format!("UPDATE AUDIT_SPLIT SET NOMINAL_CODE = '4009' WHERE SPLIT_NUMBER = {split}"),
            "split_postings",
            "on nominal 4009",
            None,
        ),
        (
            "split_vat",
            format!(
                "UPDATE AUDIT_SPLIT SET TAX_AMOUNT = TAX_AMOUNT + 1 WHERE SPLIT_NUMBER = {split}"
            ),
            "vat_postings",
            "account=2200",
            None,
        ),
        (
            "posting_date",
            format!(
                "UPDATE AUDIT_JOURNAL SET \"DATE\" = \"DATE\" + 1 WHERE SPLIT_NUMBER = {split} \
                 AND NOMINAL_CODE = (SELECT min(NOMINAL_CODE) FROM AUDIT_JOURNAL WHERE SPLIT_NUMBER = {split})"
            ),
            "split_postings",
            "dated otherwise",
            None,
        ),
    ];
    for (name, mutation, check, named, record) in cases {
        let broken = mutated(&staging, name, &mutation);
        let out = dir.path().join(format!("{name}-normalised.duckdb"));
        let conn = normalised_file(&broken, &out);
        let report = normalise(&broken, &Rules::embedded()).unwrap();
        let result = self::check(&report, check);
        assert_eq!(
            result.status,
            CheckStatus::Warn,
            "{name}: {}",
            report.summary()
        );
        assert!(
            result.sample.iter().any(|r| r.contains(named)),
            "{name}: {:?}",
            result.sample
        );
        if let Some((table, id)) = record {
            // exactly the record concerned is marked
            let source = duckdb::Connection::open(&broken).unwrap();
            let id: String = scalar(&source, &format!("SELECT CAST({id} AS VARCHAR)"));
            let marked: Vec<String> = column(
                &conn,
                &format!("SELECT id FROM {table} WHERE NOT balanceMatchesDetail"),
            );
            assert_eq!(marked, [id], "{name}");
        }
    }

    // A rule that loses a bank transaction is an error of bank_balances.
    let rules_dir = edited_rules(dir.path(), "50_bank_transactions.sql", |sql| {
        sql.replace(
            "ON x.header_number = j.header_number;",
            "ON x.header_number = j.header_number \
             WHERE j.tran_number <> (SELECT min(TRAN_NUMBER) FROM sage.AUDIT_JOURNAL \
             WHERE NOMINAL_CODE = '1200' AND DELETED_FLAG = 0 AND AMOUNT <> 0);",
        )
    });
    let report = normalise(&staging, &Rules::load(&rules_dir).unwrap()).unwrap();
    assert!(
        failed_names(&report).contains(&"bank_balances".to_owned()),
        "{}",
        report.summary()
    );
}

#[test]
fn invoicing_module_items_give_document_lines_their_quantity_price_item_and_discount() {
    let dir = tempdir();
    let company = generated(&dir.path().join("company"), 47, 3_000);
    let sqlite = rusqlite::Connection::open(company.database()).unwrap();
    let items: i64 = sage_scalar(&sqlite, "SELECT count(*) FROM INVOICE_ITEM");
    let discounted: i64 = sage_scalar(
        &sqlite,
        "SELECT count(*) FROM INVOICE_ITEM WHERE DISCOUNT_AMOUNT > 0",
    );
    assert!(
        items > 100 && discounted > 0,
        "{items} items, {discounted} discounted"
    );
    let staging = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &staging);
    let conn = normalised_file(&staging, &dir.path().join("normalised.duckdb"));
    let lines = |filter: &str| -> i64 {
        conn.query_row(
            &format!(
                "SELECT count(*) FROM (SELECT unnest(lineItems) AS l FROM invoices
                                       UNION ALL SELECT unnest(lineItems) FROM creditNotes) WHERE {filter}"
            ),
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let matched = lines("l.quantity IS NOT NULL");
    // every item is on a line, except those of foreign invoices whose base amounts Sage
    // stored unrounded (their nets differ from the items' by design: nothing is guessed)
    assert!(
        matched * 100 >= items * 95,
        "{matched} of {items} items on lines"
    );
    assert!(matched <= items);
    // each such line: quantity x unit price - discount = its net, to the penny
    assert_eq!(
        lines(
            "l.quantity IS NOT NULL AND abs(l.quantity * l.unitAmount - coalesce(l.discountAmount, 0) - l.subTotal) > 0.01"
        ),
        0
    );
    assert!(lines("l.discountAmount > 0") > 0);
    assert!(lines("l.itemRef IS NOT NULL") > 0);
    // bills come from the purchase ledger, never from the invoicing module
    let bill_lines: i64 = scalar(
        &conn,
        "SELECT count(*) FROM (SELECT unnest(lineItems) AS l FROM bills) WHERE l.quantity IS NOT NULL",
    );
    assert_eq!(bill_lines, 0);
}

#[test]
fn foreign_currency_amounts_are_served_and_exchange_adjustments_are_marked() {
    let dir = tempdir();
    // (seed 56 has foreign documents with lines on several dates, which become several records)
    let company = generated(&dir.path().join("company"), 56, 4_000);
    let sqlite = rusqlite::Connection::open(company.database()).unwrap();
    let count = |sql: &str| -> i64 { sage_scalar(&sqlite, sql) };
    // Sage's exchange differences and revaluations, by their reference (the rules never look
    // at it alone): documents and bank entries both.
    let reval_headers = count("SELECT count(*) FROM AUDIT_HEADER WHERE INV_REF = 'REVAL'");
    let reval_documents = count(
        "SELECT count(*) FROM AUDIT_HEADER WHERE INV_REF = 'REVAL' AND TYPE IN ('SI', 'SC', 'PI', 'PC')",
    );
    assert!(
        reval_documents > 0 && reval_headers > reval_documents,
        "{reval_documents} of {reval_headers}"
    );
    // The euro bank in euros: its receipts less its payments, as Sage keeps them per split.
    let euro_cents = count(
        "SELECT CAST(ROUND(SUM(CASE WHEN h.TYPE IN ('SR', 'SA', 'PR', 'BR', 'CR', 'VR') THEN 1 ELSE -1 END
                               * s.FOREIGN_GROSS_AMOUNT) * 100) AS INTEGER)
         FROM AUDIT_SPLIT s JOIN AUDIT_HEADER h USING (HEADER_NUMBER)
         WHERE h.BANK_CODE = '1250' AND h.DELETED_FLAG = 0",
    );
    assert_ne!(euro_cents, 0);

    let staging = dir.path().join("staging.duckdb");
    extract_ok(&company.odbc, &staging);
    let conn = normalised_file(&staging, &dir.path().join("normalised.duckdb"));
    let one = |sql: &str| -> i64 { scalar(&conn, sql) };
    let marked = one("SELECT count(DISTINCT lineage.key) FROM (
             SELECT lineage FROM invoices WHERE isExchangeAdjustment
             UNION ALL SELECT lineage FROM creditNotes WHERE isExchangeAdjustment
             UNION ALL SELECT lineage FROM bills WHERE isExchangeAdjustment
             UNION ALL SELECT lineage FROM billCreditNotes WHERE isExchangeAdjustment)");
    assert_eq!(marked, reval_documents);
    let marked_bank = one("SELECT count(*) FROM bankTransactions WHERE isExchangeAdjustment");
    assert_eq!(
        marked_bank,
        reval_headers - reval_documents,
        "one bank transaction per revaluation"
    );
    assert_eq!(
        one("SELECT CAST(balanceInCurrency * 100 AS BIGINT) FROM bankAccounts WHERE id = '1250'"),
        euro_cents
    );
    // A foreign invoice settled at another rate: in euros its allocations are its total, in
    // pounds an exchange-adjustment credit note makes up the difference.
    let settled_at_another_rate = one("SELECT count(*) FROM invoices i
         WHERE currency <> 'GBP' AND amountDue = 0 AND amountDueInCurrency = 0
           AND list_sum([a.amountInCurrency FOR a IN paymentAllocations]) = totalAmountInCurrency
           AND EXISTS (SELECT 1 FROM creditNotes c, unnest(i.paymentAllocations) AS t(a)
                       WHERE c.id = a.paymentRef.id AND c.isExchangeAdjustment)
           AND EXISTS (SELECT 1 FROM payments p, unnest(i.paymentAllocations) AS t(a)
                       WHERE p.id = a.paymentRef.id AND p.currencyRate <> i.currencyRate)");
    assert!(settled_at_another_rate > 0);
    // Every document in a foreign currency has its lines in that currency, adding up.
    assert_eq!(
        one(
            "SELECT count(*) FROM invoices WHERE currency <> 'GBP' AND NOT isDeleted
               AND list_sum([l.totalAmountInCurrency FOR l IN lineItems]) IS DISTINCT FROM totalAmountInCurrency"
        ),
        0
    );

    // Rules that get it wrong are caught by the check foreign_currency.
    let broken = [
        (
            "30_documents.sql",
            "coalesce(p.split_total_in_currency,\n             CASE WHEN h.parts = 1 THEN p.header_foreign_gross END)",
            "p.header_foreign_gross",
            "in currency: published total",
        ),
        (
            "30_documents.sql",
            "ELSE p.split_due_in_currency END",
            "ELSE p.amount_due * p.currency_rate END",
            "in currency: published total",
        ),
        (
            "15_exchange_adjustments.sql",
            "HAVING bool_and(",
            "HAVING false AND bool_and(",
            "published unmarked",
        ),
    ];
    for (k, (file, from, to, problem)) in broken.into_iter().enumerate() {
        let rules_dir = edited_rules(&dir.path().join(format!("broken{k}")), file, |sql| {
            sql.replacen(from, to, 1)
        });
        let report = normalise(&staging, &Rules::load(&rules_dir).unwrap()).unwrap();
        let result = check(&report, "foreign_currency");
        assert_eq!(result.status, CheckStatus::Fail, "{file}: {to}");
        assert!(
            result.sample.iter().any(|r| r.contains(problem)),
            "{file}: {to}: {:?}",
            result.sample
        );
    }

    // With one rate per currency, Sage posts no exchange differences.
    let fixed = crate::support::sim(
        &dir.path().join("fixed"),
        &[
            "--seed",
            "56",
            "--transactions",
            "4000",
            "--fixed-exchange-rates",
        ],
    );
    let sqlite = rusqlite::Connection::open(fixed.database()).unwrap();
    let reval: i64 = sage_scalar(
        &sqlite,
        "SELECT count(*) FROM AUDIT_HEADER WHERE INV_REF = 'REVAL'",
    );
    assert_eq!(reval, 0);
}

#[test]
fn the_chart_of_accounts_categories_classify_accounts_and_a_rule_ignoring_them_is_caught() {
    let dir = tempdir();
    let staging = staged_company(dir.path(), 61, 600);
    // The company moved Petty Cash (1230) under a liabilities heading of its own.
    let moved = mutated(
        &staging,
        "moved",
        "INSERT INTO CATEGORY VALUES (4, 'Long Term Liabilities', '1230', '1230')",
    );
    let conn = normalised_file(&moved, &dir.path().join("normalised.duckdb"));
    let class: Vec<(String, String)> = conn
        .prepare("SELECT classification, category FROM accounts WHERE id IN ('1200', '1230', '9998') ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let class: Vec<(&str, &str)> = class
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    assert_eq!(
        class,
        [
            ("Asset", "Current Assets"),
            ("Liability", "Long Term Liabilities"),
            ("Liability", "Current Liabilities"),
        ]
    );
    let rules_dir = edited_rules(dir.path(), "21_accounts.sql", |sql| {
        sql.replace(
            "coalesce(c.class, account_class(n.code)) AS classification",
            "account_class(n.code) AS classification",
        )
    });
    let report = normalise(&moved, &Rules::load(&rules_dir).unwrap()).unwrap();
    let result = check(&report, "account_categories");
    assert_eq!(result.status, CheckStatus::Fail, "{}", report.summary());
    assert!(
        result.sample.iter().any(|r| r.contains("account=1230")),
        "{:?}",
        result.sample
    );
}
