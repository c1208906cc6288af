-- Check payments_net_to_zero: every payment's lines and links net to zero.
-- error:   a line's amount plus its links' amounts is not 0.00, or a payment's lines do not
--          add up to its totalAmount while Sage's own figures for its splits do agree
--          (GROSS = sum of its allocations + OUTSTANDING).
-- warning: the lines do not add up because Sage's figures for the payment's splits disagree
--          (AMOUNT_PAID, AUDIT_USAGE and OUTSTANDING do not add up to GROSS in the source).
WITH payment AS (
    SELECT 'payments' AS data_type, id, totalAmount, lines, lineage.splitNumbers AS splits FROM payments WHERE NOT isDeleted
    UNION ALL
    SELECT 'billPayments', id, totalAmount, lines, lineage.splitNumbers FROM billPayments WHERE NOT isDeleted
),
line AS (
    SELECT data_type, id, unnest(lines) AS line FROM payment
),
unbalanced_lines AS (
    SELECT data_type, id, line.amount AS line_amount, list_sum([k.amount FOR k IN line.links]) AS links_amount
    FROM line
    WHERE line.amount + coalesce(list_sum([k.amount FOR k IN line.links]), 0) <> 0
),
split_deleted AS (
    SELECT s.SPLIT_NUMBER AS split_number, is_set(s.DELETED_FLAG) OR is_set(h.DELETED_FLAG) AS deleted
    FROM sage.AUDIT_SPLIT s LEFT JOIN sage.AUDIT_HEADER h USING (HEADER_NUMBER)
),
live_usage AS (
    -- as rule 11: allocations touching a deleted split do not settle anything
    SELECT u.SPLIT_NUMBER, u.SPLIT_CROSSREF, money(u.AMOUNT) AS amount
    FROM sage.AUDIT_USAGE u
    JOIN split_deleted a ON a.split_number = u.SPLIT_NUMBER
    LEFT JOIN split_deleted b ON b.split_number = u.SPLIT_CROSSREF
    WHERE NOT is_set(u.DELETED_FLAG) AND NOT a.deleted AND NOT coalesce(b.deleted, false)
),
usage AS (
    SELECT SPLIT_NUMBER AS split_number, amount FROM live_usage
    UNION ALL
    SELECT SPLIT_CROSSREF, amount FROM live_usage
),
allocated AS (
    SELECT split_number, sum(amount) AS amount FROM usage GROUP BY ALL
),
source_split AS (
    SELECT s.SPLIT_NUMBER AS split_number, money(s.GROSS_AMOUNT) AS gross, money(s.OUTSTANDING) AS outstanding,
           money(s.AMOUNT_PAID) AS paid, coalesce(a.amount, 0) AS allocated
    FROM sage.AUDIT_SPLIT s
    LEFT JOIN allocated a ON a.split_number = s.SPLIT_NUMBER
),
source_flag AS (
    SELECT p.data_type, p.id,
           bool_or(s.gross <> s.allocated + s.outstanding OR s.paid <> s.allocated) AS source_inconsistent
    FROM (SELECT data_type, id, unnest(splits) AS split_number FROM payment) p
    JOIN source_split s USING (split_number)
    GROUP BY ALL
),
totals AS (
    SELECT p.data_type, p.id, p.totalAmount,
           coalesce(list_sum([l.amount FOR l IN p.lines]), 0) AS lines_total,
           coalesce(f.source_inconsistent, false) AS source_inconsistent
    FROM payment p
    LEFT JOIN source_flag f USING (data_type, id)
)
SELECT 'error' AS severity, data_type, id, 'line and links do not net to zero' AS problem,
       line_amount AS amount, links_amount AS against
FROM unbalanced_lines
UNION ALL
SELECT CASE WHEN source_inconsistent THEN 'warning' ELSE 'error' END, data_type, id,
       CASE WHEN source_inconsistent THEN 'Sage split GROSS <> allocations + OUTSTANDING'
            ELSE 'lines do not add up to totalAmount' END,
       lines_total, totalAmount
FROM totals
WHERE lines_total <> totalAmount
ORDER BY 1, 2, 3;
