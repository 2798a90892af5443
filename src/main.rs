//! `meridian`: one binary for every role. `meridian dev` runs the whole system on loopback;
//! `meridian origin` and `meridian edge` run one role from a TOML config.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use meridian::dev::{DevCluster, DevOptions, REGIONS};

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "Configuration, feature flags and secrets, replicated to every region within seconds."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a three-node origin cluster and three edges (us-east, eu-west, ap-south) on
    /// loopback.
    ///
    /// Origin nodes' APIs on 127.0.0.1:7070, :7071, :7072 (QUIC 7443, 7444, 7445; write to any,
    /// followers forward to the Raft leader), edges on 127.0.0.1:7081, :7082, :7083, each
    /// knowing every origin node. A throwaway CA, certificates and signing key are created under
    /// DATA_DIR/pki on first start and reused after. Ctrl-C stops everything cleanly.
    Dev {
        /// Where all data, certificates and keys are kept.
        #[arg(long, default_value = "./meridian-data", env = "MERIDIAN_DATA_DIR")]
        data_dir: PathBuf,
        /// Origin nodes in the Raft cluster: 1, 3 or 5.
        #[arg(long, default_value_t = 3, value_parser = origin_nodes)]
        origin_nodes: usize,
        /// A Redis every edge mirrors its configuration into (`redis://127.0.0.1:6379`).
        #[arg(long)]
        redis: Option<String>,
    },
    /// Create (once) the throwaway development CA, certificates and signing key under
    /// DATA_DIR/pki, as used by `meridian dev` and by the configs in deploy/regions/.
    Pki {
        /// Where the pki/ folder is created.
        #[arg(long, default_value = "./meridian-data", env = "MERIDIAN_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Run the deterministic simulator: the real replication state machines over real QUIC in
    /// virtual time, with faults, invariants and the 5-second propagation SLO.
    ///
    /// Exits non-zero when any invariant or the SLO fails, printing the command that replays
    /// the failing seed.
    Sim(SimArgs),
    /// Run one origin node from a TOML config (see deploy/regions/origin.toml).
    Origin {
        /// Path to the config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Restore a backup (`meridian backup`) into the empty data folder of an origin node's
    /// config; `meridian origin` then starts a fresh cluster of its members from it.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The origin node's config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Take a consistent, signed backup of the cluster (admin) into a file (0600).
    Backup {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run one edge node from a TOML config (see deploy/regions/us-east.toml).
    Edge {
        /// Path to the config file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Read, write, list, and inspect the history of keys (`app/env/key`).
    Kv {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::cli::Kv,
    },
    /// Show resolved configuration.
    Config {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::cli::Config,
    },
    /// Register and show JSON Schemas for key prefixes.
    Schema {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::cli::Schema,
    },
    /// Run the transaction in FILE (the JSON body of POST /v1/txn: conditions and operations,
    /// all or nothing).
    Txn {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// The transaction file.
        file: PathBuf,
    },
    /// Make, list and revoke API tokens (admin).
    Token {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::access::Token,
    },
    /// List, export and verify the audit log (audit-read).
    Audit {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::audit_cli::Audit,
    },
    /// Feature flags in flagd's format: write, read, list, delete, evaluate (OFREP at an
    /// edge), history and rollback.
    Flag {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::flag_cli::Flag,
    },
    /// Change requests for protected keys: create, list, show, approve, reject, comment,
    /// refresh, apply, cancel.
    Change {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::change_cli::Change,
    },
    /// Write one app/env's keys to a file (JSON, YAML, .env or Java properties); secrets
    /// masked unless --reveal (secret-read, audited).
    Export {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// The app.
        app: String,
        /// The env.
        env: String,
        /// The format (default: from --out's name, else json).
        #[arg(long, value_enum)]
        format: Option<meridian::transfer::Format>,
        /// Where to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Write secrets in clear (secret-read; every reveal is audited; the file is 0600).
        #[arg(long, conflicts_with = "encrypt_to")]
        reveal: bool,
        /// Write each secret encrypted to this age recipient (`age1…`, from `age-keygen`;
        /// repeatable). Needs secret-read like --reveal; the file is 0600.
        #[arg(long = "encrypt-to")]
        encrypt_to: Vec<String>,
    },
    /// Show what a file (JSON, YAML, .env or properties) would change in an app/env; with
    /// --apply commit it as one transaction, with --change propose it as a change request.
    Import {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// The file.
        file: std::path::PathBuf,
        /// `app/env`.
        #[arg(long)]
        to: String,
        /// The format (default: from the file's name).
        #[arg(long, value_enum)]
        format: Option<meridian::transfer::Format>,
        /// Commit the changes as one transaction.
        #[arg(long, conflicts_with = "change")]
        apply: bool,
        /// Propose the changes as one change request (needs --reason).
        #[arg(long)]
        change: bool,
        /// Also delete the keys the file does not hold.
        #[arg(long)]
        prune: bool,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
        /// An age identity file (`age-keygen` output) that opens the file's encrypted secrets.
        #[arg(long)]
        identity: Option<std::path::PathBuf>,
    },
    /// Protection rules: which keys need approved change requests, and how many approvals
    /// (admin).
    Protection {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::change_cli::Protection,
    },
    /// Secrets: write, show masked, list, reveal (secret-read, audited), rotate, rotate keys,
    /// list what is due.
    Secret {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::secret_cli::Secret,
    },
    /// Bind tokens and groups to roles on resources (admin).
    Policy {
        #[command(flatten)]
        client: meridian::cli::Client,
        #[command(subcommand)]
        action: meridian::access::Policy,
    },
    /// Follow changes under APP/ENV (keys starting with PREFIX) on an edge, one JSON line per
    /// event, until interrupted. Reconnects by itself and resumes after the last event it
    /// printed, so a restarting edge loses nothing.
    Watch {
        /// The edge to watch (watches are served by edges, not the origin).
        #[arg(long, default_value = "http://127.0.0.1:7081", env = "MERIDIAN_EDGE")]
        endpoint: String,
        /// The API token to present.
        #[arg(long, env = "MERIDIAN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// PEM CA certificate an `https://` edge's certificate must chain to.
        #[arg(long, env = "MERIDIAN_CA_FILE")]
        ca_file: Option<PathBuf>,
        /// Application.
        app: String,
        /// Environment.
        env: String,
        /// Only keys starting with this.
        #[arg(default_value = "")]
        prefix: String,
        /// Start after this position (an event id or revision); 0 starts with the full
        /// current state. Without it, only changes from now on.
        #[arg(long)]
        since: Option<String>,
    },
    /// List every edge the origin cluster has heard from: region, revision, whether its digest
    /// matches the origin's at that revision, how far behind it is and when it last reported;
    /// `diverged`, `lagging` and `disconnected` edges are flagged and make the exit status
    /// non-zero. Ask any origin node (--endpoint or --origin); every member is queried.
    Edges {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// Lag beyond which an edge is flagged.
        #[arg(long, default_value_t = 10_000)]
        lag_threshold_ms: u64,
    },
    /// Which revision each service instance of APP/ENV applied (as `meridian-client` watches
    /// and `POST /v1/applied/{app}/{env}` report it): `outdated`, `unapproved`, `ahead` and
    /// `silent` instances are flagged and make the exit status non-zero.
    Drift {
        #[command(flatten)]
        client: meridian::cli::Client,
        /// The application.
        app: String,
        /// The environment.
        env: String,
        /// Silence beyond which an instance is flagged.
        #[arg(long, default_value_t = 120_000)]
        silent_after_ms: u64,
    },
    /// Inspect and change the origin's Raft cluster. Status is read from any origin node's
    /// client API; membership changes go to the leader's private Raft channel with an origin
    /// certificate (a follower answers with the leader's address).
    Cluster {
        /// An origin node's HTTP address (for `status`).
        #[arg(
            long,
            global = true,
            default_value = "http://127.0.0.1:7070",
            env = "MERIDIAN_ENDPOINT"
        )]
        endpoint: String,
        /// An origin node's Raft address, host:port (for changes).
        #[arg(
            long,
            global = true,
            default_value = "127.0.0.1:7170",
            env = "MERIDIAN_RAFT_ENDPOINT"
        )]
        raft_endpoint: String,
        /// Folder holding the origin identity for changes: origin.pem, origin.key, ca.pem
        /// (as `meridian pki` writes it).
        #[arg(
            long,
            global = true,
            default_value = "./meridian-data/pki",
            env = "MERIDIAN_PKI_DIR"
        )]
        pki_dir: std::path::PathBuf,
        #[command(subcommand)]
        action: ClusterAction,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Leader, term, and every member with its replication progress.
    Status,
    /// Join a node: it catches up as a learner, then becomes a voter.
    AddNode {
        /// The new node's `raft.id`.
        #[arg(long)]
        id: u64,
        /// Its Raft address, host:port (its `raft.advertise`).
        #[arg(long)]
        addr: String,
    },
    /// Remove a voting member (the last one cannot be removed).
    RemoveNode {
        /// The node's `raft.id`.
        #[arg(long)]
        id: u64,
    },
}

