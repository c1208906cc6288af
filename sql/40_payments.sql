-- Rule 40: customer payments (SR, SA, SD, SP) and supplier payments (PP, PA, PD, PR).
--
-- Why (the allocation splitting rules):
--  * A receipt or payment allocated to several documents, on different dates, becomes one
--    payment line per allocation, each with the allocation's own date and a link to the
--    document it settles (rule 11 gives both ends).
--  * One date per payment: the parts of rule 10 are used, so a Sage payment header whose
--    splits fall on different dates becomes several payments, one per date.
--  * Whatever is not allocated (Sage's OUTSTANDING on the payment's splits) becomes one
--    payment-on-account line linked to the payment itself, type PaymentOnAccount.
-- Signs: totalAmount and line amounts are positive when the payment lowers the account
-- balance (receipt, discount, payment on account) and negative when it raises it (refund);
-- each link carries minus its line's amount, so a line and its links net to zero, and the
-- lines add up to totalAmount (check payments_net_to_zero). Amounts in the payment's currency
-- (…InCurrency) are signed the same way: the splits' FOREIGN_GROSS_AMOUNT and
-- FOREIGN_OUTSTANDING (else the header's FOREIGN_GROSS_AMOUNT for a header that is one
-- payment), and each allocation's FOREIGN_AMOUNT.
-- Step 1: the parts of payment headers with their totals (sliced: the split numbers are a
-- list aggregate, whose state cannot spill; see slices in 00_conventions.sql).
CREATE OR REPLACE TEMP MACRO payment_parts_slice(k) AS TABLE
WITH split AS (
    SELECT *, -ledger_sign(part_type) AS pay_sign
    FROM work.splits
    WHERE data_type IN ('payments', 'billPayments') AND in_slice(header_number, k)
)
SELECT
    part_id,
    any_value(data_type) AS data_type,
    any_value(header_number) AS header_number,
    any_value(part_type) AS part_type,
    any_value(part_date) AS part_date,
    any_value(pay_sign) AS pay_sign,
    any_value(account_ref) AS account_ref,
    any_value(reference) AS reference,
    any_value(note) AS note,
    any_value(currency) AS currency,
    any_value(currency_rate) AS currency_rate,
    arg_min(nominal_code, split_number) AS nominal_code,
    sum(gross)::DECIMAL(18, 2) AS gross,
    sum(tax)::DECIMAL(18, 2) AS tax,
    sum(outstanding)::DECIMAL(18, 2) AS outstanding,
    any_value(header_foreign_gross) AS header_foreign_gross,
    CASE WHEN count(foreign_gross) = count(*) THEN sum(foreign_gross)::DECIMAL(18, 2) END AS gross_in_currency,
    CASE WHEN count(foreign_outstanding) = count(*) THEN sum(foreign_outstanding)::DECIMAL(18, 2) END AS outstanding_in_currency,
    list_sort(list(split_number)) AS split_numbers,
    bool_and(deleted) AS deleted,
    bool_or(archived) AS archived,
    max(modified) AS modified
FROM split
GROUP BY part_id;

CREATE OR REPLACE TABLE work.payment_parts AS FROM payment_parts_slice(0) LIMIT 0;
-- for each slice
INSERT INTO work.payment_parts FROM payment_parts_slice(getvariable('slice'));
-- end for each slice

-- Step 2: the lines of each part: one per allocation, plus the payment-on-account line.
CREATE OR REPLACE TEMP MACRO payment_lines_slice(k) AS TABLE
WITH part AS (
    SELECT * FROM work.payment_parts WHERE in_slice(header_number, k)
),
allocation_lines AS (
    SELECT
        a.part_id,
        a.allocated_on,
        a.usage_number,
        a.other_split,
        p.pay_sign * a.amount AS amount,
        p.pay_sign * a.amount_in_currency AS amount_in_currency,
        coalesce(a.other_data_type, 'unknown') AS link_type,
        a.other_part_id AS link_id
    FROM work.allocations a
    JOIN part p USING (part_id)
    WHERE in_slice(a.header_number, k)
),
on_account_lines AS (
    SELECT
        part_id,
        part_date AS allocated_on,
        2147483647 AS usage_number,  -- after the allocations of the same date
        0 AS other_split,
        pay_sign * outstanding AS amount,
        pay_sign * outstanding_in_currency AS amount_in_currency,
        'PaymentOnAccount' AS link_type,
        part_id AS link_id
    FROM part
    WHERE outstanding <> 0
)
SELECT
    part_id,
    list_transform(
        list_sort(list({'on': allocated_on, 'usage': usage_number, 'other': other_split,
                        'amount': amount, 'in_currency': amount_in_currency,
                        'link_type': link_type, 'link_id': link_id})),
        x -> {
            'amount': x.amount,
            'amountInCurrency': x.in_currency,
            'allocatedOnDate': x.on,
            'links': [{'type': x.link_type, 'id': x.link_id, 'amount': -x.amount}]
        }) AS lines
