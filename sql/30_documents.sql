-- Rule 30: invoices, credit notes, bills and bill credit notes as document parts, with their
-- line items and payment allocations.
--
-- Why (the date/type splitting rule): a Sage header whose splits fall on different dates (or
-- carry different types) becomes one document per (date, type) part, because our documents
-- have one issue date and one type. Nothing is dropped or merged: every split is exactly one
-- line item of exactly one part, so the parts of a header add up to the header (check
-- split_headers). The due date moves with the part's date, keeping the header's terms.
-- Allocations (rule 11) are listed on the part whose split they touch, each with its own date;
-- a credit note allocated to an invoice therefore shows on both. amountDue is Sage's own
-- OUTSTANDING summed over the part's splits; deleted headers come out Void with isDeleted.
CREATE OR REPLACE TEMP TABLE _documents AS
WITH split AS (
    SELECT * FROM _splits WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes')
),
line_items AS (
    SELECT
        part_id,
        list({
            'id': split_number::VARCHAR,
            'description': details,
            'accountRef': {'id': nominal_code},
            'taxRateRef': {'id': tax_code},
            'trackingCategoryRefs': tracking,
            'subTotal': net,
            'taxAmount': tax,
            'totalAmount': gross,
            'amountDue': outstanding
        } ORDER BY split_number) AS line_items,
        list(split_number ORDER BY split_number) AS split_numbers,
        sum(net)::DECIMAL(18, 2) AS sub_total,
        sum(tax)::DECIMAL(18, 2) AS total_tax,
        sum(gross)::DECIMAL(18, 2) AS total,
        sum(outstanding)::DECIMAL(18, 2) AS amount_due,
        count(*) AS split_count,
        bool_and(deleted) AS deleted,
        max(modified) AS modified
    FROM split
    GROUP BY part_id
),
part AS (
    SELECT DISTINCT ON (part_id)
        part_id, data_type, header_number, header_type, header_date, header_due_date,
        part_type, part_date, account_ref, reference, note, currency, currency_rate, foreign_gross
    FROM split
    ORDER BY part_id, split_number
),
parts_per_header AS (
    SELECT header_number, count(DISTINCT part_id) AS parts FROM split GROUP BY header_number
),
allocations AS (
    SELECT
        part_id,
        list({
            'paymentRef': {'dataType': other_data_type, 'id': other_part_id},
            'allocatedOnDate': allocated_on,
            'amount': amount
        } ORDER BY allocated_on, usage_number, other_split) AS allocations
    FROM _allocations
    WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes')
    GROUP BY part_id
)
SELECT
    p.*,
    p.header_due_date + (p.part_date - p.header_date)::INTEGER AS due_date,
    CASE WHEN h.parts = 1 THEN p.foreign_gross END AS total_in_currency,
    l.* EXCLUDE (part_id),
    coalesce(a.allocations, []) AS allocations,
    CASE
        WHEN l.deleted THEN 'Void'
        WHEN l.amount_due = 0 THEN 'Paid'
        WHEN l.amount_due < l.total THEN 'PartiallyPaid'
        ELSE 'Submitted' END AS status
FROM part p
JOIN line_items l USING (part_id)
JOIN parts_per_header h USING (header_number)
LEFT JOIN allocations a USING (part_id);
