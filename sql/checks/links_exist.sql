-- Check links_exist: every allocation, payment link and posting points at a record that exists.
-- error: a paymentAllocations entry, a payment line link, a journal line's or bank
--        transaction's recordRef names a record missing from its data type, or a
--        PaymentOnAccount link names another payment than its own. Sage allocations always
--        join two existing splits, so a dangling link means a rule lost a document (or
--        AUDIT_USAGE names a split that does not exist, which the row also shows).
WITH record AS (
    SELECT 'invoices' AS data_type, id FROM invoices
    UNION ALL SELECT 'creditNotes', id FROM creditNotes
    UNION ALL SELECT 'bills', id FROM bills
    UNION ALL SELECT 'billCreditNotes', id FROM billCreditNotes
    UNION ALL SELECT 'payments', id FROM payments
    UNION ALL SELECT 'billPayments', id FROM billPayments
    UNION ALL SELECT 'journalEntries', id FROM journalEntries
    UNION ALL SELECT 'customers', id FROM customers
    UNION ALL SELECT 'suppliers', id FROM suppliers
),
allocation AS (
    SELECT 'invoices' AS data_type, id, unnest(paymentAllocations).paymentRef AS ref FROM invoices
    UNION ALL SELECT 'creditNotes', id, unnest(paymentAllocations).paymentRef FROM creditNotes
    UNION ALL SELECT 'bills', id, unnest(paymentAllocations).paymentRef FROM bills
    UNION ALL SELECT 'billCreditNotes', id, unnest(paymentAllocations).paymentRef FROM billCreditNotes
),
payment_link AS (
    SELECT data_type, id, unnest(line.links) AS link
    FROM (SELECT 'payments' AS data_type, id, unnest(lines) AS line FROM payments
          UNION ALL SELECT 'billPayments', id, unnest(lines) FROM billPayments)
),
link AS (
    SELECT data_type, id, 'paymentAllocations' AS field, ref.dataType AS target_type, ref.id AS target_id
    FROM allocation
    UNION ALL
    SELECT data_type, id, 'lines.links', link.type, link.id
    FROM payment_link WHERE link.type <> 'PaymentOnAccount'
    UNION ALL
    -- one row per distinct document an entry's lines point at (most lines share one)
    SELECT 'journalEntries', id, 'journalLines.recordRef', ref.dataType, ref.id
    FROM (SELECT id, unnest(list_distinct([l.recordRef FOR l IN journalLines])) AS ref FROM journalEntries)
    WHERE ref IS NOT NULL
    UNION ALL
    SELECT 'bankTransactions', id, 'recordRef', recordRef.dataType, recordRef.id FROM bankTransactions
    UNION ALL
    SELECT 'bankTransactions', id, 'counterpartyRef', counterpartyRef.dataType, counterpartyRef.id
    FROM bankTransactions WHERE counterpartyRef IS NOT NULL
)
SELECT 'error' AS severity, l.*
FROM link l
LEFT JOIN record r ON r.data_type = l.target_type AND r.id = l.target_id
WHERE r.id IS NULL
  -- a customer or supplier missing from the ledger is a source problem: check references
  AND (l.target_type IS NULL OR l.target_type NOT IN ('customers', 'suppliers'))
UNION ALL
SELECT 'error', data_type, id, 'lines.links', link.type, link.id
FROM payment_link
WHERE link.type = 'PaymentOnAccount' AND link.id <> id
ORDER BY 1, 2, 3;
