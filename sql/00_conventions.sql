-- Rule 00: conventions every later rule and check uses, defined once.
--
-- Money. Sage keeps amounts as DOUBLE (binary floating point), which cannot hold most pence
-- exactly: 100.10 is stored as 100.09999999999999431566. Every amount Sage stores was entered
-- in pence (header totals are sums of such amounts, off by at most a few 1e-13), so the
-- nearest 2-decimal value is the amount meant. `money(x)` rounds half away from zero to two
-- places and makes it an exact DECIMAL(18,2). It is the ONLY place a DOUBLE becomes money;
-- sums are taken over the exact decimals, never over DOUBLEs. NULL counts as zero.
CREATE OR REPLACE TEMP MACRO money(x) AS CAST(round(coalesce(x, 0)::DOUBLE, 2) AS DECIMAL(18, 2));

-- An amount holding a fraction of a penny: Sage derives some base-currency amounts from
-- foreign ones (foreign amount / rate) and stores them unrounded, e.g. 12.3456. Anything more
-- than a thousandth of a penny from a whole penny is such an amount; DOUBLE's own noise on
-- pence is far smaller. Rule 09 rounds these so that every split still balances, and the
-- check sub_penny names each split that holds one.
CREATE OR REPLACE TEMP MACRO sub_penny(x) AS
    abs(coalesce(x, 0)::DOUBLE * 100 - round(coalesce(x, 0)::DOUBLE * 100)) > 0.001;

-- Two of Sage's own figures agree at Sage's precision: less than half a penny apart. Sage
-- keeps DOUBLEs; two sums of the same sub-penny amounts can land either side of a half
-- penny, so rounding each and comparing would report a difference Sage does not have.
CREATE OR REPLACE TEMP MACRO same_money(a, b) AS
    abs(coalesce(a, 0)::DOUBLE - coalesce(b, 0)::DOUBLE) < 0.005;

-- A split's net amount. Rounded on their own, sub-penny NET, TAX and GROSS can stop adding up
-- (10.004 + 2.003 = 12.007 rounds to 10.00 + 2.00 <> 12.01), so a split holding a sub-penny
-- amount publishes gross and VAT rounded and net = gross - VAT. Others: money(net) as Sage has it.
CREATE OR REPLACE TEMP MACRO split_net(net, tax, gross) AS CASE
    WHEN sub_penny(net) OR sub_penny(tax) OR sub_penny(gross) THEN money(gross) - money(tax)
    ELSE money(net) END;

-- Classification of a nominal code in Sage's default UK chart: 0010-1999 assets, 2000-2999
-- liabilities, 3000-3999 capital and reserves (equity), 4000-4999 income, 5000-9999
-- purchases, direct expenses and overheads (expense), except 9998 Suspense and 9999
-- Mispostings, which the chart places in the balance sheet (current liabilities): a suspense
-- balance is money not yet explained, never a cost. Codes that are not numbers are 'Unknown'.
CREATE OR REPLACE TEMP MACRO account_class(code) AS CASE
    WHEN TRY_CAST(code AS INTEGER) IS NULL THEN 'Unknown'
    WHEN TRY_CAST(code AS INTEGER) < 2000 THEN 'Asset'
    WHEN TRY_CAST(code AS INTEGER) < 3000 THEN 'Liability'
    WHEN TRY_CAST(code AS INTEGER) < 4000 THEN 'Equity'
    WHEN TRY_CAST(code AS INTEGER) < 5000 THEN 'Income'
    WHEN TRY_CAST(code AS INTEGER) IN (9998, 9999) THEN 'Liability'
    ELSE 'Expense' END;

