-- Rule 50: bank transactions: every posting to a bank account's nominal code.
--
-- Why: lenders read cash flow from bank accounts. Sage has no bank statement table we can
-- rely on; every movement of a bank account is an AUDIT_JOURNAL line on its nominal code
-- (receipts, payments, bank entries, transfers), so that is the source, line by line: the
-- sum per bank equals the bank nominal's balance. The id is the journal line's Sage key
-- (TRAN_NUMBER-NOMINAL_CODE); a split that posts twice to one bank nominal (Sage allows it)
-- gives its second and later lines -2, -3, … in order of amount, so ids are unique by
-- construction and the first line keeps the id it always had. recordRef points at the document (payment, bill payment) or,
-- for bank entries and transfers, at the journal entry.
-- Built one slice of headers at a time (see slices in 00_conventions.sql): the postings' joins
-- with their headers and splits stay small whatever the company's size.
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
JOIN bank b ON b.code = j.nominal_code;

CREATE OR REPLACE TABLE bankTransactions AS FROM bank_transactions_slice(0) LIMIT 0;
-- for each slice
INSERT INTO bankTransactions FROM bank_transactions_slice(getvariable('slice'));
-- end for each slice
