//! Transactions of a simulated company, generated in date order with real bookkeeping.
//!
//! Amounts are integer pence here; they become Sage's DOUBLEs only when written. Every
//! header posts balanced double entry ([`journal_lines`]); allocations ([`Usage`]) always pay
//! an earlier document of the same account, so outstanding amounts never go negative.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::company::{
    self, BANKS, CREDITORS, CURRENCIES, DEBTORS, DISCOUNT_ALLOWED, DISCOUNT_TAKEN, EURO_BANK,
    EXCHANGE_DIFFERENCE, EXPENSE_NOMINALS, JOURNAL_NOMINALS, SALES_NOMINALS, TAX_CODES, TAX_T9,
    VAT_PURCHASES, VAT_SALES,
};

/// Sage transaction types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum TxType {
    SI,
    SC,
    SR,
    SA,
    SD,
    SP,
    PI,
    PC,
    PP,
    PA,
    PD,
    PR,
    BP,
    BR,
    CP,
    CR,
    VP,
    VR,
    JD,
    JC,
}

impl TxType {
    /// The two-letter code Sage stores in TYPE.
    pub fn code(self) -> &'static str {
        use TxType::*;
        match self {
            SI => "SI",
            SC => "SC",
            SR => "SR",
            SA => "SA",
            SD => "SD",
            SP => "SP",
            PI => "PI",
            PC => "PC",
            PP => "PP",
            PA => "PA",
            PD => "PD",
            PR => "PR",
            BP => "BP",
            BR => "BR",
            CP => "CP",
            CR => "CR",
            VP => "VP",
            VR => "VR",
            JD => "JD",
            JC => "JC",
        }
    }

    /// +1 when the type raises the customer's or supplier's balance owed, -1 when it lowers
    /// it, 0 for bank and journal types (no ledger account).
    pub fn ledger_sign(self) -> i64 {
        use TxType::*;
        match self {
            SI | SP | PI | PR => 1,
            SC | SR | SA | SD | PC | PP | PA | PD => -1,
            _ => 0,
        }
    }

    /// Whether the account is a customer (sales ledger).
    pub fn is_sales(self) -> bool {
        matches!(
            self,
            TxType::SI | TxType::SC | TxType::SR | TxType::SA | TxType::SD | TxType::SP
        )
    }

    /// Whether the account is a supplier (purchase ledger).
    pub fn is_purchase(self) -> bool {
        matches!(
            self,
            TxType::PI | TxType::PC | TxType::PP | TxType::PA | TxType::PD | TxType::PR
        )
    }
}

/// What a header's ACCOUNT_REF points at.
#[derive(Debug, Clone, Copy)]
pub enum Account {
    /// Index into the customers.
    Customer(u32),
    /// Index into the suppliers.
    Supplier(u32),
    /// Index into [`BANKS`].
    Bank(u8),
    /// Journals carry no account.
    None,
}

/// One AUDIT_HEADER row.
pub struct Header {
    /// Type of the first split.
    pub ty: TxType,
    /// Header date.
    pub date: i32,
    /// The account.
    pub account: Account,
    /// Bank nominal for bank-side types, as an index into [`BANKS`].
    pub bank: Option<u8>,
    /// Invoice or cheque reference number (0 = empty).
    pub inv_ref: u32,
    /// First split number.
    pub first_split: u32,
    /// Number of splits.
    pub split_count: u32,
    /// Index into [`company::CURRENCIES`].
    pub currency: u8,
    /// Units of the currency per 1 GBP, in 1/10000 (FOREIGN_RATE).
    pub rate_e4: i64,
    /// An exchange difference or revaluation Sage posted (reference REVAL, to 7906, no
    /// foreign amount).
    pub exchange_adjustment: bool,
    /// Deleted in Sage (kept with DELETED_FLAG, excluded from balances).
    pub deleted: bool,
    /// Day of the last change (allocation), for DATE_AMENDED and RECORD_MODIFY_DATE.
    pub amended: i32,
    /// Payment terms in days.
    pub due_days: i16,
    /// Posted by Sage's Year End (moves the P&L to retained earnings).
    pub year_end: bool,
    /// Moved to the AUDIT_HISTORY tables by Clear Audit Trail.
    pub archived: bool,
    /// Clear Audit Trail's opening-balance journal (standing in for the archived ones).
    pub opening_balance: bool,
}

/// One AUDIT_SPLIT row.
pub struct Split {
    /// Header number (1-based).
    pub header: u32,
    /// The split's own type (journals mix JD and JC).
    pub ty: TxType,
    /// The split's own date (may differ from the header's).
    pub date: i32,
    /// Nominal code.
    pub nominal: &'static str,
    /// Index into [`TAX_CODES`].
    pub tax_code: u8,
    /// Department number.
    pub dept: u8,
    /// Project id (0 = none).
    pub project: u16,
    /// Net, pence (always positive; the type says the direction).
    pub net: i64,
    /// VAT, pence.
    pub tax: i64,
    /// Allocated so far, pence.
    pub paid: i64,
    /// Net in the header's currency, its cents (what Sage keeps first; the base amounts
    /// follow from the rate).
    pub foreign_net: i64,
    /// VAT in the header's currency, cents.
    pub foreign_tax: i64,
    /// Allocated so far in the header's currency, cents.
    pub foreign_paid: i64,
}

