-- Check split_headers: the documents made from one Sage header add up exactly to that header,
-- and every one of its splits is in exactly one of them.
-- Covers invoices, creditNotes, bills, billCreditNotes (net, tax, gross) and payments,
-- billPayments (gross: totalAmount carries the payment's sign, undone here).
-- error:   the documents' totals or split count differ from the source splits of the header
--          (a split was lost, duplicated or changed by the rules).
-- warning: the header's own NET/TAX/GROSS differ from the sum of its splits in Sage.
WITH document AS (
    SELECT lineage.key AS header, lineage.splitNumbers AS splits, subTotal AS net, totalTaxAmount AS tax, totalAmount AS gross FROM invoices
    UNION ALL SELECT lineage.key, lineage.splitNumbers, subTotal, totalTaxAmount, totalAmount FROM creditNotes
    UNION ALL SELECT lineage.key, lineage.splitNumbers, subTotal, totalTaxAmount, totalAmount FROM bills
    UNION ALL SELECT lineage.key, lineage.splitNumbers, subTotal, totalTaxAmount, totalAmount FROM billCreditNotes
    UNION ALL SELECT lineage.key, lineage.splitNumbers, NULL, NULL, -ledger_sign(sageType) * totalAmount FROM payments
    UNION ALL SELECT lineage.key, lineage.splitNumbers, NULL, NULL, -ledger_sign(sageType) * totalAmount FROM billPayments
),
documents AS (
    SELECT header, sum(net) AS net, sum(tax) AS tax, sum(gross) AS gross, sum(len(splits)) AS splits,
           count(*) AS documents
    FROM document GROUP BY header
),
header AS (
    SELECT HEADER_NUMBER::VARCHAR AS header, money(NET_AMOUNT) AS net, money(TAX_AMOUNT) AS tax,
           money(GROSS_AMOUNT) AS gross, txt(TYPE) AS type
    FROM sage.AUDIT_HEADER
    WHERE data_type_of(txt(TYPE)) IS NOT NULL
),
splits AS (
    SELECT HEADER_NUMBER::VARCHAR AS header, sum(money(NET_AMOUNT)) AS net, sum(money(TAX_AMOUNT)) AS tax,
           sum(money(GROSS_AMOUNT)) AS gross, count(*) AS splits
    FROM sage.AUDIT_SPLIT GROUP BY ALL
),
compared AS (
    SELECT h.header, h.type, d.documents,
           h.gross AS header_gross, s.gross AS splits_gross, d.gross AS documents_gross,
           h.net AS header_net, s.net AS splits_net, d.net AS documents_net,
           h.tax AS header_tax, s.tax AS splits_tax, d.tax AS documents_tax,
           coalesce(s.splits, 0) AS source_splits, coalesce(d.splits, 0) AS document_splits
    FROM header h
    LEFT JOIN splits s USING (header)
    LEFT JOIN documents d USING (header)
)
SELECT CASE
           WHEN source_splits <> document_splits
             OR splits_gross IS DISTINCT FROM documents_gross
             OR (documents_net IS NOT NULL AND (splits_net <> documents_net OR splits_tax <> documents_tax))
           THEN 'error' ELSE 'warning' END AS severity,
       *
FROM compared
WHERE source_splits <> document_splits
   OR splits_gross IS DISTINCT FROM documents_gross
   OR (documents_net IS NOT NULL AND (splits_net <> documents_net OR splits_tax <> documents_tax))
   OR header_gross IS DISTINCT FROM splits_gross
   OR (documents_net IS NOT NULL AND (header_net <> splits_net OR header_tax <> splits_tax))
ORDER BY severity, header;
