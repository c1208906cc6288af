-- Check nominal_months: per nominal code and month, the normalised postings equal the source.
-- error:   journalEntries lines per nominal code and calendar month differ from the live
--          AUDIT_JOURNAL rows (the rules changed a number); archived entries are compared
--          with AUDIT_HISTORY_JOURNAL the same way. The source is summed at its own
--          precision and then rounded; where it holds postings with a fraction of a penny
--          (rule 09) the published sum may differ by less than a penny per such posting.
-- warning: the live AUDIT_JOURNAL rows per nominal code and financial period (brought forward,
--          months 1-12) differ from Sage's own NOMINAL_LEDGER balances (BALANCE_BF,
--          BALANCE_MTH1..12, BALANCE): the source disagrees with itself, as Sage's Check
--          Data would report; names the nominal code and period. Likewise the prior financial
--          year's months (PRIOR1..12) against PRIOR_YR_MTH1..12 where the driver has them,
--          leaving out the Year End journal (journalEntries.isYearEnd), which Sage does not
--          count in them, and counting archived postings rather than the opening-balance
--          journals (reference O/Bal) Clear Audit Trail put in their place.
WITH fy AS (
    -- the company record's financial year (Sage's, or derived when Sage has none)
    SELECT financialYearStart AS fy_start FROM company LIMIT 1
),
normalised AS (
    SELECT e.isArchived AS archived, l.accountRef.id AS nominal, date_trunc('month', e.postedOn) AS month,
           l.netAmount AS amount
    FROM (SELECT postedOn, isDeleted, isArchived, unnest(journalLines) AS l FROM journalEntries) e
    WHERE NOT e.isDeleted
),
source AS (
    SELECT txt(j.NOMINAL_CODE) AS nominal, j."DATE" AS posted_on, j.AMOUNT::DOUBLE AS raw,
           sub_penny(j.AMOUNT) AS sub_penny, j.HEADER_NUMBER AS header_number, j.archived,
           -- Clear Audit Trail's opening-balance journals (Sage's reference O/Bal)
           coalesce(upper(txt(h.INV_REF)) = 'O/BAL', false) AS opening_balance
    FROM audit_journal() j
    LEFT JOIN audit_header() h ON h.HEADER_NUMBER = j.HEADER_NUMBER AND h.archived = j.archived
    WHERE NOT (is_set(j.DELETED_FLAG) OR is_set(h.DELETED_FLAG))
),
by_month AS (
    SELECT coalesce(n.archived, s.archived) AS archived,
           coalesce(n.nominal, s.nominal) AS nominal, coalesce(n.month, s.month) AS month,
           coalesce(n.total, 0) AS normalised, coalesce(s.total, 0) AS source,
           coalesce(s.sub_penny_postings, 0) AS sub_penny_postings
    FROM (SELECT archived, nominal, month, sum(amount) AS total FROM normalised GROUP BY ALL) n
    FULL JOIN (SELECT archived, nominal, date_trunc('month', posted_on) AS month, money(sum(raw)) AS total,
                      count(*) FILTER (WHERE sub_penny) AS sub_penny_postings
               FROM source GROUP BY ALL) s
      ON n.archived = s.archived AND n.nominal = s.nominal AND n.month IS NOT DISTINCT FROM s.month
),
year_end AS (
    SELECT DISTINCT lineage.key AS header FROM journalEntries WHERE isYearEnd
),
prior_ledger AS (
    -- only where the driver gave the prior-year columns
    SELECT txt(ACCOUNT_REF) AS nominal,
           unnest(['PRIOR1', 'PRIOR2', 'PRIOR3', 'PRIOR4', 'PRIOR5', 'PRIOR6', 'PRIOR7', 'PRIOR8',
                   'PRIOR9', 'PRIOR10', 'PRIOR11', 'PRIOR12']) AS period,
           unnest([PRIOR_YR_MTH1, PRIOR_YR_MTH2, PRIOR_YR_MTH3, PRIOR_YR_MTH4, PRIOR_YR_MTH5,
                   PRIOR_YR_MTH6, PRIOR_YR_MTH7, PRIOR_YR_MTH8, PRIOR_YR_MTH9, PRIOR_YR_MTH10,
                   PRIOR_YR_MTH11, PRIOR_YR_MTH12]) AS raw
    FROM sage.NOMINAL_LEDGER
),
prior_journal AS (
    SELECT nominal, 'PRIOR' || (1 + datediff('month', (SELECT fy_start FROM fy) - INTERVAL 12 MONTH, posted_on)) AS period,
           sum(raw) AS amount
    FROM source
    -- the year's own postings: archived ones included, Clear Audit Trail's stand-ins not
    WHERE NOT opening_balance
      AND posted_on >= (SELECT fy_start FROM fy) - INTERVAL 12 MONTH AND posted_on < (SELECT fy_start FROM fy)
      AND coalesce(header_number::VARCHAR NOT IN (SELECT header FROM year_end), true)
    GROUP BY ALL
),
prior_compared AS (
    SELECT l.nominal, l.period, l.raw AS ledger, coalesce(j.amount, 0) AS journal
    FROM prior_ledger l
    LEFT JOIN prior_journal j ON j.nominal = l.nominal AND j.period = l.period
    WHERE l.raw IS NOT NULL
),
ledger AS (
    SELECT txt(ACCOUNT_REF) AS nominal,
           unnest(['BF', 'MTH1', 'MTH2', 'MTH3', 'MTH4', 'MTH5', 'MTH6', 'MTH7', 'MTH8', 'MTH9',
                   'MTH10', 'MTH11', 'MTH12', 'BALANCE']) AS period,
           unnest([BALANCE_BF, BALANCE_MTH1, BALANCE_MTH2, BALANCE_MTH3, BALANCE_MTH4, BALANCE_MTH5,
                   BALANCE_MTH6, BALANCE_MTH7, BALANCE_MTH8, BALANCE_MTH9, BALANCE_MTH10,
                   BALANCE_MTH11, BALANCE_MTH12, BALANCE]::DOUBLE[]) AS amount
    FROM sage.NOMINAL_LEDGER
),
source_periods AS (
    SELECT nominal, CASE fy_period(posted_on, (SELECT fy_start FROM fy))
                        WHEN 0 THEN 'BF' WHEN 13 THEN 'AFTER' ELSE 'MTH' || fy_period(posted_on, (SELECT fy_start FROM fy)) END AS period,
           sum(raw) AS amount
    FROM source WHERE NOT archived GROUP BY ALL
    UNION ALL
    SELECT nominal, 'BALANCE', sum(raw) FROM source WHERE NOT archived GROUP BY ALL
),
by_period AS (
    SELECT coalesce(l.nominal, s.nominal) AS nominal, coalesce(l.period, s.period) AS period,
           coalesce(l.amount, 0) AS ledger, coalesce(s.amount, 0) AS journal
    FROM ledger l
    FULL JOIN source_periods s ON l.nominal = s.nominal AND l.period = s.period
    WHERE coalesce(l.period, s.period) <> 'AFTER'
)
SELECT 'error' AS severity, nominal,
       strftime(month, '%Y-%m') || CASE WHEN archived THEN ' (archived)' ELSE '' END AS period,
       normalised, source AS audit_journal, NULL::DECIMAL(18, 2) AS nominal_ledger
FROM by_month WHERE abs(normalised - source) > 0.01 * sub_penny_postings
UNION ALL
SELECT 'warning', nominal, period, NULL, money(journal), money(ledger)
FROM by_period WHERE NOT same_money(ledger, journal)
UNION ALL
SELECT 'warning', nominal, period, NULL, money(journal), money(ledger)
FROM prior_compared WHERE NOT same_money(ledger, journal)
ORDER BY severity, nominal, period;