impl Split {
    /// Net plus VAT.
    pub fn gross(&self) -> i64 {
        self.net + self.tax
    }

    /// Net plus VAT in the header's currency.
    pub fn foreign_gross(&self) -> i64 {
        self.foreign_net + self.foreign_tax
    }

    /// What is left to allocate in the header's currency: nothing once the base amount is
    /// settled (Sage posts the exchange difference then).
    pub fn foreign_outstanding(&self) -> i64 {
        if self.paid == self.gross() {
            0
        } else {
            self.foreign_gross() - self.foreign_paid
        }
    }
}

/// One AUDIT_USAGE row: `amount` of payer split `split` allocated to split `crossref`.
pub struct Usage {
    /// The paying (or crediting) split.
    pub split: u32,
    /// The split it pays.
    pub crossref: u32,
    /// Type of the paying split.
    pub ty: TxType,
    /// Allocation date (its own).
    pub date: i32,
    /// Amount in base currency, pence.
    pub amount: i64,
    /// The same allocation in the documents' currency, cents (FOREIGN_AMOUNT).
    pub foreign: i64,
}

/// All transactions of a company.
#[derive(Default)]
pub struct Ledger {
    /// Headers; header number = index + 1.
    pub headers: Vec<Header>,
    /// Splits; split number = index + 1.
    pub splits: Vec<Split>,
    /// Allocations; usage number = index + 1.
    pub usages: Vec<Usage>,
}

impl Header {
    /// The header's bank nominal code ("" when it has none), as its journal lines need it.
    pub fn bank_code(&self) -> &'static str {
        self.bank.map(|b| BANKS[b as usize].code).unwrap_or("")
    }

    /// Whether the header posts to nominal `code` through its bank or one of its splits.
    fn splits_touch(&self, code: &str, ledger: &Ledger) -> bool {
        self.bank_code() == code || ledger.splits_of(self).iter().any(|s| s.nominal == code)
    }
}

impl Ledger {
    /// The splits of a header.
    pub fn splits_of(&self, h: &Header) -> &[Split] {
        &self.splits[h.first_split as usize - 1..(h.first_split + h.split_count) as usize - 1]
    }
}

/// Per nominal code accepted by `wanted`, what `splits` (each with its header's bank code)
/// post to it, in pence; nominals whose postings net to zero are left out.
fn nominal_totals<'a>(
    splits: impl IntoIterator<Item = (&'a Split, &'static str)>,
    wanted: impl Fn(&str) -> bool,
) -> std::collections::BTreeMap<&'static str, i64> {
    let mut totals: std::collections::BTreeMap<&'static str, i64> = Default::default();
    for (s, bank) in splits {
        for (nominal, amount) in journal_lines(s, bank) {
            if !nominal.is_empty() && wanted(nominal) {
                *totals.entry(nominal).or_default() += amount;
            }
        }
    }
    totals.retain(|_, t| *t != 0);
    totals
}

/// Limits of a generation run.
pub struct Size {
    /// Stop after this many headers.
    pub headers: u64,
    /// Or after this many splits, whichever comes first.
    pub splits: u64,
    /// Days covered, ending at the end of the current financial year.
    pub span_days: i32,
    /// Number of customers and suppliers.
    pub customers: usize,
    /// Number of suppliers.
    pub suppliers: usize,
    /// Number of projects.
    pub projects: u16,
    /// Run Sage's Year End for the financial year ending on this day, a fortnight after it
    /// (as users do once the last invoices of the year are in).
    pub year_end: Option<i32>,
    /// Exchange rates move every 30 days: receipts and payments at a rate other than their
    /// invoice's post exchange differences, and the euro bank is revalued every 30 days.
    pub exchange_differences: bool,
}

/// An open document awaiting allocation: (header number, first split, split count).
type Open = (u32, u32, u32);

/// Per account of one ledger: documents awaiting payment (invoices) and credits awaiting
/// use (credit notes, payments on account, part-allocated receipts).
struct Side {
    docs: Vec<Vec<Open>>,
    credits: Vec<Vec<Open>>,
}

impl Side {
    fn new(accounts: usize) -> Self {
        Side {
            docs: vec![Vec::new(); accounts],
            credits: vec![Vec::new(); accounts],
        }
    }
}

/// The customer (sales ledger) or supplier with this index.
fn party_account(sales: bool, idx: usize) -> Account {
    if sales {
        Account::Customer(idx as u32)
    } else {
        Account::Supplier(idx as u32)
    }
}

struct Books<'a> {
    rng: &'a mut ChaCha8Rng,
    ledger: Ledger,
    customer_currency: &'a [u8],
    supplier_currency: &'a [u8],
    customer_due: &'a [i16],
    supplier_due: &'a [i16],
    /// Open documents of the customers.
    sales: Side,
    /// Open documents of the suppliers.
    purchases: Side,
    next_ref: u32,
    projects: u16,
    exchange_differences: bool,
    /// Headers to generate: an exchange difference is posted only while there is room.
    header_limit: u64,
    /// The euro bank's balance (base pence, euro cents) over headers before `euro_scanned`.
    euro_bank: (i64, i64),
    euro_scanned: usize,
}

