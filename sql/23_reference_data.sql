-- Rule 23: bank accounts (BANK), tax rates (TAX_CODE), items (STOCK) and tracking categories
-- (DEPARTMENT, PROJECT): reference data copied with clean names and exact amounts.
--
-- Why: documents and postings point at these by id. Tracking category ids carry their kind
-- ('department-3', 'project-12') because Sage numbers departments and projects separately.
CREATE OR REPLACE TABLE bankAccounts AS
SELECT
    txt(b.ACCOUNT_REF) AS id,
    txt(b.ACCOUNT_REF) AS nominalCode,
    txt(b.ACCOUNT_NAME) AS accountName,
    txt(b.ACCOUNT_NUMBER) AS accountNumber,
    txt(b.SORT_CODE) AS sortCode,
    txt(b.IBAN) AS iban,
    currency_code(c.CODE, b.CURRENCY) AS currency,
    b.TYPE::BIGINT AS sageBankType,
    money(b.BALANCE) AS balance,
    -- in the account's own currency: filled in by rule 50 from the bank transactions
    NULL::DECIMAL(18, 2) AS balanceInCurrency,
    same_money(b.BALANCE, t.posted) AS balanceMatchesDetail,
    NULL::TIMESTAMP AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('BANK', txt(b.ACCOUNT_REF), []) AS lineage
FROM sage.BANK b
LEFT JOIN sage.CURRENCY c ON c.NUMBER = b.CURRENCY
LEFT JOIN work.nominal_totals t ON t.code = txt(b.ACCOUNT_REF);

CREATE OR REPLACE TABLE taxRates AS
SELECT
    txt(TAX_CODE) AS id,
    txt(TAX_CODE) AS code,
    txt(DESCRIPTION) AS name,
    coalesce(exact6(TAX_RATE), exact6(0)) AS effectiveTaxRate,
    NULL::TIMESTAMP AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('TAX_CODE', txt(TAX_CODE), []) AS lineage
FROM sage.TAX_CODE;

CREATE OR REPLACE TABLE items AS
SELECT
    txt(STOCK_CODE) AS id,
    txt(STOCK_CODE) AS code,
    txt(DESCRIPTION) AS name,
    exact6(SALES_PRICE) AS salesPrice,
    txt(NOMINAL_CODE) AS nominalCode,
    CASE WHEN txt(TAX_CODE) <> '' THEN {'id': txt(TAX_CODE)} END AS taxRateRef,
    exact6(QTY_IN_STOCK) AS quantityOnHand,
    exact6(AVERAGE_COST_PRICE) AS averageCostPrice,
    RECORD_MODIFY_DATE AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('STOCK', txt(STOCK_CODE), []) AS lineage
FROM sage.STOCK;

CREATE OR REPLACE TABLE trackingCategories AS
SELECT
    'department-' || NUMBER AS id,
    txt(NAME) AS name,
    'Department' AS categoryType,
    NUMBER::VARCHAR AS reference,
    'Active' AS status,
    NULL::TIMESTAMP AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage('DEPARTMENT', NUMBER, []) AS lineage
FROM sage.DEPARTMENT
WHERE NUMBER <> 0
UNION ALL
SELECT
    'project-' || PROJECT_ID,
    txt(NAME),
    'Project',
    txt(REFERENCE),
    coalesce(nullif(txt(STATUS), ''), 'Active'),
    NULL::TIMESTAMP,
    false,
    false,
    lineage('PROJECT', PROJECT_ID, [])
FROM sage.PROJECT
WHERE PROJECT_ID <> 0;
