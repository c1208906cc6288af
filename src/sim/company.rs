//! Master data of a simulated company: chart of accounts, banks, tax codes, currencies,
//! customers, suppliers, departments, projects and stock, all derived from the seed.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Default control accounts (Sage UK defaults).
pub const DEBTORS: &str = "1100";
/// Creditors control.
pub const CREDITORS: &str = "2100";
/// VAT on sales.
pub const VAT_SALES: &str = "2200";
/// VAT on purchases.
pub const VAT_PURCHASES: &str = "2201";
/// Discounts allowed (sales discounts).
pub const DISCOUNT_ALLOWED: &str = "4009";
/// Discounts taken (purchase discounts).
pub const DISCOUNT_TAKEN: &str = "5009";

/// One nominal account: code, name, Sage account type.
pub struct Nominal {
    /// Nominal code, kept as text (leading zeros matter).
    pub code: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Sage's ACCOUNT_TYPE (0 normal, 1 bank, 2 control).
    pub account_type: i16,
}

/// The standard UK chart of accounts the simulator posts to.
pub const NOMINALS: &[Nominal] = &[
    Nominal {
        code: "0010",
        name: "Freehold Property",
        account_type: 0,
    },
    Nominal {
        code: "0030",
        name: "Office Equipment",
        account_type: 0,
    },
    Nominal {
        code: "1001",
        name: "Stock",
        account_type: 0,
    },
    Nominal {
        code: "1100",
        name: "Debtors Control Account",
        account_type: 2,
    },
    Nominal {
        code: "1200",
        name: "Bank Current Account",
        account_type: 1,
    },
    Nominal {
        code: "1210",
        name: "Bank Deposit Account",
        account_type: 1,
    },
    Nominal {
        code: "1230",
        name: "Petty Cash",
        account_type: 1,
    },
    Nominal {
        code: "1240",
        name: "Company Credit Card",
        account_type: 1,
    },
    Nominal {
        code: "1250",
        name: "Euro Bank Account",
        account_type: 1,
    },
    Nominal {
        code: "2100",
        name: "Creditors Control Account",
        account_type: 2,
    },
    Nominal {
        code: "2200",
        name: "Sales Tax Control Account",
        account_type: 2,
    },
    Nominal {
        code: "2201",
        name: "Purchase Tax Control Account",
        account_type: 2,
    },
    Nominal {
        code: "2210",
        name: "P.A.Y.E.",
        account_type: 0,
    },
    Nominal {
        code: "3000",
        name: "Capital",
        account_type: 0,
    },
    Nominal {
        code: "3200",
        name: "Profit and Loss Account",
        account_type: 0,
    },
    Nominal {
        code: "4000",
        name: "Sales Type A",
        account_type: 0,
    },
    Nominal {
        code: "4001",
        name: "Sales Type B",
        account_type: 0,
    },
    Nominal {
        code: "4002",
        name: "Sales – Café Services",
        account_type: 0,
    },
    Nominal {
        code: "4009",
        name: "Discounts Allowed",
        account_type: 0,
    },
    Nominal {
        code: "4900",
        name: "Miscellaneous Income",
        account_type: 0,
    },
    Nominal {
        code: "5000",
        name: "Materials Purchased",
        account_type: 0,
    },
    Nominal {
        code: "5001",
        name: "Materials Imported",
        account_type: 0,
    },
    Nominal {
        code: "5009",
        name: "Discounts Taken",
        account_type: 0,
    },
    Nominal {
        code: "7000",
        name: "Gross Wages",
        account_type: 0,
    },
    Nominal {
        code: "7100",
        name: "Rent",
        account_type: 0,
    },
    Nominal {
        code: "7200",
        name: "Electricity",
        account_type: 0,
    },
    Nominal {
        code: "7500",
        name: "Office Stationery",
        account_type: 0,
    },
    Nominal {
        code: "7502",
        name: "Telephone",
        account_type: 0,
    },
    Nominal {
        code: "7900",
        name: "Bank Charges and Interest",
        account_type: 0,
    },
    Nominal {
        code: "7906",
        name: "Exchange Rate Variance",
        account_type: 0,
    },
    Nominal {
        code: "8200",
        name: "Donations",
        account_type: 0,
    },
    Nominal {
        code: "9998",
        name: "Suspense Account",
        account_type: 0,
    },
];

