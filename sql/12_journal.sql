-- Rule 12: every general-ledger posting (AUDIT_JOURNAL), with the header and split it came
-- from and the journal entry it belongs to.
--
-- Why: journalEntries and bankTransactions are both views of these postings, and the checks
-- compare them with the source per nominal code and month. A journal entry is the postings of
-- one header on one date: every split of a document balances on its own, so grouping by date
-- keeps entries balanced, and a journal mixing JD and JC lines on one date stays ONE balanced
-- entry. (A Sage journal spread over several dates gives entries that do not balance alone;
-- the check trial_balance reports them as warnings, the totals per month stay exact.)
CREATE OR REPLACE TABLE work.journal AS
WITH posting AS (
    SELECT
        TRAN_NUMBER AS tran_number,
        HEADER_NUMBER AS header_number,
        SPLIT_NUMBER AS split_number,
        txt(TYPE) AS journal_type,
        "DATE" AS posted_on,
        txt(NOMINAL_CODE) AS nominal_code,
        money(AMOUNT) AS amount,
        txt(TAX_CODE) AS tax_code,
        DEPT_NUMBER AS dept_number,
        is_set(DELETED_FLAG) AS line_deleted
    FROM sage.AUDIT_JOURNAL
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
    FROM sage.AUDIT_HEADER
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
    p.header_number::VARCHAR || CASE
        WHEN p.posted_on IS NOT DISTINCT FROM h.header_date THEN ''
        ELSE '-' || coalesce(strftime(p.posted_on, '%Y%m%d'), 'nodate') END AS entry_id,
    coalesce(s.details, h.note, '') AS details,
    s.part_id,
    s.data_type,
    s.project_id
FROM posting p
LEFT JOIN header h USING (header_number)
LEFT JOIN work.splits s ON s.split_number = p.split_number;
