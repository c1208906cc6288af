//! `connector-server`: serves published snapshots to API clients. Parses and dispatches.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use connector::publish::StoreConfig;
use connector::server::{self, ServeOptions};

/// jemalloc, unprefixed: it replaces malloc for the whole process, DuckDB's C++ included.
/// Under 64 connections of requests by id (the API benchmark's (b)), a profile put 27% of
/// the server's CPU in glibc's malloc and free (`_int_malloc`, `malloc_consolidate`, …);
/// with jemalloc the same load is served faster (README, API benchmark). Linux only: Windows and macOS keep their system allocators.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Serves the data connectors publish: API clients query it over HTTP.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the store for new snapshots and answer API requests until SIGINT/SIGTERM.
    Serve(Box<ServeArgs>),
    /// Print the OpenAPI document the server serves at /openapi.json (to generate a client
    /// without a running server).
    Openapi,
    /// Operator commands.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
}

/// The options of `serve`.
#[derive(clap::Args)]
struct ServeArgs {
    /// Store URL: file:///folder, or s3://bucket/prefix with the usual AWS_* variables.
    #[arg(long)]
    store: String,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Folder for the control database and the data cache.
    #[arg(long, default_value = "server-state")]
    state_dir: PathBuf,
    /// The control plane shared by several server nodes: postgres://user@host:port/database
    /// (the password from PGPASSWORD or the URL); default: SQLite in the state folder.
    #[arg(long, env = "CONNECTOR_CONTROL", hide_env_values = true)]
    control: Option<String>,
    /// Seconds between two looks at each company's latest snapshot.
    #[arg(long, default_value_t = 2.0)]
    poll_secs: f64,
    /// Requests per second allowed per API key (bursts of twice that).
    #[arg(long, default_value_t = 200.0)]
    rate_limit: f64,
    /// Let webhooks target loopback, private and link-local addresses (for tests only).
    #[arg(long)]
    allow_private_webhooks: bool,
    /// The DNS server (address:port) webhook hosts are looked up with; default: the
    /// system's DNS configuration.
    #[arg(long)]
    webhook_dns: Option<std::net::SocketAddr>,
    /// A proxy URL for webhook deliveries; none by default (HTTP_PROXY and HTTPS_PROXY are
    /// not used for webhooks).
    #[arg(long)]
    webhook_proxy: Option<String>,
    /// Days webhook deliveries (and their attempts) are kept once delivered or failed.
    #[arg(long, default_value_t = 30.0)]
    delivery_retention_days: f64,
    /// Multiply webhook retry delays by this (tests shorten a day of retries to seconds).
    #[arg(long, default_value_t = 1.0, hide = true)]
    webhook_backoff_scale: f64,
    /// Benchmark peer: answer data requests by reading the Parquet files with a fresh
    /// DuckDB per request (what `make bench-api` measures the server against).
    #[arg(long, hide = true)]
    naive: bool,
    /// The server's public base URL, as browsers and connectors reach it (link URLs and
    /// upload grants); default: http:// and the address listened on.
    #[arg(long)]
    public_url: Option<String>,
    /// The port of the connector's loopback listener that the link page sends browsers to.
    #[arg(long, default_value_t = connector::protocol::DEFAULT_LOOPBACK_PORT)]
    loopback_port: u16,
    /// Seconds a company's link stays usable.
    #[arg(long, default_value_t = 3600)]
    link_ttl_secs: i64,
    /// The most companies one API client may create.
    #[arg(long, default_value_t = server::api::DEFAULT_MAX_COMPANIES_PER_CLIENT)]
    max_companies_per_client: usize,
    /// Seconds a data request may take; past them its query is stopped (503).
    #[arg(long, default_value_t = server::limits::DEFAULT_TIMEOUT.as_secs_f64())]
    query_timeout_secs: f64,
    /// The most data queries running at once, in all; more wait for a place.
    #[arg(long, default_value_t = server::limits::DEFAULT_GLOBAL)]
    max_queries: usize,
    /// The most data queries one API key may have running at once; more are refused (429).
    #[arg(long, default_value_t = server::limits::DEFAULT_PER_KEY)]
    max_queries_per_key: usize,
    /// The memory one company's database may use (DuckDB's memory_limit: 2GB, 512MB, …);
    /// past it, a load or query spills to disk or fails, never the server.
    #[arg(long, default_value = "2GB")]
    company_memory_limit: String,
    /// Threads one company's database may run a load or a query on.
    #[arg(long, default_value_t = 2)]
    company_threads: usize,
    /// Days a deleted record stays served (isDeleted = true) after its deletion.
    #[arg(long, default_value_t = 90)]
    keep_deleted_days: u32,
    /// The most connections served at once; more wait until one closes.
    #[arg(long, default_value_t = server::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a connection may take to send a request's head (idle time before it
    /// included): slow or idle clients are cut off then.
    #[arg(long, default_value_t = server::listen::DEFAULT_HEADER_TIMEOUT.as_secs_f64())]
    header_timeout_secs: f64,
    /// Seconds a request may take to be answered, its body included (not the connector's
    /// uploads and check-ins): 408 after.
    #[arg(long, default_value_t = 30.0)]
    request_timeout_secs: f64,
    /// Requests per second allowed per IP address without a valid API key (bursts of
    /// twice that): link pages, sign-in codes, wrong keys.
    #[arg(long, default_value_t = 50.0)]
    unauthenticated_rate_limit: f64,
    /// The bearer token `/metrics` asks for; without one, `/metrics` is off.
    #[arg(long, env = "CONNECTOR_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// A connector that has not checked in for this many seconds is `not_running` in
    /// dataStatus, and its client is told (company.status_changed).
    #[arg(long, default_value_t = connector::server::devices::NOT_SEEN_SECS)]
    connector_silence_secs: i64,
    /// Seconds a node holds the recording of a snapshot it claimed (several nodes on one
    /// control plane): another node takes it over after this if the node died.
    #[arg(long, default_value_t = connector::server::control::INGEST_LEASE_MS / 1000)]
    ingest_lease_secs: i64,
    /// Seconds a node holds a webhook delivery it took (several nodes on one control
    /// plane): another node sends it after this if the node died. Longer than an attempt.
    #[arg(long, default_value_t = connector::server::control::DELIVERY_LEASE_MS / 1000)]
    delivery_lease_secs: i64,
    /// What all companies' data may hold in memory together (`4GB`, `512MB`, bytes); past
    /// it the least recently used companies are put out of memory and taken back from
    /// local disk on their next request. Default: no limit.
    #[arg(long, value_parser = server::parse_bytes)]
    memory_limit: Option<u64>,
    /// What the data types' rows kept in memory to answer pages and records from (without a
    /// query to DuckDB) may hold together (`1GB`, `256MB`, bytes; 0: every answer is read
    /// from DuckDB). Default: 1GB, or a sixteenth of --memory-limit, which it counts in.
    #[arg(long, value_parser = bytes_or_zero)]
    served_memory: Option<u64>,
    /// What the answers kept to send again to the same request may hold (`64MB`, bytes; 0:
    /// none kept, every request is answered anew). Default: 64MB, or a sixteenth of
    /// --memory-limit if that is less, which it counts in.
    #[arg(long, value_parser = bytes_or_zero)]
    answer_memory: Option<u64>,
    /// Rotate a device credential at check-in once it is this many seconds old.
    #[arg(long, default_value_t = 86_400)]
    rotate_after_secs: i64,
}

