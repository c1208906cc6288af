-- Rule 21: the chart of accounts, one record per nominal code (NOMINAL_LEDGER).
--
-- Why: every posting names a nominal code; clients need its name and class. The class and
-- Sage's chart of accounts heading (category) come from rule 08: the company's own chart of
-- accounts where it has one, else Sage's default UK chart, where 9998 Suspense and 9999
-- Mispostings are balance-sheet liabilities.
-- currentBalance is Sage's own BALANCE (debit positive), never recomputed.

-- Each nominal's live postings, summed at the source's precision (also used by rule 23):
-- what Sage's balances must equal.
CREATE OR REPLACE TABLE work.nominal_totals AS
SELECT txt(NOMINAL_CODE) AS code, sum(AMOUNT::DOUBLE) AS posted
FROM live_postings()
GROUP BY ALL;

CREATE OR REPLACE TABLE accounts AS
WITH banks AS (
    SELECT DISTINCT txt(ACCOUNT_REF) AS code FROM sage.BANK
),
nominal AS (
    SELECT
        txt(ACCOUNT_REF) AS code,
        txt(NAME) AS name,
        ACCOUNT_TYPE AS account_type,
        is_set(INACTIVE_FLAG) AS inactive,
        money(BALANCE_BF) AS balance_bf,
        money(BALANCE) AS balance,
        BALANCE AS balance_raw,
        -- Sage's prior-year month figures (Year End moves the year's months there); the driver
        -- may lack the columns (staged as NULL): then none
        CASE WHEN coalesce(PRIOR_YR_MTH1, PRIOR_YR_MTH2, PRIOR_YR_MTH3, PRIOR_YR_MTH4, PRIOR_YR_MTH5,
                           PRIOR_YR_MTH6, PRIOR_YR_MTH7, PRIOR_YR_MTH8, PRIOR_YR_MTH9,
                           PRIOR_YR_MTH10, PRIOR_YR_MTH11, PRIOR_YR_MTH12) IS NOT NULL
             THEN list_transform([PRIOR_YR_MTH1, PRIOR_YR_MTH2, PRIOR_YR_MTH3, PRIOR_YR_MTH4,
                                  PRIOR_YR_MTH5, PRIOR_YR_MTH6, PRIOR_YR_MTH7, PRIOR_YR_MTH8,
                                  PRIOR_YR_MTH9, PRIOR_YR_MTH10, PRIOR_YR_MTH11, PRIOR_YR_MTH12],
                                 x -> money(x))
             ELSE [] END AS prior_year,
        RECORD_MODIFY_DATE AS modified
    FROM sage.NOMINAL_LEDGER
)
SELECT
    n.code AS id,
    n.code AS nominalCode,
    n.name AS name,
    coalesce(c.class, account_class(n.code)) AS classification,
    c.category AS category,
    n.account_type::BIGINT AS sageAccountType,
    CASE WHEN n.inactive THEN 'Archived' ELSE 'Active' END AS status,
    b.code IS NOT NULL AS isBankAccount,
    n.balance_bf AS balanceBroughtForward,
    n.balance AS currentBalance,
    -- Sage's summary figure agrees with the postings the API serves (see the data type)
    same_money(n.balance_raw, t.posted) AS balanceMatchesDetail,
    n.prior_year::DECIMAL(18, 2)[] AS priorYearMonthlyBalances,
    n.modified AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('NOMINAL_LEDGER', n.code, []) AS lineage
FROM nominal n
LEFT JOIN banks b ON b.code = n.code
LEFT JOIN work.account_classes c ON c.code = n.code
LEFT JOIN work.nominal_totals t ON t.code = n.code;
