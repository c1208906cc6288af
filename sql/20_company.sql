-- Rule 20: the company record (one row, from COMPANY).
--
-- Why: API clients show whose books these are and need the base currency and financial year
-- to read every amount. lastTransactionDate tells them how current the Sage data is.
CREATE OR REPLACE TABLE company AS
WITH last_transaction AS (
    SELECT max("DATE") AS last_date FROM sage.AUDIT_HEADER WHERE NOT is_set(DELETED_FLAG)
),
-- Sage keeps the start of the current financial year; when it is missing, the year starting
-- in START_MONTH that contains the last transaction stands in for it.
financial_year AS (
    SELECT coalesce(
        (SELECT FINANCIAL_YEAR FROM sage.COMPANY LIMIT 1),
        (SELECT make_date(year(last_date) - CASE WHEN month(last_date) < m THEN 1 ELSE 0 END, m, 1)
         FROM last_transaction,
              (SELECT coalesce((SELECT least(greatest(START_MONTH, 1), 12) FROM sage.COMPANY LIMIT 1), 1)::INTEGER AS m))
    ) AS fy_start
),
source AS (
    SELECT * FROM sage.COMPANY LIMIT 1
)
SELECT
    txt(COMPANYID) AS id,
    txt(NAME) AS companyName,
    address(ADDRESS_1, ADDRESS_2, ADDRESS_3, ADDRESS_4, ADDRESS_5) AS address,
    txt(VAT_REG_NUMBER) AS vatNumber,
    txt(COUNTRY_CODE) AS countryCode,
    txt(BASE_CURRENCY) AS baseCurrency,
    (SELECT fy_start FROM financial_year) AS financialYearStart,
    nullif(txt(PROGRAM_VERSION), '') AS sageVersion,
    (SELECT last_date FROM last_transaction) AS lastTransactionDate,
    NULL::TIMESTAMP AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('COMPANY', txt(COMPANYID), []) AS lineage
FROM source;
