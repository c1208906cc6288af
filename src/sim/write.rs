//! Writes a simulated company into SQLite: DDL from the source schema, then every table, with
//! balances accumulated from the very journal lines being written so they cannot disagree.

use std::collections::HashMap;
use std::path::Path;

use chrono::{Duration, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rusqlite::{Connection, Statement, params};

use super::SimError;
use super::company::{self, BANKS, CURRENCIES, DEPARTMENTS, NOMINALS, Party, TAX_CODES};
use super::ledger::{Account, Ledger, Split, TxType, journal_lines};
use crate::schema::SourceSchema;

/// Days of transactions: two financial years, the second being the current one.
pub const SPAN_DAYS: i32 = 730;
/// Day 0 of the simulation: the day after the current financial year ends.
const EPOCH: (i32, u32, u32) = (2026, 4, 1);
/// First day of the current financial year, as a day number.
const FY_START: i32 = -365;
/// Last day of the prior financial year, the day Sage's Year End journal is dated.
pub const PRIOR_YEAR_END: i32 = FY_START - 1;
/// Details of the Year End journal's header and lines.
const YEAR_END_DETAILS: &str = "Year End - P&L transfer to retained earnings";
/// Reference (INV_REF) of Clear Audit Trail's opening-balance journal, as Sage writes it.
const OPENING_BALANCE_REF: &str = "O/Bal";
/// INV_REF of Sage's exchange differences and revaluations.
const EXCHANGE_ADJUSTMENT_REF: &str = "REVAL";

/// The fixed wording of the journals Sage posts itself (Year End, Clear Audit Trail).
fn header_details(h: &super::ledger::Header) -> Option<&'static str> {
    if h.year_end {
        Some(YEAR_END_DETAILS)
    } else if h.opening_balance {
        Some("Opening Balance")
    } else {
        None
    }
}
/// Sage's DELETED_RECORDS.TABLE_ID for AUDIT_HEADER, in the simulator's numbering.
pub const DELETED_TABLE_AUDIT_HEADER: i16 = 11;

