-- Rule 22: customers (SALES_LEDGER) and suppliers (PURCHASE_LEDGER).
--
-- Why: every sales and purchase document points at one. The id is the Sage account
-- reference, so clients can match it with what the Sage user sees. balance is Sage's own
-- BALANCE; the check account_balances proves the outstanding documents add up to it, and
-- where Sage disagrees with itself the record says so (balanceMatchesDetail = false), so
-- that a client reading that one customer can tell.
CREATE OR REPLACE TEMP MACRO party_status(on_hold, inactive) AS CASE
    WHEN is_set(inactive) THEN 'Archived'
    WHEN is_set(on_hold) THEN 'OnHold'
    ELSE 'Active' END;

-- What each account's live documents leave open (signed by type, at the source's precision),
-- both ledgers in one pass: Sage's BALANCE should equal it.
CREATE OR REPLACE TABLE work.open_documents AS
SELECT CASE WHEN split_type IN ('SI', 'SC', 'SR', 'SA', 'SD', 'SP') THEN 'SALES_LEDGER' ELSE 'PURCHASE_LEDGER' END
           AS ledger_table,
       account, sum(ledger_sign(split_type) * coalesce(OUTSTANDING, 0)::DOUBLE) AS open
FROM live_splits()
WHERE ledger_sign(split_type) <> 0
GROUP BY ALL;

-- Both ledgers have the same columns: one macro, the name field renamed per data type.
CREATE OR REPLACE TEMP MACRO ledger_accounts(ledger) AS TABLE
SELECT
    txt(p.ACCOUNT_REF) AS id,
    txt(p.NAME) AS name,
    txt(p.CONTACT_NAME) AS contactName,
    txt(p.E_MAIL) AS emailAddress,
    txt(p.TELEPHONE) AS phone,
    address(p.ADDRESS_1, p.ADDRESS_2, p.ADDRESS_3, p.ADDRESS_4, p.ADDRESS_5) AS address,
    txt(p.VAT_REG_NUMBER) AS vatNumber,
    currency_code(c.CODE, p.CURRENCY) AS currency,
    money(p.CREDIT_LIMIT) AS creditLimit,
    p.PAYMENT_DUE_DAYS::BIGINT AS paymentDueDays,
    money(p.BALANCE) AS balance,
    same_money(p.BALANCE, o.open) AS balanceMatchesDetail,
    party_status(p.ACCOUNT_ON_HOLD, p.INACTIVE_FLAG) AS status,
    p.RECORD_MODIFY_DATE AS sourceModifiedDate,
    false AS isDeleted,
    false AS isArchived,
    lineage(ledger, txt(p.ACCOUNT_REF), []) AS lineage
FROM query_table('sage.' || ledger) p
LEFT JOIN sage.CURRENCY c ON c.NUMBER = p.CURRENCY
LEFT JOIN work.open_documents o ON o.ledger_table = ledger AND o.account = txt(p.ACCOUNT_REF);

CREATE OR REPLACE TABLE customers AS
SELECT * RENAME (name AS customerName) FROM ledger_accounts('SALES_LEDGER');

CREATE OR REPLACE TABLE suppliers AS
SELECT * RENAME (name AS supplierName) FROM ledger_accounts('PURCHASE_LEDGER');
