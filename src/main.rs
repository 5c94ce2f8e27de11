//! The `mediagate` command: `serve`, `api`, `worker`, `migrate`, `keys`, `config`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use mediagate::api::auth::{generate_key, hash_key};
use mediagate::app::{self, Roles};
use mediagate::config::Config;
use mediagate::telemetry;

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
    /// Print every setting with its default and meaning (the built-in configuration
    /// file, a starting point for your own).
    Config,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print a new key on stdout.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        account: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
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
            let store = app::open_store(&config, 2).await?;
            drop(store);
            eprintln!("migrations applied");
            return Ok(());
        }
        Command::Keys(cmd) => return keys(&config, cmd).await,
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
    let store = app::open_store(config, 2).await?;
    match cmd {
        KeysCommand::Create { name, account } => {
            let key = generate_key();
            let id = store
                .insert_key(&account, &name, &hash_key(&key), &key[..10])
                .await?;
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
                println!(
                    "{}\t{}\t{}\t{}…\t{}",
                    k.id, k.account_id, k.name, k.prefix, state
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
