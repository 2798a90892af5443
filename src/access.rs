//! `meridian token …` and `meridian policy …`: API tokens and the policies that bind tokens
//! and groups to roles, through the origin's `/v1/tokens` and `/v1/policies`.

use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, cell, print, table};

/// `meridian token …`
#[derive(Subcommand, Debug)]
pub enum Token {
    /// Make a token; its text is printed once (store it: only its hash is kept).
    Create {
        /// What it is for (`ci-deploy`, `payments-service`).
        #[arg(long)]
        name: String,
        /// Who is responsible for it (the creating token's name by default).
        #[arg(long)]
        owner: Option<String>,
        /// A built-in role: viewer, editor or admin (with --resource).
        #[arg(long)]
        role: Option<String>,
        /// A resource pattern the role applies to (`payments/prod/*`, `_/_/*`); repeatable.
        #[arg(long = "resource")]
        resources: Vec<String>,
        /// A group that policies may bind; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Seconds until the token stops working (never by default).
        #[arg(long)]
        expires_in_s: Option<u64>,
    },
    /// List the live tokens (never their text).
    List,
    /// Revoke a token by id; every edge refuses it within seconds.
    Revoke {
        /// The token's id (16 hex digits, from `token list`).
        id: String,
    },
    /// Show who the presented token is.
    Whoami,
    /// Write a new random token to FILE (mode 0600) without asking any node: the bootstrap
    /// token of a new cluster (`[auth] bootstrap_token_file`).
    Generate {
        /// Where to write it; refused if it exists.
        #[arg(long)]
        file: std::path::PathBuf,
    },
}

/// `meridian policy …`
#[derive(Subcommand, Debug)]
pub enum Policy {
    /// Create or replace a policy: subjects get a role on resources.
    Put {
        /// The policy's name.
        name: String,
        /// `token:<id>`, `group:<name>` or `anonymous`; repeatable.
        #[arg(long = "subject", required = true)]
        subjects: Vec<String>,
        /// viewer, editor or admin.
        #[arg(long)]
        role: String,
        /// A resource pattern; repeatable.
        #[arg(long = "resource", required = true)]
        resources: Vec<String>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the policies.
    List,
    /// Delete a policy.
    Delete {
        /// The policy's name.
        name: String,
    },
}

/// Runs `meridian token …`.
pub async fn token(client: &Client, command: Token) -> anyhow::Result<()> {
    let out = client.output;
    let base = format!("{}/v1/tokens", client.writes());
    match command {
        Token::Create {
            name,
            owner,
            role,
            resources,
            groups,
            expires_in_s,
        } => {
            let mut body = json!({"name": name, "groups": groups});
            if let Some(o) = owner {
                body["owner"] = o.into();
            }
            if let Some(r) = role {
                body["role"] = r.into();
                body["resources"] = json!(resources);
            } else {
                anyhow::ensure!(resources.is_empty(), "--resource needs --role");
            }
            if let Some(s) = expires_in_s {
                body["expires_in_s"] = s.into();
            }
            let answer = client.with_body(reqwest::Method::POST, base, body).await?;
            print(out, &answer, |b| {
                println!(
                    "token {} ({}) created; it is shown only now:",
                    cell(&b["id"]),
                    cell(&b["name"])
                );
                println!("{}", cell(&b["token"]));
            })
        }
        Token::List => {
            let answer = client.get(base).await?;
            print(out, &answer, |b| {
                let rows = b["tokens"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|t| {
                        vec![
                            cell(&t["id"]),
                            cell(&t["name"]),
                            cell(&t["owner"]),
                            grants(&t["grants"]),
                            cell(&t["groups"]),
                            if t["expired"] == true {
                                "expired".into()
                            } else {
                                cell(&t["expires_ms"])
                            },
                        ]
                    })
                    .collect();
                table(
                    &["id", "name", "owner", "grants", "groups", "expires_ms"],
                    rows,
                )
            })
        }
        Token::Revoke { id } => {
            let url = format!("{base}/{id}");
            let c = client.http()?;
            let answer = client.send(c.delete(&url), &url).await?;
            print(out, &answer, |b| {
                println!("token {id} revoked at revision {}", b["revision"])
            })
        }
        Token::Generate { file } => {
            anyhow::ensure!(!file.exists(), "{} exists; not overwritten", file.display());
            let token = meridian_net::auth::new_token();
            meridian_net::private::write_private(&file, format!("{token}\n").as_bytes())?;
            println!("wrote a new token to {} (mode 0600)", file.display());
            Ok(())
        }
        Token::Whoami => {
            let answer = client.get(format!("{}/v1/whoami", client.writes())).await?;
            print(out, &answer, |b| println!("{}", cell(&b["actor"])))
        }
    }
}

fn grants(g: &Value) -> String {
    g.as_array()
        .into_iter()
        .flatten()
        .map(|g| format!("{} on {}", cell(&g["role"]), cell(&g["resources"])))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `meridian policy …`.
pub async fn policy(client: &Client, command: Policy) -> anyhow::Result<()> {
    let out = client.output;
    let base = format!("{}/v1/policies", client.writes());
    match command {
        Policy::Put {
            name,
            subjects,
            role,
            resources,
            description,
        } => {
            let mut body = json!({"subjects": subjects, "role": role, "resources": resources});
            if let Some(d) = description {
                body["description"] = d.into();
            }
            let answer = client
                .with_body(reqwest::Method::PUT, format!("{base}/{name}"), body)
                .await?;
            print(out, &answer, |b| {
                println!(
                    "policy {name} at version {} (revision {})",
                    b["version"], b["revision"]
                )
            })
        }
        Policy::List => {
            let answer = client.get(base).await?;
            print(out, &answer, |b| {
                let rows = b["policies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        vec![
                            cell(&p["name"]),
                            cell(&p["subjects"]),
                            cell(&p["role"]),
                            cell(&p["resources"]),
                        ]
                    })
                    .collect();
                table(&["name", "subjects", "role", "resources"], rows)
            })
        }
        Policy::Delete { name } => {
            let url = format!("{base}/{name}");
            let c = client.http()?;
            let answer = client.send(c.delete(&url), &url).await?;
            print(out, &answer, |b| {
                println!("policy {name} deleted at revision {}", b["revision"])
            })
        }
    }
}