/// Master data of a company.
pub struct Company {
    /// COMPANYID.
    pub id: String,
    /// Company name.
    pub name: String,
    /// Customers.
    pub customers: Vec<Party>,
    /// Suppliers.
    pub suppliers: Vec<Party>,
    /// Number of projects.
    pub projects: u16,
    /// Stock items.
    pub stock: Vec<(String, String, &'static str, i64, u8)>,
}

impl Company {
    /// Master data sized for `transactions` headers.
    pub fn new(rng: &mut ChaCha8Rng, seed: u64, transactions: usize) -> Self {
        let customers = (transactions / 40).clamp(8, 20_000);
        let suppliers = (transactions / 120).clamp(5, 8_000);
        let names = [
            "Harbour & Crane Trading Ltd",
            "Café Olé Bistro Ltd",
            "Muñoz Engineering (UK) Ltd",
        ];
        Company {
            id: format!("{:08X}-{:04X}-SIM", rng.random::<u32>(), seed as u16),
            name: names[(seed % 3) as usize].to_owned(),
            customers: company::parties(rng, customers, 0.08, SPAN_DAYS),
            suppliers: company::parties(rng, suppliers, 0.05, SPAN_DAYS),
            projects: 6,
            stock: company::stock(rng, (transactions / 500).clamp(10, 300)),
        }
    }
}

/// The simulator's day number of a date (day 0 is the day after the current financial year).
pub fn day_number(date: NaiveDate) -> i32 {
    (date - day(0)).num_days() as i32
}

fn day(d: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(EPOCH.0, EPOCH.1, EPOCH.2).expect("valid epoch")
        + Duration::days(d as i64)
}

/// Pre-formatted dates, since a large company writes tens of millions of them.
struct Dates {
    first: i32,
    text: Vec<String>,
}

impl Dates {
    fn new() -> Self {
        let first = -SPAN_DAYS - 800;
        let text = (first..200)
            .map(|d| day(d).format("%Y-%m-%d").to_string())
            .collect();
        Dates { first, text }
    }
    fn get(&self, d: i32) -> &str {
        &self.text[(d - self.first) as usize]
    }
    fn stamp(&self, d: i32, seconds: u32) -> String {
        let s = seconds % 36_000 + 8 * 3600;
        format!(
            "{} {:02}:{:02}:{:02}",
            self.get(d),
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

fn money(pence: i64) -> f64 {
    pence as f64 / 100.0
}

/// Amounts are kept in units of a hundredth of a penny where Sage may hold sub-penny values
/// (journal postings, balances): a whole number of pence gives the same DOUBLE as [`money`].
const UNITS_PER_PENNY: i64 = 100;

fn units(u: i64) -> f64 {
    u as f64 / 10_000.0
}

/// A split's net and VAT in units. Chosen unpaid foreign-currency document lines carry what
/// Sage derives from the foreign amounts (foreign pence / rate, to a hundredth of a penny),
/// which is usually not a whole number of pence; every other split is its whole pence.
fn split_units(s: &Split, rate_e4: i64, sub_penny: bool) -> (i64, i64) {
    let whole = (s.net * UNITS_PER_PENNY, s.tax * UNITS_PER_PENNY);
    if !sub_penny || rate_e4 == 10_000 {
        return whole;
    }
    let derived = |pence: i64| {
        let foreign = super::ledger::round_div(pence * rate_e4, 10_000);
        super::ledger::round_div(foreign * UNITS_PER_PENNY * 10_000, rate_e4)
    };
    (derived(s.net), derived(s.tax))
}

fn sql_err(doing: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> SimError {
    let doing = doing.into();
    move |source| SimError::Sqlite { doing, source }
}

fn open(path: &Path, schema: &SourceSchema) -> Result<Connection, SimError> {
    let conn = Connection::open(path).map_err(sql_err(format!("opening {}", path.display())))?;
    conn.execute_batch("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA page_size=8192;")
        .map_err(sql_err("setting pragmas"))?;
    for table in &schema.tables {
        conn.execute(&table.create_sql(""), [])
            .map_err(sql_err(format!("creating table {}", table.name)))?;
    }
    Ok(conn)
}

fn finish(conn: Connection, schema: &SourceSchema) -> Result<Vec<(String, u64)>, SimError> {
    let mut counts = Vec::new();
    for table in &schema.tables {
        let n: i64 = conn
            .query_row(
                &format!("SELECT COUNT(*) FROM \"{}\"", table.name),
                [],
                |r| r.get(0),
            )
            .map_err(sql_err(format!("counting {}", table.name)))?;
        counts.push((table.name.clone(), n as u64));
    }
    // A normal rollback journal, so other processes can lock the file the way Sage users do.
    conn.execute_batch("PRAGMA journal_mode=DELETE;")
        .map_err(sql_err("resetting journal mode"))?;
    conn.close()
        .map_err(|(_, e)| sql_err("closing the database")(e))?;
    Ok(counts)
}

/// Runs a script of statements over freshly created tables.
pub fn write_script(
    path: &Path,
    schema: &SourceSchema,
    sql: &str,
) -> Result<Vec<(String, u64)>, SimError> {
    let conn = open(path, schema)?;
    conn.execute_batch(sql)
        .map_err(sql_err("running the script"))?;
    finish(conn, schema)
}

fn insert<'c>(
    conn: &'c Connection,
    table: &str,
    columns: &[&str],
) -> Result<Statement<'c>, SimError> {
    let quoted: Vec<String> = columns.iter().map(|c| format!("\"{c}\"")).collect();
    let marks = vec!["?"; columns.len()].join(",");
    let sql = format!(
        "INSERT INTO \"{table}\" ({}) VALUES ({marks})",
        quoted.join(",")
    );
    conn.prepare(&sql)
        .map_err(sql_err(format!("preparing the insert into {table}")))
}

/// Details text for a split, chosen from its number so it costs no memory.
fn details(ty: TxType, n: u32) -> &'static str {
    const SALES: &[&str] = &[
        "Consultancy – March",
        "Goods as quoted",
        "Café catering £ fixed fee",
        "Servicio técnico",
        "Delivery charge",
        "Maintenance contract",
    ];
    const PURCHASES: &[&str] = &[
        "Office supplies",
        "Électricité bill",
        "Rent – quarter",
        "Raw materials",
        "Señal broadband",
        "Stationery",
    ];
    const BANK: &[&str] = &[
        "Payment",
        "Receipt",
        "BACS",
        "Cheque 00123",
        "Card – Müller GmbH",
        "",
    ];
    let pool = if ty.is_sales() {
        SALES
    } else if ty.is_purchase() {
        PURCHASES
    } else {
        BANK
    };
    pool[(n as usize).wrapping_mul(2_654_435_761) % pool.len()]
}

/// Balances accumulated from the written journal.
#[derive(Default)]
struct Balances {
    /// Per nominal: brought forward and 12 months of the current year, in units.
    nominal: HashMap<&'static str, [i64; 13]>,
    /// Per nominal: the 12 months of the prior financial year without its Year End journal,
    /// in units (Sage's prior-year columns).
    prior: HashMap<&'static str, [i64; 12]>,
    /// Per customer and supplier, in units.
    customers: Vec<i64>,
    suppliers: Vec<i64>,
}

fn month_index(d: i32) -> usize {
    if d < FY_START {
        return 0;
    }
    let date = day(d);
    let start = day(FY_START);
    let months = (date.year_ce().1 as i32 - start.year_ce().1 as i32) * 12 + date.month0() as i32
        - start.month0() as i32;
    1 + months.clamp(0, 11) as usize
}

/// Month (0-11) of the prior financial year a day falls in, if it does.
fn prior_month_index(d: i32) -> Option<usize> {
    if d >= FY_START {
        return None;
    }
    let (date, start) = (day(d), day(FY_START));
    let months = (date.year_ce().1 as i32 - start.year_ce().1 as i32) * 12 + date.month0() as i32
        - start.month0() as i32
        + 12;
    (0..12).contains(&months).then_some(months as usize)
}

use chrono::Datelike;

/// Writes a generated company.
pub fn write(
    path: &Path,
    schema: &SourceSchema,
    co: &Company,
    ledger: &Ledger,
    sub_penny_permille: u16,
) -> Result<Vec<(String, u64)>, SimError> {
    let mut conn = open(path, schema)?;
    let dates = Dates::new();
    let tx = conn
        .transaction()
        .map_err(sql_err("starting the transaction"))?;
    let mut bal = Balances {
        customers: vec![0; co.customers.len()],
        suppliers: vec![0; co.suppliers.len()],
        ..Default::default()
    };
    write_transactions(&tx, &dates, co, ledger, &mut bal, sub_penny_permille)?;
    write_masters(&tx, &dates, co, &bal)?;
    tx.commit().map_err(sql_err("committing"))?;
    finish(conn, schema)
}

fn account_ref(co: &Company, a: Account) -> &str {
    match a {
        Account::Customer(i) => &co.customers[i as usize].account_ref,
        Account::Supplier(i) => &co.suppliers[i as usize].account_ref,
        Account::Bank(b) => BANKS[b as usize].code,
        Account::None => "",
    }
}

/// Columns written to AUDIT_HEADER and to AUDIT_HISTORY_HEADER.
const HEADER_COLUMNS: &[&str] = &[
    "HEADER_NUMBER",
    "TRAN_NUMBER",
    "ITEM_COUNT",
    "TYPE",
    "DATE",
    "ACCOUNT_REF",
    "BANK_CODE",
    "INV_REF",
    "DETAILS",
    "DUE_DATE",
    "NET_AMOUNT",
    "TAX_AMOUNT",
    "GROSS_AMOUNT",
    "AMOUNT_PAID",
    "OUTSTANDING",
    "CURRENCY",
    "FOREIGN_RATE",
    "FOREIGN_GROSS_AMOUNT",
    "PAID_FLAG",
    "DELETED_FLAG",
    "DATE_ENTERED",
    "DATE_AMENDED",
    "RECORD_CREATE_DATE",
    "RECORD_MODIFY_DATE",
];

/// Columns written to AUDIT_SPLIT and to AUDIT_HISTORY_SPLIT.
const SPLIT_COLUMNS: &[&str] = &[
    "SPLIT_NUMBER",
    "HEADER_NUMBER",
    "TRAN_NUMBER",
    "TYPE",
    "DATE",
    "ACCOUNT_REF",
    "NOMINAL_CODE",
    "DETAILS",
    "DEPT_NUMBER",
    "TAX_CODE",
    "NET_AMOUNT",
    "TAX_AMOUNT",
    "GROSS_AMOUNT",
    "AMOUNT_PAID",
    "OUTSTANDING",
    "PAID_FLAG",
    "DELETED_FLAG",
    "PROJECT_ID",
    "FOREIGN_NET_AMOUNT",
    "FOREIGN_TAX_AMOUNT",
    "FOREIGN_GROSS_AMOUNT",
    "FOREIGN_OUTSTANDING",
    "RECORD_CREATE_DATE",
    "RECORD_MODIFY_DATE",
];

/// Columns written to AUDIT_JOURNAL and to AUDIT_HISTORY_JOURNAL.
const JOURNAL_COLUMNS: &[&str] = &[
    "TRAN_NUMBER",
    "HEADER_NUMBER",
    "SPLIT_NUMBER",
    "TYPE",
    "DATE",
    "ACCOUNT_REF",
    "NOMINAL_CODE",
    "AMOUNT",
    "TAX_CODE",
    "DEPT_NUMBER",
    "DELETED_FLAG",
];

/// Columns written to AUDIT_USAGE and to AUDIT_HISTORY_USAGE.
const USAGE_COLUMNS: &[&str] = &[
    "USAGE_NUMBER",
    "SPLIT_NUMBER",
    "SPLIT_CROSSREF",
    "TYPE",
    "REFERENCE",
    "DATE",
    "AMOUNT",
    "FOREIGN_AMOUNT",
    "DELETED_FLAG",
];

fn write_transactions(
    tx: &Connection,
    dates: &Dates,
    co: &Company,
    ledger: &Ledger,
    bal: &mut Balances,
    sub_penny_permille: u16,
) -> Result<(), SimError> {
    // [live table, history table]: Clear Audit Trail moves archived transactions
    let mut ins_header = [
        insert(tx, "AUDIT_HEADER", HEADER_COLUMNS)?,
        insert(tx, "AUDIT_HISTORY_HEADER", HEADER_COLUMNS)?,
    ];
    let mut ins_split = [
        insert(tx, "AUDIT_SPLIT", SPLIT_COLUMNS)?,
        insert(tx, "AUDIT_HISTORY_SPLIT", SPLIT_COLUMNS)?,
    ];
    let mut ins_journal = [
        insert(tx, "AUDIT_JOURNAL", JOURNAL_COLUMNS)?,
        insert(tx, "AUDIT_HISTORY_JOURNAL", JOURNAL_COLUMNS)?,
    ];
    let mut ins_deleted = insert(
        tx,
        "DELETED_RECORDS",
        &["TABLE_ID", "FOREIGN_REF", "DELETION_DATE_TIME"],
    )?;
    let mut ins_invoice = insert(
        tx,
        "INVOICE",
        &[
            "INVOICE_NUMBER",
            "INVOICE_TYPE_CODE",
            "INVOICE_DATE",
            "ACCOUNT_REF",
            "NAME",
            "INVOICE_NET",
            "INVOICE_TAX",
            "INVOICE_GROSS",
            "POSTED_CODE",
            "PAYMENT_DUE_DATE",
            "CURRENCY",
            "FOREIGN_RATE",
            "RECORD_MODIFY_DATE",
        ],
    )?;
    let mut ins_item = insert(
        tx,
        "INVOICE_ITEM",
        &[
            "ITEM_NUMBER",
            "INVOICE_NUMBER",
            "STOCK_CODE",
            "DESCRIPTION",
            "QUANTITY",
            "UNIT_PRICE",
            "NOMINAL_CODE",
            "TAX_CODE",
            "NET_AMOUNT",
            "TAX_AMOUNT",
            "GROSS_AMOUNT",
            "DISCOUNT_AMOUNT",
        ],
    )?;
    let mut item_number = 0u32;
    let e = |what: &str| sql_err(format!("writing {what}"));
    for (hi, h) in ledger.headers.iter().enumerate() {
        let hn = hi as u32 + 1;
        let acc = account_ref(co, h.account);
        let bank_code = h.bank_code();
        let splits = ledger.splits_of(h);
        let deleted = h.deleted as i16;
        // Sage's header amounts are DOUBLE sums of the split DOUBLEs: keep its float noise.
        let (mut net, mut tax, mut gross, mut paid, mut outstanding) =
            (0f64, 0f64, 0f64, 0f64, 0f64);
        let rate_e4 = h.rate_e4;
        for (k, s) in splits.iter().enumerate() {
            let sn = h.first_split + k as u32;
            let sub_penny = s.paid == 0
                && matches!(s.ty, TxType::SI | TxType::SC | TxType::PI | TxType::PC)
                && (sn as u64).wrapping_mul(2_654_435_761) % 1000 < sub_penny_permille as u64;
            let (net_u, tax_u) = split_units(s, rate_e4, sub_penny);
            let gross_u = net_u + tax_u;
            let paid_u = s.paid * UNITS_PER_PENNY;
            let (n, t, g, p) = (units(net_u), units(tax_u), units(gross_u), money(s.paid));
            net += n;
            tax += t;
            gross += g;
            paid += p;
            let out = units(gross_u - paid_u);
            outstanding += out;
            let flag = if gross_u == paid_u { "Y" } else { "N" };
            let project = if s.project == 0 {
                None
            } else {
                Some(s.project as i32)
            };
            let modify = dates.stamp(h.amended.max(s.date), sn);
            ins_split[h.archived as usize]
                .execute(params![
                    sn,
                    hn,
                    sn,
                    s.ty.code(),
                    dates.get(s.date),
                    acc,
                    s.nominal,
                    header_details(h).unwrap_or_else(|| details(s.ty, sn)),
                    s.dept as i16,
                    TAX_CODES[s.tax_code as usize].code,
                    n,
                    t,
                    g,
                    p,
                    out,
                    flag,
                    deleted,
                    project,
                    money(s.foreign_net),
                    money(s.foreign_tax),
                    money(s.foreign_gross()),
                    money(s.foreign_outstanding()),
                    dates.stamp(s.date, sn),
                    modify,
                ])
                .map_err(e("AUDIT_SPLIT"))?;
            let in_units = Split {
                net: net_u,
                tax: tax_u,
                ..*s
            };
            for (slot, (nominal, amount)) in
                journal_lines(&in_units, bank_code).into_iter().enumerate()
            {
                // Slot 1 is VAT: Sage posts no zero VAT line.
                if nominal.is_empty() || (slot == 1 && amount == 0) {
                    continue;
                }
                ins_journal[h.archived as usize]
                    .execute(params![
                        sn,
                        hn,
                        sn,
                        s.ty.code(),
                        dates.get(s.date),
                        acc,
                        nominal,
                        units(amount),
                        TAX_CODES[s.tax_code as usize].code,
                        s.dept as i16,
                        deleted,
                    ])
                    .map_err(e("AUDIT_JOURNAL"))?;
                if !h.deleted && !h.archived {
                    bal.nominal.entry(nominal).or_insert([0; 13])[month_index(s.date)] += amount;
                }
                // prior-year figures count the year's own postings: archived ones too, not
                // the Year End journal nor Clear Audit Trail's opening balances
                if !h.deleted
                    && !h.year_end
                    && !h.opening_balance
                    && let Some(m) = prior_month_index(s.date)
                {
                    bal.prior.entry(nominal).or_insert([0; 12])[m] += amount;
                }
            }
            if !h.deleted && !h.archived {
                let owed = h.ty.ledger_sign() * (gross_u - paid_u);
                match h.account {
                    Account::Customer(c) => bal.customers[c as usize] += owed,
                    Account::Supplier(p) => bal.suppliers[p as usize] += owed,
                    _ => {}
                }
            }
        }
        let currency = &CURRENCIES[h.currency as usize];
        let rate = h.rate_e4 as f64 / 10_000.0;
        // Sage keeps the document's own currency first: the header's is its splits' sum
        let foreign_gross = money(splits.iter().map(|s| s.foreign_gross()).sum());
        let flag = if splits.iter().all(|s| s.gross() == s.paid) {
            "Y"
        } else {
            "N"
        };
        let inv_ref = if h.opening_balance {
            OPENING_BALANCE_REF.to_owned()
        } else if h.exchange_adjustment {
            EXCHANGE_ADJUSTMENT_REF.to_owned()
        } else if h.inv_ref == 0 {
            String::new()
        } else {
            h.inv_ref.to_string()
        };
        let due = if h.ty.ledger_sign() != 0 {
            h.date + h.due_days as i32
        } else {
            h.date
        };
        ins_header[h.archived as usize]
            .execute(params![
                hn,
                h.first_split,
                h.split_count,
                h.ty.code(),
                dates.get(h.date),
                acc,
                bank_code,
                inv_ref,
                header_details(h).unwrap_or_else(|| details(h.ty, h.first_split)),
                dates.get(due),
                net,
                tax,
                gross,
                paid,
                outstanding,
                currency.number,
                rate,
                foreign_gross,
                flag,
                deleted,
                dates.get(h.date),
                dates.get(h.amended),
                dates.stamp(h.date, hn),
                dates.stamp(h.amended, hn),
            ])
            .map_err(e("AUDIT_HEADER"))?;
        if h.deleted {
            ins_deleted
                .execute(params![
                    DELETED_TABLE_AUDIT_HEADER,
                    hn,
                    dates.stamp(h.date + 1, hn)
                ])
                .map_err(e("DELETED_RECORDS"))?;
        }
        // About a third of sales documents come from the invoicing module.
        if matches!(h.ty, TxType::SI | TxType::SC) && !h.deleted && hn.is_multiple_of(3) {
            let Account::Customer(c) = h.account else {
                continue;
            };
            ins_invoice
                .execute(params![
                    h.inv_ref,
                    if h.ty == TxType::SI { 1 } else { 2 },
                    dates.get(h.date),
                    acc,
                    co.customers[c as usize].name,
                    net,
                    tax,
                    gross,
                    1,
                    dates.get(due),
                    currency.number,
                    rate,
                    dates.stamp(h.date, hn),
                ])
                .map_err(e("INVOICE"))?;
            for (k, s) in splits.iter().enumerate() {
                item_number += 1;
                let qty = 1 + (hn as i64 + k as i64) % 12;
                let (code, desc) = if k % 2 == 0 && !co.stock.is_empty() {
                    let item = &co.stock[(hn as usize + k) % co.stock.len()];
                    (item.0.as_str(), item.1.as_str())
                } else {
                    ("M", details(s.ty, h.first_split + k as u32))
                };
                // One item in five sold at 5% off its list price.
                let discount = if item_number.is_multiple_of(5) {
                    super::ledger::round_div(s.net * 5, 95)
                } else {
                    0
                };
                ins_item
                    .execute(params![
                        item_number,
                        h.inv_ref,
                        code,
                        desc,
                        qty as f64,
                        money(s.net + discount) / qty as f64,
                        s.nominal,
                        TAX_CODES[s.tax_code as usize].code,
                        money(s.net),
                        money(s.tax),
                        money(s.gross()),
                        money(discount),
                    ])
                    .map_err(e("INVOICE_ITEM"))?;
            }
        }
    }
    let mut ins_usage = [
        insert(tx, "AUDIT_USAGE", USAGE_COLUMNS)?,
        insert(tx, "AUDIT_HISTORY_USAGE", USAGE_COLUMNS)?,
    ];
    for (ui, u) in ledger.usages.iter().enumerate() {
        let target = &ledger.splits[u.crossref as usize - 1];
        let header = &ledger.headers[target.header as usize - 1];
        ins_usage[header.archived as usize]
            .execute(params![
                ui as u32 + 1,
                u.split,
                u.crossref,
                u.ty.code(),
                header.inv_ref.to_string(),
                dates.get(u.date),
                money(u.amount),
                money(u.foreign),
                0,
            ])
            .map_err(e("AUDIT_USAGE"))?;
    }
    Ok(())
}

fn write_masters(
    tx: &Connection,
    dates: &Dates,
    co: &Company,
    bal: &Balances,
) -> Result<(), SimError> {
    let e = |what: &str| sql_err(format!("writing {what}"));
    let mut ins = insert(
        tx,
        "COMPANY",
        &[
            "COMPANYID",
            "NAME",
            "ADDRESS_1",
            "ADDRESS_2",
            "ADDRESS_3",
            "ADDRESS_4",
            "ADDRESS_5",
            "VAT_REG_NUMBER",
            "FINANCIAL_YEAR",
            "START_MONTH",
            "COUNTRY_CODE",
            "BASE_CURRENCY",
            "PROGRAM_VERSION",
        ],
    )?;
    ins.execute(params![
        co.id,
        co.name,
        "Unit 4, Tŷ Coch Estate",
        "Quay Street",
        "",
        "Cardiff",
        "CF10 1AA",
        "GB123456789",
        dates.get(FY_START),
        4,
        "GB",
        "GBP",
        "32.0.1",
    ])
    .map_err(e("COMPANY"))?;
    let mut ins = insert(
        tx,
        "NOMINAL_LEDGER",
        &[
            "ACCOUNT_REF",
            "NAME",
            "ACCOUNT_TYPE",
            "BALANCE",
            "BALANCE_BF",
            "BALANCE_MTH1",
            "BALANCE_MTH2",
            "BALANCE_MTH3",
            "BALANCE_MTH4",
            "BALANCE_MTH5",
            "BALANCE_MTH6",
            "BALANCE_MTH7",
            "BALANCE_MTH8",
            "BALANCE_MTH9",
            "BALANCE_MTH10",
            "BALANCE_MTH11",
            "BALANCE_MTH12",
            "CATEGORY",
            "INACTIVE_FLAG",
            "RECORD_CREATE_DATE",
            "RECORD_MODIFY_DATE",
        ],
    )?;
    for (i, n) in NOMINALS.iter().enumerate() {
        let b = bal.nominal.get(n.code).copied().unwrap_or([0; 13]);
        let total: i64 = b.iter().sum();
        let m: Vec<f64> = b.iter().map(|u| units(*u)).collect();
        ins.execute(params![
            n.code,
            n.name,
            n.account_type,
            units(total),
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            m[6],
            m[7],
            m[8],
            m[9],
            m[10],
            m[11],
            m[12],
            (n.code.as_bytes()[0] - b'0') as i16,
            0,
            dates.stamp(-SPAN_DAYS - 30, i as u32),
            dates.stamp(-1, i as u32),
        ])
        .map_err(e("NOMINAL_LEDGER"))?;
    }
    // Sage's prior-year columns: what Year End moved out of the monthly balances.
    let columns: Vec<String> = (1..=12).map(|m| format!("PRIOR_YR_MTH{m} = ?")).collect();
    let mut prior = tx
        .prepare(&format!(
            "UPDATE NOMINAL_LEDGER SET {} WHERE ACCOUNT_REF = ?",
            columns.join(", ")
        ))
        .map_err(e("NOMINAL_LEDGER prior year"))?;
    for n in NOMINALS {
        let months = bal.prior.get(n.code).copied().unwrap_or([0; 12]);
        let mut values: Vec<rusqlite::types::Value> = months
            .iter()
            .map(|u| rusqlite::types::Value::Real(units(*u)))
            .collect();
        values.push(rusqlite::types::Value::Text(n.code.to_owned()));
        prior
            .execute(rusqlite::params_from_iter(values))
            .map_err(e("NOMINAL_LEDGER prior year"))?;
    }
    for (table, parties, balances) in [
        ("SALES_LEDGER", &co.customers, &bal.customers),
        ("PURCHASE_LEDGER", &co.suppliers, &bal.suppliers),
    ] {
        let mut ins = insert(
            tx,
            table,
            &[
                "ACCOUNT_REF",
                "NAME",
                "ADDRESS_1",
                "ADDRESS_2",
                "ADDRESS_3",
                "ADDRESS_4",
                "ADDRESS_5",
                "CONTACT_NAME",
                "TELEPHONE",
                "E_MAIL",
                "VAT_REG_NUMBER",
                "CURRENCY",
                "CREDIT_LIMIT",
                "PAYMENT_DUE_DAYS",
                "BALANCE",
                "ACCOUNT_ON_HOLD",
                "INACTIVE_FLAG",
                "RECORD_CREATE_DATE",
                "RECORD_MODIFY_DATE",
            ],
        )?;
        for (i, p) in parties.iter().enumerate() {
            ins.execute(params![
                p.account_ref,
                p.name,
                format!("{} High Street", i + 1),
                "",
                "",
                company::town(i),
                "",
                p.contact,
                format!("01{:09}", i * 7919 % 1_000_000_000),
                p.email,
                p.vat,
                CURRENCIES[p.currency as usize].number,
                money(p.credit_limit),
                p.due_days,
                units(balances[i]),
                p.on_hold as i16,
                p.inactive as i16,
                dates.stamp(p.created.min(-1), i as u32),
                dates.stamp(p.created.min(-1) + 30, i as u32),
            ])
            .map_err(e(table))?;
        }
    }
    let mut ins = insert(
        tx,
        "BANK",
        &[
            "ACCOUNT_REF",
            "ACCOUNT_NAME",
            "ACCOUNT_NUMBER",
            "SORT_CODE",
            "IBAN",
            "CURRENCY",
            "TYPE",
            "BALANCE",
        ],
    )?;
    for (i, b) in BANKS.iter().enumerate() {
        let balance: i64 = bal.nominal.get(b.code).map(|m| m.iter().sum()).unwrap_or(0);
        let (number, sort) = if b.bank_type == 0 {
            (format!("{:08}", 41_526_370 + i), "20-45-77")
        } else {
            (String::new(), "")
        };
        ins.execute(params![
            b.code,
            b.name,
            number,
            sort,
            "",
            CURRENCIES[b.currency as usize].number,
            b.bank_type,
            units(balance)
        ])
        .map_err(e("BANK"))?;
    }
    let mut ins = insert(
        tx,
        "TAX_CODE",
        &["TAX_CODE_ID", "TAX_CODE", "DESCRIPTION", "TAX_RATE"],
    )?;
    for t in TAX_CODES {
        ins.execute(params![
            t.id,
            t.code,
            t.description,
            t.rate_bp as f64 / 100.0
        ])
        .map_err(e("TAX_CODE"))?;
    }
    let mut ins = insert(tx, "CATEGORY", &["NUMBER", "NAME", "LOW", "HIGH"])?;
    for (number, name, low, high) in company::CHART_CATEGORIES {
        ins.execute(params![number, name, low, high])
            .map_err(e("CATEGORY"))?;
    }
    let mut ins = insert(tx, "DEPARTMENT", &["NUMBER", "NAME"])?;
    for (n, name) in DEPARTMENTS {
        ins.execute(params![n, name]).map_err(e("DEPARTMENT"))?;
    }
    let mut ins = insert(
        tx,
        "PROJECT",
        &["PROJECT_ID", "REFERENCE", "NAME", "STATUS"],
    )?;
    for p in 1..=co.projects {
        let status = if p % 3 == 0 { "Completed" } else { "Active" };
        ins.execute(params![
            p,
            format!("PRJ{p:03}"),
            format!("Projet n° {p}"),
            status
        ])
        .map_err(e("PROJECT"))?;
    }
    let mut ins = insert(
        tx,
        "CURRENCY",
        &["NUMBER", "CODE", "NAME", "SYMBOL", "EXCHANGE_RATE"],
    )?;
    for c in CURRENCIES {
        ins.execute(params![
            c.number,
            c.code,
            c.name,
            c.symbol,
            c.rate_e4 as f64 / 10_000.0
        ])
        .map_err(e("CURRENCY"))?;
    }
    let mut ins = insert(
        tx,
        "STOCK",
        &[
            "STOCK_CODE",
            "DESCRIPTION",
            "NOMINAL_CODE",
            "SALES_PRICE",
            "TAX_CODE",
            "QTY_IN_STOCK",
            "AVERAGE_COST_PRICE",
            "RECORD_MODIFY_DATE",
        ],
    )?;
    for (i, (code, desc, nominal, price, tax)) in co.stock.iter().enumerate() {
        ins.execute(params![
            code,
            desc,
            nominal,
            money(*price),
            TAX_CODES[*tax as usize].code,
            (i % 40) as f64 + 0.5,
            money(price * 6 / 10),
            dates.stamp(-10, i as u32),
        ])
        .map_err(e("STOCK"))?;
    }
    Ok(())
}
