-- Check split_headers: the documents made from one Sage header add up exactly to that header,
-- and every one of its splits is in exactly one of them.
-- Covers invoices, creditNotes, bills, billCreditNotes (net, tax, gross) and payments,
-- billPayments (gross: totalAmount carries the payment's sign, undone here).
-- error:   the documents' totals or split count differ from the source splits of the header
--          (a split was lost, duplicated or changed by the rules).
-- warning: the header's own NET/TAX/GROSS differ from the sum of its splits in Sage (both
--          at the source's precision: summed, then rounded), or a split names a header that
--          does not exist (it cannot make a document).
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
    SELECT HEADER_NUMBER::VARCHAR AS header, NET_AMOUNT::DOUBLE AS net, TAX_AMOUNT::DOUBLE AS tax,
           GROSS_AMOUNT::DOUBLE AS gross, txt(TYPE) AS type
    FROM audit_header()
    WHERE data_type_of(txt(TYPE)) IS NOT NULL
),
splits AS (
    -- the header's own totals are over all its splits; the documents hold only the splits of
    -- document types (a header may mix, e.g., an invoice line and a receipt line)
    SELECT s.HEADER_NUMBER::VARCHAR AS header,
           sum(s.NET_AMOUNT::DOUBLE) AS all_net, sum(s.TAX_AMOUNT::DOUBLE) AS all_tax,
           sum(s.GROSS_AMOUNT::DOUBLE) AS all_gross,
           -- payments carry no net/tax: those are compared over invoice-like lines only
           sum(split_net(s.NET_AMOUNT, s.TAX_AMOUNT, s.GROSS_AMOUNT)) FILTER (WHERE with_tax) AS net,
           sum(money(s.TAX_AMOUNT)) FILTER (WHERE with_tax) AS tax,
           sum(money(s.GROSS_AMOUNT)) FILTER (WHERE document) AS gross,
           count(*) FILTER (WHERE document) AS splits,
           -- splits naming a header that does not exist (they cannot make a document)
           count(*) FILTER (WHERE orphan) AS orphan_splits,
           min(SPLIT_NUMBER) FILTER (WHERE orphan) AS first_orphan
    FROM (SELECT *, data_type_of(t) IS NOT NULL AS document,
                 data_type_of(t) IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes') AS with_tax
          FROM (SELECT s.*, coalesce(nullif(txt(s.TYPE), ''), txt(h.TYPE)) AS t,
                       h.HEADER_NUMBER IS NULL AS orphan
                FROM audit_split() s LEFT JOIN audit_header() h
                  ON h.HEADER_NUMBER = s.HEADER_NUMBER)) s
    GROUP BY ALL
),
compared AS (
    SELECT h.header, h.type, d.documents,
           money(h.gross) AS header_gross, money(s.all_gross) AS all_splits_gross, s.gross AS splits_gross, d.gross AS documents_gross,
           money(h.net) AS header_net, money(s.all_net) AS all_splits_net, s.net AS splits_net, d.net AS documents_net,
           money(h.tax) AS header_tax, money(s.all_tax) AS all_splits_tax, s.tax AS splits_tax, d.tax AS documents_tax,
           s.header IS NULL OR NOT (same_money(h.gross, s.all_gross) AND same_money(h.net, s.all_net)
                                    AND same_money(h.tax, s.all_tax)) AS header_differs,
           coalesce(s.splits, 0) AS source_splits, coalesce(d.splits, 0) AS document_splits
    FROM header h
    LEFT JOIN splits s USING (header)
    LEFT JOIN documents d USING (header)
)
SELECT CASE
           WHEN source_splits <> document_splits
             OR splits_gross IS DISTINCT FROM documents_gross
             OR splits_net IS DISTINCT FROM documents_net OR splits_tax IS DISTINCT FROM documents_tax
           THEN 'error' ELSE 'warning' END AS severity,
       * EXCLUDE (header_differs)
FROM compared
WHERE source_splits <> document_splits
   OR splits_gross IS DISTINCT FROM documents_gross
   OR splits_net IS DISTINCT FROM documents_net OR splits_tax IS DISTINCT FROM documents_tax
   OR header_differs
UNION ALL BY NAME
SELECT 'warning' AS severity,
       coalesce(header, 'NULL') || ' is missing: ' || orphan_splits || ' split(s) name it, e.g. split ' || first_orphan AS header
FROM splits
WHERE orphan_splits > 0
ORDER BY severity, header;
