//! The `mediagate` command: `serve`, `api`, `worker`, `migrate`, `keys`, `accounts`,
//! `credits`, `usage`, `config`. The money commands work on the database directly, through
//! the same functions as the admin API, so they take the same input and print the same
//! JSON.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mediagate::api::Params;
use mediagate::api::admin;
use mediagate::api::auth::{generate_key, hash_key};
use mediagate::api::error::ApiError;
use mediagate::api::money;
use mediagate::app::{self, Roles};
use mediagate::config::Config;
use mediagate::telemetry;
use mediagate_engine::billing::money::format_usd;
use mediagate_engine::db::PoolSize;
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "mediagate",
    version,
    about = "A self-hosted gateway for generative media"
)]
struct Cli {
    /// TOML configuration file (also MEDIAGATE_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// API and workers in one process.
    Serve,
    /// The HTTP API only.
    Api,
    /// Workers only; run as many as you like.
    Worker,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage accounts (teams: their mode, caps and balance).
    #[command(subcommand)]
    Accounts(AccountsCommand),
    /// Add credits to an account, or correct its balance.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Print what settled requests cost, grouped, as JSON.
    Usage {
        /// One account only (default: every account).
        #[arg(long)]
        account: Option<String>,
        /// model, key, day or account.
        #[arg(long)]
        group_by: Option<String>,
        /// From this Unix second (default: 30 days before --to).
        #[arg(long)]
        from: Option<String>,
        /// Up to this Unix second (default: now).
        #[arg(long)]
        to: Option<String>,
    },
    /// Print every setting with its default and meaning (the built-in configuration
    /// file, a starting point for your own).
    Config,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new key on stdout (a missing account is made, as `unlimited`).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        account: String,
        /// Daily spend cap in US dollars ("5.00").
        #[arg(long)]
        daily_usd: Option<String>,
        /// Monthly spend cap in US dollars.
        #[arg(long)]
        monthly_usd: Option<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u64>,
        /// Jobs in flight at once.
        #[arg(long)]
        max_concurrent: Option<u64>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum AccountsCommand {
    /// Make an account (prepaid unless --unlimited) and print it as JSON.
    Create {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// No balance check (caps and usage still apply).
        #[arg(long)]
        unlimited: bool,
        /// Daily spend cap in US dollars ("50").
        #[arg(long)]
        daily_usd: Option<String>,
        /// Monthly spend cap in US dollars.
        #[arg(long)]
        monthly_usd: Option<String>,
    },
    /// Print an account as JSON.
    Show { id: String },
}

#[derive(Subcommand)]
enum CreditsCommand {
    /// Add USD (a decimal such as 25.00; negative corrects, never below zero) and print
    /// the account.
    Add {
        id: String,
        #[arg(allow_hyphen_values = true)]
        usd: String,
        #[arg(long)]
        note: Option<String>,
    },
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(run(Cli::parse()));
    // Blocking work still running (a render cut short by shutdown) must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Config = cli.command {
        print!("{}", mediagate_engine::config::DEFAULTS);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    telemetry::init(&config.log, &config.log_format);
    let roles = match cli.command {
        Command::Serve => Roles::SERVE,
        Command::Api => Roles::API,
        Command::Worker => Roles::WORKER,
        Command::Migrate => {
            let store = app::open_store(&config, PoolSize::few(2)).await?;
            drop(store);
            eprintln!("migrations applied");
            return Ok(());
        }
        Command::Keys(cmd) => return keys(&config, cmd).await,
        Command::Accounts(_) | Command::Credits(_) | Command::Usage { .. } => {
            return money_command(&config, cli.command).await;
        }
        // Printed above, before the configuration is loaded (it needs none).
        Command::Config => return Ok(()),
    };
    let running = app::start(config, roles).await?;
    running.wait_for(shutdown_signal()).await;
    Ok(())
}

async fn keys(config: &Config, cmd: KeysCommand) -> anyhow::Result<()> {
    let database = config.database_display();
    let created_database = config.embedded_database_path().is_some_and(|p| !p.exists());
    let store = app::open_store(config, PoolSize::few(2)).await?;
    match cmd {
        KeysCommand::Create {
            name,
            account,
            daily_usd,
            monthly_usd,
            rpm,
            max_concurrent,
        } => {
            // Read by the admin API's rules, so both refuse the same things.
            let mut limits = serde_json::Map::new();
            let mut put = |k: &str, v: Option<serde_json::Value>| {
                if let Some(v) = v {
                    limits.insert(k.to_owned(), v);
                }
            };
            put("daily_usd", daily_usd.map(Into::into));
            put("monthly_usd", monthly_usd.map(Into::into));
            put("requests_per_minute", rpm.map(Into::into));
            put("max_concurrent_jobs", max_concurrent.map(Into::into));
            let body = json!({"account": account, "name": name, "limits": limits});
            let req = money::key_request(&body).map_err(said)?;
            let key = generate_key();
            let hash = hash_key(&key);
            let new = mediagate_engine::db::keys::NewKey {
                account_id: &req.account,
                name: &req.name,
                key_hash: &hash,
                key_prefix: &key[..10],
                limits: req.limits,
            };
            let id = store.insert_key_with_limits(&new).await?;
            eprintln!(
                "created key {id} for account {account} in the database {database}; it is \
                 shown only once, and works only with a server using that database"
            );
            if created_database {
                eprintln!(
                    "note: that database did not exist until now. If your server runs from \
                     another folder, run this command there, or give both the same \
                     MEDIAGATE_DATA_DIR (or MEDIAGATE_DATABASE_URL)"
                );
            }
            println!("{key}");
        }
        KeysCommand::List => {
            for k in mediagate_engine::db::keys::list(store.pool()).await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let l = &k.limits;
                let usd = |m: Option<i64>| m.map_or("-".to_owned(), format_usd);
                let count = |n: Option<i64>| n.map_or("-".to_owned(), |n| n.to_string());
                println!(
                    "{}\t{}\t{}\t{}…\t{}\tdaily_usd={}\tmonthly_usd={}\trpm={}\tmax_concurrent={}",
                    k.id,
                    k.account_id,
                    k.name,
                    k.prefix,
                    state,
                    usd(l.daily_limit_micros),
                    usd(l.monthly_limit_micros),
                    count(l.requests_per_minute),
                    count(l.max_concurrent_jobs),
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if mediagate_engine::db::keys::revoke(store.pool(), &id).await? {
                eprintln!("revoked {id}");
            } else {
                anyhow::bail!("no active key {id}");
            }
        }
    }
    Ok(())
}

/// `accounts`, `credits` and `usage`: each prints the admin API's JSON for it.
async fn money_command(config: &Config, cmd: Command) -> anyhow::Result<()> {
    let store = app::open_store(config, PoolSize::few(2)).await?;
    let billing = &config.billing;
    let shown = match cmd {
        Command::Accounts(AccountsCommand::Create {
            id,
            name,
            unlimited,
            daily_usd,
            monthly_usd,
        }) => {
            let mut body = json!({
                "id": id,
                "mode": if unlimited { "unlimited" } else { "prepaid" },
                "limits": {},
            });
            if let Some(name) = name {
                body["name"] = name.into();
            }
            if let Some(d) = daily_usd {
                body["limits"]["daily_usd"] = d.into();
            }
            if let Some(m) = monthly_usd {
                body["limits"]["monthly_usd"] = m.into();
            }
            admin::create_account_op(&store, billing, &body).await
        }
        Command::Accounts(AccountsCommand::Show { id }) => {
            admin::show_account_op(&store, billing, &id).await
        }
        Command::Credits(CreditsCommand::Add { id, usd, note }) => {
            let mut body = json!({"amount_usd": usd});
            if let Some(note) = note {
                body["note"] = note.into();
            }
            admin::credit_op(&store, billing, &id, &body, "cli", None)
                .await
                .map(|(account, _)| account)
        }
        Command::Usage {
            account,
            group_by,
            from,
            to,
        } => {
            let pairs = [
                ("account", account),
                ("group_by", group_by),
                ("from", from),
                ("to", to),
            ];
            let params = Params(
                pairs
                    .into_iter()
                    .filter_map(|(k, v)| Some((k.to_owned(), v?)))
                    .collect(),
            );
            admin::usage_op(&store, &params).await
        }
        _ => unreachable!("only the money commands come here"),
    }
    .map_err(said)?;
    println!("{}", serde_json::to_string_pretty(&shown)?);
    Ok(())
}

/// An API error as the CLI says it: its message, which names the field.
fn said(e: ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
