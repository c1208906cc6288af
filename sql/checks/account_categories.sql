-- Check account_categories: each account's class against Sage's chart of accounts.
-- error:   an account's published classification is not what Sage's chart says: the heading
--          of the narrowest CATEGORY range holding its code, else Sage's default range (the
--          rules changed it).
-- warning: a chart of accounts category whose heading names no class (its codes are classified
--          by Sage's default ranges: rename the heading in Sage, e.g. "Current Liabilities",
--          or expect the default), or a range whose bounds are not nominal codes.
WITH range AS (
    SELECT NUMBER AS number, txt(NAME) AS heading, TRY_CAST(txt(LOW) AS BIGINT) AS low,
           TRY_CAST(txt(HIGH) AS BIGINT) AS high
    FROM sage.CATEGORY
),
narrowest AS (
    -- per account, the heading of the narrowest range holding its code, read from Sage again
    SELECT n.id, arg_min(r.heading, (r.high - r.low, r.number)) AS heading
    FROM accounts n
    JOIN range r ON TRY_CAST(n.id AS BIGINT) BETWEEN r.low AND r.high
    GROUP BY n.id
),
expected AS (
    SELECT n.id, n.classification AS published,
           coalesce(category_class(c.heading), account_class(n.id)) AS expected
    FROM accounts n
    LEFT JOIN narrowest c USING (id)
),
heading AS (
    SELECT DISTINCT NUMBER AS number, txt(NAME) AS heading, txt(LOW) AS low, txt(HIGH) AS high
    FROM sage.CATEGORY
)
SELECT 'error' AS severity, id AS account, 'classified ' || published || ', the chart says '
       || expected AS problem
FROM expected
WHERE published IS DISTINCT FROM expected
UNION ALL
SELECT 'warning', NULL, 'category ' || number || ' "' || heading || '" (' || low || '-' || high
       || ') names no class: its codes are classified by Sage''s default ranges'
FROM heading
WHERE category_class(heading) IS NULL
UNION ALL
SELECT 'warning', NULL, 'category ' || number || ' "' || heading || '" has a range that is not two nominal codes: '
       || low || '-' || high
FROM heading
WHERE TRY_CAST(low AS BIGINT) IS NULL OR TRY_CAST(high AS BIGINT) IS NULL
ORDER BY 1, 2, 3;
