-- Rule 08: the class of every nominal code (Asset, Liability, Equity, Income, Expense), from
-- Sage's chart of accounts where the company has one.
--
-- Why: Sage's reports place nominal codes through the chart of accounts' categories, ranges of
-- codes with a heading (CATEGORY: NAME, LOW, HIGH; an optional table, names to confirm on a
-- real driver). A company may move ranges (a loan account in 1xxx, its own suspense range), so
-- the chart decides, not the code: a code's category is the narrowest range holding it, and
-- the category's heading says the class (Sage's headings name it: Fixed Assets, Current
-- Liabilities, Capital & Reserves, Sales, Overheads…; macro category_class). A code in no
-- range, a company without the table, or a heading that names no class falls back to Sage's
-- default UK chart (macro account_class); check account_categories names the headings it could
-- not read. Suspense and mispostings (9998, 9999) are balance-sheet accounts either way. Rules
-- that need a class (Year End's P&L, accounts) read it here, and account_class for a code
-- missing from NOMINAL_LEDGER.
CREATE OR REPLACE TABLE work.account_classes AS
WITH category AS (
    SELECT NUMBER AS number, txt(NAME) AS category, TRY_CAST(txt(LOW) AS BIGINT) AS low,
           TRY_CAST(txt(HIGH) AS BIGINT) AS high
    FROM sage.CATEGORY
),
code AS (
    SELECT DISTINCT txt(ACCOUNT_REF) AS code FROM sage.NOMINAL_LEDGER
),
placed AS (
    SELECT c.code, arg_min(k.category, (k.high - k.low, k.number)) AS category
    FROM code c
    JOIN category k ON TRY_CAST(c.code AS BIGINT) BETWEEN k.low AND k.high
    GROUP BY c.code
)
SELECT c.code, p.category, category_class(p.category) AS category_class,
       coalesce(category_class(p.category), account_class(c.code)) AS class
FROM code c
LEFT JOIN placed p USING (code);
