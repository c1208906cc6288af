-- Rule 50: bank transactions: every posting to a bank account's nominal code.
--
-- Why: lenders read cash flow from bank accounts. Sage has no bank statement table we can
-- rely on; every movement of a bank account is an AUDIT_JOURNAL line on its nominal code
-- (receipts, payments, bank entries, transfers), so that is the source, line by line: the
-- sum per bank equals the bank nominal's balance. The id is the journal line's Sage key
-- (TRAN_NUMBER-NOMINAL_CODE); a split that posts twice to one bank nominal (Sage allows it)
-- gives its second and later lines -2, -3, … in order of amount, so ids are unique by
-- construction and the first line keeps the id it always had. recordRef points at the document (payment, bill payment) or,
-- for bank entries and transfers, at the journal entry. A bank payment or receipt (BP, BR,
-- CP, CR, VP, VR) carries what Sage keeps on its split as one line item: the nominal it was
-- spent on or received for, net, VAT and tax code, signed like the amount; other bank
-- transactions have none (their detail is the document recordRef points at).
-- Currency: each transaction is in its bank account's currency. amountInCurrency is the amount
-- itself for an account kept in the base currency; for a foreign-currency account (Foreign
-- Trader) it is the split's FOREIGN_GROSS_AMOUNT, signed like the amount, when the split is in
-- the account's currency, else null (a journal carries pounds only). Exchange differences and
-- revaluations (rule 15) are marked isExchangeAdjustment. Last, each bank account's
-- balanceInCurrency: its balance for a base-currency account, else the sum of its live
-- transactions in its currency (null while one of them has none).
-- Built one slice of headers at a time (see slices in 00_conventions.sql): the postings' joins
-- with their headers and splits stay small whatever the company's size.
-- The splits of bank payments and receipts, each bank transaction's line item (few: kept
-- apart once rather than looked up among all splits in every slice).
CREATE OR REPLACE TABLE work.bank_splits AS
SELECT split_number, header_number, details, nominal_code, tax_code, dept_number, project_id, net, tax, gross
FROM work.splits
WHERE part_type IN ('BP', 'BR', 'CP', 'CR', 'VP', 'VR');

-- Each bank account's currency, and whether it is the base currency (one row per code).
CREATE OR REPLACE TABLE work.bank_currency AS
SELECT txt(b.ACCOUNT_REF) AS code, any_value(currency_code(c.CODE, b.CURRENCY)) AS currency,
       bool_and(currency_code(c.CODE, b.CURRENCY) IS NOT DISTINCT FROM base_currency()) AS is_base
FROM sage.BANK b
LEFT JOIN sage.CURRENCY c ON c.NUMBER = b.CURRENCY
GROUP BY ALL;

-- The splits that can move a foreign-currency bank account, with their amount in currency
-- (few: kept apart like bank_splits).
CREATE OR REPLACE TABLE work.foreign_bank_splits AS
SELECT split_number, header_number, currency, foreign_gross
FROM work.splits
WHERE currency IN (SELECT currency FROM work.bank_currency WHERE NOT is_base)
  AND part_type IN ('SR', 'SA', 'SP', 'PP', 'PA', 'PR', 'BP', 'BR', 'CP', 'CR', 'VP', 'VR');

-- From here on only postings (rule 12) read work.splits, the widest working table: it keeps
-- just the columns they read, so that its memory goes to the bank transactions and rule 60.
CREATE OR REPLACE TABLE work.splits AS
SELECT split_number, header_number, modified, details, part_id, data_type, project_id
FROM work.splits;

CREATE OR REPLACE TEMP MACRO bank_transactions_slice(k) AS TABLE
SELECT
    j.tran_number::VARCHAR || '-' || j.nominal_code || CASE
        WHEN j.nth = 1 THEN '' ELSE '-' || j.nth END AS id,
    {'id': j.nominal_code} AS bankAccountRef,
    j.posted_on AS date,
    j.amount AS amount,
    b.currency AS currency,
    CASE WHEN b.is_base THEN j.amount
         WHEN f.currency = b.currency THEN (sign(j.amount) * abs(f.foreign_gross))::DECIMAL(18, 2)
         END AS amountInCurrency,
    j.details AS description,
    coalesce(j.reference, '') AS reference,
    j.journal_type AS sageType,
    x.header_number IS NOT NULL AS isExchangeAdjustment,
    CASE
        WHEN j.data_type IN ('invoices', 'creditNotes', 'payments') THEN {'dataType': 'customers', 'id': j.account_ref}
        WHEN j.data_type IN ('bills', 'billCreditNotes', 'billPayments') THEN {'dataType': 'suppliers', 'id': j.account_ref}
        END AS counterpartyRef,
    CASE
        WHEN j.data_type IS NOT NULL THEN {'dataType': j.data_type, 'id': j.part_id}
        ELSE {'dataType': 'journalEntries', 'id': j.entry_id} END AS recordRef,
    CASE WHEN s.split_number IS NULL THEN [] ELSE [{
        'id': s.split_number::VARCHAR,
        'description': s.details,
        'accountRef': {'id': s.nominal_code},
        'taxRateRef': {'id': s.tax_code},
        'trackingCategoryRefs': tracking_refs(s.dept_number, s.project_id),
        'subTotal': (sign(j.amount) * s.net)::DECIMAL(18, 2),
        'taxAmount': (sign(j.amount) * s.tax)::DECIMAL(18, 2),
        'totalAmount': (sign(j.amount) * s.gross)::DECIMAL(18, 2)
    }] END AS lineItems,
    j.modified AS sourceModifiedDate,
    j.deleted AS isDeleted,
    j.archived AS isArchived,
    lineage('AUDIT_JOURNAL', j.tran_number::VARCHAR || '-' || j.nominal_code,
            CASE WHEN j.split_number IS NULL THEN [] ELSE [j.split_number] END) AS lineage
FROM (
    SELECT *, row_number() OVER (
        PARTITION BY tran_number, nominal_code
        ORDER BY amount, posted_on, journal_type, line_deleted) AS nth
    FROM postings(k, true)
) j
JOIN work.bank_currency b ON b.code = j.nominal_code
LEFT JOIN (SELECT * FROM work.bank_splits WHERE in_slice(header_number, k)) s
    ON s.split_number = j.split_number
LEFT JOIN (SELECT * FROM work.foreign_bank_splits WHERE in_slice(header_number, k)) f
    ON f.split_number = j.split_number
LEFT JOIN work.exchange_adjustments x ON x.header_number = j.header_number;

CREATE OR REPLACE TABLE bankTransactions AS FROM bank_transactions_slice(0) LIMIT 0;
-- for each slice
INSERT INTO bankTransactions FROM bank_transactions_slice(getvariable('slice'));
-- end for each slice

-- Each bank account's balance in its own currency.
UPDATE bankAccounts a
SET balanceInCurrency = CASE WHEN b.is_base THEN a.balance WHEN t.code IS NULL THEN 0
                             ELSE t.in_currency END
FROM work.bank_currency b
LEFT JOIN (
    SELECT bankAccountRef.id AS code,
           CASE WHEN count(amountInCurrency) = count(*) THEN sum(amountInCurrency) END AS in_currency
    FROM bankTransactions
    WHERE NOT isDeleted AND NOT isArchived
      AND bankAccountRef.id IN (SELECT code FROM work.bank_currency WHERE NOT is_base)
    GROUP BY ALL
) t ON t.code = b.code
WHERE b.code = a.id;
