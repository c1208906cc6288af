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
usage AS (
    SELECT SPLIT_NUMBER AS split_number, money(AMOUNT) AS amount FROM sage.AUDIT_USAGE WHERE NOT is_set(DELETED_FLAG)
    UNION ALL
    SELECT SPLIT_CROSSREF, money(AMOUNT) FROM sage.AUDIT_USAGE WHERE NOT is_set(DELETED_FLAG)
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
