//! `meridian change …` and `meridian protection …`: change requests for protected keys
//! through the origin's `/v1/changes`, and the rules that require them (`/v1/protections`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, cell, print, table};

/// `meridian change …`
#[derive(Subcommand, Debug)]
pub enum Change {
    /// Propose a transaction (the body of `POST /v1/txn`, from a JSON file or `-`) as a
    /// change request.
    Create {
        /// The transaction, as for `meridian txn`.
        #[arg(long, short)]
        file: PathBuf,
        /// Why (required).
        #[arg(long)]
        reason: String,
        /// Apply it by itself at this time once approved (RFC 3339, `2026-12-07T09:00:00Z`).
        #[arg(long)]
        apply_at: Option<String>,
    },
    /// List change requests.
    List {
        /// Only those in this status (pending, approved, rejected, applied, cancelled).
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one change request: status, approvals, diff and schema check.
    Show {
        /// Its number.
        id: u64,
    },
    /// Approve a change request (counts for the rules you hold `approve` on).
    Approve {
        /// Its number.
        id: u64,
        /// A comment.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Reject a change request.
    Reject {
        /// Its number.
        id: u64,
        /// Why.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Comment on a change request.
    Comment {
        /// Its number.
        id: u64,
        /// What.
        text: String,
    },
    /// Take the current versions as the reviewed ones (approvals lapse).
    Refresh {
        /// Its number.
        id: u64,
    },
    /// Apply an approved change request as one revision.
    Apply {
        /// Its number.
        id: u64,
        /// Without its approvals (needs `break-glass`; audited as such).
        #[arg(long)]
        break_glass: bool,
    },
    /// Withdraw a change request.
    Cancel {
        /// Its number.
        id: u64,
    },
}

/// `meridian protection …`
#[derive(Subcommand, Debug)]
pub enum Protection {
    /// Require approved change requests for writes to keys matching the patterns.
    Set {
        /// The rule's name.
        name: String,
        /// Resource patterns (`payments/prod/*`), repeatable.
        #[arg(long = "resource", required = true)]
        resources: Vec<String>,
        /// Approvals needed, never counting the author.
        #[arg(long, default_value_t = 1)]
        approvals: u32,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the rules.
    List,
    /// Delete a rule.
    Delete {
        /// The rule's name.
        name: String,
    },
}

fn summary(c: &Value) {
    println!(
        "change {} {} by {}: {}",
        cell(&c["id"]),
        cell(&c["status"]),
        cell(&c["author"]),
        cell(&c["reason"])
    );
    for r in c["required"].as_array().into_iter().flatten() {
        println!(
            "  rule {}: {} of {} approvals",
            cell(&r["rule"]),
            cell(&r["have"]),
            cell(&r["approvals"])
        );
    }
    let rows = c["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            vec![
                format!(
                    "{}/{}/{}",
                    cell(&d["app"]),
                    cell(&d["env"]),
                    cell(&d["key"])
                ),
                cell(&d["op"]),
                cell(&d["current"]),
                cell(&d["proposed"]),
            ]
        })
        .collect();
    table(&["address", "op", "current", "proposed"], rows);
    for v in c["schema"]["violations"].as_array().into_iter().flatten() {
        println!(
            "  schema: {}/{}/{}: {}",
            cell(&v["app"]),
            cell(&v["env"]),
            cell(&v["key"]),
            cell(&v["message"])
        );
    }
    if c["applied"].is_object() {
        println!("applied as revision {}", cell(&c["applied"]["revision"]));
    }
}

/// Runs `meridian change …`.
pub async fn change(client: &Client, command: Change) -> anyhow::Result<()> {
    let out = client.output;
    let origin = client.writes();
    let post = |path: String, body: Value| {
        client.with_body(
            reqwest::Method::POST,
            format!("{origin}/v1/changes{path}"),
            body,
        )
    };
    let answer = match command {
        Change::Create {
            file,
            reason,
            apply_at,
        } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?
            };
            let mut body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            body["reason"] = reason.into();
            if let Some(at) = apply_at {
                body["apply_at"] = at.into();
            }
            post(String::new(), body).await?
        }
        Change::List { status } => {
            let url = match status {
                Some(s) => format!("{origin}/v1/changes?status={s}"),
                None => format!("{origin}/v1/changes"),
            };
            let answer = client.get(url).await?;
            return print(out, &answer, |b| {
                let rows = b["changes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        vec![
                            cell(&c["id"]),
                            cell(&c["status"]),
                            cell(&c["author"]),
                            c["diff"].as_array().map_or(0, Vec::len).to_string(),
                            cell(&c["reason"]),
                        ]
                    })
                    .collect();
                table(&["id", "status", "author", "keys", "reason"], rows);
            });
        }
        Change::Show { id } => client.get(format!("{origin}/v1/changes/{id}")).await?,
        Change::Approve { id, comment } => {
            post(format!("/{id}/approve"), json!({"comment": comment})).await?
        }
        Change::Reject { id, comment } => {
            post(format!("/{id}/reject"), json!({"comment": comment})).await?
        }
        Change::Comment { id, text } => {
            post(format!("/{id}/comments"), json!({"text": text})).await?
        }
        Change::Refresh { id } => post(format!("/{id}/refresh"), json!({})).await?,
        Change::Apply { id, break_glass } => {
            post(format!("/{id}/apply"), json!({"break_glass": break_glass})).await?
        }
        Change::Cancel { id } => post(format!("/{id}/cancel"), json!({})).await?,
    };
    print(out, &answer, summary)
}

/// Runs `meridian protection …`.
pub async fn protection(client: &Client, command: Protection) -> anyhow::Result<()> {
    let out = client.output;
    let origin = client.writes();
    match command {
        Protection::Set {
            name,
            resources,
            approvals,
            description,
        } => {
            let mut body = json!({"resources": resources, "approvals": approvals});
            if let Some(d) = description {
                body["description"] = d.into();
            }
            let url = format!("{origin}/v1/protections/{name}");
            let answer = client.with_body(reqwest::Method::PUT, url, body).await?;
            print(out, &answer, |b| {
                println!("protection {name} set (revision {})", cell(&b["revision"]))
            })
        }
        Protection::List => {
            let answer = client.get(format!("{origin}/v1/protections")).await?;
            print(out, &answer, |b| {
                let rows = b["protections"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let resources: Vec<String> = p["resources"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(cell)
                            .collect();
                        vec![cell(&p["name"]), cell(&p["approvals"]), resources.join(" ")]
                    })
                    .collect();
                table(&["name", "approvals", "resources"], rows);
            })
        }
        Protection::Delete { name } => {
            let url = format!("{origin}/v1/protections/{name}");
            let c = client.http()?;
            let answer = client.send(c.delete(&url), &url).await?;
            print(out, &answer, |b| {
                println!(
                    "protection {name} deleted (revision {})",
                    cell(&b["revision"])
                )
            })
        }
    }
}
