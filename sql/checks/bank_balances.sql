-- Check bank_balances: each bank account against its nominal code and its transactions, the
-- figures a Sage user sees on the Bank and Nominal screens.
-- error:   the published bank transactions of a bank (live: not deleted, not archived) differ
--          from the live AUDIT_JOURNAL postings on its nominal code (summed at the source's
--          precision; less than a penny per posting holding a fraction of one): the rules
--          changed a number.
-- warning: BANK.BALANCE differs from its NOMINAL_LEDGER.BALANCE or from the postings: Sage
--          disagrees with itself (the bank account is marked balanceMatchesDetail = false).
WITH bank AS (
    SELECT txt(ACCOUNT_REF) AS bank, BALANCE::DOUBLE AS bank_balance FROM sage.BANK
),
nominal AS (
    SELECT txt(ACCOUNT_REF) AS bank, BALANCE::DOUBLE AS nominal_balance FROM sage.NOMINAL_LEDGER
),
posted AS (
    SELECT txt(NOMINAL_CODE) AS bank, sum(AMOUNT::DOUBLE) AS postings,
           count(*) FILTER (WHERE sub_penny(AMOUNT)) AS sub_penny_postings
    FROM live_postings()
    WHERE txt(NOMINAL_CODE) IN (SELECT bank FROM bank)
    GROUP BY ALL
),
published AS (
    SELECT bankAccountRef.id AS bank, sum(amount) AS transactions
    FROM bankTransactions
    WHERE NOT isDeleted AND NOT isArchived
    GROUP BY ALL
),
compared AS (
    SELECT b.bank, money(b.bank_balance) AS bank_balance, money(n.nominal_balance) AS nominal_balance,
           money(p.postings) AS postings,
           NOT same_money(b.bank_balance, n.nominal_balance) OR NOT same_money(b.bank_balance, p.postings)
               AS sage_disagrees,
           coalesce(t.transactions, 0) AS transactions,
           coalesce(p.sub_penny_postings, 0) AS sub_penny_postings
    FROM bank b
    LEFT JOIN nominal n USING (bank)
    LEFT JOIN posted p USING (bank)
    LEFT JOIN published t USING (bank)
)
SELECT CASE WHEN abs(transactions - postings) > 0.01 * sub_penny_postings THEN 'error'
            ELSE 'warning' END AS severity,
       * EXCLUDE (sub_penny_postings, sage_disagrees)
FROM compared
WHERE abs(transactions - postings) > 0.01 * sub_penny_postings OR sage_disagrees
ORDER BY severity, bank;