/// Generates the transactions of a company in date order.
pub fn generate(
    rng: &mut ChaCha8Rng,
    size: &Size,
    customer_currency: &[u8],
    supplier_currency: &[u8],
    customer_due: &[i16],
    supplier_due: &[i16],
) -> Ledger {
    use TxType::*;
    // Relative frequencies, roughly those of a small UK trading company.
    const MIX: &[(TxType, u32)] = &[
        (SI, 300),
        (SC, 25),
        (SR, 220),
        (SA, 15),
        (SD, 10),
        (SP, 6),
        (PI, 160),
        (PC, 12),
        (PP, 110),
        (PA, 8),
        (PD, 5),
        (PR, 4),
        (BP, 40),
        (BR, 18),
        (CP, 12),
        (CR, 5),
        (VP, 12),
        (VR, 3),
        (JD, 12),
        (JC, 6),
    ];
    let total: u32 = MIX.iter().map(|(_, w)| w).sum();
    let reserve = size.headers.min(1 << 24) as usize;
    let mut books = Books {
        rng,
        ledger: Ledger {
            headers: Vec::with_capacity(reserve),
            splits: Vec::with_capacity(reserve * 2),
            usages: Vec::with_capacity(reserve),
        },
        customer_currency,
        supplier_currency,
        customer_due,
        supplier_due,
        sales: Side::new(customer_currency.len()),
        purchases: Side::new(supplier_currency.len()),
        next_ref: 10_000,
        projects: size.projects,
        exchange_differences: size.exchange_differences,
        header_limit: size.headers,
        euro_bank: (0, 0),
        euro_scanned: 0,
    };
    let start = -size.span_days;
    let mut year_end = size.year_end;
    let mut period = start.div_euclid(30);
    // every header counts, exchange differences, revaluations and the Year End journal too
    while (books.ledger.headers.len() as u64) < size.headers
        && (books.ledger.splits.len() as u64) < size.splits
    {
        let i = books.ledger.headers.len() as u64;
        let date = start + ((i as i128 * size.span_days as i128) / size.headers as i128) as i32;
        if books.exchange_differences && date.div_euclid(30) != period {
            period = date.div_euclid(30);
            books.revalue_euro_bank(date.min(-1));
            continue;
        }
        if let Some(end) = year_end
            && date > end + 14
        {
            year_end = None;
            if books.year_end(end) {
                continue;
            }
        }
        let mut pick = books.rng.random_range(0..total);
        let mut ty = SI;
        for (t, w) in MIX {
            if pick < *w {
                ty = *t;
                break;
            }
            pick -= w;
        }
        books.transaction(ty, date.min(-1));
    }
    books.ledger
}

