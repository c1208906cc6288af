-- Check trial_balance: the normalised journal (every live posting of journalEntries) sums to
-- exactly zero, as double entry requires.
-- error:   the live lines of all journal entries do not sum to 0.00.
-- warning: one entry does not balance on its own. Documents balance per split, so this only
--          happens when Sage itself holds a journal whose lines are spread over several dates
--          (rule 12 groups postings per date); totals per month stay exact.
WITH line AS (
    SELECT e.id, e.isDeleted, unnest(e.journalLines).netAmount AS amount
    FROM journalEntries e
),
overall AS (
    SELECT sum(amount) AS total FROM line WHERE NOT isDeleted
),
per_entry AS (
    SELECT id, sum(amount) AS total FROM line WHERE NOT isDeleted GROUP BY id
)
SELECT 'error' AS severity, 'all journal entries' AS entry, total AS imbalance
FROM overall WHERE total <> 0
UNION ALL
SELECT 'warning', 'journal entry ' || id, total
FROM per_entry WHERE total <> 0
  -- an entry-level imbalance only matters when the whole is fine (else the error says it)
  AND (SELECT coalesce(total, 0) FROM overall) = 0
ORDER BY severity, entry;
