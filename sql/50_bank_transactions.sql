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
-- Built one slice of headers at a time (see slices in 00_conventions.sql): the postings' joins
-- with their headers and splits stay small whatever the company's size.
-- The splits of bank payments and receipts, each bank transaction's line item (few: kept
-- apart once rather than looked up among all splits in every slice).
CREATE OR REPLACE TABLE work.bank_splits AS
SELECT split_number, header_number, details, nominal_code, tax_code, dept_number, project_id, net, tax, gross
FROM work.splits
WHERE part_type IN ('BP', 'BR', 'CP', 'CR', 'VP', 'VR');

CREATE OR REPLACE TEMP MACRO bank_transactions_slice(k) AS TABLE
WITH bank AS (
    SELECT DISTINCT txt(ACCOUNT_REF) AS code FROM sage.BANK
)
SELECT
    j.tran_number::VARCHAR || '-' || j.nominal_code || CASE
        WHEN j.nth = 1 THEN '' ELSE '-' || j.nth END AS id,
    {'id': j.nominal_code} AS bankAccountRef,
    j.posted_on AS date,
    j.amount AS amount,
    j.details AS description,
    coalesce(j.reference, '') AS reference,
    j.journal_type AS sageType,
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
JOIN bank b ON b.code = j.nominal_code
LEFT JOIN (SELECT * FROM work.bank_splits WHERE in_slice(header_number, k)) s
    ON s.split_number = j.split_number;

CREATE OR REPLACE TABLE bankTransactions AS FROM bank_transactions_slice(0) LIMIT 0;
-- for each slice
INSERT INTO bankTransactions FROM bank_transactions_slice(getvariable('slice'));
-- end for each slice
