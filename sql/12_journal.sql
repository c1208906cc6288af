-- Rule 12: the general-ledger postings (AUDIT_JOURNAL) of a slice of headers (macro
-- in_slice), optionally only those on bank nominal codes, with the header and split each
-- came from and the journal entry it belongs to.
--
-- Why: journalEntries and bankTransactions are both views of these postings, and the checks
-- compare them with the source per nominal code and month. A journal entry is the postings of
-- one header on one date: every split of a document balances on its own, so grouping by date
-- keeps entries balanced, and a journal mixing JD and JC lines on one date stays ONE balanced
-- entry. (A Sage journal spread over several dates gives entries that do not balance alone;
-- the check trial_balance reports them as warnings, the totals per month stay exact.)
-- A macro rather than a table: millions of postings are read slice by slice where they are
-- needed instead of being copied once more.
CREATE OR REPLACE TEMP MACRO postings(k, bank_only) AS TABLE
WITH posting AS (
    SELECT
        TRAN_NUMBER AS tran_number,
        HEADER_NUMBER AS header_number,
        SPLIT_NUMBER AS split_number,
        txt(TYPE) AS journal_type,
        "DATE" AS posted_on,
        txt(NOMINAL_CODE) AS nominal_code,
        -- money(AMOUNT), or rule 09's amount for postings holding a fraction of a penny
        coalesce(r.rounded_amount, money(j.AMOUNT)) AS amount,
        txt(TAX_CODE) AS tax_code,
        DEPT_NUMBER AS dept_number,
        is_set(DELETED_FLAG) AS line_deleted,
        j.archived
    FROM audit_journal() j
    LEFT JOIN work.rounded_postings r ON r.posting_row = j.row_id AND r.archived = j.archived
    WHERE in_slice(HEADER_NUMBER, k)
      -- bankTransactions need only postings to bank nominals: filter before any join
      AND (NOT bank_only OR txt(NOMINAL_CODE) IN (SELECT txt(ACCOUNT_REF) FROM sage.BANK))
),
header AS (
    SELECT
        HEADER_NUMBER AS header_number,
        txt(TYPE) AS header_type,
        "DATE" AS header_date,
        txt(INV_REF) AS reference,
        txt(DETAILS) AS note,
        txt(ACCOUNT_REF) AS account_ref,
        is_set(DELETED_FLAG) AS header_deleted,
        RECORD_MODIFY_DATE AS header_modified
    FROM audit_header()
    WHERE in_slice(HEADER_NUMBER, k)
),
split AS (
    SELECT split_number, modified, details, part_id, data_type, project_id
    FROM work.splits
    WHERE in_slice(header_number, k)
)
SELECT
    p.*,
    h.header_type,
    h.header_date,
    h.reference,
    h.note,
    h.account_ref,
    p.line_deleted OR coalesce(h.header_deleted, false) AS deleted,
    greatest(h.header_modified, s.modified) AS modified,
    -- entry id: header number (or T + TRAN_NUMBER for a posting without one), the date when
    -- not the header's, and -deleted for a deleted posting of a live header (a correction)
    coalesce(p.header_number::VARCHAR, 'T' || p.tran_number) || CASE
        WHEN p.header_number IS NULL OR p.posted_on IS NOT DISTINCT FROM h.header_date THEN ''
        ELSE '-' || coalesce(strftime(p.posted_on, '%Y%m%d'), 'nodate') END
        || CASE WHEN p.line_deleted AND NOT coalesce(h.header_deleted, false) THEN '-deleted' ELSE '' END
        AS entry_id,
    CASE WHEN p.header_number IS NULL THEN p.tran_number END AS orphan_tran_number,
    coalesce(s.details, h.note, '') AS details,
    s.part_id,
    s.data_type,
    s.project_id
FROM posting p
LEFT JOIN header h USING (header_number)
LEFT JOIN split s ON s.split_number = p.split_number;
