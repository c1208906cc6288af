//! `connector`: the desktop connector's command line. Parses, sets up logging, dispatches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use connector::extract::{self, ExtractError, ExtractOptions};
use connector::model::DataModel;
use connector::rules::{self, Rules, Workspace};
use connector::schema::SourceSchema;
use connector::source::{Secret, SourceConfig};

/// Gets data out of Sage 50 Accounts into a local staging store, and on to the cloud.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pull every Sage table the connector needs through ODBC into a DuckDB staging store.
    Extract {
        /// ODBC connection string, e.g. "Driver={Sage Line 50 v32};DIR=C:\...\ACCDATA".
        #[arg(long)]
        odbc: String,
        /// The DuckDB staging file to (re)create; the old one stays until the new one is whole.
        #[arg(long)]
        staging: PathBuf,
        /// Sage user name (added to the connection string as UID).
        #[arg(long)]
        user: Option<String>,
        /// Name of the environment variable holding the Sage password (never pass it as a flag).
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// Source schema file (default: the embedded schemas/sage50-source.toml).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// After each table, ask the source for COUNT(*) and fail if it differs.
        #[arg(long)]
        verify_counts: bool,
    },
    /// Normalisation rules: run them over a staging store, or run their test cases.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Bulk-fetch every table and discard the rows: the driver's speed limit (benchmarks).
    #[command(hide = true)]
    Drain {
        /// ODBC connection string.
        #[arg(long)]
        odbc: String,
    },
}

/// Where the rules and the data model come from.
#[derive(clap::Args)]
struct RulesSource {
    /// Folder of rules (`*.sql`, checks in `checks/`); default: the copy built into the binary.
    #[arg(long)]
    rules_dir: Option<PathBuf>,
    /// Folder of data type schemas (`schemas/datatypes`); default: the built-in copy.
    #[arg(long)]
    schemas_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Run the rules and checks over an existing staging store, without extracting again;
    /// prints rows per data type and each check's result. Fails when a check fails.
    Run {
        /// The DuckDB staging store written by `connector extract` (only read).
        #[arg(long)]
        staging: PathBuf,
        #[command(flatten)]
        source: RulesSource,
        /// Keep the normalised tables in this DuckDB file (replaced only when every check
        /// passed); default: in memory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write the report (records, control totals, checks) as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run the rule test cases: small Sage inputs with their expected output tables.
    Test {
        /// Folder of `*.case` files.
        #[arg(long, default_value = "fixtures/rules")]
        cases: PathBuf,
        #[command(flatten)]
        source: RulesSource,
        /// Run only the cases whose name contains this.
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Rule test cases hold deliberately partial (or broken) companies: their check logs are
    // noise; the outcome of each case is printed.
    let quiet = matches!(
        cli.command,
        Command::Rules {
            command: RulesCommand::Test { .. }
        }
    );
    connector::telemetry::init(if quiet { "off" } else { "info" });
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "The command failed.");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Extract {
            odbc,
            staging,
            user,
            password_env,
            schema,
            verify_counts,
        } => {
            let password = match password_env {
                Some(var) => {
                    Some(Secret::new(std::env::var(&var).map_err(|_| {
                        ExtractError::PasswordEnvMissing { var: var.clone() }
                    })?))
                }
                None => None,
            };
            let source = SourceConfig::new(&odbc, user, password);
            let schema = match schema {
                Some(path) => SourceSchema::load(&path)?,
                None => SourceSchema::embedded(),
            };
            let report = extract::extract(&ExtractOptions {
                source: &source,
                staging: &staging,
                schema: &schema,
                verify_counts,
                progress: std::io::stderr().is_terminal(),
            })?;
            println!(
                "{:<16} {:>10} {:>9} {:>12}",
                "table", "rows", "seconds", "rows/s"
            );
            for t in &report.tables {
                if t.skipped {
                    println!("{:<16} {:>10} {:>9} {:>12}", t.name, "skipped", "-", "-");
                } else {
                    let rate = t.rows as f64 / t.seconds.max(1e-9);
                    println!(
                        "{:<16} {:>10} {:>9.3} {:>12.0}",
                        t.name, t.rows, t.seconds, rate
                    );
                }
            }
            println!(
                "{} rows in {:.2}s into {} (generation {})",
                report.total_rows(),
                report.seconds,
                staging.display(),
                report.generation
            );
            Ok(())
        }
        Command::Rules { command } => run_rules(command),
        Command::Drain { odbc } => {
            let source = SourceConfig::new(&odbc, None, None);
            let started = std::time::Instant::now();
            let rows = extract::drain(&source, &SourceSchema::embedded())?;
            println!(
                "{rows} rows drained in {:.3}s",
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
    }
}

fn run_rules(command: RulesCommand) -> anyhow::Result<()> {
    match command {
        RulesCommand::Run {
            staging,
            source,
            out,
            json,
        } => {
            let rules = Rules::from_option(source.rules_dir.as_deref())?;
            let model = DataModel::from_option(source.schemas_dir.as_deref())?;
            let ws = Workspace::over_staging(&staging, out.as_deref(), &SourceSchema::embedded())?;
            let report = rules::normalise(&ws, &rules, &model)?;
            print!("{}", report.summary());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .map_err(|e| anyhow::anyhow!("cannot write --json {}: {e}", path.display()))?;
            }
            report.ensure_passed()?;
            if let Some(path) = ws.keep()? {
                println!("normalised tables kept in {}", path.display());
            }
            Ok(())
        }
        RulesCommand::Test {
            cases,
            source,
            filter,
        } => {
            let rules = Rules::from_option(source.rules_dir.as_deref())?;
            let model = DataModel::from_option(source.schemas_dir.as_deref())?;
            let outcomes = rules::run_cases(
                &cases,
                filter.as_deref(),
                &rules,
                &model,
                &SourceSchema::embedded(),
            )?;
            for outcome in &outcomes {
                print!("{outcome}");
            }
            let failed = outcomes.iter().filter(|o| !o.passed()).count();
            println!("{} case(s), {failed} failed", outcomes.len());
            anyhow::ensure!(failed == 0, "{failed} rule test case(s) failed");
            Ok(())
        }
    }
}
