-- Rule 31: the four document data types (invoices, creditNotes, bills, billCreditNotes) from
-- the document parts of rule 30, with the field names API clients know for each.
--
-- Why a rule of its own: the parts are built once; each data type only renames (customerRef vs
-- supplierRef, amountDue vs remainingCredit) and names the party.

CREATE OR REPLACE TABLE invoices AS
SELECT
    d.part_id AS id,
    d.reference AS invoiceNumber,
    {'id': d.account_ref, 'customerName': coalesce(p.customerName, '')} AS customerRef,
    d.part_date AS issueDate,
    d.due_date AS dueDate,
    d.status AS status,
    d.sub_total AS subTotal,
    d.total_tax AS totalTaxAmount,
    d.total AS totalAmount,
    d.amount_due AS amountDue,
    d.currency AS currency,
    d.currency_rate AS currencyRate,
    d.sub_total_in_currency AS subTotalInCurrency,
    d.total_tax_in_currency AS totalTaxAmountInCurrency,
    d.total_in_currency AS totalAmountInCurrency,
    d.amount_due_in_currency AS amountDueInCurrency,
    d.note AS note,
    d.part_type AS sageType,
    d.exchange_adjustment AS isExchangeAdjustment,
    d.line_items AS lineItems,
    d.allocations AS paymentAllocations,
    d.modified AS sourceModifiedDate,
    d.deleted AS isDeleted,
    d.archived AS isArchived,
    lineage('AUDIT_HEADER', d.header_number, d.split_numbers) AS lineage
FROM work.documents d
LEFT JOIN customers p ON p.id = d.account_ref
WHERE d.data_type = 'invoices';

CREATE OR REPLACE TABLE creditNotes AS
SELECT
    d.part_id AS id,
    d.reference AS creditNoteNumber,
    {'id': d.account_ref, 'customerName': coalesce(p.customerName, '')} AS customerRef,
    d.part_date AS issueDate,
    d.status AS status,
    d.sub_total AS subTotal,
    d.total_tax AS totalTaxAmount,
    d.total AS totalAmount,
    d.amount_due AS remainingCredit,
    d.currency AS currency,
    d.currency_rate AS currencyRate,
    d.sub_total_in_currency AS subTotalInCurrency,
    d.total_tax_in_currency AS totalTaxAmountInCurrency,
    d.total_in_currency AS totalAmountInCurrency,
    d.amount_due_in_currency AS remainingCreditInCurrency,
    d.note AS note,
    d.part_type AS sageType,
    d.exchange_adjustment AS isExchangeAdjustment,
    d.line_items AS lineItems,
    d.allocations AS paymentAllocations,
    d.modified AS sourceModifiedDate,
    d.deleted AS isDeleted,
    d.archived AS isArchived,
    lineage('AUDIT_HEADER', d.header_number, d.split_numbers) AS lineage
FROM work.documents d
LEFT JOIN customers p ON p.id = d.account_ref
WHERE d.data_type = 'creditNotes';

CREATE OR REPLACE TABLE bills AS
SELECT
    d.part_id AS id,
    d.reference AS reference,
    {'id': d.account_ref, 'supplierName': coalesce(p.supplierName, '')} AS supplierRef,
    d.part_date AS issueDate,
    d.due_date AS dueDate,
    d.status AS status,
    d.sub_total AS subTotal,
    d.total_tax AS totalTaxAmount,
    d.total AS totalAmount,
    d.amount_due AS amountDue,
    d.currency AS currency,
    d.currency_rate AS currencyRate,
    d.sub_total_in_currency AS subTotalInCurrency,
    d.total_tax_in_currency AS totalTaxAmountInCurrency,
    d.total_in_currency AS totalAmountInCurrency,
    d.amount_due_in_currency AS amountDueInCurrency,
    d.note AS note,
    d.part_type AS sageType,
    d.exchange_adjustment AS isExchangeAdjustment,
    d.line_items AS lineItems,
    d.allocations AS paymentAllocations,
    d.modified AS sourceModifiedDate,
    d.deleted AS isDeleted,
    d.archived AS isArchived,
    lineage('AUDIT_HEADER', d.header_number, d.split_numbers) AS lineage
FROM work.documents d
LEFT JOIN suppliers p ON p.id = d.account_ref
WHERE d.data_type = 'bills';

CREATE OR REPLACE TABLE billCreditNotes AS
SELECT
    d.part_id AS id,
    d.reference AS billCreditNoteNumber,
    {'id': d.account_ref, 'supplierName': coalesce(p.supplierName, '')} AS supplierRef,
    d.part_date AS issueDate,
    d.status AS status,
    d.sub_total AS subTotal,
    d.total_tax AS totalTaxAmount,
    d.total AS totalAmount,
    d.amount_due AS remainingCredit,
    d.currency AS currency,
    d.currency_rate AS currencyRate,
    d.sub_total_in_currency AS subTotalInCurrency,
    d.total_tax_in_currency AS totalTaxAmountInCurrency,
    d.total_in_currency AS totalAmountInCurrency,
    d.amount_due_in_currency AS remainingCreditInCurrency,
    d.note AS note,
    d.part_type AS sageType,
    d.exchange_adjustment AS isExchangeAdjustment,
    d.line_items AS lineItems,
    d.allocations AS paymentAllocations,
    d.modified AS sourceModifiedDate,
    d.deleted AS isDeleted,
    d.archived AS isArchived,
    lineage('AUDIT_HEADER', d.header_number, d.split_numbers) AS lineage
FROM work.documents d
LEFT JOIN suppliers p ON p.id = d.account_ref
WHERE d.data_type = 'billCreditNotes';

-- The documents are in their tables: rule 30's working tables are dropped now, not with the
-- others once every rule has run, so that the rules still to run have their memory (above
-- the memory limit DuckDB writes tables out to disk and reads them back).
DROP VIEW work.documents;
DROP TABLE work.document_lines;
DROP TABLE work.document_allocations;
DROP TABLE work.document_parts;
DROP TABLE work.split_items;