/// Nominals that sales splits post to.
pub const SALES_NOMINALS: &[&str] = &["4000", "4001", "4002", "4900"];
/// Nominals that purchase and bank-payment splits post to.
pub const EXPENSE_NOMINALS: &[&str] = &[
    "5000", "5001", "7100", "7200", "7500", "7502", "7900", "0030",
];
/// Retained earnings (Sage's "Profit and Loss Account"), where Year End moves the P&L.
pub const RETAINED_EARNINGS: &str = "3200";

/// Whether a nominal code is a profit and loss account in Sage's default UK chart (4000 to
/// 9997: 9998 Suspense and 9999 Mispostings are balance-sheet accounts).
pub fn is_profit_and_loss(code: &str) -> bool {
    code.parse::<u32>().is_ok_and(|n| (4000..9998).contains(&n))
}

/// Sage's default UK chart of accounts: (category number, heading, lowest code, highest code),
/// a row per range; Suspense and Mispostings (9998, 9999) sit with the current liabilities.
pub const CHART_CATEGORIES: &[(i16, &str, &str, &str)] = &[
    (1, "Fixed Assets", "0010", "0999"),
    (2, "Current Assets", "1000", "1999"),
    (3, "Current Liabilities", "2000", "2299"),
    (3, "Current Liabilities", "9998", "9999"),
    (4, "Long Term Liabilities", "2300", "2999"),
    (5, "Capital & Reserves", "3000", "3999"),
    (6, "Sales", "4000", "4999"),
    (7, "Purchases", "5000", "5999"),
    (8, "Direct Expenses", "6000", "6999"),
    (9, "Overheads", "7000", "9997"),
];

/// Nominals that journals post to.
pub const JOURNAL_NOMINALS: &[&str] = &[
    "0030", "1001", "2210", "3000", "7000", "7100", "7900", "8200", "9998",
];

/// One bank account; its code is its nominal code.
pub struct Bank {
    /// Nominal code (= BANK.ACCOUNT_REF).
    pub code: &'static str,
    /// Display name.
    pub name: &'static str,
    /// Sage bank TYPE: 0 cheque, 1 cash, 2 credit card.
    pub bank_type: i16,
    /// Index into [`CURRENCIES`]: the account is kept in that currency.
    pub currency: u8,
}

/// The company's bank accounts.
pub const BANKS: &[Bank] = &[
    Bank {
        code: "1200",
        name: "Bank Current Account",
        bank_type: 0,
        currency: 0,
    },
    Bank {
        code: "1210",
        name: "Bank Deposit Account",
        bank_type: 0,
        currency: 0,
    },
    Bank {
        code: "1230",
        name: "Petty Cash",
        bank_type: 1,
        currency: 0,
    },
    Bank {
        code: "1240",
        name: "Company Credit Card",
        bank_type: 2,
        currency: 0,
    },
    Bank {
        code: "1250",
        name: "Euro Bank Account",
        bank_type: 0,
        currency: 1,
    },
];

/// The euro bank account, as an index into [`BANKS`]: euro customers and suppliers mostly
/// pay and are paid through it.
pub const EURO_BANK: u8 = 4;

/// Exchange Rate Variance: where Sage posts exchange differences and revaluations.
pub const EXCHANGE_DIFFERENCE: &str = "7906";

/// One VAT code.
pub struct TaxCode {
    /// Code, T0–T99.
    pub code: &'static str,
    /// Sage's numeric id.
    pub id: i16,
    /// Description.
    pub description: &'static str,
    /// Rate in basis points (2000 = 20%).
    pub rate_bp: i64,
}

