-- Rule 14: the invoicing module's item lines (INVOICE, INVOICE_ITEM) matched to the splits
-- they were posted as, for quantity, unit price, item and discount on document lines.
--
-- Why: a sales invoice or credit note raised in Sage's invoicing module keeps its items
-- (stock code, quantity, unit price, discount); posting it writes the audit trail splits our
-- documents are made from (net, VAT, nominal), without those. The invoice number is the
-- header's reference. An item belongs to the split of the same invoice, customer, nominal
-- code and net amount; several alike pair up in item and split order. A split with no such
-- item (a document keyed straight into the ledger, or items Sage merged into one split)
-- keeps null quantity, unit price, item and discount: nothing is guessed.
CREATE OR REPLACE TABLE work.split_items AS
WITH item AS (
    SELECT
        it.INVOICE_NUMBER::VARCHAR AS reference,
        txt(i.ACCOUNT_REF) AS account_ref,
        txt(it.NOMINAL_CODE) AS nominal,
        money(it.NET_AMOUNT) AS net,
        row_number() OVER (PARTITION BY it.INVOICE_NUMBER, txt(it.NOMINAL_CODE), money(it.NET_AMOUNT)
                           ORDER BY it.ITEM_NUMBER) AS nth,
        txt(it.STOCK_CODE) AS stock_code,
        exact6(it.QUANTITY) AS quantity,
        exact6(it.UNIT_PRICE) AS unit_price,
        CASE WHEN it.DISCOUNT_AMOUNT IS NOT NULL THEN money(it.DISCOUNT_AMOUNT) END AS discount
    FROM sage.INVOICE_ITEM it
    JOIN sage.INVOICE i ON i.INVOICE_NUMBER = it.INVOICE_NUMBER
),
split AS (
    SELECT split_number, reference, account_ref, nominal_code AS nominal, net,
           row_number() OVER (PARTITION BY header_number, nominal_code, net ORDER BY split_number) AS nth
    FROM work.splits
    WHERE part_type IN ('SI', 'SC') AND reference <> ''
)
SELECT
    s.split_number,
    i.quantity,
    i.unit_price,
    i.discount,
    -- a stock item the items data type has; service and message lines name none
    CASE WHEN st.code IS NOT NULL THEN i.stock_code END AS item
FROM split s
JOIN item i USING (reference, account_ref, nominal, net, nth)
LEFT JOIN (SELECT DISTINCT txt(STOCK_CODE) AS code FROM sage.STOCK) st ON st.code = i.stock_code;