/// A size as `--memory-limit` reads it, or 0.
fn bytes_or_zero(text: &str) -> Result<u64, String> {
    match text.trim() {
        "0" => Ok(0),
        _ => server::parse_bytes(text),
    }
}

/// Where an operator command finds the control plane.
#[derive(clap::Args)]
struct ControlAt {
    /// Folder of the control database (SQLite) and of the secrets key file.
    #[arg(long, default_value = "server-state")]
    state_dir: PathBuf,
    /// The control plane when it is not the state folder's SQLite file:
    /// postgres://user@host:port/database (the password from PGPASSWORD or the URL).
    #[arg(long, env = "CONNECTOR_CONTROL", hide_env_values = true)]
    control: Option<String>,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an API client; prints its API key, once (only its hash is kept).
    CreateClient {
        /// The client's name.
        name: String,
        /// Where the control plane is.
        #[command(flatten)]
        at: ControlAt,
    },
    /// Revoke an API client: its key stops working at once, on a running server too.
    RevokeClient {
        /// The client id (`cl_…`, printed by create-client).
        client_id: String,
        /// Where the control plane is.
        #[command(flatten)]
        at: ControlAt,
    },
    /// Give an API client a new key (printed, once); the old one stops working at once.
    RotateKey {
        /// The client id (`cl_…`, printed by create-client).
        client_id: String,
        /// Where the control plane is.
        #[command(flatten)]
        at: ControlAt,
    },
    /// Seal webhook signing secrets under a new key: a new first line in the secrets key
    /// file (CONNECTOR_SECRETS_KEY_FILE, else secrets.key in the state folder), every secret
    /// sealed again under it. The old keys stay in the file; delete their lines afterwards.
    RotateSecretsKey {
        /// Where the control plane is.
        #[command(flatten)]
        at: ControlAt,
    },
    /// Revoke a connector (device): its credential stops working at once.
    RevokeDevice {
        /// The device id (`dev…`, from GET /companies/{id}/devices).
        device_id: String,
        /// Where the control plane is.
        #[command(flatten)]
        at: ControlAt,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    connector::telemetry::init("info");
    let result: anyhow::Result<()> = match cli.command {
        Command::Serve(args) => {
            let ServeArgs {
                store,
                listen,
                state_dir,
                control,
                poll_secs,
                rate_limit,
                allow_private_webhooks,
                webhook_dns,
                webhook_proxy,
                delivery_retention_days,
                webhook_backoff_scale,
                naive,
                public_url,
                loopback_port,
                link_ttl_secs,
                max_companies_per_client,
                query_timeout_secs,
                max_queries,
                max_queries_per_key,
                rotate_after_secs,
                connector_silence_secs,
                ingest_lease_secs,
                delivery_lease_secs,
                memory_limit,
                served_memory,
                answer_memory,
                company_memory_limit,
                company_threads,
                keep_deleted_days,
                max_connections,
                header_timeout_secs,
                request_timeout_secs,
                unauthenticated_rate_limit,
                metrics_token,
            } = *args;
            let options = ServeOptions {
                store: StoreConfig::new(store),
                listen,
                state_dir,
                control,
                poll: Duration::from_secs_f64(poll_secs.max(0.05)),
                rate_per_sec: rate_limit.max(0.1),
                allow_internal_webhooks: allow_private_webhooks,
                webhook_dns,
                webhook_proxy,
                webhook_backoff_scale: webhook_backoff_scale.max(0.0),
                delivery_retention: Duration::from_secs_f64(
                    delivery_retention_days.clamp(0.0, 36_500.0) * 86_400.0,
                ),
                naive,
                public_url,
                loopback_port,
                link_ttl_secs: link_ttl_secs.max(1),
                max_companies_per_client,
                query_timeout: Duration::from_secs_f64(query_timeout_secs.max(0.01)),
                max_queries,
                max_queries_per_key,
                company_limits: server::ingest::CompanyLimits {
                    memory: company_memory_limit,
                    threads: company_threads,
                    keep_deleted_days,
                },
                connections: server::listen::ConnectionLimits {
                    max_connections,
                    header_timeout: Duration::from_secs_f64(header_timeout_secs.max(0.1)),
                },
                request_timeout: Duration::from_secs_f64(request_timeout_secs.max(0.1)),
                unauthenticated_rate: unauthenticated_rate_limit.max(0.1),
                metrics_token,
                rotate_after_secs: rotate_after_secs.max(0),
                connector_silence_secs: connector_silence_secs.max(1),
                memory_limit,
                served_memory,
                answer_memory,
                leases: server::Leases {
                    ingest_ms: ingest_lease_secs.max(1) * 1000,
                    delivery_ms: delivery_lease_secs.max(1) * 1000,
                },
            };
            connector::publish::runtime()
                .block_on(server::serve(options))
                .map_err(Into::into)
        }
        Command::Openapi => {
            let doc = server::openapi::document(&connector::model::DataModel::embedded());
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
            Ok(())
        }
        Command::Admin { command } => admin(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "The command failed.");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an operator command against the control database of its `--state-dir`.
fn admin(command: AdminCommand) -> anyhow::Result<()> {
    let (AdminCommand::CreateClient { at, .. }
    | AdminCommand::RevokeClient { at, .. }
    | AdminCommand::RotateKey { at, .. }
    | AdminCommand::RevokeDevice { at, .. }
    | AdminCommand::RotateSecretsKey { at }) = &command;
    let (state_dir, url) = (&at.state_dir, at.control.as_deref());
    if let AdminCommand::RotateSecretsKey { .. } = &command {
        let file = server::secrets::SecretKeys::path_for(&state_dir.join("control.sqlite3"));
        server::secrets::SecretKeys::rotate(&file).map_err(anyhow::Error::msg)?;
        let control = server::open_control(state_dir, url)?;
        let n = control.reseal_secrets(true)?;
        println!(
            "{n} webhook secrets sealed under a new key, the first line of {}; the older keys' lines may now be deleted",
            file.display()
        );
        return Ok(());
    }
    let control = server::open_control(state_dir, url)?;
    match command {
        AdminCommand::RotateSecretsKey { .. } => {}
        AdminCommand::CreateClient { name, .. } => {
            let (client, key) = control.create_client(&name)?;
            println!("client {} ({})", client.name, client.id);
            println!("API key (shown once, keep it safe): {key}");
        }
        AdminCommand::RevokeDevice { device_id, .. } => match control.revoke_device(&device_id)? {
            Some(d) => println!("device {} of company {} revoked", d.id, d.company_id),
            None => {
                anyhow::bail!("no device {device_id}: GET /companies/{{id}}/devices lists them")
            }
        },
        AdminCommand::RevokeClient { client_id, .. } => {
            if !control.revoke_client(&client_id)? {
                anyhow::bail!("no client {client_id}: its id is printed by create-client");
            }
            println!("client {client_id} revoked: its API key no longer works");
        }
        AdminCommand::RotateKey { client_id, .. } => match control.rotate_client_key(&client_id)? {
            Some(key) => {
                println!("client {client_id}: the old API key no longer works");
                println!("new API key (shown once, keep it safe): {key}");
            }
            None => anyhow::bail!(
                "no client {client_id} that can have a key (unknown or revoked): its id is printed by create-client"
            ),
        },
    }
    Ok(())
}