impl Books<'_> {
    fn customer(&mut self) -> u32 {
        skewed(self.rng, self.customer_currency.len())
    }

    fn supplier(&mut self) -> u32 {
        skewed(self.rng, self.supplier_currency.len())
    }

    fn party(&mut self, sales: bool) -> usize {
        (if sales {
            self.customer()
        } else {
            self.supplier()
        }) as usize
    }

    fn side(&self, sales: bool) -> &Side {
        if sales { &self.sales } else { &self.purchases }
    }

    fn side_mut(&mut self, sales: bool) -> &mut Side {
        if sales {
            &mut self.sales
        } else {
            &mut self.purchases
        }
    }

    fn amount(&mut self, min_pence: i64, max_pence: i64) -> i64 {
        // Log-uniform-ish: many small amounts, some large ones.
        let scale = self.rng.random_range(0..3);
        let hi = (max_pence / [100, 10, 1][scale]).max(min_pence + 1);
        self.rng.random_range(min_pence..hi)
    }

    fn tax_code(&mut self) -> u8 {
        [1, 1, 1, 1, 1, 1, 0, 2, 3][self.rng.random_range(0..9)]
    }

    fn bank(&mut self) -> u8 {
        if self.rng.random_bool(0.85) { 0 } else { 1 }
    }

    /// The bank a customer or supplier pays or is paid through: mostly the euro bank for
    /// those trading in euros.
    fn party_bank(&mut self, sales: bool, idx: usize) -> u8 {
        let currency = if sales {
            self.customer_currency[idx]
        } else {
            self.supplier_currency[idx]
        };
        if currency == BANKS[EURO_BANK as usize].currency && self.rng.random_bool(0.7) {
            EURO_BANK
        } else {
            self.bank()
        }
    }

    fn project(&mut self) -> u16 {
        if self.projects > 0 && self.rng.random_bool(0.2) {
            self.rng.random_range(1..=self.projects)
        } else {
            0
        }
    }

    fn new_ref(&mut self) -> u32 {
        self.next_ref += 1;
        self.next_ref
    }

    /// Starts a header; splits are pushed after it.
    fn header(&mut self, ty: TxType, date: i32, account: Account, bank: Option<u8>) -> u32 {
        let (currency, due_days) = match account {
            Account::Customer(c) => (
                self.customer_currency[c as usize],
                self.customer_due[c as usize],
            ),
            Account::Supplier(s) => (
                self.supplier_currency[s as usize],
                self.supplier_due[s as usize],
            ),
            Account::Bank(b) => (BANKS[b as usize].currency, 0),
            Account::None => (0, 0),
        };
        let inv_ref = match ty {
            TxType::JD | TxType::JC => 0,
            _ => self.new_ref(),
        };
        self.ledger.headers.push(Header {
            ty,
            date,
            account,
            bank,
            inv_ref,
            first_split: self.ledger.splits.len() as u32 + 1,
            split_count: 0,
            currency,
            rate_e4: CURRENCIES[currency as usize].rate_e4,
            exchange_adjustment: false,
            deleted: false,
            amended: date,
            due_days,
            year_end: false,
            archived: false,
            opening_balance: false,
        });
        self.ledger.headers.len() as u32
    }

    fn split(
        &mut self,
        header: u32,
        ty: TxType,
        date: i32,
        nominal: &'static str,
        tax_code: u8,
        net: i64,
    ) -> u32 {
        self.split_in_currency(header, ty, date, nominal, tax_code, net, None)
    }

    /// A split whose net in the header's currency is `foreign_net` when given, else the base
    /// net at the header's rate (VAT likewise).
    #[allow(clippy::too_many_arguments)]
    fn split_in_currency(
        &mut self,
        header: u32,
        ty: TxType,
        date: i32,
        nominal: &'static str,
        tax_code: u8,
        net: i64,
        foreign_net: Option<i64>,
    ) -> u32 {
        let rate = TAX_CODES[tax_code as usize].rate_bp;
        let tax = round_div(net * rate, 10_000);
        let fx = self.ledger.headers[header as usize - 1].rate_e4;
        let foreign_tax = round_div(tax * fx, 10_000);
        let foreign_net = foreign_net.unwrap_or_else(|| round_div(net * fx, 10_000));
        let dept = self.rng.random_range(0..company::DEPARTMENTS.len() as u8);
        let project = self.project();
        self.ledger.splits.push(Split {
            header,
            ty,
            date,
            nominal,
            tax_code,
            dept,
            project,
            net,
            tax,
            paid: 0,
            foreign_net,
            foreign_tax,
            foreign_paid: 0,
        });
        self.ledger.headers[header as usize - 1].split_count += 1;
        self.ledger.splits.len() as u32
    }

    /// Marks a fresh, unallocated transaction deleted, at Sage's usual rate.
    fn maybe_delete(&mut self, header: u32) -> bool {
        let deleted = self.rng.random_bool(0.01);
        self.ledger.headers[header as usize - 1].deleted = deleted;
        deleted
    }

    fn outstanding(&self, split: u32) -> i64 {
        let s = &self.ledger.splits[split as usize - 1];
        s.gross() - s.paid
    }

    fn doc_outstanding(&self, doc: Open) -> i64 {
        (doc.1..doc.1 + doc.2).map(|s| self.outstanding(s)).sum()
    }

    /// Allocates up to `amount` of payer split `payer` to the splits of `doc`, in order, and
    /// returns what was allocated.
    fn allocate(&mut self, payer: u32, doc: Open, amount: i64, date: i32) -> i64 {
        let mut left = amount.min(self.outstanding(payer));
        let mut done = 0;
        for target in doc.1..doc.1 + doc.2 {
            if left == 0 {
                break;
            }
            let take = left.min(self.outstanding(target));
            if take <= 0 {
                continue;
            }
            // in the documents' currency: what is left when this settles the split, else
            // the base amount at the split's rate
            let t = &self.ledger.splits[target as usize - 1];
            let foreign = if take == t.gross() - t.paid {
                t.foreign_gross() - t.foreign_paid
            } else {
                round_div(
                    take * self.ledger.headers[t.header as usize - 1].rate_e4,
                    10_000,
                )
            };
            self.usage(payer, target, take, foreign, date);
            left -= take;
            done += take;
        }
        done
    }

    /// Records that payer split `payer` pays `amount` (base) and `foreign` (the documents'
    /// currency) of split `target`.
    fn usage(&mut self, payer: u32, target: u32, amount: i64, foreign: i64, date: i32) {
        let ty = self.ledger.splits[payer as usize - 1].ty;
        self.ledger.usages.push(Usage {
            split: payer,
            crossref: target,
            ty,
            date,
            amount,
            foreign,
        });
        for s in [payer, target] {
            let split = &mut self.ledger.splits[s as usize - 1];
            split.paid += amount;
            split.foreign_paid += foreign;
            let h = &mut self.ledger.headers[split.header as usize - 1];
            h.amended = h.amended.max(date);
        }
    }

    fn transaction(&mut self, ty: TxType, date: i32) {
        use TxType::*;
        match ty {
            SI | PI => self.invoice(ty, date),
            SC | PC => self.credit_note(ty, date),
            SR | PP => self.payment(ty, date),
            SA | PA => self.on_account(ty, date),
            SD | PD => self.discount(ty, date),
            SP | PR => self.refund(ty, date),
            BP | BR | CP | CR | VP | VR => self.bank_entry(ty, date),
            JD => self.journal(date),
            JC => self.transfer(date),
        }
    }

    fn invoice(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SI;
        let idx = self.party(sales);
        let account = party_account(sales, idx);
        let h = self.header(ty, date, account, None);
        let lines = [1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 5, 8][self.rng.random_range(0..12)];
        // About 3% of documents have splits on different dates (Sage allows it).
        let spread = lines > 1 && self.rng.random_bool(0.03);
        for j in 0..lines {
            let nominal = if sales {
                SALES_NOMINALS[self.rng.random_range(0..SALES_NOMINALS.len())]
            } else {
                EXPENSE_NOMINALS[self.rng.random_range(0..EXPENSE_NOMINALS.len())]
            };
            let tax = self.tax_code();
            let net = self.amount(100, 1_000_000);
            let d = if spread && j > 0 {
                date + (self.rng.random_range(1..10) * j).min(30)
            } else {
                date
            };
            self.split(h, ty, d.min(-1), nominal, tax, net);
        }
        if self.maybe_delete(h) {
            return;
        }
        let doc = self.doc(h);
        // A credit left open (payment on account, credit note, overpayment) is often used up
        // against the account's next invoice.
        if self.rng.random_bool(0.5) {
            self.use_credits(sales, idx, doc, date);
        }
        if self.doc_outstanding(doc) > 0 {
            self.side_mut(sales).docs[idx].push(doc)
        }
    }

    /// Allocates the account's open credits to `doc`, oldest first, until it is paid.
    fn use_credits(&mut self, sales: bool, idx: usize, doc: Open, date: i32) {
        let credits = std::mem::take(&mut self.side_mut(sales).credits[idx]);
        for credit in &credits {
            for split in credit.1..credit.1 + credit.2 {
                if self.doc_outstanding(doc) == 0 {
                    break;
                }
                if self.outstanding(split) > 0 {
                    self.allocate(split, doc, i64::MAX, date);
                }
            }
        }
        let kept: Vec<Open> = credits
            .into_iter()
            .filter(|c| self.doc_outstanding(*c) > 0)
            .collect();
        self.side_mut(sales).credits[idx] = kept
    }

    fn doc(&self, h: u32) -> Open {
        let header = &self.ledger.headers[h as usize - 1];
        (h, header.first_split, header.split_count)
    }

    fn credit_note(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SC;
        let idx = self.party(sales);
        let account = party_account(sales, idx);
        let h = self.header(ty, date, account, None);
        let nominal = if sales {
            SALES_NOMINALS[0]
        } else {
            EXPENSE_NOMINALS[0]
        };
        let tax = self.tax_code();
        let net = self.amount(100, 100_000);
        let split = self.split(h, ty, date, nominal, tax, net);
        let open = &self.side(sales).docs[idx];
        // Most credit notes are allocated to an invoice of the same account at once.
        if let Some(&doc) = open.first()
            && self.rng.random_bool(0.6)
        {
            self.allocate(split, doc, i64::MAX, date);
            self.prune(sales, idx);
        }
        if self.outstanding(split) > 0 {
            let doc = self.doc(h);
            self.side_mut(sales).credits[idx].push(doc)
        }
    }

    /// Drops fully paid documents from the account's open list.
    fn prune(&mut self, sales: bool, idx: usize) {
        let open = std::mem::take(&mut self.side_mut(sales).docs[idx]);
        let kept: Vec<Open> = open
            .into_iter()
            .filter(|d| self.doc_outstanding(*d) > 0)
            .collect();
        self.side_mut(sales).docs[idx] = kept
    }

    fn payment(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SR;
        let idx = self.party(sales);
        let open_count = self.side(sales).docs[idx].len();
        if open_count == 0 {
            return self.on_account(if sales { TxType::SA } else { TxType::PA }, date);
        }
        let account = party_account(sales, idx);
        let bank = self.party_bank(sales, idx);
        let h = self.header(ty, date, account, Some(bank));
        let pays = open_count.min([1, 1, 1, 2, 2, 3, 4][self.rng.random_range(0..7)]);
        if pays == 1 && self.rng.random_bool(0.8) {
            let doc = self.side(sales).docs[idx][0];
            if self.settle_at_todays_rate(h, doc, date) {
                return self.prune(sales, idx);
            }
        }
        // Some receipts are allocated to their invoices on different days.
        let staggered = pays > 1 && self.rng.random_bool(0.15);
        for k in 0..pays {
            let doc = self.side(sales).docs[idx][k];
            let due = self.doc_outstanding(doc);
            let last = k + 1 == pays;
            let (gross, alloc) = match self.rng.random_range(0..100) {
                // Part payment of the invoice.
                0..=9 if last => {
                    let part = (due / 2).max(1);
                    (part, part)
                }
                // Overpayment: the remainder stays on the receipt, part-allocated.
                10..=15 if last => (due + self.amount(100, 50_000), due),
                _ => (due, due),
            };
            let split = self.split(h, ty, date, BANKS[bank as usize].code, TAX_T9, gross);
            let when = if staggered {
                date + k as i32 * self.rng.random_range(1..15)
            } else {
                date
            };
            self.allocate(split, doc, alloc, when.min(-1));
        }
        self.prune(sales, idx);
        if self.doc_outstanding(self.doc(h)) > 0 {
            let doc = self.doc(h);
            self.side_mut(sales).credits[idx].push(doc)
        }
    }

    /// Payment `h` settles `doc` in full in the documents' currency at the day's rate, when
    /// rates move and that rate is not the document's: the payment is worth more or less in
    /// pounds than the document, and Sage posts the difference to Exchange Rate Variance as a
    /// REVAL invoice paid with it (more) or a REVAL credit note allocated to the document
    /// (less). Returns false, having done nothing, when that does not apply.
    fn settle_at_todays_rate(&mut self, h: u32, doc: Open, date: i32) -> bool {
        let header = &self.ledger.headers[h as usize - 1];
        let (ty, account, currency) = (header.ty, header.account, header.currency);
        let doc_rate = self.ledger.headers[doc.0 as usize - 1].rate_e4;
        let rate = company::rate_on(currency, date);
        // (the payment is a header already: the difference needs room for one more)
        if !self.exchange_differences
            || currency == 0
            || rate == doc_rate
            || self.ledger.headers.len() as u64 >= self.header_limit
        {
            return false;
        }
        self.ledger.headers[h as usize - 1].rate_e4 = rate;
        let targets: Vec<(u32, i64, i64)> = (doc.1..doc.1 + doc.2)
            .map(|t| {
                let s = &self.ledger.splits[t as usize - 1];
                (t, s.gross() - s.paid, s.foreign_gross() - s.foreign_paid)
            })
            .filter(|(_, base, _)| *base > 0)
            .collect();
        let due: i64 = targets.iter().map(|t| t.1).sum();
        let foreign: i64 = targets.iter().map(|t| t.2).sum();
        let worth = round_div(foreign * 10_000, rate).max(1);
        let bank = BANKS[self.ledger.headers[h as usize - 1].bank.unwrap_or(0) as usize].code;
        let payer = self.split_in_currency(h, ty, date, bank, TAX_T9, worth, Some(foreign));
        let mut left = worth;
        for &(t, base, foreign) in &targets {
            let take = base.min(left);
            left -= take;
            self.usage(payer, t, take, foreign, date);
        }
        let sales = ty == TxType::SR;
        let difference = worth - due;
        let adjustment_type = match (sales, difference > 0) {
            (true, true) => TxType::SI,
            (true, false) => TxType::SC,
            (false, true) => TxType::PI,
            (false, false) => TxType::PC,
        };
        if difference == 0 {
            return true;
        }
        let r = self.header(adjustment_type, date, account, None);
        let adjustment = &mut self.ledger.headers[r as usize - 1];
        adjustment.rate_e4 = rate;
        adjustment.exchange_adjustment = true;
        let split = self.split_in_currency(
            r,
            adjustment_type,
            date,
            EXCHANGE_DIFFERENCE,
            TAX_T9,
            difference.abs(),
            Some(0),
        );
        if difference > 0 {
            // the payment pays the difference too
            self.usage(payer, split, difference, 0, date);
        } else {
            for &(t, _, _) in &targets {
                let rest = self.outstanding(t);
                if rest > 0 {
                    self.usage(split, t, rest, 0, date);
                }
            }
        }
        true
    }

    /// Sage's foreign bank revaluation: the euro bank's balance in euros at the day's rate,
    /// against its balance in pounds, the difference posted to Exchange Rate Variance as a
    /// REVAL bank receipt or payment with no euro amount.
    fn revalue_euro_bank(&mut self, date: i32) {
        let bank = BANKS[EURO_BANK as usize].code;
        for h in &self.ledger.headers[self.euro_scanned..] {
            if h.deleted || !h.splits_touch(bank, &self.ledger) {
                continue;
            }
            for s in self.ledger.splits_of(h) {
                for (nominal, amount) in journal_lines(s, h.bank_code()) {
                    if nominal == bank && amount != 0 {
                        self.euro_bank.0 += amount;
                        self.euro_bank.1 += amount.signum() * s.foreign_gross();
                    }
                }
            }
        }
        self.euro_scanned = self.ledger.headers.len();
        let currency = BANKS[EURO_BANK as usize].currency;
        let rate = company::rate_on(currency, date);
        let difference = round_div(self.euro_bank.1 * 10_000, rate) - self.euro_bank.0;
        if difference == 0 {
            return;
        }
        let ty = if difference > 0 {
            TxType::BR
        } else {
            TxType::BP
        };
        let h = self.header(ty, date, Account::Bank(EURO_BANK), Some(EURO_BANK));
        let header = &mut self.ledger.headers[h as usize - 1];
        header.rate_e4 = rate;
        header.exchange_adjustment = true;
        self.split_in_currency(
            h,
            ty,
            date,
            EXCHANGE_DIFFERENCE,
            TAX_T9,
            difference.abs(),
            Some(0),
        );
    }

    fn on_account(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SA;
        let idx = self.party(sales);
        let account = party_account(sales, idx);
        let bank = self.party_bank(sales, idx);
        let h = self.header(ty, date, account, Some(bank));
        let net = self.amount(1_000, 500_000);
        self.split(h, ty, date, BANKS[bank as usize].code, TAX_T9, net);
        if self.maybe_delete(h) {
            return;
        }
        let doc = self.doc(h);
        self.side_mut(sales).credits[idx].push(doc)
    }

    fn discount(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SD;
        let idx = self.party(sales);
        let open = &self.side(sales).docs[idx];
        let Some(&doc) = open.first() else {
            return self.invoice(if sales { TxType::SI } else { TxType::PI }, date);
        };
        let due = self.doc_outstanding(doc);
        let account = party_account(sales, idx);
        let h = self.header(ty, date, account, None);
        let nominal = if sales {
            DISCOUNT_ALLOWED
        } else {
            DISCOUNT_TAKEN
        };
        let split = self.split(h, ty, date, nominal, TAX_T9, (due / 40).max(1));
        self.allocate(split, doc, i64::MAX, date);
        self.prune(sales, idx);
    }

    fn refund(&mut self, ty: TxType, date: i32) {
        let sales = ty == TxType::SP;
        let idx = self.party(sales);
        let credits = &self.side(sales).credits[idx];
        let Some(pos) = credits.iter().position(|d| self.doc_outstanding(*d) > 0) else {
            return self.on_account(if sales { TxType::SA } else { TxType::PA }, date);
        };
        let doc = credits[pos];
        let due = self.doc_outstanding(doc);
        let account = party_account(sales, idx);
        let bank = self.party_bank(sales, idx);
        let h = self.header(ty, date, account, Some(bank));
        let split = self.split(h, ty, date, BANKS[bank as usize].code, TAX_T9, due);
        self.allocate(split, doc, due, date);
        let credits = &mut self.side_mut(sales).credits[idx];
        credits.remove(pos);
    }

    fn bank_entry(&mut self, ty: TxType, date: i32) {
        use TxType::*;
        let bank = match ty {
            BP | BR => self.bank(),
            CP | CR => 2,
            _ => 3,
        };
        let receipt = matches!(ty, BR | CR | VR);
        let h = self.header(ty, date, Account::Bank(bank), Some(bank));
        let lines = [1, 1, 1, 2, 3][self.rng.random_range(0..5)];
        for _ in 0..lines {
            let nominal = if receipt {
                SALES_NOMINALS[3]
            } else {
                EXPENSE_NOMINALS[self.rng.random_range(0..EXPENSE_NOMINALS.len())]
            };
            let tax = self.tax_code();
            let net = self.amount(100, 200_000);
            self.split(h, ty, date, nominal, tax, net);
        }
        self.maybe_delete(h);
    }

    /// A journal: JD and JC lines under one header, balanced.
    fn journal(&mut self, date: i32) {
        let h = self.header(TxType::JD, date, Account::None, None);
        let debits = self.rng.random_range(1..4);
        let mut total = 0;
        for _ in 0..debits {
            let net = self.amount(100, 500_000);
            total += net;
            let n = JOURNAL_NOMINALS[self.rng.random_range(0..JOURNAL_NOMINALS.len())];
            self.split(h, TxType::JD, date, n, TAX_T9, net);
        }
        let credits = self.rng.random_range(1..3);
        let mut left = total;
        for k in 0..credits {
            let net = if k + 1 == credits {
                left
            } else {
                self.rng.random_range(1..=left.max(2) - 1).min(left)
            };
            if net <= 0 {
                continue;
            }
            left -= net;
            let n = JOURNAL_NOMINALS[self.rng.random_range(0..JOURNAL_NOMINALS.len())];
            self.split(h, TxType::JC, date, n, TAX_T9, net);
        }
        self.maybe_delete(h);
    }

    /// Sage's Year End for the financial year ending on `end`: one journal dated `end` that
    /// moves every profit and loss nominal's balance (the live postings dated up to `end`)
    /// to retained earnings, JC for a debit balance, JD for a credit one.
    /// Returns whether it posted anything (nothing when every P&L balance is zero).
    fn year_end(&mut self, end: i32) -> bool {
        let headers = &self.ledger.headers;
        let balances = nominal_totals(
            self.ledger
                .splits
                .iter()
                .map(|s| (s, &headers[s.header as usize - 1]))
                .filter(|(s, h)| s.date <= end && !h.deleted)
                .map(|(s, h)| (s, h.bank_code())),
            company::is_profit_and_loss,
        );
        let total: i64 = balances.values().sum();
        let lines: Vec<(TxType, &'static str, i64)> = balances
            .into_iter()
            .map(|(n, b)| (if b > 0 { TxType::JC } else { TxType::JD }, n, b.abs()))
            .chain((total != 0).then(|| {
                let ty = if total > 0 { TxType::JD } else { TxType::JC };
                (ty, company::RETAINED_EARNINGS, total.abs())
            }))
            .collect();
        let Some((first, _, _)) = lines.first() else {
            return false;
        };
        let h = self.header(*first, end, Account::None, None);
        self.ledger.headers[h as usize - 1].year_end = true;
        for (ty, nominal, amount) in lines {
            self.split(h, ty, end, nominal, TAX_T9, amount);
        }
        true
    }

    /// A bank transfer: JC out of one bank, JD into another, one header.
    fn transfer(&mut self, date: i32) {
        let from = self.rng.random_range(0..2u8);
        let to = 1 - from;
        let h = self.header(TxType::JC, date, Account::None, Some(from));
        let amount = self.amount(1_000, 2_000_000);
        self.split(
            h,
            TxType::JC,
            date,
            BANKS[from as usize].code,
            TAX_T9,
            amount,
        );
        self.split(h, TxType::JD, date, BANKS[to as usize].code, TAX_T9, amount);
    }
}

