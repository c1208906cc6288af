-- Rule 21: the chart of accounts, one record per nominal code (NOMINAL_LEDGER).
--
-- Why: every posting names a nominal code; clients need its name and class. Sage classifies
-- nominal codes through its CATEGORY ranges, which the ODBC tables we read do not expose, so
-- the classification follows Sage's default UK chart: 0010-1999 assets, 2000-2999
-- liabilities, 3000-3999 capital and reserves (equity), 4000-4999 income, 5000-9999 purchases,
-- direct expenses and overheads (expense), except 9998 Suspense and 9999 Mispostings, which
-- Sage's chart places in the balance sheet (current liabilities), not the P&L: a suspense
-- balance is money not yet explained, never a cost. Codes that are not numbers are 'Unknown'.
-- currentBalance is Sage's own BALANCE (debit positive), never recomputed.
CREATE OR REPLACE TABLE accounts AS
WITH banks AS (
    SELECT DISTINCT txt(ACCOUNT_REF) AS code FROM sage.BANK
),
nominal AS (
    SELECT
        txt(ACCOUNT_REF) AS code,
        txt(NAME) AS name,
        ACCOUNT_TYPE AS account_type,
        TRY_CAST(txt(ACCOUNT_REF) AS INTEGER) AS number,
        is_set(INACTIVE_FLAG) AS inactive,
        money(BALANCE_BF) AS balance_bf,
        money(BALANCE) AS balance,
        RECORD_MODIFY_DATE AS modified
    FROM sage.NOMINAL_LEDGER
)
SELECT
    n.code AS id,
    n.code AS nominalCode,
    n.name AS name,
    CASE
        WHEN n.number IS NULL THEN 'Unknown'
        WHEN n.number < 2000 THEN 'Asset'
        WHEN n.number < 3000 THEN 'Liability'
        WHEN n.number < 4000 THEN 'Equity'
        WHEN n.number < 5000 THEN 'Income'
        WHEN n.number IN (9998, 9999) THEN 'Liability'
        ELSE 'Expense' END AS classification,
    n.account_type::BIGINT AS sageAccountType,
    CASE WHEN n.inactive THEN 'Archived' ELSE 'Active' END AS status,
    b.code IS NOT NULL AS isBankAccount,
    n.balance_bf AS balanceBroughtForward,
    n.balance AS currentBalance,
    n.modified AS sourceModifiedDate,
    false AS isDeleted,
    lineage('NOMINAL_LEDGER', n.code, []) AS lineage
FROM nominal n
LEFT JOIN banks b ON b.code = n.code;
