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
totals AS (
    SELECT data_type, id, totalAmount, splits,
           coalesce(list_sum([l.amount FOR l IN lines]), 0) AS lines_total
    FROM payment
),
unbalanced AS (
    SELECT * FROM totals WHERE lines_total <> totalAmount
),
-- Sage's own figures are only looked at for the payments that do not add up (usually none),
-- so the check stays cheap on large companies.
relevant AS (
    SELECT DISTINCT unnest(splits) AS split_number FROM unbalanced
),
relevant_usage AS (
    SELECT u.SPLIT_NUMBER, u.SPLIT_CROSSREF, money(u.AMOUNT) AS amount
    FROM audit_usage() u
    WHERE NOT is_set(u.DELETED_FLAG)
      AND (u.SPLIT_NUMBER IN (SELECT split_number FROM relevant)
           OR u.SPLIT_CROSSREF IN (SELECT split_number FROM relevant))
),
split_deleted AS (
    SELECT s.SPLIT_NUMBER AS split_number, is_set(s.DELETED_FLAG) OR is_set(h.DELETED_FLAG) AS deleted
    FROM audit_split() s LEFT JOIN audit_header() h USING (HEADER_NUMBER)
    WHERE s.SPLIT_NUMBER IN (SELECT split_number FROM relevant)
       OR s.SPLIT_NUMBER IN (SELECT SPLIT_NUMBER FROM relevant_usage)
       OR s.SPLIT_NUMBER IN (SELECT SPLIT_CROSSREF FROM relevant_usage)
),
live_usage AS (
    -- as rule 11: allocations touching a deleted split do not settle anything
    SELECT u.*
    FROM relevant_usage u
    JOIN split_deleted a ON a.split_number = u.SPLIT_NUMBER
    LEFT JOIN split_deleted b ON b.split_number = u.SPLIT_CROSSREF
    WHERE NOT a.deleted AND NOT coalesce(b.deleted, false)
),
allocated AS (
    SELECT split_number, sum(amount) AS amount
    FROM (SELECT SPLIT_NUMBER AS split_number, amount FROM live_usage
          UNION ALL SELECT SPLIT_CROSSREF, amount FROM live_usage)
    GROUP BY ALL
),
source_flag AS (
    SELECT p.data_type, p.id,
           bool_or(money(s.GROSS_AMOUNT) <> coalesce(a.amount, 0) + money(s.OUTSTANDING)
                   OR money(s.AMOUNT_PAID) <> coalesce(a.amount, 0)) AS source_inconsistent
    FROM (SELECT data_type, id, unnest(splits) AS split_number FROM unbalanced) p
    JOIN audit_split() s ON s.SPLIT_NUMBER = p.split_number
    LEFT JOIN allocated a ON a.split_number = p.split_number
    GROUP BY ALL
)
SELECT 'error' AS severity, data_type, id, 'line and links do not net to zero' AS problem,
       line_amount AS amount, links_amount AS against
FROM unbalanced_lines
UNION ALL
SELECT CASE WHEN coalesce(f.source_inconsistent, false) THEN 'warning' ELSE 'error' END, u.data_type, u.id,
       CASE WHEN coalesce(f.source_inconsistent, false) THEN 'Sage split GROSS <> allocations + OUTSTANDING'
            ELSE 'lines do not add up to totalAmount' END,
       u.lines_total, u.totalAmount
FROM unbalanced u
LEFT JOIN source_flag f USING (data_type, id)
ORDER BY 1, 2, 3;