/// VAT codes (index 1 = standard rate, the common case).
pub const TAX_CODES: &[TaxCode] = &[
    TaxCode {
        code: "T0",
        id: 0,
        description: "Zero rated",
        rate_bp: 0,
    },
    TaxCode {
        code: "T1",
        id: 1,
        description: "Standard rate",
        rate_bp: 2000,
    },
    TaxCode {
        code: "T2",
        id: 2,
        description: "Exempt",
        rate_bp: 0,
    },
    TaxCode {
        code: "T5",
        id: 5,
        description: "Lower rate",
        rate_bp: 500,
    },
    TaxCode {
        code: "T9",
        id: 9,
        description: "Transactions not involving VAT",
        rate_bp: 0,
    },
];
/// Index of T9 in [`TAX_CODES`].
pub const TAX_T9: u8 = 4;

/// One currency: Sage numbers them, 1 being the base currency.
pub struct Currency {
    /// Sage's currency number.
    pub number: i16,
    /// ISO code.
    pub code: &'static str,
    /// Name.
    pub name: &'static str,
    /// Symbol (non-ASCII on purpose).
    pub symbol: &'static str,
    /// Units of this currency per 1 GBP, in 1/10000.
    pub rate_e4: i64,
}

/// Currencies (index 0 is the base currency).
pub const CURRENCIES: &[Currency] = &[
    Currency {
        number: 1,
        code: "GBP",
        name: "Pound Sterling",
        symbol: "£",
        rate_e4: 10000,
    },
    Currency {
        number: 2,
        code: "EUR",
        name: "Euro",
        symbol: "€",
        rate_e4: 11637,
    },
    Currency {
        number: 3,
        code: "USD",
        name: "US Dollar",
        symbol: "$",
        rate_e4: 12710,
    },
];

/// Units of `currency` per 1 GBP on day `date`, in 1/10000: the currency's rate moved by up
/// to 3% either way, a new rate each 30 days (the base currency is always 10000).
pub fn rate_on(currency: u8, date: i32) -> i64 {
    let base = CURRENCIES[currency as usize].rate_e4;
    if currency == 0 {
        return base;
    }
    let period = date.div_euclid(30) as i64 + currency as i64 * 7;
    let drift = (period * 37).rem_euclid(61) - 30;
    base * (1000 + drift) / 1000
}

/// Departments (number, name).
pub const DEPARTMENTS: &[(i16, &str)] = &[
    (0, "Default"),
    (1, "Sales"),
    (2, "Operations"),
    (3, "Café & Bar"),
    (4, "Administración"),
];

/// A customer or supplier.
pub struct Party {
    /// Sage account reference (at most 8 characters, upper case).
    pub account_ref: String,
    /// Name, sometimes non-ASCII.
    pub name: String,
    /// Index into [`CURRENCIES`].
    pub currency: u8,
    /// Payment terms in days.
    pub due_days: i16,
    /// Credit limit in pence.
    pub credit_limit: i64,
    /// Day (from the epoch of the simulation) the record was created.
    pub created: i32,
    /// Contact person.
    pub contact: String,
    /// E-mail, empty string when unknown (as Sage stores it).
    pub email: String,
    /// VAT number, empty string when unknown.
    pub vat: String,
    /// On hold flag.
    pub on_hold: bool,
    /// Inactive flag.
    pub inactive: bool,
}

