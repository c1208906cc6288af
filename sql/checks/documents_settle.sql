-- Check documents_settle: every invoice, credit note, bill and bill credit note is settled by
-- exactly what its allocations say: totalAmount - allocations = amountDue (remainingCredit).
-- error:   the published figures do not add up while Sage's own figures for the document's
--          splits do (GROSS = live allocations + OUTSTANDING): the rules changed a number or
--          lost an allocation.
-- warning: Sage's own figures for the splits do not add up (AMOUNT_PAID, AUDIT_USAGE and
--          OUTSTANDING disagree in the source).
WITH document AS (
    SELECT 'invoices' AS data_type, id, totalAmount AS total, amountDue AS due, paymentAllocations AS allocations, lineage.splitNumbers AS splits FROM invoices WHERE NOT isDeleted
    UNION ALL SELECT 'creditNotes', id, totalAmount, remainingCredit, paymentAllocations, lineage.splitNumbers FROM creditNotes WHERE NOT isDeleted
    UNION ALL SELECT 'bills', id, totalAmount, amountDue, paymentAllocations, lineage.splitNumbers FROM bills WHERE NOT isDeleted
    UNION ALL SELECT 'billCreditNotes', id, totalAmount, remainingCredit, paymentAllocations, lineage.splitNumbers FROM billCreditNotes WHERE NOT isDeleted
),
published AS (
    SELECT data_type, id, total, due,
           coalesce(list_sum([a.amount FOR a IN allocations]), 0) AS allocated, splits
    FROM document
),
split_deleted AS (
    SELECT s.SPLIT_NUMBER AS split_number, is_set(s.DELETED_FLAG) OR is_set(h.DELETED_FLAG) AS deleted
    FROM audit_split() s LEFT JOIN audit_header() h USING (HEADER_NUMBER)
),
live_usage AS (
    SELECT u.SPLIT_NUMBER, u.SPLIT_CROSSREF, money(u.AMOUNT) AS amount
    FROM audit_usage() u
    JOIN split_deleted a ON a.split_number = u.SPLIT_NUMBER
    LEFT JOIN split_deleted b ON b.split_number = u.SPLIT_CROSSREF
    WHERE NOT is_set(u.DELETED_FLAG) AND NOT a.deleted AND NOT coalesce(b.deleted, false)
),
allocated AS (
    SELECT split_number, sum(amount) AS amount
    FROM (SELECT SPLIT_NUMBER AS split_number, amount FROM live_usage
          UNION ALL SELECT SPLIT_CROSSREF, amount FROM live_usage)
    GROUP BY ALL
),
unbalanced AS (
    SELECT * FROM published WHERE total - allocated <> due
),
source_flag AS (
    SELECT u.data_type, u.id,
           bool_or(money(s.GROSS_AMOUNT) <> coalesce(a.amount, 0) + money(s.OUTSTANDING)
                   OR money(s.AMOUNT_PAID) <> coalesce(a.amount, 0)) AS source_inconsistent
    FROM (SELECT data_type, id, unnest(splits) AS split_number FROM unbalanced) u
    JOIN audit_split() s ON s.SPLIT_NUMBER = u.split_number
    LEFT JOIN allocated a ON a.split_number = u.split_number
    GROUP BY ALL
)
SELECT CASE WHEN coalesce(f.source_inconsistent, false) THEN 'warning' ELSE 'error' END AS severity,
       b.data_type, b.id, b.total, b.allocated, b.due
FROM unbalanced b
LEFT JOIN source_flag f USING (data_type, id)
ORDER BY 1, 2, 3;
