-- Rule 15: the transactions that are Sage's exchange differences and revaluations.
--
-- Why: with Foreign Trader, a receipt or payment at a rate other than its invoice's leaves a
-- difference in pounds, and the revaluation of a foreign bank account moves its value in
-- pounds. Sage posts both to Exchange Rate Variance (macro exchange_difference) as ordinary
-- invoices, credit notes, bills, bill credit notes or bank receipts and payments with the
-- reference REVAL and no amount in the currency (../shared/sage50-reference.md, Foreign
-- Trader). Published unmarked they read as sales, refunds or bank income that never
-- happened, so documents and bank transactions mark them (isExchangeAdjustment). They are
-- known by what they do: every split of the header posts to Exchange Rate Variance with no
-- VAT, for an amount in pounds, and nothing in the currency (or Sage's reference REVAL).
CREATE OR REPLACE TABLE work.exchange_adjustments AS
WITH candidate AS (
    -- few headers: the splits are read for these only
    SELECT HEADER_NUMBER AS header_number
    FROM audit_header()
    WHERE txt(TYPE) IN ('SI', 'SC', 'PI', 'PC', 'BR', 'BP', 'CR', 'CP')
      AND money(GROSS_AMOUNT) <> 0
      AND (money(FOREIGN_GROSS_AMOUNT) = 0 OR upper(txt(INV_REF)) = 'REVAL')
)
SELECT s.HEADER_NUMBER AS header_number
FROM audit_split() s
SEMI JOIN candidate c ON c.header_number = s.HEADER_NUMBER
GROUP BY s.HEADER_NUMBER
HAVING bool_and(txt(s.NOMINAL_CODE) = exchange_difference())
   AND bool_and(money(s.TAX_AMOUNT) = 0);
