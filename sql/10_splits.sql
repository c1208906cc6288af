-- Rule 10: every Sage split with its header, cleaned, and assigned to the document part it
-- belongs to.
--
-- Why: a Sage header has one date and type, but each split carries its own date and type
-- (../shared/sage50-reference.md, "Why transactions get split"). Our documents have one date
-- and one type, so the unit of a document is a *part*: the splits of one header that share a
-- date and a type. A header whose splits all match it is one part with the header's number as
-- id; otherwise each part gets the suffix -TYPE-YYYYMMDD (macro part_id). A split of a
-- deleted header counts as deleted; a deleted split of a live header is a part of its own
-- (suffix -deleted). Splits whose header is missing cannot make a document: the check
-- split_headers names them. Amounts become exact money here, once.
CREATE OR REPLACE TABLE work.splits AS
WITH header AS (
    SELECT
        h.HEADER_NUMBER AS header_number,
        txt(h.TYPE) AS header_type,
        h."DATE" AS header_date,
        h.DUE_DATE AS header_due_date,
        txt(h.ACCOUNT_REF) AS account_ref,
        txt(h.INV_REF) AS reference,
        txt(h.DETAILS) AS note,
        currency_code(c.CODE, h.CURRENCY) AS currency,
        coalesce(exact6(nullif(h.FOREIGN_RATE, 0)), exact6(1)) AS currency_rate,
        -- in the base currency, amounts "in currency" are the amounts themselves, whatever
        -- Sage's FOREIGN_* columns hold (0 where Foreign Trader is off)
        currency_code(c.CODE, h.CURRENCY) IS NOT DISTINCT FROM base_currency() AS base_currency,
        CASE WHEN h.FOREIGN_GROSS_AMOUNT IS NOT NULL THEN money(h.FOREIGN_GROSS_AMOUNT) END AS header_foreign_gross,
        is_set(h.DELETED_FLAG) AS header_deleted,
        h.RECORD_MODIFY_DATE AS header_modified,
        h.archived
    FROM audit_header() h
    LEFT JOIN sage.CURRENCY c ON c.NUMBER = h.CURRENCY
),
split AS (
    SELECT
        SPLIT_NUMBER AS split_number,
        HEADER_NUMBER AS header_number,
        nullif(txt(TYPE), '') AS split_type,
        "DATE" AS split_date,
        txt(NOMINAL_CODE) AS nominal_code,
        txt(DETAILS) AS details,
        DEPT_NUMBER AS dept_number,
        PROJECT_ID AS project_id,
        txt(TAX_CODE) AS tax_code,
        split_net(NET_AMOUNT, TAX_AMOUNT, GROSS_AMOUNT) AS net,
        money(TAX_AMOUNT) AS tax,
        money(GROSS_AMOUNT) AS gross,
        money(AMOUNT_PAID) AS paid,
        money(OUTSTANDING) AS outstanding,
        -- the split in the header's currency (NULL where the driver has no such columns)
        CASE WHEN FOREIGN_GROSS_AMOUNT IS NOT NULL THEN money(FOREIGN_NET_AMOUNT) END AS foreign_net,
        CASE WHEN FOREIGN_GROSS_AMOUNT IS NOT NULL THEN money(FOREIGN_TAX_AMOUNT) END AS foreign_tax,
        CASE WHEN FOREIGN_GROSS_AMOUNT IS NOT NULL THEN money(FOREIGN_GROSS_AMOUNT) END AS foreign_gross,
        CASE WHEN FOREIGN_OUTSTANDING IS NOT NULL THEN money(FOREIGN_OUTSTANDING) END AS foreign_outstanding,
        is_set(DELETED_FLAG) AS split_deleted,
        RECORD_MODIFY_DATE AS split_modified
    FROM audit_split()
),
joined AS (
    SELECT
        s.*,
        h.* EXCLUDE (header_number),
        coalesce(s.split_type, h.header_type) AS part_type,
        coalesce(s.split_date, h.header_date) AS part_date,
        s.split_deleted OR h.header_deleted AS deleted,
        greatest(h.header_modified, s.split_modified) AS modified
    FROM split s
    JOIN header h USING (header_number)
)
SELECT
    * REPLACE (
        CASE WHEN base_currency THEN net ELSE foreign_net END AS foreign_net,
        CASE WHEN base_currency THEN tax ELSE foreign_tax END AS foreign_tax,
        CASE WHEN base_currency THEN gross ELSE foreign_gross END AS foreign_gross,
        CASE WHEN base_currency THEN outstanding ELSE foreign_outstanding END AS foreign_outstanding),
    -- A deleted split of a live header (a Sage correction: the old line is marked deleted and
    -- a new one added) is a deleted part of its own, so the live document holds live lines only.
    part_id(header_number, part_date, part_type, header_date, header_type)
        || CASE WHEN split_deleted AND NOT header_deleted THEN '-deleted' ELSE '' END AS part_id,
    data_type_of(part_type) AS data_type
FROM joined;
