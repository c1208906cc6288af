//! `sage50-sim`: writes a Sage-50-shaped company data directory and prints the ODBC
//! connection string that reaches it. See `connector::sim`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Write a simulated Sage 50 company (DIR/ACCDATA/SAGE50.DB, read through the SQLite3 ODBC
/// driver) and print its ODBC connection string on standard output.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Company directory to write; ACCDATA/ is created inside it.
    #[arg(long)]
    out: PathBuf,
    /// Seed: the same seed and size always give the same company.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of transactions (AUDIT_HEADER rows), 100 to 5,000,000 in normal use.
    #[arg(long, default_value_t = 2_000)]
    transactions: u64,
    /// Stop once this many AUDIT_SPLIT rows exist (sizes benchmark companies by splits).
    #[arg(long)]
    max_splits: Option<u64>,
    /// Per mille (0-1000) of unpaid foreign-currency document lines whose base amounts are
    /// stored unrounded, as Sage derives them from the foreign amounts (e.g. 12.3457).
    #[arg(long = "sub-penny", default_value_t = connector::sim::DEFAULT_SUB_PENNY_PERMILLE)]
    sub_penny_permille: u16,
    /// Do not run Sage's Year End at the end of the prior financial year (by default a
    /// journal dated that day moves every P&L nominal to retained earnings, 3200).
    #[arg(long)]
    no_year_end: bool,
    /// Run Sage's Clear Audit Trail for transactions dated before this date (YYYY-MM-DD):
    /// settled ones move to the AUDIT_HISTORY tables and an opening-balance journal (O/Bal)
    /// dated the day before keeps every balance. The company spans 2024-04-01 to 2026-03-31.
    #[arg(long, value_name = "DATE")]
    clear_audit_trail_before: Option<chrono::NaiveDate>,
    /// Keep one exchange rate per currency (by default rates move every 30 days: foreign
    /// receipts and payments at a rate other than their invoice's post REVAL exchange
    /// differences to 7906, and the euro bank, 1250, is revalued every 30 days).
    #[arg(long)]
    fixed_exchange_rates: bool,
    /// Instead of generating, load this SQL script of INSERTs (e.g. fixtures/golden/company.sql).
    #[arg(long, conflicts_with_all = ["seed", "transactions", "max_splits", "sub_penny_permille", "no_year_end", "clear_audit_trail_before", "fixed_exchange_rates"])]
    script: Option<PathBuf>,
    /// Print rows per table on standard error.
    #[arg(long)]
    counts: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let result = match &args.script {
        Some(script) => connector::sim::from_script(&args.out, script),
        None => connector::sim::generate(
            &args.out,
            &connector::sim::SimOptions {
                seed: args.seed,
                transactions: args.transactions,
                max_splits: args.max_splits,
                sub_penny_permille: args.sub_penny_permille,
                year_end: !args.no_year_end,
                clear_audit_trail_before: args.clear_audit_trail_before,
                exchange_differences: !args.fixed_exchange_rates,
            },
        ),
    };
    match result {
        Ok(summary) => {
            if args.counts {
                for (table, rows) in &summary.counts {
                    eprintln!("{table:<16} {rows:>10}");
                }
                eprintln!(
                    "written in {:.1}s: {}",
                    started.elapsed().as_secs_f64(),
                    summary.database.display()
                );
            }
            println!("{}", summary.connection_string);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sage50-sim: {e}");
            ExitCode::FAILURE
        }
    }
}
