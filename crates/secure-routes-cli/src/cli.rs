//! Argument parsing and dispatch.
//!
//! ```
//! use clap::Parser;
//! use secure_routes_cli::cli::{Cli, Command};
//! let cli = Cli::try_parse_from(["secure-routes", "token", "--sub", "alice", "--ttl", "1h"]).unwrap();
//! assert!(matches!(cli.command, Command::Token { .. }));
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{audit_cmd, demo, duration, token};

/// Composable security middleware for Rust HTTP APIs: demo, tokens and the audit log.
#[derive(Debug, Parser)]
#[command(name = "secure-routes", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the demo API on embedded defaults (memory rate limits, SQLite audit log).
    Demo {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3000")]
        addr: SocketAddr,
        /// SQLite audit database.
        #[arg(long, default_value = "./secure-routes.db")]
        db: PathBuf,
        /// Use `__Host-csrf-token` with `Secure` and send HSTS (when served over HTTPS).
        #[arg(long)]
        secure_cookies: bool,
    },
    /// Print an HS256 JWT for the demo, signed with SECURE_ROUTES_JWT_SECRET.
    Token {
        /// The subject (`sub` claim).
        #[arg(long)]
        sub: String,
        /// Lifetime: 30s, 10m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = duration::parse)]
        ttl: Duration,
    },
    /// List audit events, newest first.
    Audit {
        /// SQLite audit database.
        #[arg(long, default_value = "./secure-routes.db")]
        db: PathBuf,
        /// Only this action (e.g. rate_limit_exceeded).
        #[arg(long)]
        action: Option<String>,
        /// Only events newer than this: 30s, 10m, 1h, 2d.
        #[arg(long, value_parser = duration::parse)]
        since: Option<Duration>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

/// Parses the process arguments and runs the command.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,secure_routes::audit=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Demo {
            addr,
            db,
            secure_cookies,
        } => {
            let config = Config::from_env()?;
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("{}", demo::banner(listener.local_addr()?, &db));
            demo::run(listener, &config, &db, secure_cookies, shutdown_signal()).await?;
            eprintln!("stopped; audit log flushed to {}", db.display());
            Ok(())
        }
        Command::Token { sub, ttl } => {
            let config = Config::from_env()?;
            println!("{}", token::mint(&config.jwt_secret, &sub, ttl)?);
            Ok(())
        }
        Command::Audit {
            db,
            action,
            since,
            limit,
            json,
        } => {
            let out = audit_cmd::list(&db, action.as_deref(), since, limit, json)?;
            print!("{out}");
            Ok(())
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