FROM (SELECT * FROM allocation_lines UNION ALL SELECT * FROM on_account_lines)
GROUP BY part_id;

CREATE OR REPLACE TABLE work.payment_lines AS FROM payment_lines_slice(0) LIMIT 0;
-- for each slice
INSERT INTO work.payment_lines FROM payment_lines_slice(getvariable('slice'));
-- end for each slice

-- Step 3: payments with their lines: a view, each data type's table is its only copy of the
-- lines (as rule 30's documents).
CREATE OR REPLACE VIEW work.payments AS
SELECT
    p.*,
    p.pay_sign * p.gross AS total,
    p.pay_sign * p.tax AS total_tax,
    p.pay_sign * p.outstanding AS unallocated,
    p.pay_sign * coalesce(p.gross_in_currency, CASE WHEN h.parts = 1 THEN p.header_foreign_gross END)
        AS total_in_currency,
    p.pay_sign * CASE WHEN p.outstanding = 0 THEN 0 ELSE p.outstanding_in_currency END
        AS unallocated_in_currency,
    coalesce(l.lines, []) AS lines,
    CASE p.part_type
        WHEN 'SR' THEN 'Receipt' WHEN 'PP' THEN 'Payment'
        WHEN 'SA' THEN 'PaymentOnAccount' WHEN 'PA' THEN 'PaymentOnAccount'
        WHEN 'SD' THEN 'Discount' WHEN 'PD' THEN 'Discount'
        WHEN 'SP' THEN 'Refund' WHEN 'PR' THEN 'Refund' END AS payment_type
FROM work.payment_parts p
JOIN work.parts_per_header h USING (header_number)
LEFT JOIN work.payment_lines l USING (part_id);

CREATE OR REPLACE TABLE payments AS
SELECT
    p.part_id AS id,
    p.payment_type AS paymentType,
    {'id': p.account_ref, 'customerName': coalesce(c.customerName, '')} AS customerRef,
    p.part_date AS date,
    {'id': p.nominal_code} AS accountRef,
    p.total AS totalAmount,
    p.total_tax AS totalTaxAmount,
    p.unallocated AS unallocatedAmount,
    p.currency AS currency,
    p.currency_rate AS currencyRate,
    p.total_in_currency::DECIMAL(18, 2) AS totalAmountInCurrency,
    p.unallocated_in_currency::DECIMAL(18, 2) AS unallocatedAmountInCurrency,
    p.reference AS reference,
    p.note AS note,
    p.part_type AS sageType,
    p.lines AS lines,
    p.modified AS sourceModifiedDate,
    p.deleted AS isDeleted,
    p.archived AS isArchived,
    lineage('AUDIT_HEADER', p.header_number, p.split_numbers) AS lineage
FROM work.payments p
LEFT JOIN customers c ON c.id = p.account_ref
WHERE p.data_type = 'payments';

CREATE OR REPLACE TABLE billPayments AS
SELECT
    p.part_id AS id,
    p.payment_type AS paymentType,
    {'id': p.account_ref, 'supplierName': coalesce(s.supplierName, '')} AS supplierRef,
    p.part_date AS date,
    {'id': p.nominal_code} AS accountRef,
    p.total AS totalAmount,
    p.total_tax AS totalTaxAmount,
    p.unallocated AS unallocatedAmount,
    p.currency AS currency,
    p.currency_rate AS currencyRate,
    p.total_in_currency::DECIMAL(18, 2) AS totalAmountInCurrency,
    p.unallocated_in_currency::DECIMAL(18, 2) AS unallocatedAmountInCurrency,
    p.reference AS reference,
    p.note AS note,
    p.part_type AS sageType,
    p.lines AS lines,
    p.modified AS sourceModifiedDate,
    p.deleted AS isDeleted,
    p.archived AS isArchived,
    lineage('AUDIT_HEADER', p.header_number, p.split_numbers) AS lineage
FROM work.payments p
LEFT JOIN suppliers s ON s.id = p.account_ref
WHERE p.data_type = 'billPayments';

-- The payments are in their tables: the working tables only rules 30 and 40 read are dropped
-- now, so that the rules still to run have their memory (as at the end of rule 31).
DROP VIEW work.payments;
DROP TABLE work.payment_lines;
DROP TABLE work.payment_parts;
DROP TABLE work.allocations;
DROP TABLE work.parts_per_header;
