//! `connector`: the desktop connector's command line. Parses, sets up logging, dispatches.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use connector::extract::{self, ExtractError, ExtractOptions};
use connector::model::DataModel;
use connector::publish::{self, Store, StoreConfig};
use connector::rules::{self, Rules, Workspace};
use connector::schema::SourceSchema;
use connector::source::{Secret, SourceConfig};
use connector::sync::{self, SyncOptions};

/// Exit status of a sync whose snapshot was made but waits in the outbox (EX_TEMPFAIL).
const EXIT_WAITING: u8 = 75;

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
        #[command(flatten)]
        login: SageLogin,
        /// Source schema file (default: the embedded schemas/sage50-source.toml).
        #[arg(long)]
        schema: Option<PathBuf>,
        /// After each table, ask the source for COUNT(*) and fail if it differs.
        #[arg(long)]
        verify_counts: bool,
    },
    /// The whole pipeline for one company: extract, normalise, snapshot, publish. Prints rows
    /// per data type, bytes uploaded and seconds per stage. Exits 75 when the snapshot was made
    /// but the store could not be reached (it waits in the outbox for the next sync).
    Sync {
        /// ODBC connection string, e.g. "Driver={Sage Line 50 v32};DIR=C:\...\ACCDATA".
        #[arg(long)]
        odbc: String,
        /// Our id of the company: its folder in the state folder and its prefix in the store.
        #[arg(long)]
        company: String,
        #[command(flatten)]
        store: StoreArgs,
        /// Where the connector keeps its files (default: the platform's per-user state folder).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        login: SageLogin,
        /// Unpublished snapshots kept in the outbox at most.
        #[arg(long, default_value_t = sync::OUTBOX_LIMIT)]
        outbox_limit: usize,
        /// Also write the summary as JSON to this file (on failure: the reason code and the
        /// message).
        #[arg(long)]
        json: Option<PathBuf>,
        /// Publish through this connector-server (base URL) with the company's device
        /// credential, instead of writing to a store: the credential comes from the secret
        /// store where `connector run` keeps it, or from --credential-env.
        #[arg(long, conflicts_with = "store")]
        server: Option<String>,
        /// Name of the environment variable holding the device credential for --server.
        #[arg(long, value_name = "VAR", requires = "server")]
        credential_env: Option<String>,
        /// Sage's COMPANY.COMPANYID of the company set up: refuse a folder that now holds
        /// another company.
        #[arg(long)]
        sage_company_id: Option<String>,
    },
    /// Connect to a Sage company and print what Sage says (company, last transaction date) as
    /// JSON: the settings page's Test.
    Probe {
        /// ODBC connection string.
        #[arg(long)]
        odbc: String,
        #[command(flatten)]
        login: SageLogin,
    },
    /// The agent: links companies (loopback listener and settings page), checks in with the
    /// server, and syncs each company on its schedule, until stopped.
    Run {
        /// The connector-server's base URL.
        #[arg(long, env = "CONNECTOR_SERVER")]
        server: String,
        /// Where the connector keeps its files (default: the platform's per-user state folder).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The loopback port of the link hand-over and the settings page (0: any free port).
        #[arg(long, default_value_t = connector::protocol::DEFAULT_LOOPBACK_PORT)]
        port: u16,
        /// ODBC connection string of a Sage company; {VERSION}, {ACCDATA} and {DATA_DIR} are
        /// filled in from the company chosen.
        #[arg(long, default_value = connector::agent::discovery::DEFAULT_TEMPLATE)]
        odbc_template: String,
        /// The folder holding Sage's settings folders (2026, V33, …) with their COMPANY files.
        #[arg(long, env = connector::agent::discovery::ROOT_ENV)]
        sage_root: Option<PathBuf>,
        /// Longest check-in long poll, in seconds.
        #[arg(long, default_value_t = 50)]
        checkin_wait_secs: u64,
        /// Seconds a sync keeps retrying an unreachable server before its snapshot waits in
        /// the outbox.
        #[arg(long, default_value_t = 60)]
        publish_timeout_secs: u64,
    },
    /// Print the address that opens the running agent's settings page.
    Settings {
        /// The agent's state folder.
        #[arg(long)]
        state_dir: Option<PathBuf>,
    },
    /// "My data isn't updating": checks, in order, the agent, start at logon, the server, and
    /// per company the credential, the Sage data folder (and where it moved), the ODBC driver,
    /// the Sage login, disk space and the last sync; says what to do. Exits 1 on a problem.
    Doctor {
        /// The agent's state folder.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Only this company.
        #[arg(long)]
        company: Option<String>,
        /// The server (default: the running agent's).
        #[arg(long)]
        server: Option<String>,
        /// Where Sage's settings folders are (default: the agent's).
        #[arg(long)]
        sage_root: Option<PathBuf>,
        /// The ODBC template for a found company (default: the agent's).
        #[arg(long)]
        odbc_template: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Published snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
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

/// Sage credentials.
#[derive(clap::Args)]
struct SageLogin {
    /// Sage user name (added to the connection string as UID).
    #[arg(long)]
    user: Option<String>,
    /// Name of the environment variable holding the Sage password (never pass it as a flag).
    #[arg(long, value_name = "VAR")]
    password_env: Option<String>,
}

impl SageLogin {
    fn source(self, odbc: &str) -> Result<SourceConfig, ExtractError> {
        let password = match self.password_env {
            Some(var) => Some(Secret::new(
                std::env::var(&var).map_err(|_| ExtractError::PasswordEnvMissing { var })?,
            )),
            None => None,
        };
        Ok(SourceConfig::new(odbc, self.user, password))
    }
}

/// Where snapshots are published.
#[derive(clap::Args)]
struct StoreArgs {
    /// Store URL: file:///folder, or s3://bucket/prefix with the usual AWS_* environment
    /// variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT).
    /// Default for sync: the folder "store" in the state folder.
    #[arg(long)]
    store: Option<String>,
    /// Seconds to keep retrying a store that does not answer before giving up for this time.
    #[arg(long, default_value_t = 60)]
    store_timeout: u64,
    /// Upload files of at least this many bytes in parts (default 16 MiB).
    #[arg(long, hide = true)]
    multipart_above: Option<u64>,
}

impl StoreArgs {
    fn config(&self, url: String) -> StoreConfig {
        let mut config = StoreConfig::new(url);
        config.retry_timeout = std::time::Duration::from_secs(self.store_timeout);
        if let Some(bytes) = self.multipart_above {
            config.multipart_threshold = bytes;
        }
        config
    }
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Re-read a published snapshot (the latest, or --snapshot ID) and check every file's
    /// hash, size and row count against its manifest. Exits 0 only when it is whole.
    Verify {
        /// Store URL (file:///folder or s3://bucket/prefix).
        store: String,
        /// Our company id.
        company: String,
        /// A snapshot id instead of the latest.
        #[arg(long)]
        snapshot: Option<String>,
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
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = %e, "The command failed.");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Extract {
            odbc,
            staging,
            login,
            schema,
            verify_counts,
        } => {
            let source = login.source(&odbc)?;
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Sync {
            odbc,
            company,
            store,
            state_dir,
            login,
            outbox_limit,
            json,
            server,
            credential_env,
            sage_company_id,
        } => {
            let state_dir = state_dir_or_default(state_dir)?;
            let via_server = match server {
                Some(server) => {
                    let credential: publish::CredentialSource = match credential_env {
                        Some(var) => {
                            let value = std::env::var(&var).map_err(|_| {
                                anyhow::anyhow!("--credential-env names {var}, which is not set: export the device credential in it")
                            })?;
                            Box::new(move || Some(value.clone()))
                        }
                        None => {
                            // Read at every call: the agent may rotate it during the sync.
                            let secrets = connector::agent::secrets::open(&state_dir);
                            let name = connector::agent::config::device_secret(&company);
                            Box::new(move || secrets.get(&name).ok().flatten())
                        }
                    };
                    Some(publish::ServerPublisher::new(
                        &server,
                        &company,
                        credential,
                        std::time::Duration::from_secs(store.store_timeout),
                    ))
                }
                None => None,
            };
            let outcome = login
                .source(&odbc)
                .map_err(sync::SyncError::from)
                .and_then(|source| {
                    sync::sync(&SyncOptions {
                        source: &source,
                        company_id: &company,
                        store: Some(store.config(store.store.clone().unwrap_or_else(|| {
                            publish::file_url(&connector::state::default_store_dir(&state_dir))
                        }))),
                        state_dir: &state_dir,
                        outbox_limit,
                        progress: std::io::stderr().is_terminal(),
                        via_server,
                        expect_sage_company: sage_company_id.as_deref(),
                    })
                });
            let report = match outcome {
                Ok(report) => report,
                Err(e) => {
                    if let Some(path) = &json {
                        let failure = serde_json::json!({
                            "ok": false, "reason": e.reason(), "message": e.to_string(),
                        });
                        let _ = std::fs::write(path, serde_json::to_vec_pretty(&failure)?);
                    }
                    return Err(e.into());
                }
            };
            print!("{}", report.summary());
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .map_err(|e| anyhow::anyhow!("cannot write --json {}: {e}", path.display()))?;
            }
            Ok(match &report.waiting_because {
                Some(why) => {
                    eprintln!("not published yet: {why}");
                    ExitCode::from(EXIT_WAITING)
                }
                None => ExitCode::SUCCESS,
            })
        }
        Command::Snapshot {
            command:
                SnapshotCommand::Verify {
                    store,
                    company,
                    snapshot,
                },
        } => {
            let store = Store::open(&StoreConfig::new(store))?;
            let verified = publish::runtime().block_on(publish::verify(
                &store,
                &company,
                snapshot.as_deref(),
            ))?;
            println!(
                "snapshot {} of company {} in {}: {} data file(s), {} bytes read",
                verified.snapshot_id, company, store.url, verified.files, verified.bytes
            );
            if let Some(m) = &verified.manifest {
                for (name, entry) in &m.data_types {
                    println!(
                        "  {name:<18} {:>10} rows {:>12} bytes  {} file(s)",
                        entry.rows,
                        entry.bytes,
                        entry.files.len()
                    );
                }
            }
            for problem in &verified.problems {
                println!("PROBLEM {problem}");
            }
            if verified.is_whole() {
                println!("whole: every file is present with its size, SHA-256 and row count");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("NOT WHOLE: {} problem(s)", verified.problems.len());
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Rules { command } => run_rules(command).map(|()| ExitCode::SUCCESS),
        Command::Probe { odbc, login } => {
            let answer = match login
                .source(&odbc)
                .and_then(|source| extract::probe(&source))
            {
                Ok(probe) => serde_json::json!({"ok": true, "probe": probe}),
                Err(e) => serde_json::json!({
                    "ok": false, "reason": e.reason(), "message": e.to_string(),
                    "advice": e.reason().advice(),
                }),
            };
            println!("{answer}");
            Ok(if answer["ok"] == serde_json::json!(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Run {
            server,
            state_dir,
            port,
            odbc_template,
            sage_root,
            checkin_wait_secs,
            publish_timeout_secs,
        } => {
            let state_dir = state_dir_or_default(state_dir)?;
            let agent = connector::agent::Agent::new(connector::agent::AgentOptions {
                state_dir,
                server,
                port,
                odbc_template,
                sage_root: sage_root.unwrap_or_else(connector::agent::discovery::default_root),
                checkin_wait: std::time::Duration::from_secs(checkin_wait_secs.clamp(1, 60)),
                exe: std::env::current_exe()?,
                publish_timeout_secs,
            })?;
            publish::runtime().block_on(connector::agent::run(agent))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Settings { state_dir } => {
            let state_dir = state_dir_or_default(state_dir)?;
            let path = connector::agent::config::agent_dir(&state_dir).join("settings-url");
            let url = std::fs::read_to_string(&path).map_err(|e| {
                anyhow::anyhow!(
                    "the connector is not running for {} ({e}): start it with `connector run`",
                    state_dir.display()
                )
            })?;
            println!("{}", url.trim());
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor {
            state_dir,
            company,
            server,
            sage_root,
            odbc_template,
            json,
        } => {
            let state_dir = state_dir_or_default(state_dir)?;
            let secrets = connector::agent::secrets::open(&state_dir);
            let options = connector::agent::doctor::DoctorOptions {
                state_dir,
                server,
                sage_root,
                odbc_template,
                company,
                exe: std::env::current_exe()?,
            };
            let report = connector::agent::doctor::run(&options, secrets.as_ref());
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Drain { odbc } => {
            let source = SourceConfig::new(&odbc, None, None);
            let started = std::time::Instant::now();
            let rows = extract::drain(&source, &SourceSchema::embedded())?;
            println!(
                "{rows} rows drained in {:.3}s",
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--state-dir`, else the platform's per-user state folder.
fn state_dir_or_default(dir: Option<PathBuf>) -> Result<PathBuf, sync::SyncError> {
    dir.or_else(connector::state::state_dir_from_env)
        .ok_or(sync::SyncError::NoStateDir)
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
