//! The `syncline` command: runs nodes, talks to them, demos and benchmarks.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use syncline::client::Client;
use syncline::config::Config;
use syncline::node::{Node, shutdown_signal};

#[derive(Parser, Debug)]
#[command(
    name = "syncline",
    version,
    about = "Keeps per-document operation logs in sync between reactors"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs a node (a reactor with its API and sync endpoints) until SIGINT or SIGTERM.
    Node {
        /// The TOML configuration (defaults and SYNCLINE_* variables apply too).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Configuration tools.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Reads and writes documents on a node.
    #[command(subcommand)]
    Doc(DocCommand),
    /// Shows a node's sync status.
    Status(NodeArgs),
    /// Makes API tokens and their hashes for `[[api.tokens]]`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Starts three nodes on loopback, writes on all of them and shows them converge.
    #[cfg(feature = "tools")]
    Demo(syncline::demo::DemoArgs),
    /// Benchmarks every transport × store combination with several workloads.
    #[cfg(feature = "tools")]
    Bench(syncline::bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validates a configuration and prints the effective settings.
    Check {
        /// The file.
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Prints a new random token and the `[[api.tokens]]` entry that accepts it.
    New {
        /// The token's name in the configuration and the logs.
        #[arg(long, default_value = "client")]
        name: String,
        /// Its role: read, write or admin.
        #[arg(long, default_value = "read")]
        role: String,
    },
    /// Prints the argon2id hash of a token read from stdin (for a token a person chose).
    Hash,
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// The node's HTTP address.
    #[arg(long, env = "SYNCLINE_NODE", default_value = "http://127.0.0.1:8080")]
    node: String,
    /// The API token to present (`Authorization: Bearer`); better given in the environment.
    #[arg(long, env = "SYNCLINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print the raw JSON answer.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct StrandArgs {
    /// The document id.
    doc: String,
    /// The scope (default global).
    #[arg(long)]
    scope: Option<String>,
    /// The branch (default main).
    #[arg(long)]
    branch: Option<String>,
}

#[derive(Subcommand, Debug)]
enum DocCommand {
    /// Submits actions: `syncline doc apply DOC set '{"path":"/a","value":1}' [TYPE INPUT]...`
    Apply {
        #[command(flatten)]
        strand: StrandArgs,
        /// Pairs of action type and JSON input.
        #[arg(required = true, num_args = 2..)]
        actions: Vec<String>,
        #[command(flatten)]
        node: NodeArgs,
    },
    /// Shows a document's state.
    Show {
        #[command(flatten)]
        strand: StrandArgs,
        /// Also list the operations.
        #[arg(long)]
        operations: bool,
        #[command(flatten)]
        node: NodeArgs,
    },
}

fn init_logs(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn run_node(config: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(config.as_deref())?;
    let node = Node::start(config).await?;
    eprintln!(
        "syncline node {} listening on http://{}{}",
        node.reactor.id(),
        node.http_addr,
        node.quic_addr
            .map(|a| format!(" and quic://{a}"))
            .unwrap_or_default()
    );
    shutdown_signal().await;
    eprintln!("shutting down: draining in-flight batches");
    node.shutdown().await;
    Ok(())
}

fn check_config(file: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(Some(&file))?;
    // Plugin store kinds and schemes are known once the plugins are loaded.
    let plugins = syncline::plugins::Loaded::load(&config.plugins)?;
    let backends = syncline::backends::NodeBackends::compiled().with_plugins(&plugins);
    let effective = config.effective(&backends)?;
    print!("{}", effective.to_toml_redacted());
    eprintln!("{}: ok", file.display());
    Ok(())
}

async fn doc(cmd: DocCommand) -> anyhow::Result<()> {
    match cmd {
        DocCommand::Apply {
            strand,
            actions,
            node,
        } => {
            if actions.len() % 2 != 0 {
                anyhow::bail!(
                    "actions come in pairs: TYPE INPUT (got {} words)",
                    actions.len()
                );
            }
            let pairs = actions
                .chunks(2)
                .map(|p| {
                    let input: Value = serde_json::from_str(&p[1]).with_context(|| {
                        format!("the input of the {} action is not JSON: {}", p[0], p[1])
                    })?;
                    Ok((p[0].clone(), input))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let client = Client::with_token(&node.node, node.token.as_deref())?;
            let answer = client
                .apply(
                    &strand.doc,
                    strand.scope.as_deref(),
                    strand.branch.as_deref(),
                    &pairs,
                )
                .await?;
            if node.json {
                print_json(&answer);
            } else {
                let ops = answer["operations"].as_array().cloned().unwrap_or_default();
                println!("applied {} operation(s) to {}:", ops.len(), strand.doc);
                for op in ops {
                    println!(
                        "  {}  ordinal {}  at {}.{}",
                        op["id"].as_str().unwrap_or("?"),
                        op["ordinal"],
                        op["timestamp"]["millis"],
                        op["timestamp"]["counter"]
                    );
                }
            }
        }
        DocCommand::Show {
            strand,
            operations,
            node,
        } => {
            let client = Client::with_token(&node.node, node.token.as_deref())?;
            let d = client
                .document(
                    &strand.doc,
                    strand.scope.as_deref(),
                    strand.branch.as_deref(),
                    operations,
                )
                .await?;
            if node.json {
                print_json(&d);
            } else {
                println!(
                    "{} ({}), revision {}, {} errored",
                    strand.doc,
                    d["document_type"].as_str().unwrap_or("empty"),
                    d["revision"],
                    d["errored"]
                );
                println!(
                    "{}",
                    serde_json::to_string_pretty(&d["state"]).unwrap_or_default()
                );
                if operations {
                    for op in d["operations"].as_array().cloned().unwrap_or_default() {
                        println!(
                            "  #{} {} {} {}{}",
                            op["index"],
                            op["type"].as_str().unwrap_or("?"),
                            op["input"],
                            op["origin"].as_str().unwrap_or("?"),
                            op["error"]
                                .as_str()
                                .map(|e| format!("  (no effect: {e})"))
                                .unwrap_or_default()
                        );
                    }
                    if let Some(next) = d["next_offset"].as_u64() {
                        println!(
                            "  … {} operations in all; the rest from GET \
                             /v1/documents/{{doc}}/operations?offset={next}",
                            d["operations_total"]
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

async fn status(args: NodeArgs) -> anyhow::Result<()> {
    let client = Client::with_token(&args.node, args.token.as_deref())?;
    let s = client.status().await?;
    if args.json {
        print_json(&s);
        return Ok(());
    }
    println!(
        "reactor {}  head {}",
        s["reactor_id"].as_str().unwrap_or("?"),
        s["head"]
    );
    let remotes = s["remotes"].as_array().cloned().unwrap_or_default();
    if remotes.is_empty() {
        println!("no remotes");
    } else {
        println!(
            "{:<12} {:<10} {:<12} {:>10} {:>10} {:>8} {:>6}  url",
            "remote", "mode", "connection", "out lag", "in lag", "pulls", "dead"
        );
        for r in remotes {
            println!(
                "{:<12} {:<10} {:<12} {:>10} {:>10} {:>8} {:>6}  {}",
                r["name"].as_str().unwrap_or("?"),
                r["mode"].as_str().unwrap_or("?"),
                r["connection"]["state"].as_str().unwrap_or("?"),
                r["outbox_lag"],
                r["inbox_lag"],
                r["pulls"],
                r["dead_letters"],
                r["url"].as_str().unwrap_or("?"),
            );
            if let Some(f) = r["last_failure"]["message"].as_str() {
                println!("{:<12} last failure: {f}", "");
            }
        }
    }
    for l in s["listeners"].as_array().cloned().unwrap_or_default() {
        println!(
            "listener {} for {}: cursor {}, lag {}",
            l["id"].as_str().unwrap_or("?"),
            l["peer"].as_str().unwrap_or("?"),
            l["cursor"],
            l["lag"]
        );
    }
    Ok(())
}

fn token(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::New { name, role } => {
            if !["read", "write", "admin"].contains(&role.as_str()) {
                anyhow::bail!("--role is read, write or admin, not {role:?}");
            }
            let (token, hash) = syncline::auth::new_token();
            println!("token: {token}");
            println!();
            println!("# Keep the token secret (give it to the client, e.g. as SYNCLINE_TOKEN);");
            println!("# put this entry into the node's configuration:");
            println!("[[api.tokens]]");
            println!("name = {name:?}");
            println!("hash = \"{hash}\"");
            println!("role = {role:?}");
        }
        TokenCommand::Hash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the token from stdin")?;
            let token = line.trim_end_matches(['\n', '\r']);
            if token.is_empty() {
                anyhow::bail!("no token on stdin");
            }
            println!("{}", syncline::auth::argon2_hash(token)?);
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    syncline::install_crypto();
    let cli = Cli::parse();
    match &cli.command {
        Command::Node { .. } => init_logs("info"),
        _ => init_logs("warn"),
    }
    if let Command::Config(ConfigCommand::Check { file }) = cli.command {
        return check_config(file);
    }
    if let Command::Token(cmd) = cli.command {
        return token(cmd);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cli.command {
            Command::Node { config } => run_node(config).await,
            Command::Doc(cmd) => doc(cmd).await,
            Command::Status(args) => status(args).await,
            #[cfg(feature = "tools")]
            Command::Demo(args) => syncline::demo::run(args).await,
            #[cfg(feature = "tools")]
            Command::Bench(args) => syncline::bench::main(args).await,
            Command::Config(_) | Command::Token(_) => unreachable!("handled above"),
        }
    })
}
