-- Check control_accounts: Sage's own Check Data test. The debtors control account (1100)
-- equals the sum of customer balances, the creditors control account (2100) minus the sum of
-- supplier balances. Both are the Sage defaults; a company that moved its control accounts
-- gets a warning here, never an error. Compared in the source, at Sage's precision (raw
-- sums, same_money): published figures rounded to the penny one by one may add up a penny
-- apart when Sage holds fractions of a penny (check sub_penny names those).
-- warning only: a mismatch can be genuine in the source (journals posted straight to a
--               control account); names the account and both figures.
WITH control AS (
    SELECT 'debtors' AS control, '1100' AS nominal,
           coalesce((SELECT sum(BALANCE::DOUBLE) FROM sage.SALES_LEDGER), 0) AS ledgers
    UNION ALL
    SELECT 'creditors', '2100',
           -coalesce((SELECT sum(BALANCE::DOUBLE) FROM sage.PURCHASE_LEDGER), 0)
),
posted AS (
    -- the live ledger (archived postings' effect is in Clear Audit Trail's opening balances)
    SELECT txt(NOMINAL_CODE) AS nominal, sum(AMOUNT::DOUBLE) AS amount
    FROM live_postings()
    WHERE txt(NOMINAL_CODE) IN ('1100', '2100')
    GROUP BY ALL
)
SELECT 'warning' AS severity, c.control, c.nominal, money(p.amount) AS control_account,
       money(c.ledgers) AS ledger_accounts
FROM control c
LEFT JOIN posted p USING (nominal)
WHERE NOT same_money(p.amount, c.ledgers);
