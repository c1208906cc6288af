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
-- Amounts in the document's currency are the splits' own (FOREIGN_*), summed the same way, so
-- a header split into parts keeps them too; a driver without split foreign amounts leaves
-- lines without them, and the document keeps the header's FOREIGN_GROSS_AMOUNT when the
-- header became that one document. A document settled in pounds owes nothing in its currency
-- (Sage posts the exchange difference, rule 15).

-- Step 1: the line items of each part, in split order, one slice of headers at a time (a
-- list aggregate's state cannot spill: see slices in 00_conventions.sql).
CREATE OR REPLACE TEMP MACRO document_lines_slice(k) AS TABLE
SELECT
    part_id,
    any_value(header_number) AS header_number,
    list_transform(
        list_sort(list({'split': split_number, 'details': details, 'nominal': nominal_code,
                        'tax_code': tax_code, 'dept': dept_number, 'project': project_id,
                        'net': net, 'tax': tax, 'gross': gross, 'outstanding': outstanding,
                        'f_net': foreign_net, 'f_gross': foreign_gross,
                        'quantity': quantity, 'unit_price': unit_price, 'discount': discount,
                        'item': item})),
        x -> {
            'id': x.split::VARCHAR,
            'description': x.details,
            'accountRef': {'id': x.nominal},
            'taxRateRef': {'id': x.tax_code},
            'trackingCategoryRefs': tracking_refs(x.dept, x.project),
            'subTotal': x.net,
            'taxAmount': x.tax,
            'totalAmount': x.gross,
            'amountDue': x.outstanding,
            'subTotalInCurrency': x.f_net,
            'taxAmountInCurrency': x.f_gross - x.f_net,
            'totalAmountInCurrency': x.f_gross,
            'quantity': x.quantity,
            'unitAmount': x.unit_price,
            'discountAmount': x.discount,
            'itemRef': CASE WHEN x.item IS NOT NULL THEN {'id': x.item} END
        }) AS line_items,
    list_sort(list(split_number)) AS split_numbers
FROM work.splits
LEFT JOIN work.split_items USING (split_number)
WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes') AND in_slice(header_number, k)
GROUP BY part_id;

CREATE OR REPLACE TABLE work.document_lines AS FROM document_lines_slice(0) LIMIT 0;
-- for each slice
INSERT INTO work.document_lines FROM document_lines_slice(getvariable('slice'));
-- end for each slice

-- Step 2: how many records each header became (documents or not): a header's foreign total
-- belongs to a record only when the header became just that one.
CREATE OR REPLACE TABLE work.parts_per_header AS
SELECT header_number, count(DISTINCT part_id) AS parts FROM work.splits GROUP BY header_number;

-- Step 3 (a statement of its own: DuckDB holds one aggregate's state at a time, keeping peak
-- memory low): the header-level attributes and totals of each part, and what follows from them
-- and its header (computed once here, not in the view rule 31 reads four times).
CREATE OR REPLACE TABLE work.document_parts AS
WITH split AS (
    SELECT * FROM work.splits WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes')
),
part AS (
SELECT
    part_id,
    -- the same on every split of a part
    any_value(data_type) AS data_type,
    any_value(header_number) AS header_number,
    any_value(header_date) AS header_date,
    any_value(header_due_date) AS header_due_date,
    any_value(part_type) AS part_type,
    any_value(part_date) AS part_date,
    any_value(account_ref) AS account_ref,
    any_value(reference) AS reference,
    any_value(note) AS note,
    any_value(currency) AS currency,
    any_value(currency_rate) AS currency_rate,
    any_value(header_foreign_gross) AS header_foreign_gross,
    sum(net)::DECIMAL(18, 2) AS sub_total,
    sum(tax)::DECIMAL(18, 2) AS total_tax,
    sum(gross)::DECIMAL(18, 2) AS total,
    sum(outstanding)::DECIMAL(18, 2) AS amount_due,
    -- in the document's currency: only when every split has it
    CASE WHEN count(foreign_gross) = count(*) THEN sum(foreign_net)::DECIMAL(18, 2) END AS sub_total_in_currency,
    CASE WHEN count(foreign_gross) = count(*) THEN sum(foreign_tax)::DECIMAL(18, 2) END AS total_tax_in_currency,
    CASE WHEN count(foreign_gross) = count(*) THEN sum(foreign_gross)::DECIMAL(18, 2) END AS split_total_in_currency,
    CASE WHEN count(foreign_outstanding) = count(*) THEN sum(foreign_outstanding)::DECIMAL(18, 2) END AS split_due_in_currency,
    bool_and(deleted) AS deleted,
    -- a part's splits share one header: all archived or none
    bool_or(archived) AS archived,
    max(modified) AS modified
FROM split
GROUP BY part_id
)
SELECT
    p.* EXCLUDE (header_foreign_gross, split_total_in_currency, split_due_in_currency),
    coalesce(p.split_total_in_currency,
             CASE WHEN h.parts = 1 THEN p.header_foreign_gross END) AS total_in_currency,
    CASE WHEN p.amount_due = 0 THEN 0 ELSE p.split_due_in_currency END::DECIMAL(18, 2) AS amount_due_in_currency,
    x.header_number IS NOT NULL AS exchange_adjustment
FROM part p
JOIN work.parts_per_header h USING (header_number)
LEFT JOIN work.exchange_adjustments x ON x.header_number = p.header_number;

-- Step 4: the allocations of each part, each with its own date (sliced like step 1).
CREATE OR REPLACE TEMP MACRO document_allocations_slice(k) AS TABLE
SELECT
    part_id,
    any_value(header_number) AS header_number,
    any_value(data_type) AS data_type,
    list_transform(
        list_sort(list({'on': allocated_on, 'usage': usage_number, 'other': other_split,
                        'data_type': other_data_type, 'part_id': other_part_id, 'amount': amount,
                        'in_currency': amount_in_currency})),
        x -> {
            'paymentRef': {'dataType': coalesce(x.data_type, 'unknown'), 'id': x.part_id},
            'allocatedOnDate': x.on,
            'amount': x.amount,
            'amountInCurrency': x.in_currency
        }) AS allocations
FROM work.allocations
WHERE data_type IN ('invoices', 'creditNotes', 'bills', 'billCreditNotes') AND in_slice(header_number, k)
GROUP BY part_id;

CREATE OR REPLACE TABLE work.document_allocations AS FROM document_allocations_slice(0) LIMIT 0;
-- for each slice
INSERT INTO work.document_allocations FROM document_allocations_slice(getvariable('slice'));
-- end for each slice

-- Step 5: the documents: a view, each data type's table is its only copy (rule 31).
CREATE OR REPLACE VIEW work.documents AS
SELECT
    p.*,
    p.header_due_date + (p.part_date - p.header_date)::INTEGER AS due_date,
    l.line_items,
    l.split_numbers,
    coalesce(a.allocations, []) AS allocations,
    CASE
        WHEN p.deleted THEN 'Void'
        WHEN p.amount_due = 0 THEN 'Paid'
        WHEN p.amount_due < p.total THEN 'PartiallyPaid'
        ELSE 'Submitted' END AS status
FROM work.document_parts p
-- (joined on the data type too, so that rule 31's filter on it reaches lines and allocations)
JOIN (SELECT * EXCLUDE (header_number) FROM work.document_lines) l USING (part_id)
LEFT JOIN (SELECT * EXCLUDE (header_number) FROM work.document_allocations) a USING (part_id, data_type);
