-- Rule 60: journal entries: every posting in the general ledger, grouped per Sage header and
-- date (rule 12), with one line per AUDIT_JOURNAL row.
--
-- Why: this is the ledger clients rebuild a trial balance and P&L from, so nothing is left
-- out: documents, payments, bank entries, journals and deleted transactions (isDeleted, kept).
-- A journal that mixes JD and JC lines is one balanced entry. Lines keep Sage's sign (debit
-- positive), and each line points back at the document its split became (recordRef).
-- DuckDB cannot spill the state of a list() aggregate, so the entries are built one slice of
-- headers at a time (see slices in 00_conventions.sql): peak memory stays the same whatever
-- the company's size.
CREATE OR REPLACE TEMP MACRO journal_entries_slice(k) AS TABLE
WITH entry AS (
    SELECT
        -- grouped by integer and date keys (cheaper than the string id)
        header_number,
        posted_on,
        any_value(entry_id) AS entry_id,
        -- min, not any_value: without a header the lines' own types may differ
        min(coalesce(nullif(header_type, ''), journal_type)) AS journal_type,
        any_value(coalesce(reference, '')) AS reference,
        any_value(coalesce(note, '')) AS description,
        coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::DECIMAL(18, 2) AS total_debit,
        coalesce(-sum(amount) FILTER (WHERE amount < 0), 0)::DECIMAL(18, 2) AS total_credit,
        list_transform(
            list_sort(list({'tran': tran_number, 'nominal': nominal_code, 'details': details,
                            'amount': amount, 'tax_code': tax_code, 'dept': dept_number,
                            'project': project_id, 'data_type': data_type, 'part_id': part_id,
                            'split': split_number})),
            x -> {
                'accountRef': {'id': x.nominal},
                'description': x.details,
                'netAmount': x.amount,
                'taxCode': x.tax_code,
                'trackingCategoryRefs': tracking_refs(x.dept, x.project),
                'recordRef': CASE WHEN x.data_type IS NOT NULL THEN {'dataType': x.data_type, 'id': x.part_id} END,
                'sourceSplitNumber': x.split::BIGINT
            }) AS journal_lines,
        max(modified) AS modified,
        bool_and(deleted) AS deleted,
        bool_or(archived) AS archived
    FROM postings(k, false)
    -- the parts of entry_id, as integer and date keys (cheaper to group than the string)
    GROUP BY header_number, posted_on, deleted, orphan_tran_number
)
SELECT
    entry_id AS id,
    posted_on AS postedOn,
    journal_type AS journalType,
    reference,
    description,
    total_debit AS totalDebit,
    total_credit AS totalCredit,
    journal_lines AS journalLines,
    -- posted by Sage's Year End (rule 13): a P&L over a period containing it leaves it out
    coalesce(header_number IN (SELECT header_number FROM work.year_end_headers), false) AS isYearEnd,
    modified AS sourceModifiedDate,
    deleted AS isDeleted,
    archived AS isArchived,
    lineage(CASE WHEN header_number IS NULL THEN 'AUDIT_JOURNAL' ELSE 'AUDIT_HEADER' END,
            coalesce(header_number::VARCHAR, entry_id),
            list_sort(list_distinct([l.sourceSplitNumber FOR l IN journal_lines]))) AS lineage
FROM entry;

CREATE OR REPLACE TABLE journalEntries AS FROM journal_entries_slice(0) LIMIT 0;
-- for each slice
INSERT INTO journalEntries FROM journal_entries_slice(getvariable('slice'));
-- end for each slice
