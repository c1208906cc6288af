-- Check split_postings: each live split against the AUDIT_JOURNAL postings Sage made for it
-- (nominal, amount, date), as Sage's Check Data does.
-- warning: a split of a document, payment or bank type has no posting on its own nominal code
--          of its net amount (gross for payments and refunds), or postings dated otherwise
--          than the split, or postings that do not sum to zero (journal lines JD/JC balance
--          across their header instead, and are only checked for nominal, amount and date),
--          or no postings at all. The published documents come from the splits and the
--          journal entries from the postings, so the two views of that split disagree the
--          same way. Names the split and what differs.
WITH split AS (
    SELECT SPLIT_NUMBER AS split, HEADER_NUMBER AS header, split_type AS type, "DATE" AS split_date,
           txt(NOMINAL_CODE) AS nominal,
           CASE WHEN split_type IN ('SR', 'SA', 'SP', 'PP', 'PA', 'PR')
                THEN GROSS_AMOUNT ELSE NET_AMOUNT END::DOUBLE AS expected
    FROM live_splits()
),
posting AS (
    SELECT SPLIT_NUMBER AS split, txt(NOMINAL_CODE) AS nominal, "DATE" AS posted_on, AMOUNT::DOUBLE AS amount
    FROM sage.AUDIT_JOURNAL
    WHERE NOT is_set(DELETED_FLAG) AND SPLIT_NUMBER IS NOT NULL
),
compared AS (
    SELECT s.split, s.header, s.type, s.nominal, s.expected,
           count(p.split) AS postings,
           coalesce(bool_or(p.nominal = s.nominal AND abs(abs(p.amount) - abs(s.expected)) < 0.005), false) AS own_line,
           coalesce(bool_and(p.posted_on IS NOT DISTINCT FROM s.split_date), true) AS same_date,
           money(sum(p.amount)) AS total
    FROM split s
    LEFT JOIN posting p USING (split)
    GROUP BY s.split, s.header, s.type, s.nominal, s.expected
)
SELECT 'warning' AS severity, split, header, type,
       concat_ws('; ',
           CASE WHEN postings = 0 THEN 'no postings' END,
           CASE WHEN postings > 0 AND NOT own_line AND expected <> 0
                THEN 'no posting of ' || money(abs(expected)) || ' on nominal ' || nominal END,
           CASE WHEN NOT same_date THEN 'postings dated otherwise than the split' END,
           CASE WHEN type NOT IN ('JD', 'JC') AND total <> 0 THEN 'postings sum to ' || total END
       ) AS problem
FROM compared
WHERE (postings = 0 AND expected <> 0)
   OR (postings > 0 AND NOT own_line AND expected <> 0)
   OR NOT same_date
   OR (type NOT IN ('JD', 'JC') AND total <> 0)
ORDER BY split;