/// Sage's Clear Audit Trail up to (not including) day `before`: a transaction whose splits are
/// all dated before it and settled (paid in full, or fully allocated), allocated only on
/// earlier days and only with transactions that go too, is archived (moved to the
/// AUDIT_HISTORY tables). Bank entries and journals before the date go as well; deleted
/// transactions and the Year End journal stay. One opening-balance journal dated the day
/// before posts, per nominal, what the archived transactions posted, so every balance is
/// unchanged. Returns how many transactions were archived.
pub fn clear_audit_trail(ledger: &mut Ledger, before: i32) -> usize {
    let header_of =
        |ledger: &Ledger, split: u32| ledger.splits[split as usize - 1].header as usize - 1;
    let mut eligible: Vec<bool> = ledger
        .headers
        .iter()
        .map(|h| {
            let splits = ledger.splits_of(h);
            !h.deleted
                && !h.year_end
                && !splits.is_empty()
                && splits
                    .iter()
                    .all(|s| s.date < before && (h.ty.ledger_sign() == 0 || s.paid == s.gross()))
        })
        .collect();
    for u in &ledger.usages {
        if u.date >= before {
            eligible[header_of(ledger, u.split)] = false;
            eligible[header_of(ledger, u.crossref)] = false;
        }
    }
    // What is allocated with a transaction that stays, stays: until nothing changes.
    loop {
        let mut changed = false;
        for u in &ledger.usages {
            let (a, b) = (header_of(ledger, u.split), header_of(ledger, u.crossref));
            if eligible[a] != eligible[b] {
                eligible[a] = false;
                eligible[b] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let balances = nominal_totals(
        ledger
            .headers
            .iter()
            .zip(&eligible)
            .filter(|(_, e)| **e)
            .flat_map(|(h, _)| ledger.splits_of(h).iter().map(|s| (s, h.bank_code()))),
        |_| true,
    );
    let mut archived = 0;
    for (h, _) in ledger
        .headers
        .iter_mut()
        .zip(&eligible)
        .filter(|(_, e)| **e)
    {
        h.archived = true;
        archived += 1;
    }
    if balances.is_empty() {
        return archived;
    }
    let date = before - 1;
    let header = ledger.headers.len() as u32 + 1;
    let first_split = ledger.splits.len() as u32 + 1;
    for (nominal, b) in &balances {
        ledger.splits.push(Split {
            header,
            ty: if *b > 0 { TxType::JD } else { TxType::JC },
            date,
            nominal,
            tax_code: TAX_T9,
            dept: 0,
            project: 0,
            net: b.abs(),
            tax: 0,
            paid: 0,
            foreign_net: b.abs(),
            foreign_tax: 0,
            foreign_paid: 0,
        });
    }
    ledger.headers.push(Header {
        ty: ledger.splits[first_split as usize - 1].ty,
        date,
        account: Account::None,
        bank: None,
        inv_ref: 0,
        first_split,
        split_count: balances.len() as u32,
        currency: 0,
        rate_e4: 10_000,
        exchange_adjustment: false,
        deleted: false,
        amended: date,
        due_days: 0,
        year_end: false,
        archived: false,
        opening_balance: true,
    });
    archived
}

/// Picks an index in `0..n`, favouring low indices (a few big customers, a long tail).
fn skewed(rng: &mut ChaCha8Rng, n: usize) -> u32 {
    let u: f64 = rng.random();
    ((u * u * n as f64) as usize).min(n - 1) as u32
}

/// Integer division rounding half away from zero.
pub fn round_div(n: i64, d: i64) -> i64 {
    let q = n / d;
    let r = n % d;
    if 2 * r.abs() >= d.abs() {
        q + n.signum() * d.signum()
    } else {
        q
    }
}

/// The balanced AUDIT_JOURNAL lines of one split: (nominal code, signed pence, tax code).
/// Debits are positive, credits negative; `bank` is the header's bank nominal. The lines of
/// every split sum to zero except for journals, whose JD and JC splits balance across the
/// header. Unused slots have an empty nominal and zero amount.
pub fn journal_lines(split: &Split, bank: &'static str) -> [(&'static str, i64); 3] {
    use TxType::*;
    let (net, tax, gross) = (split.net, split.tax, split.gross());
    match split.ty {
        SI => [(split.nominal, -net), (VAT_SALES, -tax), (DEBTORS, gross)],
        SC => [(split.nominal, net), (VAT_SALES, tax), (DEBTORS, -gross)],
        SR | SA => [(split.nominal, gross), ("", 0), (DEBTORS, -gross)],
        SD => [(split.nominal, net), (VAT_SALES, tax), (DEBTORS, -gross)],
        SP => [(DEBTORS, gross), ("", 0), (split.nominal, -gross)],
        PI => [
            (split.nominal, net),
            (VAT_PURCHASES, tax),
            (CREDITORS, -gross),
        ],
        PC => [
            (split.nominal, -net),
            (VAT_PURCHASES, -tax),
            (CREDITORS, gross),
        ],
        PP | PA => [(CREDITORS, gross), ("", 0), (split.nominal, -gross)],
        PD => [
            (CREDITORS, gross),
            (VAT_PURCHASES, -tax),
            (split.nominal, -net),
        ],
        PR => [(split.nominal, gross), ("", 0), (CREDITORS, -gross)],
        BP | CP | VP => [(split.nominal, net), (VAT_PURCHASES, tax), (bank, -gross)],
        BR | CR | VR => [(split.nominal, -net), (VAT_SALES, -tax), (bank, gross)],
        JD => [(split.nominal, net), ("", 0), ("", 0)],
        JC => [(split.nominal, -net), ("", 0), ("", 0)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_div_rounds_half_away_from_zero() {
        assert_eq!(round_div(25, 10), 3);
        assert_eq!(round_div(-25, 10), -3);
        assert_eq!(round_div(24, 10), 2);
        assert_eq!(round_div(1999 * 2000, 10_000), 400);
    }
}
