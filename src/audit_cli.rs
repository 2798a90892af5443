//! `meridian audit …`: list, export and verify the origin's audit log (`/v1/audit`).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use meridian_protocol::audit::{AuditHead, AuditRecord, verify_chain};
use serde_json::Value;

use crate::cli::{Client, cell, print, table};

/// Which records.
#[derive(Args, Debug, Clone, Default)]
pub struct Filter {
    /// Only this actor (`name#id`, or just `name`).
    #[arg(long)]
    actor: Option<String>,
    /// Only resources of this app.
    #[arg(long)]
    app: Option<String>,
    /// Only resources of this environment.
    #[arg(long)]
    env: Option<String>,
    /// Only this action (`write`, `delete`, `rollback`, `txn`, `schema`, `token-create`, …).
    #[arg(long)]
    action: Option<String>,
    /// Only this outcome (`ok`, `forbidden`, `unauthenticated`, `version_conflict`, …).
    #[arg(long)]
    outcome: Option<String>,
    /// From this time on (ms since the Unix epoch).
    #[arg(long)]
    since: Option<u64>,
    /// Before this time (ms since the Unix epoch).
    #[arg(long)]
    until: Option<u64>,
}

impl Filter {
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("actor", self.actor.clone()),
            ("app", self.app.clone()),
            ("env", self.env.clone()),
            ("action", self.action.clone()),
            ("outcome", self.outcome.clone()),
            ("since", self.since.map(|s| s.to_string())),
            ("until", self.until.map(|s| s.to_string())),
        ] {
            if let Some(v) = v {
                q.append_pair(k, &v);
            }
        }
        q.finish()
    }
}

/// `meridian audit …`
#[derive(Subcommand, Debug)]
pub enum Audit {
    /// Records, oldest first (the newest `--limit` of them).
    List {
        #[command(flatten)]
        filter: Filter,
        /// Most records shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Every record as one JSON line each, oldest first.
    Export {
        #[command(flatten)]
        filter: Filter,
    },
    /// Checks that the records form one unbroken chain up to the head the cluster signed;
    /// exits non-zero naming the first record that was altered, removed or cut off.
    Verify {
        /// The cluster's public signing key (hex, as `meridian pki` writes it); without it the
        /// chain is checked but not the head's signature.
        #[arg(long, env = "MERIDIAN_SIGNING_PUB")]
        signing_pub: Option<PathBuf>,
    },
}

/// Every record the filter keeps, page by page, each passed to `each`, up to seq `upto`.
async fn pages(
    client: &Client,
    filter: &Filter,
    upto: Option<u64>,
    mut each: impl FnMut(AuditRecord),
) -> anyhow::Result<()> {
    let base = format!("{}/v1/audit?limit=1000&{}", client.writes(), filter.query());
    let mut cursor: Option<u64> = None;
    loop {
        let url = match cursor {
            Some(c) => format!("{base}&cursor={c}"),
            None => base.clone(),
        };
        let page = client.get(url).await?;
        let records: Vec<AuditRecord> =
            serde_json::from_value(page["records"].clone()).context("reading audit records")?;
        for r in records {
            if upto.is_some_and(|u| r.seq > u) {
                return Ok(());
            }
            each(r);
        }
        match page["next_cursor"].as_u64() {
            Some(c) => cursor = Some(c),
            None => return Ok(()),
        }
    }
}

/// Runs `meridian audit …`.
pub async fn audit(client: &Client, command: Audit) -> anyhow::Result<()> {
    match command {
        Audit::List { filter, limit } => {
            let mut all = Vec::new();
            pages(client, &filter, None, |r| {
                all.push(r);
                if all.len() > limit {
                    all.remove(0);
                }
            })
            .await?;
            let body = serde_json::json!({ "records": all });
            print(client.output, &body, |b| {
                let rows = b["records"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r: &Value| {
                        vec![
                            cell(&r["seq"]),
                            cell(&r["time_ms"]),
                            cell(&r["actor"]),
                            cell(&r["action"]),
                            cell(&r["resource"]),
                            cell(&r["outcome"]),
                            cell(&r["revision"]),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "seq", "time_ms", "actor", "action", "resource", "outcome", "revision",
                    ],
                    rows,
                )
            })
        }
        Audit::Export { filter } => {
            let mut failed = None;
            pages(client, &filter, None, |r| match serde_json::to_string(&r) {
                Ok(line) => println!("{line}"),
                Err(e) => failed = Some(e),
            })
            .await?;
            failed.map_or(Ok(()), |e| Err(e.into()))
        }
        Audit::Verify { signing_pub } => {
            // The head first: records committed after it are not part of what it signs.
            let head: AuditHead = serde_json::from_value(
                client
                    .get(format!("{}/v1/audit/head", client.writes()))
                    .await?,
            )
            .context("reading the audit head")?;
            let signed = match &signing_pub {
                Some(path) => {
                    let key = meridian_net::tls::load_verifying_key(path)?;
                    anyhow::ensure!(
                        head.verify(&key),
                        "the audit head (record {}) is not signed by the key in {}",
                        head.seq,
                        path.display()
                    );
                    true
                }
                None => false,
            };
            let mut records = Vec::new();
            pages(client, &Filter::default(), Some(head.seq), |r| {
                records.push(r)
            })
            .await?;
            let count = verify_chain(&records, &head)?;
            let first = records.first().map_or(0, |r| r.seq);
            println!(
                "audit chain verified: {count} records ({first}..{}), {}",
                head.seq,
                if signed {
                    "head signed by the cluster's key"
                } else {
                    "head signature not checked (give --signing-pub)"
                }
            );
            Ok(())
        }
    }
}
