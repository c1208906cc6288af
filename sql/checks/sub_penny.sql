-- Check sub_penny: amounts holding a fraction of a penny, and how rule 09 rounded them.
-- error:   a split whose source postings balance (they sum to 0.00 at the source's own
--          precision) is published with postings that do not sum to 0.00: rounding broke
--          double entry.
-- warning: a split holds an amount with a fraction of a penny (AUDIT_SPLIT NET, TAX, GROSS,
--          AMOUNT_PAID, OUTSTANDING or one of its AUDIT_JOURNAL postings). Sage derives such
--          amounts from foreign ones; they are published rounded to the penny (each posting
--          moves less than a penny, every split still balances), so a figure may differ by a
--          penny from one Sage shows unrounded. Names the split, its header and the amounts.
WITH split_amounts AS (
    SELECT SPLIT_NUMBER AS split_number, HEADER_NUMBER AS header_number,
           'NET ' || NET_AMOUNT || ', TAX ' || TAX_AMOUNT || ', GROSS ' || GROSS_AMOUNT AS amounts
    FROM audit_split()
    WHERE sub_penny(NET_AMOUNT) OR sub_penny(TAX_AMOUNT) OR sub_penny(GROSS_AMOUNT)
       OR sub_penny(AMOUNT_PAID) OR sub_penny(OUTSTANDING)
),
journal AS (
    SELECT j.SPLIT_NUMBER AS split_number, j.HEADER_NUMBER AS header_number, j.AMOUNT::DOUBLE AS raw,
           is_set(j.DELETED_FLAG) OR coalesce(is_set(h.DELETED_FLAG), false) AS deleted
    FROM audit_journal() j
    LEFT JOIN audit_header() h ON h.HEADER_NUMBER = j.HEADER_NUMBER
    WHERE j.HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM audit_journal() WHERE sub_penny(AMOUNT))
),
source AS (
    -- live postings per split of the headers concerned, at the source's precision
    SELECT split_number, min(header_number) AS header_number, money(sum(raw)) AS total,
           bool_or(sub_penny(raw)) AS sub_penny
    FROM journal
    WHERE NOT deleted AND split_number IS NOT NULL
    GROUP BY split_number
),
published AS (
    SELECT l.sourceSplitNumber AS split_number, sum(l.netAmount) AS total
    FROM (SELECT unnest(journalLines) AS l
          FROM journalEntries
          WHERE NOT isDeleted
            AND lineage.key IN (SELECT DISTINCT header_number::VARCHAR FROM journal))
    WHERE l.sourceSplitNumber IS NOT NULL
    GROUP BY ALL
)
SELECT 'error' AS severity, s.split_number AS split, s.header_number AS header,
       'its source postings balance but the published ones sum to ' || coalesce(p.total, 0) AS problem
FROM source s LEFT JOIN published p USING (split_number)
WHERE s.total = 0 AND coalesce(p.total, 0) <> 0
UNION ALL
SELECT 'warning', split_number, min(header_number),
       'amounts below a penny, published rounded: ' || string_agg(DISTINCT amounts, '; ' ORDER BY amounts)
FROM (SELECT split_number, header_number, amounts FROM split_amounts
      UNION ALL
      SELECT split_number, header_number, 'postings ' || string_agg(raw::VARCHAR, ' ')
      FROM journal WHERE split_number IN (SELECT split_number FROM source WHERE sub_penny)
      GROUP BY ALL)
GROUP BY split_number
ORDER BY severity, split;
