-- Check foreign_currency: amounts in the document's own currency (Foreign Trader) and the
-- exchange adjustments Sage posts in pounds.
-- error:   a published document or payment in a foreign currency whose totalAmountInCurrency
--          differs from its splits' FOREIGN_GROSS_AMOUNT, or whose amount due (remaining
--          credit, unallocated amount) in currency differs from its splits' FOREIGN_OUTSTANDING
--          while something is still due in pounds: the rules changed a number or took the
--          header's total for one of its parts.
-- error:   a header that is an exchange difference or revaluation (every split to Exchange
--          Rate Variance, no VAT, an amount in pounds and none in the currency, or reference
--          REVAL) published as an ordinary record, or the other way round: clients would
--          count it as a sale, purchase, refund or bank movement.
-- warning: Sage disagrees with itself: a header's FOREIGN_GROSS_AMOUNT is not its splits'
--          sum, or a split's FOREIGN_OUTSTANDING is not its FOREIGN_GROSS_AMOUNT less its live
--          allocations' FOREIGN_AMOUNT (within a cent per allocation) while it is still due in
--          pounds.
WITH record AS (
    SELECT 'invoices' AS data_type, id, currency, totalAmountInCurrency AS total, amountDue AS due,
           amountDueInCurrency AS due_in_currency, isExchangeAdjustment AS marked, lineage
    FROM invoices WHERE NOT isDeleted
    UNION ALL SELECT 'creditNotes', id, currency, totalAmountInCurrency, remainingCredit,
           remainingCreditInCurrency, isExchangeAdjustment, lineage FROM creditNotes WHERE NOT isDeleted
    UNION ALL SELECT 'bills', id, currency, totalAmountInCurrency, amountDue, amountDueInCurrency,
           isExchangeAdjustment, lineage FROM bills WHERE NOT isDeleted
    UNION ALL SELECT 'billCreditNotes', id, currency, totalAmountInCurrency, remainingCredit,
           remainingCreditInCurrency, isExchangeAdjustment, lineage FROM billCreditNotes WHERE NOT isDeleted
    -- payments are signed: compare their size
    UNION ALL SELECT 'payments', id, currency, abs(totalAmountInCurrency), abs(unallocatedAmount),
           abs(unallocatedAmountInCurrency), NULL, lineage FROM payments WHERE NOT isDeleted
    UNION ALL SELECT 'billPayments', id, currency, abs(totalAmountInCurrency), abs(unallocatedAmount),
           abs(unallocatedAmountInCurrency), NULL, lineage FROM billPayments WHERE NOT isDeleted
),
foreign_record AS (
    SELECT data_type, id, total, due, due_in_currency, unnest(lineage.splitNumbers) AS split_number
    FROM record
    WHERE currency IS DISTINCT FROM base_currency()
),
source_split AS (
    SELECT SPLIT_NUMBER AS split_number, HEADER_NUMBER AS header_number,
           FOREIGN_GROSS_AMOUNT AS foreign_gross, FOREIGN_OUTSTANDING AS foreign_outstanding,
           money(OUTSTANDING) AS outstanding
    FROM audit_split()
),
record_vs_source AS (
    SELECT r.data_type, r.id, any_value(r.total) AS published_total,
           any_value(r.due) AS due, any_value(r.due_in_currency) AS published_due,
           money(sum(s.foreign_gross)) AS source_total,
           money(sum(s.foreign_outstanding)) AS source_due,
           count(s.foreign_gross) = count(*) AS source_has_totals,
           count(s.foreign_outstanding) = count(*) AS source_has_due
    FROM foreign_record r
    JOIN source_split s USING (split_number)
    GROUP BY ALL
),
changed AS (
    SELECT 'error' AS severity, data_type, id,
           'in currency: published total ' || coalesce(published_total::VARCHAR, 'null')
               || ', due ' || coalesce(published_due::VARCHAR, 'null')
               || '; the splits say ' || source_total || ', ' || source_due AS problem
    FROM record_vs_source
    WHERE (source_has_totals AND published_total IS DISTINCT FROM source_total)
       OR (source_has_due AND due <> 0 AND published_due IS DISTINCT FROM source_due)
),
adjustment_header AS (
    -- the headers that are exchange adjustments (few: only candidates' splits are read)
    SELECT s.HEADER_NUMBER AS header_number
    FROM audit_split() s
    SEMI JOIN (SELECT HEADER_NUMBER FROM audit_header()
               WHERE txt(TYPE) IN ('SI', 'SC', 'PI', 'PC', 'BR', 'BP', 'CR', 'CP')
                 AND money(GROSS_AMOUNT) <> 0
                 AND (money(FOREIGN_GROSS_AMOUNT) = 0 OR upper(txt(INV_REF)) = 'REVAL')) h
        ON h.HEADER_NUMBER = s.HEADER_NUMBER
    GROUP BY ALL
    HAVING bool_and(txt(s.NOMINAL_CODE) = exchange_difference() AND money(s.TAX_AMOUNT) = 0)
),
published_marks AS (
    -- records marked, and records of adjustment headers
    SELECT data_type, id, marked, lineage.key AS header
    FROM record
    WHERE marked IS NOT NULL AND marked OR lineage.key IN (SELECT header_number::VARCHAR FROM adjustment_header)
    UNION ALL
    SELECT 'bankTransactions', t.id, t.isExchangeAdjustment, s.HEADER_NUMBER::VARCHAR
    FROM bankTransactions t
    JOIN audit_split() s ON s.SPLIT_NUMBER = t.lineage.splitNumbers[1]
    WHERE NOT t.isDeleted
      AND (t.isExchangeAdjustment
           OR t.lineage.splitNumbers[1] IN (SELECT SPLIT_NUMBER FROM audit_split()
                                            WHERE HEADER_NUMBER IN (SELECT header_number FROM adjustment_header)))
),
mismarked AS (
    SELECT 'error' AS severity, m.data_type, m.id,
           CASE WHEN m.marked THEN 'marked as an exchange adjustment, but header ' || m.header
                                   || ' is not one'
                ELSE 'an exchange adjustment (header ' || m.header || ') published unmarked' END
               AS problem
    FROM published_marks m
    WHERE m.marked IS DISTINCT FROM (m.header IN (SELECT header_number::VARCHAR FROM adjustment_header))
),
header_sum AS (
    SELECT 'warning' AS severity, 'AUDIT_HEADER' AS data_type, h.HEADER_NUMBER::VARCHAR AS id,
           'FOREIGN_GROSS_AMOUNT ' || money(h.FOREIGN_GROSS_AMOUNT) || ' but its splits sum to '
               || money(sum(s.FOREIGN_GROSS_AMOUNT)) AS problem
    FROM audit_header() h
    JOIN audit_split() s ON s.HEADER_NUMBER = h.HEADER_NUMBER
    WHERE s.FOREIGN_GROSS_AMOUNT IS NOT NULL AND h.FOREIGN_GROSS_AMOUNT IS NOT NULL
      -- foreign-currency headers only (Sage's currency 1 is the base currency)
      AND coalesce(h.CURRENCY, 0) > 1
    GROUP BY h.HEADER_NUMBER, h.FOREIGN_GROSS_AMOUNT
    HAVING money(h.FOREIGN_GROSS_AMOUNT) <> money(sum(s.FOREIGN_GROSS_AMOUNT))
),
usage AS (
    SELECT SPLIT_CROSSREF AS split_number, money(FOREIGN_AMOUNT) AS foreign_amount
    FROM audit_usage() WHERE NOT is_set(DELETED_FLAG) AND FOREIGN_AMOUNT IS NOT NULL
),
allocated AS (
    SELECT s.split_number, any_value(money(s.foreign_gross)) AS foreign_gross,
           any_value(money(s.foreign_outstanding)) AS foreign_outstanding,
           sum(u.foreign_amount) AS allocated, count(*) AS allocations
    FROM source_split s
    JOIN usage u USING (split_number)
    WHERE s.outstanding <> 0 AND s.foreign_outstanding IS NOT NULL
      AND s.split_number IN (SELECT split_number FROM foreign_record)
    GROUP BY ALL
),
split_disagrees AS (
    SELECT 'warning' AS severity, 'AUDIT_SPLIT' AS data_type, split_number::VARCHAR AS id,
           'FOREIGN_OUTSTANDING ' || foreign_outstanding || ' but FOREIGN_GROSS_AMOUNT '
               || foreign_gross || ' less allocations ' || allocated AS problem
    FROM allocated
    WHERE abs(foreign_gross - allocated - foreign_outstanding) > 0.01 * allocations
)
SELECT * FROM changed
UNION ALL SELECT * FROM mismarked
UNION ALL SELECT * FROM header_sum
UNION ALL SELECT * FROM split_disagrees
ORDER BY severity, data_type, id;
