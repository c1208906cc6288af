-- Check account_balances: per customer and per supplier, the outstanding documents add up to
-- the Sage account BALANCE.
-- Archived documents (Clear Audit Trail) were settled and are no longer in Sage's live
-- tables: they are left out on both sides.
-- Outstanding = amountDue of invoices/bills - remainingCredit of credit notes
--               - unallocatedAmount of payments (a refund's is negative, so it adds).
-- error:   the normalised documents differ from the live source splits' OUTSTANDING (signed
--          by type): the rules changed a number.
-- warning: the source splits differ from SALES_LEDGER / PURCHASE_LEDGER BALANCE, compared
--          at Sage's precision (raw sums, same_money): Sage disagrees with itself (Check Data
--          would complain); names the account.
WITH normalised AS (
    SELECT 'customer' AS ledger, customerRef.id AS account, amountDue AS amount FROM invoices WHERE NOT isDeleted AND NOT isArchived
    UNION ALL SELECT 'customer', customerRef.id, -remainingCredit FROM creditNotes WHERE NOT isDeleted AND NOT isArchived
    UNION ALL SELECT 'customer', customerRef.id, -unallocatedAmount FROM payments WHERE NOT isDeleted AND NOT isArchived
    UNION ALL SELECT 'supplier', supplierRef.id, amountDue FROM bills WHERE NOT isDeleted AND NOT isArchived
    UNION ALL SELECT 'supplier', supplierRef.id, -remainingCredit FROM billCreditNotes WHERE NOT isDeleted AND NOT isArchived
    UNION ALL SELECT 'supplier', supplierRef.id, -unallocatedAmount FROM billPayments WHERE NOT isDeleted AND NOT isArchived
),
source AS (
    SELECT CASE WHEN split_type IN ('SI', 'SC', 'SR', 'SA', 'SD', 'SP') THEN 'customer' ELSE 'supplier' END AS ledger,
           account, ledger_sign(split_type) * money(OUTSTANDING) AS amount,
           ledger_sign(split_type) * coalesce(OUTSTANDING, 0)::DOUBLE AS raw
    FROM live_splits()
    WHERE ledger_sign(split_type) <> 0
),
ledger AS (
    SELECT 'customer' AS ledger, txt(ACCOUNT_REF) AS account, money(BALANCE) AS amount, BALANCE::DOUBLE AS raw
    FROM sage.SALES_LEDGER
    UNION ALL
    SELECT 'supplier', txt(ACCOUNT_REF), money(BALANCE), BALANCE::DOUBLE FROM sage.PURCHASE_LEDGER
),
totals AS (
    SELECT ledger, account,
           coalesce(sum(amount) FILTER (WHERE src = 'n'), 0) AS normalised,
           coalesce(sum(amount) FILTER (WHERE src = 's'), 0) AS source_splits,
           sum(raw) FILTER (WHERE src = 's') AS source_raw,
           coalesce(sum(amount) FILTER (WHERE src = 'l'), 0) AS sage_balance,
           sum(raw) FILTER (WHERE src = 'l') AS sage_raw
    FROM (SELECT 'n' AS src, *, NULL::DOUBLE AS raw FROM normalised
          UNION ALL SELECT 's', * FROM source
          UNION ALL SELECT 'l', * FROM ledger)
    GROUP BY ledger, account
)
SELECT CASE WHEN normalised <> source_splits THEN 'error' ELSE 'warning' END AS severity,
       * EXCLUDE (source_raw, sage_raw)
FROM totals
WHERE normalised <> source_splits OR NOT same_money(source_raw, sage_raw)
ORDER BY severity, ledger, account;