const NAME_STEMS: &[&str] = &[
    "Harbour",
    "Crane",
    "Café Olé",
    "Muñoz",
    "Zoë's",
    "Brontë",
    "Northern",
    "Fjörd",
    "Élan",
    "Ashworth",
    "Blackthorn",
    "Castleford",
    "Dunmore",
    "Evergreen",
    "Foxley",
    "Glenbrook",
    "Hartley",
    "Ironbridge",
    "Juniper",
    "Kingsley",
    "Lochside",
    "Millbrook",
    "Newhaven",
    "Oakridge",
    "Pennine",
    "Queensway",
    "Riverside",
    "Saltaire",
    "Thistle",
    "Upland",
    "Valley",
    "Westgate",
    "Yardley",
    "Señor Peña",
    "Crème",
    "Ångström",
    "Łódź",
    "O'Brien",
];
const NAME_SUFFIXES: &[&str] = &[
    "Ltd",
    "Trading Ltd",
    "& Sons",
    "plc",
    "Holdings",
    "S.L.",
    "GmbH",
    "Partners",
    "Supplies",
    "Bakery",
    "Engineering",
    "Consultancy",
    "Florists",
    "Motors",
];
const FIRST_NAMES: &[&str] = &[
    "Anne", "José", "Chloë", "Siân", "Oliver", "Amélie", "Raj", "Zofia", "Tom", "Noël",
];
const LAST_NAMES: &[&str] = &[
    "Smith",
    "García",
    "Ó Briain",
    "Jones",
    "Müller",
    "Patel",
    "Kowalski",
    "Núñez",
];
const TOWNS: &[&str] = &[
    "Leeds",
    "Newcastle upon Tyne",
    "Cardiff",
    "Belfast",
    "Edinburgh",
    "Bristol",
    "Norwich",
];

/// Makes `count` parties with unique references, deterministic for the RNG state.
pub fn parties(
    rng: &mut ChaCha8Rng,
    count: usize,
    foreign_share: f64,
    span_days: i32,
) -> Vec<Party> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let stem = NAME_STEMS[rng.random_range(0..NAME_STEMS.len())];
        let suffix = NAME_SUFFIXES[rng.random_range(0..NAME_SUFFIXES.len())];
        let letters: String = stem
            .chars()
            .filter(char::is_ascii_alphabetic)
            .take(3)
            .collect::<String>()
            .to_ascii_uppercase();
        let account_ref = format!("{letters}{:0>5}", i + 1);
        let name = if i % 7 == 3 {
            format!("{stem} {suffix} {}", i + 1)
        } else {
            format!("{stem} {suffix}")
        };
        let currency = if rng.random_bool(foreign_share) {
            rng.random_range(1..3)
        } else {
            0
        };
        let first = FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())];
        let last = LAST_NAMES[rng.random_range(0..LAST_NAMES.len())];
        let email = if rng.random_bool(0.7) {
            format!("accounts@{}.example", letters.to_ascii_lowercase())
        } else {
            String::new()
        };
        let vat = if rng.random_bool(0.5) {
            format!("GB{:09}", rng.random_range(100_000_000..999_999_999u32))
        } else {
            String::new()
        };
        out.push(Party {
            account_ref,
            name,
            currency,
            due_days: [0, 14, 30, 30, 30, 60][rng.random_range(0..6)],
            credit_limit: rng.random_range(0..50) * 100_000,
            created: rng.random_range(-400..span_days / 4),
            contact: format!("{first} {last}"),
            email,
            vat,
            on_hold: rng.random_bool(0.03),
            inactive: rng.random_bool(0.02),
        });
    }
    out
}

/// A town name for address lines.
pub fn town(i: usize) -> &'static str {
    TOWNS[i % TOWNS.len()]
}

/// Stock items: (code, description, nominal, price in pence, tax code index).
pub fn stock(rng: &mut ChaCha8Rng, count: usize) -> Vec<(String, String, &'static str, i64, u8)> {
    const THINGS: &[&str] = &[
        "Widget",
        "Gâteau box",
        "Cable 3m",
        "Desk lamp",
        "Paper A4 (ream)",
        "Piñata",
        "Toner",
    ];
    (0..count)
        .map(|i| {
            let thing = THINGS[i % THINGS.len()];
            (
                format!("ST{:04}", i + 1),
                format!("{thing} – size {}", i / THINGS.len() + 1),
                SALES_NOMINALS[i % 2],
                rng.random_range(50..50_000),
                if i % 5 == 0 { 0 } else { 1 },
            )
        })
        .collect()
}