/// Parses `--origin-nodes`: an odd cluster size that tolerates failures.
fn origin_nodes(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n @ (1 | 3 | 5)) => Ok(n),
        _ => Err(format!("must be 1, 3 or 5 (got {s:?})")),
    }
}

/// Where `meridian cluster` sends its request.
struct ClusterTarget<'a> {
    endpoint: &'a str,
    raft_endpoint: &'a str,
    pki_dir: &'a std::path::Path,
}

/// Runs a `meridian cluster` action and prints the cluster as the node answers it.
async fn cluster(target: ClusterTarget<'_>, action: ClusterAction) -> anyhow::Result<()> {
    let (status, body) = match action {
        ClusterAction::Status => {
            let base = target.endpoint.trim_end_matches('/');
            let answer = reqwest::Client::new()
                .get(format!("{base}/v1/cluster"))
                .send()
                .await
                .with_context(|| format!("contacting the origin at {base}"))?;
            (answer.status().as_u16(), answer.bytes().await?.to_vec())
        }
        change => {
            let (method, path, body) = match change {
                ClusterAction::AddNode { id, addr } => (
                    reqwest::Method::POST,
                    "/v1/cluster/nodes".to_string(),
                    serde_json::json!({"id": id, "addr": addr}).to_string(),
                ),
                ClusterAction::RemoveNode { id } => (
                    reqwest::Method::DELETE,
                    format!("/v1/cluster/nodes/{id}"),
                    String::new(),
                ),
                ClusterAction::Status => unreachable!("handled above"),
            };
            let dir = target.pki_dir;
            let identity = meridian_net::TlsPaths {
                cert: dir.join("origin.pem"),
                key: dir.join("origin.key"),
                ca: dir.join("ca.pem"),
            };
            let tls = meridian_net::tls::origin_peer_client_crypto(&identity)
                .with_context(|| format!("loading the origin identity from {}", dir.display()))?;
            let (status, body) = meridian_net::peer::PeerClient::new(tls)
                .request(
                    method,
                    target.raft_endpoint,
                    &path,
                    body.into_bytes(),
                    std::time::Duration::from_secs(30),
                )
                .await
                .with_context(|| {
                    format!(
                        "contacting the origin's Raft channel at {}",
                        target.raft_endpoint
                    )
                })?;
            (status.as_u16(), body.to_vec())
        }
    };
    let body: serde_json::Value =
        serde_json::from_slice(&body).context("reading the origin's answer")?;
    println!("{}", serde_json::to_string_pretty(&body)?);
    anyhow::ensure!((200..300).contains(&status), "the origin answered {status}");
    Ok(())
}

