-- Check trial_balance: the normalised journal (every live posting of journalEntries) sums to
-- exactly zero, as double entry requires.
-- error:   the live lines of all journal entries do not sum to 0.00. This stays an error even
--          when Sage's own AUDIT_JOURNAL does not balance (column source_total): clients
--          rebuild trial balances from what we publish, and an unbalanced ledger is corrupt
--          data, not a summary figure disagreeing with its transactions.
-- warning: one entry does not balance on its own. Documents balance per split, so this only
--          happens when Sage itself holds a journal whose lines are spread over several dates
--          (rule 12 groups postings per date); totals per month stay exact.
WITH per_entry AS (
    -- each entry's own sum, straight from its list of lines (no regrouping of the lines)
    SELECT id, coalesce(list_sum([l.netAmount FOR l IN journalLines]), 0) AS total
    FROM journalEntries
    WHERE NOT isDeleted
),
overall AS (
    SELECT coalesce(sum(total), 0) AS total FROM per_entry
),
source AS (
    -- only looked at when the journal does not balance, to say whether Sage's does
    -- at the source's own precision: summed, then rounded
    SELECT money(sum(AMOUNT::DOUBLE)) AS total
    FROM live_postings()
    WHERE (SELECT total FROM overall) <> 0
)
SELECT 'error' AS severity, 'all journal entries' AS entry, total AS imbalance,
       (SELECT total FROM source) AS source_total
FROM overall WHERE total <> 0
UNION ALL
SELECT 'warning', 'journal entry ' || id, total, NULL
FROM per_entry WHERE total <> 0
  -- an entry-level imbalance only matters when the whole is fine (else the error says it)
  AND (SELECT total FROM overall) = 0
ORDER BY severity, entry;
