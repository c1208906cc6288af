-- Check control_accounts: Sage's own Check Data test. The debtors control account (1100)
-- equals the sum of customer balances, the creditors control account (2100) minus the sum of
-- supplier balances. Both are the Sage defaults; a company that moved its control accounts
-- gets a warning here, never an error.
-- warning only: a mismatch can be genuine in the source (journals posted straight to a
--               control account); names the account and both figures.
WITH control AS (
    SELECT 'debtors' AS control, '1100' AS nominal, (SELECT coalesce(sum(balance), 0) FROM customers) AS ledgers
    UNION ALL
    SELECT 'creditors', '2100', -(SELECT coalesce(sum(balance), 0) FROM suppliers)
),
posted AS (
    SELECT l.accountRef.id AS nominal, sum(l.netAmount) AS amount
    FROM (SELECT isDeleted, unnest(journalLines) AS l FROM journalEntries) WHERE NOT isDeleted
    GROUP BY ALL
)
SELECT 'warning' AS severity, c.control, c.nominal, coalesce(p.amount, 0) AS control_account, c.ledgers AS ledger_accounts
FROM control c
LEFT JOIN posted p USING (nominal)
WHERE coalesce(p.amount, 0) <> c.ledgers;