#[derive(clap::Args)]
struct SimArgs {
    /// The seed everything random derives from.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run this many consecutive seeds, starting at --seed.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Edges in each of the three regions.
    #[arg(long, default_value_t = 10)]
    edges_per_region: usize,
    /// Origin nodes (1, 3 or 5): with more than one, crashing the leader pauses commits for an
    /// election and edges fail over to another node.
    #[arg(long, default_value_t = 3, value_parser = origin_nodes)]
    origin_nodes: usize,
    /// Simulated seconds.
    #[arg(long, default_value_t = 600)]
    duration_s: u64,
    /// Mean writes per simulated second.
    #[arg(long, default_value_t = 20.0)]
    write_rate: f64,
    /// Bytes per written value.
    #[arg(long, default_value_t = 64)]
    value_bytes: usize,
    /// Only loss, duplication and jitter: no partitions, clogs, spikes or crashes.
    #[arg(long)]
    no_faults: bool,
    /// Write the full report of the (last) run as JSON to this file.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run each seed twice and fail if the trace hashes differ.
    #[arg(long)]
    check_determinism: bool,
    /// Verify every signed head in every edge separately instead of once per run (slower;
    /// the trace is the same either way, which this flag lets you check).
    #[arg(long)]
    no_verify_memo: bool,
}

