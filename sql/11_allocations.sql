-- Rule 11: Sage allocations (AUDIT_USAGE), seen from both ends.
--
-- Why: an allocation links a paying split (a receipt, credit note, discount, refund) with the
-- split it settles, on its own date and for its own amount. Both documents must show it: an
-- invoice lists what paid it, a credit note what it was used against, a receipt which
-- documents it paid. So each live allocation becomes two rows, one per end, each naming the
-- document part at the other end (NULL when that split does not exist: reported by the check
-- links_exist, never dropped). An allocation touching a deleted split is history, not a
-- settlement: it is left out (the documents' OUTSTANDING in Sage no longer counts it).
-- amount_in_currency is Sage's FOREIGN_AMOUNT, or the amount itself for documents in the base
-- currency.
CREATE OR REPLACE TABLE work.allocations AS
WITH usage AS (
    SELECT
        USAGE_NUMBER AS usage_number,
        SPLIT_NUMBER AS payer_split,
        SPLIT_CROSSREF AS paid_split,
        "DATE" AS allocated_on,
        money(AMOUNT) AS amount,
        -- the same allocation in the documents' own currency, as Sage keeps it
        CASE WHEN FOREIGN_AMOUNT IS NOT NULL THEN money(FOREIGN_AMOUNT) END AS amount_in_currency
    FROM audit_usage()
    WHERE NOT is_set(DELETED_FLAG)
),
ends AS (
    SELECT usage_number, payer_split AS split_number, paid_split AS other_split, allocated_on, amount,
           amount_in_currency
    FROM usage
    UNION ALL
    SELECT usage_number, paid_split, payer_split, allocated_on, amount, amount_in_currency
    FROM usage
)
SELECT
    -- in the base currency, the allocation in currency is the amount itself
    e.* REPLACE (CASE WHEN s.base_currency THEN e.amount ELSE e.amount_in_currency END AS amount_in_currency),
    s.header_number,
    s.part_id,
    s.data_type,
    o.part_id AS other_part_id,
    o.data_type AS other_data_type
FROM ends e
JOIN work.splits s ON s.split_number = e.split_number
LEFT JOIN work.splits o ON o.split_number = e.other_split
WHERE NOT s.deleted AND NOT coalesce(o.deleted, false);
