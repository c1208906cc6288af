-- Check known_types: every Sage transaction TYPE is one the rules know.
-- warning: a header, split or posting carries a TYPE outside Sage's documented set (SI SC SR
--          SA SD SP PI PC PP PA PD PR BP BR CP CR VP VR JD JC). Its postings still reach
--          journalEntries and bankTransactions, so every total holds, but it makes no document
--          or payment: the row names the type, where it is and how often, so a rule can be
--          added for it.
WITH seen AS (
    SELECT 'AUDIT_HEADER' AS source_table, txt(TYPE) AS type, HEADER_NUMBER AS example FROM audit_header()
    UNION ALL SELECT 'AUDIT_SPLIT', txt(TYPE), SPLIT_NUMBER FROM audit_split()
    UNION ALL SELECT 'AUDIT_JOURNAL', txt(TYPE), TRAN_NUMBER FROM audit_journal()
)
SELECT 'warning' AS severity,
       'TYPE ' || coalesce('''' || type || '''', 'NULL') || ' in ' || source_table
           || ' is not a Sage transaction type the rules know: ' || count(*)
           || ' row(s), e.g. number ' || min(example) || '; treated as journal postings only' AS problem
FROM seen
WHERE type IS NULL
   OR type NOT IN ('SI', 'SC', 'SR', 'SA', 'SD', 'SP', 'PI', 'PC', 'PP', 'PA', 'PD', 'PR',
                   'BP', 'BR', 'CP', 'CR', 'VP', 'VR', 'JD', 'JC')
GROUP BY source_table, type
ORDER BY source_table, type;