fn sim(args: SimArgs) -> anyhow::Result<bool> {
    let mut all_passed = true;
    let mut speedups = Vec::new();
    for seed in args.seed..args.seed + args.seeds.max(1) {
        let opts = meridian_sim::SimOptions {
            seed,
            edges_per_region: args.edges_per_region,
            origin_nodes: args.origin_nodes,
            duration_s: args.duration_s,
            write_rate_per_s: args.write_rate,
            value_bytes: args.value_bytes,
            faults: !args.no_faults,
            verify_memo: !args.no_verify_memo,
            ..meridian_sim::SimOptions::default()
        };
        let report = meridian_sim::run(opts.clone())?;
        print!("{}", report.summary());
        speedups.push(report.speedup);
        let mut passed = report.passed();
        if args.check_determinism {
            let again = meridian_sim::run(opts)?;
            if again.trace_hash != report.trace_hash {
                println!(
                    "NONDETERMINISTIC: seed {seed} gave trace {} then {}",
                    report.trace_hash, again.trace_hash
                );
                passed = false;
            } else {
                println!("deterministic: seed {seed} replayed to the same trace hash");
            }
        }
        if let Some(path) = &args.report {
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        all_passed &= passed;
    }
    if args.seeds > 1 {
        let min = speedups.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "{} seeds from {}: {}; slowest run {:.0}x real time",
            args.seeds,
            args.seed,
            if all_passed {
                "all passed"
            } else {
                "FAILURES above"
            },
            min
        );
    }
    Ok(all_passed)
}

fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::error!(error = %e, "cannot listen for Ctrl-C; stopping");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    if let Err(e) = meridian::disable_transparent_huge_pages() {
        tracing::warn!("transparent huge pages stay on for this process: {e}");
    }
    match Cli::parse().command {
        Command::Dev {
            data_dir,
            origin_nodes,
            redis,
        } => {
            let mut opts = DevOptions::standard(data_dir);
            opts.origin_nodes = origin_nodes;
            opts.redis_url = redis;
            let cluster = DevCluster::start(&opts).await?;
            println!(
                "Meridian dev topology is up (data in {}):",
                opts.data_dir.display()
            );
            for (i, o) in cluster.origins().enumerate() {
                println!(
                    "  origin {}  API http://{}  QUIC {}  Raft {}",
                    i + 1,
                    o.http_addr,
                    o.quic_addr,
                    o.raft_addr
                );
            }
            for (region, edge) in REGIONS.iter().zip(&cluster.edges) {
                println!("  edge    {region:<9}  http://{}", edge.http_addr);
            }
            let token = meridian::dev::ensure_admin_token(&opts)?;
            println!(
                "The admin token is in {} (mode 0600). To use it:",
                meridian::dev::admin_token_path(&opts.data_dir).display()
            );
            println!("  export MERIDIAN_TOKEN={token}");
            println!(
                "Try: curl -X PUT http://{}/v1/kv/myapp/prod/greeting -H \"Authorization: Bearer $MERIDIAN_TOKEN\" -H 'Content-Type: application/json' -d '{{\"value\":\"hello\"}}'",
                cluster.origin.http_addr
            );
            println!(
                "     curl http://{}/v1/kv/myapp/prod/greeting -H \"Authorization: Bearer $MERIDIAN_TOKEN\"",
                cluster.edges[2].http_addr
            );
            println!("Ctrl-C to stop.");
            ctrl_c().await;
            println!("stopping…");
            cluster.shutdown().await;
        }
        Command::Kv { client, action } => meridian::cli::kv(&client, action).await?,
        Command::Config { client, action } => meridian::cli::config(&client, action).await?,
        Command::Schema { client, action } => meridian::cli::schema(&client, action).await?,
        Command::Txn { client, file } => meridian::cli::txn(&client, file).await?,
        Command::Edges {
            client,
            lag_threshold_ms,
        } => meridian::drift_cli::edges(&client, Some(lag_threshold_ms)).await?,
        Command::Drift {
            client,
            app,
            env,
            silent_after_ms,
        } => meridian::drift_cli::drift(&client, &app, &env, Some(silent_after_ms)).await?,
        Command::Watch {
            endpoint,
            token,
            ca_file,
            app,
            env,
            prefix,
            since,
        } => {
            meridian::cli::watch(
                &endpoint,
                token.as_deref(),
                ca_file.as_deref(),
                &app,
                &env,
                &prefix,
                since,
            )
            .await?
        }
        Command::Token { client, action } => meridian::access::token(&client, action).await?,
        Command::Flag { client, action } => meridian::flag_cli::flag(&client, action).await?,
        Command::Export {
            client,
            app,
            env,
            format,
            out,
            reveal,
            encrypt_to,
        } => {
            use meridian::transfer_cli::Secrets;
            let secrets = match (reveal, encrypt_to.is_empty()) {
                (true, _) => Secrets::Reveal,
                (false, false) => Secrets::EncryptTo(meridian::transfer::recipients(&encrypt_to)?),
                (false, true) => Secrets::Masked,
            };
            meridian::transfer_cli::export(&client, &app, &env, format, out, secrets).await?
        }
        Command::Import {
            client,
            file,
            to,
            format,
            apply,
            change,
            prune,
            reason,
            identity,
        } => {
            use meridian::transfer_cli::Mode;
            let mode = match (apply, change) {
                (true, _) => Mode::Apply,
                (_, true) => Mode::Change,
                _ => Mode::DryRun,
            };
            meridian::transfer_cli::import(
                &client, file, &to, format, mode, prune, reason, identity,
            )
            .await?
        }
        Command::Change { client, action } => meridian::change_cli::change(&client, action).await?,
        Command::Protection { client, action } => {
            meridian::change_cli::protection(&client, action).await?
        }
        Command::Secret { client, action } => meridian::secret_cli::secret(&client, action).await?,
        Command::Policy { client, action } => meridian::access::policy(&client, action).await?,
        Command::Audit { client, action } => meridian::audit_cli::audit(&client, action).await?,
        Command::Sim(args) => {
            if !sim(args)? {
                std::process::exit(1);
            }
        }
        Command::Pki { data_dir } => {
            let pki = meridian::dev::pki(&data_dir)?;
            println!("development PKI in {}", pki.dir.display());
            println!("  CA            {}", pki.ca.display());
            println!(
                "  origin        {} / {}",
                pki.origin.cert.display(),
                pki.origin.key.display()
            );
            for region in REGIONS {
                let id = meridian::dev::edge_id(region);
                let e = pki.edge(&id);
                println!("  edge {id:<10} {} / {}", e.cert.display(), e.key.display());
            }
            println!(
                "  signing key   {} (public: {})",
                pki.signing_key.display(),
                pki.signing_pub.display()
            );
            println!(
                "  secrets KEK   {}",
                meridian::dev::kek_path(&data_dir).display()
            );
        }
        Command::Restore { file, config } => {
            let config: meridian_origin::OriginConfig = read_config(&config)?;
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let info = meridian_origin::backup::restore(&config, &bytes).await?;
            println!(
                "restored revision {} (digest {}) into {}",
                info.revision,
                info.digest,
                config.data_dir.display()
            );
        }
        Command::Backup { client, out } => meridian::cli::backup(&client, &out).await?,
        Command::Origin { config } => {
            let config: meridian_origin::OriginConfig = read_config(&config)?;
            let scheme = if config.https.is_some() {
                "https"
            } else {
                "http"
            };
            let node = meridian_origin::start(config).await?;
            println!(
                "origin: HTTP {scheme}://{}  QUIC {}  Raft {}",
                node.http_addr, node.quic_addr, node.raft_addr
            );
            ctrl_c().await;
            node.shutdown().await;
        }
        Command::Cluster {
            endpoint,
            raft_endpoint,
            pki_dir,
            action,
        } => {
            let target = ClusterTarget {
                endpoint: &endpoint,
                raft_endpoint: &raft_endpoint,
                pki_dir: &pki_dir,
            };
            cluster(target, action).await?
        }
        Command::Edge { config } => {
            let config: meridian_edge::EdgeConfig = read_config(&config)?;
            let scheme = if config.https.is_some() {
                "https"
            } else {
                "http"
            };
            let node = meridian_edge::start(config).await?;
            println!("edge: HTTP {scheme}://{}", node.http_addr);
            ctrl_c().await;
            node.shutdown().await;
        }
    }
    Ok(())
}
