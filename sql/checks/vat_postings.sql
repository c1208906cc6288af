-- Check vat_postings: per VAT control account and month, the VAT Sage posted equals the VAT on
-- the splits it posted it for.
-- warning: on the sales tax control account (2200: SI, SC, SD, BR, CR, VR) or the purchase
--          tax control account (2201: PI, PC, PD, BP, CP, VP), the live postings of those
--          transactions in a month differ from the VAT (TAX_AMOUNT) of their live splits,
--          signed as Sage posts it, both summed at the source's precision. Journals (JD, JC:
--          the VAT transfer at a VAT return, corrections) are left out on both sides. The
--          accounts are Sage's defaults: its VAT settings are not among the tables read.
--          Names the account and month; the published documents carry the splits' VAT and
--          journalEntries the postings, so they disagree the same way.
WITH split AS (
    SELECT split_type AS type, "DATE" AS split_date, coalesce(TAX_AMOUNT, 0)::DOUBLE AS tax
    FROM live_splits()
),
split_vat AS (
    SELECT CASE WHEN type IN ('SI', 'SC', 'SD', 'BR', 'CR', 'VR') THEN '2200' ELSE '2201' END AS account,
           date_trunc('month', split_date) AS month,
           sum(CASE WHEN type IN ('SC', 'SD', 'PI', 'BP', 'CP', 'VP') THEN tax ELSE -tax END) AS vat
    FROM split
    WHERE type IN ('SI', 'SC', 'SD', 'BR', 'CR', 'VR', 'PI', 'PC', 'PD', 'BP', 'CP', 'VP')
    GROUP BY ALL
),
posted AS (
    SELECT txt(NOMINAL_CODE) AS account, date_trunc('month', "DATE") AS month,
           sum(AMOUNT::DOUBLE) AS vat
    FROM live_postings()
    WHERE txt(NOMINAL_CODE) IN ('2200', '2201') AND txt(TYPE) NOT IN ('JD', 'JC')
    GROUP BY ALL
)
SELECT 'warning' AS severity, coalesce(s.account, p.account) AS account,
       strftime(coalesce(s.month, p.month), '%Y-%m') AS month,
       money(s.vat) AS splits_vat, money(p.vat) AS posted_vat
FROM split_vat s
FULL JOIN posted p ON p.account = s.account AND p.month IS NOT DISTINCT FROM s.month
WHERE NOT same_money(s.vat, p.vat)
ORDER BY account, month;
