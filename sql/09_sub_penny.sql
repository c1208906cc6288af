-- Rule 09: postings holding a fraction of a penny, rounded so that every split still balances.
--
-- Why: Sage derives some base-currency amounts from foreign ones and stores them unrounded
-- (../shared/sage50-reference.md, Foreign Trader). Rounding each posting on its own breaks
-- double entry: a split posting -10.004, -2.003 and +12.007 becomes -10.00, -2.00, +12.01,
-- 0.01 out, and the trial balance would fail at every sync. So, only for headers that hold
-- such a posting (the rest keep money(AMOUNT), bit for bit):
--   1. within each split, the pennies lost to rounding go back one at a time to the postings
--      whose rounding moved them furthest the other way (largest remainder): the split's
--      postings then sum to its source total rounded, 0.00 for every balanced split;
--   2. within each header, what is still off (journals balance across their JD and JC
--      splits, one posting each) goes the same way to postings of splits that do not balance
--      on their own.
-- Only postings holding a fraction of a penny are moved (a whole-penny posting has nothing
-- left over to rank it), each by less than a penny; only a posting of a split that does not
-- balance alone yet has several postings (not a shape Sage writes: its journal splits post
-- once) could be moved in both steps. Ties go to the lower
-- TRAN_NUMBER, so the same data rounds the same way every sync. rule 12 uses these amounts.
CREATE OR REPLACE TABLE work.rounded_postings AS
WITH sub_penny_posting AS (
    -- one cheap pass over the journal; everything after it sees only the headers concerned
    SELECT HEADER_NUMBER, TRAN_NUMBER FROM audit_journal() WHERE sub_penny(AMOUNT)
),
affected AS (
    SELECT
        archived,
        row_id AS posting_row,
        TRAN_NUMBER AS tran_number,
        AMOUNT::DOUBLE AS raw,
        money(AMOUNT) AS rounded,
        coalesce('H' || HEADER_NUMBER, 'T' || TRAN_NUMBER) AS header_key,
        coalesce('S' || SPLIT_NUMBER, 'T' || TRAN_NUMBER) AS split_key
    FROM audit_journal()
    WHERE HEADER_NUMBER IN (SELECT HEADER_NUMBER FROM sub_penny_posting)
       OR (HEADER_NUMBER IS NULL
           AND TRAN_NUMBER IN (SELECT TRAN_NUMBER FROM sub_penny_posting WHERE HEADER_NUMBER IS NULL))
),
split_residual AS (
    SELECT *,
           money(sum(raw) OVER split) AS split_target,
           ((money(sum(raw) OVER split) - sum(rounded) OVER split) * 100)::BIGINT AS residual
    FROM affected
    WINDOW split AS (PARTITION BY split_key)
),
split_rounded AS (
    SELECT * EXCLUDE (rounded, residual),
           rounded + CASE
               WHEN row_number() OVER (PARTITION BY split_key
                                       ORDER BY sign(residual) * (raw - rounded::DOUBLE) DESC, tran_number, archived, posting_row)
                    <= abs(residual)
               THEN sign(residual) * 0.01 ELSE 0 END AS rounded
    FROM split_residual
),
header_residual AS (
    SELECT *,
           split_target <> 0 AS unbalanced_split,
           ((money(sum(raw) OVER header) - sum(rounded) OVER header) * 100)::BIGINT AS residual
    FROM split_rounded
    WINDOW header AS (PARTITION BY header_key)
)
SELECT
    archived,
    posting_row,
    CAST(rounded + CASE
        WHEN unbalanced_split
         AND row_number() OVER (PARTITION BY header_key, unbalanced_split
                                ORDER BY sign(residual) * (raw - rounded::DOUBLE) DESC, tran_number, archived, posting_row)
             <= abs(residual)
        THEN sign(residual) * 0.01 ELSE 0 END AS DECIMAL(18, 2)) AS rounded_amount
FROM header_residual;
