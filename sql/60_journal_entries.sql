-- Rule 60: journal entries: every posting in the general ledger, grouped per Sage header and
-- date (rule 12), with one line per AUDIT_JOURNAL row.
--
-- Why: this is the ledger clients rebuild a trial balance and P&L from, so nothing is left
-- out: documents, payments, bank entries, journals and deleted transactions (isDeleted, kept).
-- A journal that mixes JD and JC lines is one balanced entry. Lines keep Sage's sign (debit
-- positive), and each line points back at the document its split became (recordRef).
CREATE OR REPLACE TABLE journalEntries AS
SELECT
    entry_id AS id,
    any_value(posted_on) AS postedOn,
    any_value(coalesce(header_type, journal_type)) AS journalType,
    any_value(coalesce(reference, '')) AS reference,
    any_value(coalesce(note, '')) AS description,
    coalesce(sum(amount) FILTER (WHERE amount > 0), 0)::DECIMAL(18, 2) AS totalDebit,
    coalesce(-sum(amount) FILTER (WHERE amount < 0), 0)::DECIMAL(18, 2) AS totalCredit,
    list({
        'accountRef': {'id': nominal_code},
        'description': details,
        'netAmount': amount,
        'taxCode': tax_code,
        'trackingCategoryRefs': tracking,
        'recordRef': CASE WHEN data_type IS NOT NULL THEN {'dataType': data_type, 'id': part_id} END,
        'sourceSplitNumber': split_number::BIGINT
    } ORDER BY tran_number, nominal_code) AS journalLines,
    max(modified) AS sourceModifiedDate,
    bool_and(deleted) AS isDeleted,
    lineage('AUDIT_HEADER', any_value(header_number), list_sort(list_distinct(list(split_number)))) AS lineage
FROM _journal
GROUP BY entry_id;
