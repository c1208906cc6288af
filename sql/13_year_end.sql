-- Rule 13: the journals Sage's Year End posted.
--
-- Why: Year End posts, dated the last day of the financial year, a journal that moves every
-- profit and loss nominal's balance to retained earnings (../shared/sage50-reference.md). A
-- P&L built from journalEntries over a period containing that day nets to zero unless the
-- client leaves that journal out, so journalEntries marks it (isYearEnd). Sage marks it only
-- by the wording of its details, which changes with version and language, so it is known by
-- what it does: a header whose postings are all journal lines (JD, JC), all dated the last
-- day of a financial year (the day before the first of the company's starting month), posting
-- only to P&L nominals (Income, Expense: rule 08) and retained earnings (3200),
-- at least one of each. A user's own journal of that shape is, to a P&L, the same thing.
CREATE OR REPLACE TABLE work.year_end_headers AS
WITH start_month AS (
    -- the month financial years start in: Sage's FINANCIAL_YEAR, else START_MONTH, else January
    SELECT coalesce(
        (SELECT month(FINANCIAL_YEAR) FROM sage.COMPANY WHERE FINANCIAL_YEAR IS NOT NULL LIMIT 1),
        (SELECT least(greatest(START_MONTH, 1), 12) FROM sage.COMPANY WHERE START_MONTH IS NOT NULL LIMIT 1),
        1) AS m
),
candidate AS (
    -- only headers posting to retained earnings need a closer look
    SELECT HEADER_NUMBER AS header_number, txt(TYPE) AS type, "DATE" AS posted_on,
           coalesce(a.class, account_class(txt(j.NOMINAL_CODE))) IN ('Income', 'Expense') AS profit_and_loss,
           txt(NOMINAL_CODE) = retained_earnings() AS retained
    FROM audit_journal() j
    LEFT JOIN work.account_classes a ON a.code = txt(j.NOMINAL_CODE)
    WHERE j.HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM audit_journal()
                            WHERE txt(NOMINAL_CODE) = retained_earnings())
)
SELECT header_number
FROM candidate
GROUP BY header_number
HAVING bool_and(type IN ('JD', 'JC'))
   AND count(DISTINCT posted_on) = 1
   AND day(min(posted_on) + 1) = 1
   AND month(min(posted_on) + 1) = (SELECT m FROM start_month)
   AND bool_and(profit_and_loss OR retained)
   AND bool_or(profit_and_loss)
   AND bool_or(retained);
