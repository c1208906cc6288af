-- Check nominal_months: per nominal code and month, the normalised postings equal the source.
-- error:   journalEntries lines per nominal code and calendar month differ from the live
--          AUDIT_JOURNAL rows (the rules changed a number). The source is summed at its own
--          precision and then rounded; where it holds postings with a fraction of a penny
--          (rule 09) the published sum may differ by less than a penny per such posting.
-- warning: the live AUDIT_JOURNAL rows per nominal code and financial period (brought forward,
--          months 1-12) differ from Sage's own NOMINAL_LEDGER balances (BALANCE_BF,
--          BALANCE_MTH1..12, BALANCE): the source disagrees with itself, as Sage's Check
--          Data would report; names the nominal code and period.
WITH fy AS (
    -- the company record's financial year (Sage's, or derived when Sage has none)
    SELECT financialYearStart AS fy_start FROM company LIMIT 1
),
normalised AS (
    SELECT l.accountRef.id AS nominal, date_trunc('month', e.postedOn) AS month, l.netAmount AS amount
    FROM (SELECT postedOn, isDeleted, unnest(journalLines) AS l FROM journalEntries) e
    WHERE NOT e.isDeleted
),
source AS (
    SELECT txt(j.NOMINAL_CODE) AS nominal, j."DATE" AS posted_on, j.AMOUNT::DOUBLE AS raw,
           sub_penny(j.AMOUNT) AS sub_penny
    FROM sage.AUDIT_JOURNAL j
    LEFT JOIN sage.AUDIT_HEADER h ON h.HEADER_NUMBER = j.HEADER_NUMBER
    WHERE NOT (is_set(j.DELETED_FLAG) OR is_set(h.DELETED_FLAG))
),
by_month AS (
    SELECT coalesce(n.nominal, s.nominal) AS nominal, coalesce(n.month, s.month) AS month,
           coalesce(n.total, 0) AS normalised, coalesce(s.total, 0) AS source,
           coalesce(s.sub_penny_postings, 0) AS sub_penny_postings
    FROM (SELECT nominal, month, sum(amount) AS total FROM normalised GROUP BY ALL) n
    FULL JOIN (SELECT nominal, date_trunc('month', posted_on) AS month, money(sum(raw)) AS total,
                      count(*) FILTER (WHERE sub_penny) AS sub_penny_postings
               FROM source GROUP BY ALL) s
      ON n.nominal = s.nominal AND n.month IS NOT DISTINCT FROM s.month
),
ledger AS (
    SELECT txt(ACCOUNT_REF) AS nominal,
           unnest(['BF', 'MTH1', 'MTH2', 'MTH3', 'MTH4', 'MTH5', 'MTH6', 'MTH7', 'MTH8', 'MTH9',
                   'MTH10', 'MTH11', 'MTH12', 'BALANCE']) AS period,
           unnest([money(BALANCE_BF), money(BALANCE_MTH1), money(BALANCE_MTH2), money(BALANCE_MTH3),
                   money(BALANCE_MTH4), money(BALANCE_MTH5), money(BALANCE_MTH6), money(BALANCE_MTH7),
                   money(BALANCE_MTH8), money(BALANCE_MTH9), money(BALANCE_MTH10),
                   money(BALANCE_MTH11), money(BALANCE_MTH12), money(BALANCE)]) AS amount
    FROM sage.NOMINAL_LEDGER
),
source_periods AS (
    SELECT nominal, CASE fy_period(posted_on, (SELECT fy_start FROM fy))
                        WHEN 0 THEN 'BF' WHEN 13 THEN 'AFTER' ELSE 'MTH' || fy_period(posted_on, (SELECT fy_start FROM fy)) END AS period,
           money(sum(raw)) AS amount
    FROM source GROUP BY ALL
    UNION ALL
    SELECT nominal, 'BALANCE', money(sum(raw)) FROM source GROUP BY ALL
),
by_period AS (
    SELECT coalesce(l.nominal, s.nominal) AS nominal, coalesce(l.period, s.period) AS period,
           coalesce(l.amount, 0) AS ledger, coalesce(s.amount, 0) AS journal
    FROM ledger l
    FULL JOIN source_periods s ON l.nominal = s.nominal AND l.period = s.period
    WHERE coalesce(l.period, s.period) <> 'AFTER'
)
SELECT 'error' AS severity, nominal, strftime(month, '%Y-%m') AS period,
       normalised, source AS audit_journal, NULL::DECIMAL(18, 2) AS nominal_ledger
FROM by_month WHERE abs(normalised - source) > 0.01 * sub_penny_postings
UNION ALL
SELECT 'warning', nominal, period, NULL, journal, ledger
FROM by_period WHERE ledger <> journal
ORDER BY severity, nominal, period;