-- The class a chart of accounts heading names (Sage's headings, in English): NULL when it
-- names none. Liabilities before assets ("Current Liabilities"), capital before the rest.
CREATE OR REPLACE TEMP MACRO category_class(heading) AS CASE
    WHEN heading IS NULL OR trim(heading) = '' THEN NULL
    WHEN lower(heading) SIMILAR TO '.*(liabilit|creditor|suspense|misposting|loan|overdraft).*' THEN 'Liability'
    WHEN lower(heading) SIMILAR TO '.*(capital|reserve|equity|retained).*' THEN 'Equity'
    WHEN lower(heading) SIMILAR TO '.*(asset|debtor|stock|bank|cash|deposit).*' THEN 'Asset'
    WHEN lower(heading) SIMILAR TO '.*(sales|income|revenue|turnover).*' THEN 'Income'
    WHEN lower(heading) SIMILAR TO '.*(purchas|expense|overhead|cost|depreciation).*' THEN 'Expense'
    END;

-- Retained earnings, where Sage's Year End moves the P&L: 3200 ("Profit and Loss Account")
-- in Sage's default UK chart.
CREATE OR REPLACE TEMP MACRO retained_earnings() AS '3200';

-- Exchange Rate Variance, where Sage's Foreign Trader posts exchange differences and
-- revaluations: 7906 in Sage's default UK chart.
CREATE OR REPLACE TEMP MACRO exchange_difference() AS '7906';

-- Rates, prices and quantities keep six places (they are not posted amounts).
CREATE OR REPLACE TEMP MACRO exact6(x) AS CAST(round(x::DOUBLE, 6) AS DECIMAL(18, 6));

-- Sage writes empty strings where other databases have NULL; we publish '' for "none".
CREATE OR REPLACE TEMP MACRO txt(x) AS coalesce(trim(x), '');

-- The company's base currency code (COMPANY.BASE_CURRENCY; NULL when Sage has none).
CREATE OR REPLACE TEMP MACRO base_currency() AS
    (SELECT nullif(txt(BASE_CURRENCY), '') FROM sage.COMPANY LIMIT 1);

-- Currency code of a Sage currency number: the CURRENCY table's code; number 0/1 or none is
-- the base currency (Sage's currency 1); a number missing from CURRENCY is named, never
-- silently taken for the base currency.
CREATE OR REPLACE TEMP MACRO currency_code(code, number) AS coalesce(
    nullif(txt(code), ''),
    CASE WHEN coalesce(number, 0) <= 1
         THEN base_currency() END,
    CASE WHEN coalesce(number, 0) > 1 THEN 'UNKNOWN-' || number END,
    '');

-- A postal address from Sage's five address lines, named as Sage labels them (Street 1,
-- Street 2, Town, County, Post Code).
CREATE OR REPLACE TEMP MACRO address(a1, a2, a3, a4, a5) AS
    {'line1': txt(a1), 'line2': txt(a2), 'city': txt(a3), 'region': txt(a4), 'postalCode': txt(a5)};

-- Sage flags are small integers; NULL means not set.
CREATE OR REPLACE TEMP MACRO is_set(x) AS coalesce(x, 0) <> 0;

-- +1 when the type raises what the customer owes us / what we owe the supplier, -1 when it
-- lowers it, 0 for bank and journal types (no customer or supplier).
CREATE OR REPLACE TEMP MACRO ledger_sign(t) AS CASE
    WHEN t IN ('SI', 'SP', 'PI', 'PR') THEN 1
    WHEN t IN ('SC', 'SR', 'SA', 'SD', 'PC', 'PP', 'PA', 'PD') THEN -1
    ELSE 0 END;

-- The data type a Sage split of type t becomes (NULL: bank and journal types, which appear
-- as bankTransactions and journalEntries only).
CREATE OR REPLACE TEMP MACRO data_type_of(t) AS CASE
    WHEN t = 'SI' THEN 'invoices'
    WHEN t = 'SC' THEN 'creditNotes'
    WHEN t = 'PI' THEN 'bills'
    WHEN t = 'PC' THEN 'billCreditNotes'
    WHEN t IN ('SR', 'SA', 'SD', 'SP') THEN 'payments'
    WHEN t IN ('PP', 'PA', 'PD', 'PR') THEN 'billPayments'
    END;

-- Ids of records made from a Sage header. A header whose splits all share the header's date
-- and type keeps the plain header number; a part split off by date or type gets the
-- deterministic suffix -TYPE-YYYYMMDD, so the same Sage data gives the same ids every sync.
CREATE OR REPLACE TEMP MACRO part_id(header_number, d, t, header_date, header_type) AS
    header_number::VARCHAR || CASE
        WHEN d IS NOT DISTINCT FROM header_date AND t IS NOT DISTINCT FROM header_type THEN ''
        ELSE '-' || t || '-' || coalesce(strftime(d, '%Y%m%d'), 'nodate') END;

-- Lists in a defined order. An ORDER BY inside an aggregate makes DuckDB buffer every group
-- separately (hundreds of MB on a large company), so rules aggregate flat structs of scalars
-- whose first fields are the sort key, without ORDER BY, then list_sort the finished list and
-- build the nested output objects with list_transform (cheaper than aggregating them).

-- Tracking categories of a line as trackingCategories ids: department 0 and project 0 are
-- Sage's "none". Built from the two numbers when a list is finished, not aggregated.
CREATE OR REPLACE TEMP MACRO tracking_refs(dept_number, project_id) AS list_filter(
    [CASE WHEN coalesce(dept_number, 0) <> 0 THEN {'id': 'department-' || dept_number} END,
     CASE WHEN coalesce(project_id, 0) <> 0 THEN {'id': 'project-' || project_id} END],
    x -> x IS NOT NULL);

-- The audit trail as it was before any Clear Audit Trail. Clear Audit Trail moves old, fully
-- settled transactions out of AUDIT_HEADER/SPLIT/JOURNAL/USAGE into AUDIT_HISTORY_* (empty
-- when the company has none) and posts opening-balance journals in their place. They were
-- archived, not deleted: the rules read both, each row with `archived`, so those records keep
-- their ids and are published with isArchived = true. Rules and checks read these four, not
-- the sage tables. (`rowid`, as a column, names a row within its own table.)
CREATE OR REPLACE TEMP MACRO audit_header() AS TABLE
    SELECT *, false AS archived FROM sage.AUDIT_HEADER
    UNION ALL BY NAME SELECT *, true AS archived FROM sage.AUDIT_HISTORY_HEADER;
CREATE OR REPLACE TEMP MACRO audit_split() AS TABLE
    SELECT *, false AS archived FROM sage.AUDIT_SPLIT
    UNION ALL BY NAME SELECT *, true AS archived FROM sage.AUDIT_HISTORY_SPLIT;
CREATE OR REPLACE TEMP MACRO audit_journal() AS TABLE
    SELECT *, rowid AS row_id, false AS archived FROM sage.AUDIT_JOURNAL
    UNION ALL BY NAME SELECT *, rowid AS row_id, true AS archived FROM sage.AUDIT_HISTORY_JOURNAL;
CREATE OR REPLACE TEMP MACRO audit_usage() AS TABLE
    SELECT *, false AS archived FROM sage.AUDIT_USAGE
    UNION ALL BY NAME SELECT *, true AS archived FROM sage.AUDIT_HISTORY_USAGE;

-- The live audit trail, as Sage's own figures count it: postings (AUDIT_JOURNAL) and splits
-- (AUDIT_SPLIT) neither deleted themselves nor under a deleted header (a posting without a
-- header counts as live). Splits carry their type (their own, else the header's) as
-- split_type and the header's account as account. Checks that compare Sage's summaries with
-- its detail read these, so that "live" means one thing everywhere.
CREATE OR REPLACE TEMP MACRO live_postings() AS TABLE
    SELECT j.* FROM sage.AUDIT_JOURNAL j
    LEFT JOIN sage.AUDIT_HEADER h ON h.HEADER_NUMBER = j.HEADER_NUMBER
    WHERE NOT (is_set(j.DELETED_FLAG) OR is_set(h.DELETED_FLAG));
CREATE OR REPLACE TEMP MACRO live_splits() AS TABLE
    SELECT s.*, coalesce(nullif(txt(s.TYPE), ''), txt(h.TYPE)) AS split_type, txt(h.ACCOUNT_REF) AS account
    FROM sage.AUDIT_SPLIT s
    JOIN sage.AUDIT_HEADER h ON h.HEADER_NUMBER = s.HEADER_NUMBER
    WHERE NOT (is_set(s.DELETED_FLAG) OR is_set(h.DELETED_FLAG));

-- Slices for big list() aggregations. DuckDB cannot spill the state of a list() aggregate,
-- so rules that build lists over millions of rows do it one slice of headers at a time, in a
-- block between `-- for each slice` and `-- end for each slice`: the runner runs the block
-- once per slice with the variable `slice` set to 0, 1, … `slices` (the last one being the
-- rows without a header number). The number of slices grows with the company (a slice holds
-- about 500,000 postings), so peak memory does not. Slices are ranges of header numbers of
-- equal width; the bounds are constants by the time DuckDB plans a statement, so a slice's
-- scan skips the other slices' row groups. in_slice(h, -1) is everything.
SET VARIABLE slices = (SELECT greatest(1, ceil(count(*) / 500000))::BIGINT FROM audit_journal());
SET VARIABLE slice_width = (SELECT coalesce(max(HEADER_NUMBER), 0) // getvariable('slices') + 1
                            FROM audit_header());
CREATE OR REPLACE TEMP MACRO in_slice(header_number, k) AS CASE
    WHEN k = -1 THEN true
    WHEN k = getvariable('slices') THEN header_number IS NULL
    WHEN k = 0 AND getvariable('slices') = 1 THEN header_number IS NOT NULL
    WHEN k = 0 THEN header_number < getvariable('slice_width')
    WHEN k = getvariable('slices') - 1 THEN header_number >= k * getvariable('slice_width')
    ELSE header_number >= k * getvariable('slice_width')
     AND header_number < (k + 1) * getvariable('slice_width') END;

-- Lineage every record carries back to Sage.
CREATE OR REPLACE TEMP MACRO lineage(tbl, k, splits) AS
    {'table': tbl, 'key': k::VARCHAR, 'splitNumbers': splits::BIGINT[]};

-- Financial period of a date: 0 = brought forward (before the financial year), 1..12 = month
-- of the financial year starting at fy_start, 13 = after the financial year.
CREATE OR REPLACE TEMP MACRO fy_period(d, fy_start) AS CASE
    WHEN d < fy_start THEN 0
    WHEN d >= fy_start + INTERVAL 12 MONTH THEN 13
    ELSE 1 + datediff('month', fy_start, d) END;
