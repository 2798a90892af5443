//! `meridian secret …`: secrets through the origin's `/v1/secrets` (writes, rotation, keys)
//! and any node's reads (`--endpoint`). Tables show a fingerprint, never a value; only
//! `reveal` prints one (it needs `secret-read`, and is audited).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, Output, cell, print, split, table, value_arg};

/// `meridian secret …`
#[derive(Subcommand, Debug)]
pub enum Secret {
    /// Write a secret (`APP/ENV/KEY`). The value is JSON (a bare word is a string); give it
    /// with --file (`-` for standard input) to keep it out of your shell's history.
    Put {
        /// `app/env/key`.
        address: String,
        /// The value.
        value: Option<String>,
        /// Read the value from this file (`-`: standard input).
        #[arg(long, short, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Rotate it every this many seconds (listed by `due` after that).
        #[arg(long)]
        rotate_every_s: Option<u64>,
        /// It expires at this time, ms since the Unix epoch.
        #[arg(long)]
        expires_at_ms: Option<u64>,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Show a secret masked: fingerprint, version, rotation schedule.
    Get {
        /// `app/env/key`.
        address: String,
    },
    /// List the secrets of `APP/ENV`, masked.
    List {
        /// `app/env`.
        namespace: String,
    },
    /// Print a secret's value (needs secret-read; every reveal is in the audit log).
    Reveal {
        /// `app/env/key`.
        address: String,
        /// Also the previous value while a rotation's grace period lasts.
        #[arg(long)]
        previous: bool,
    },
    /// Give a secret a new value; the current one is still served as the previous one (to
    /// readers who ask) for --grace-s.
    Rotate {
        /// `app/env/key`.
        address: String,
        /// The new value.
        value: Option<String>,
        /// Read the new value from this file (`-`: standard input).
        #[arg(long, short, conflicts_with = "value")]
        file: Option<PathBuf>,
        /// Seconds the previous value is still served (default one hour).
        #[arg(long)]
        grace_s: Option<u64>,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Rotate `APP/ENV`'s data key (every secret of it sealed anew, in one revision), or with
    /// --kek the key-encryption key: every data key rewrapped, no value touched. With
    /// --kek-file a new key is first appended to that file (every origin node must read the
    /// same keys: put the new file on each before rotating).
    RotateKey {
        /// `app/env` (without --kek).
        namespace: Option<String>,
        /// Rotate the key-encryption key instead.
        #[arg(long, conflicts_with = "namespace")]
        kek: bool,
        /// Append a new key to this key file first.
        #[arg(long, requires = "kek")]
        kek_file: Option<PathBuf>,
    },
    /// Secrets due for rotation or expired (or due within --within-s).
    Due {
        /// Also those due within this many seconds.
        #[arg(long, default_value_t = 0)]
        within_s: u64,
    },
    /// Make a key-encryption key file (mode 0600) for the origin's `[secrets] kek_file`.
    InitKeys {
        /// The file to create (never overwritten).
        file: PathBuf,
    },
}

fn value_of(value: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Value> {
    match (value, file) {
        (Some(v), None) => Ok(value_arg(&v)),
        (None, Some(f)) => {
            let text = if f.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
            };
            Ok(value_arg(text.trim_end_matches('\n')))
        }
        _ => anyhow::bail!("give the value, or --file"),
    }
}

fn masked_row(key: &Value, b: &Value) -> Vec<String> {
    vec![
        cell(key),
        cell(&b["fingerprint"]),
        cell(&b["version"]),
        cell(&b["rotate_every_s"]),
        cell(&b["expires_at_ms"]),
        cell(&b["due"]),
    ]
}

const MASKED: [&str; 6] = [
    "key",
    "fingerprint",
    "version",
    "rotate_every_s",
    "expires_at_ms",
    "due",
];

/// Runs `meridian secret …`.
pub async fn secret(client: &Client, command: Secret) -> anyhow::Result<()> {
    let out = client.output;
    let origin = client.writes();
    let reads = client.reads();
    match command {
        Secret::Put {
            address,
            value,
            file,
            rotate_every_s,
            expires_at_ms,
            reason,
        } => {
            split(&address, 3, "app/env/key")?;
            let body = json!({
                "value": value_of(value, file)?,
                "rotate_every_s": rotate_every_s,
                "expires_at_ms": expires_at_ms,
                "reason": reason,
            });
            let answer = client
                .with_body(
                    reqwest::Method::PUT,
                    format!("{origin}/v1/secrets/{address}"),
                    body,
                )
                .await?;
            print(out, &answer, |b| {
                println!(
                    "{address}: version {}, fingerprint {} (revision {})",
                    cell(&b["version"]),
                    cell(&b["fingerprint"]),
                    cell(&b["revision"])
                )
            })
        }
        Secret::Get { address } => {
            split(&address, 3, "app/env/key")?;
            let answer = client.get(format!("{reads}/v1/secrets/{address}")).await?;
            print(out, &answer, |b| {
                table(&MASKED, vec![masked_row(&b["key"], b)])
            })
        }
        Secret::List { namespace } => {
            split(&namespace, 2, "app/env")?;
            let answer = client
                .get(format!("{reads}/v1/secrets/{namespace}"))
                .await?;
            print(out, &answer, |b| {
                let rows = b["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| masked_row(&i["key"], i))
                    .collect();
                table(&MASKED, rows);
            })
        }
        Secret::Reveal { address, previous } => {
            split(&address, 3, "app/env/key")?;
            let versions = if previous { "&versions=2" } else { "" };
            let answer = client
                .get(format!(
                    "{reads}/v1/secrets/{address}?reveal=true{versions}"
                ))
                .await?;
            match out {
                Output::Json => println!("{}", serde_json::to_string_pretty(&answer)?),
                // The value alone, for scripts (`$(meridian secret reveal …)`).
                Output::Table => {
                    println!("{}", cell(&answer["value"]));
                    if previous && !answer["previous"].is_null() {
                        println!("{}", cell(&answer["previous"]["value"]));
                    }
                }
            }
            Ok(())
        }
        Secret::Rotate {
            address,
            value,
            file,
            grace_s,
            reason,
        } => {
            split(&address, 3, "app/env/key")?;
            let body =
                json!({"value": value_of(value, file)?, "grace_s": grace_s, "reason": reason});
            let answer = client
                .with_body(
                    reqwest::Method::POST,
                    format!("{origin}/v1/secrets/{address}/rotate"),
                    body,
                )
                .await?;
            print(out, &answer, |b| {
                println!(
                    "{address}: rotated to version {}, fingerprint {}",
                    cell(&b["version"]),
                    cell(&b["fingerprint"])
                )
            })
        }
        Secret::RotateKey {
            namespace,
            kek,
            kek_file,
        } => {
            if kek {
                if let Some(file) = kek_file {
                    let id = meridian_origin::secrets::kek_file::add_key(&file)?;
                    eprintln!("{}: added key-encryption key {id}", file.display());
                }
                let answer = client
                    .with_body(
                        reqwest::Method::POST,
                        format!("{origin}/v1/secret-keys/rotate"),
                        json!({}),
                    )
                    .await?;
                return print(out, &answer, |b| {
                    println!(
                        "every data key wrapped by {} ({} namespaces rewrapped)",
                        cell(&b["kek"]),
                        cell(&b["rewrapped"])
                    )
                });
            }
            let namespace = namespace.context("give app/env, or --kek")?;
            split(&namespace, 2, "app/env")?;
            let answer = client
                .with_body(
                    reqwest::Method::POST,
                    format!("{origin}/v1/secret-keys/{namespace}/rotate"),
                    json!({}),
                )
                .await?;
            print(out, &answer, |b| {
                println!(
                    "{namespace}: data key generation {}, {} secrets sealed anew (revision {})",
                    cell(&b["generation"]),
                    cell(&b["secrets"]),
                    cell(&b["revision"])
                )
            })
        }
        Secret::Due { within_s } => {
            let answer = client
                .get(format!("{origin}/v1/secrets/due?within_s={within_s}"))
                .await?;
            print(out, &answer, |b| {
                let rows = b["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            format!(
                                "{}/{}/{}",
                                cell(&i["app"]),
                                cell(&i["env"]),
                                cell(&i["key"])
                            ),
                            cell(&i["due"]),
                            if i["overdue"] == true {
                                "now".into()
                            } else {
                                "soon".into()
                            },
                            cell(&i["rotate_at_ms"]),
                            cell(&i["expires_at_ms"]),
                        ]
                    })
                    .collect();
                table(
                    &["secret", "due", "when", "rotate_at_ms", "expires_at_ms"],
                    rows,
                );
            })
        }
        Secret::InitKeys { file } => {
            let id = meridian_origin::secrets::kek_file::create(&file)?;
            println!(
                "{}: key-encryption key {id} (mode 0600); set [secrets] kek_file on every origin node",
                file.display()
            );
            Ok(())
        }
    }
}
