//! `meridian export` and `meridian import`: one app/env's keys to and from a file (see
//! [`crate::transfer`] for the formats). Export reads raw values (references unresolved) and
//! masks secrets unless `--encrypt-to` (each secret encrypted to age recipients) or `--reveal`
//! (in clear); either reads them with secret-read, each reveal audited. Import shows what it
//! would change and commits nothing unless `--apply` (one transaction conditioned on the
//! versions it compared against) or `--change` (one change request); encrypted secrets open
//! with `--identity`. A secret given is always written again: its stored value cannot be
//! compared without revealing it.

use std::path::PathBuf;

use anyhow::Context;
use serde_json::{Value, json};

use crate::cli::{Client, cell, table};
use crate::transfer::{self, Document, Format, Item};

/// A key as the origin holds it now.
struct Current {
    value: Value,
    version: u64,
    secret: bool,
    fingerprint: String,
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Every key of `app/env` at the origin, raw, secrets masked.
async fn current(
    client: &Client,
    app: &str,
    env: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, Current>> {
    let origin = client.writes();
    let mut out = std::collections::BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{origin}/v1/kv/{app}/{env}?raw=true&limit=10000");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let page = client.get(url).await?;
        for item in page["items"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().context("an item without a key")?;
            out.insert(
                key.to_owned(),
                Current {
                    value: item["value"].clone(),
                    version: item["version"].as_u64().unwrap_or(0),
                    secret: item["secret"] == true,
                    fingerprint: cell(&item["fingerprint"]),
                },
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(out),
        }
    }
}

/// What `meridian export` does with secrets.
pub enum Secrets {
    /// Leaves them out (their fingerprints only).
    Masked,
    /// Encrypts each to these age recipients.
    EncryptTo(Vec<age::x25519::Recipient>),
    /// Writes them in clear.
    Reveal,
}

/// Runs `meridian export`.
pub async fn export(
    client: &Client,
    app: &str,
    env: &str,
    format: Option<Format>,
    out: Option<PathBuf>,
    secrets: Secrets,
) -> anyhow::Result<()> {
    let format = format
        .or_else(|| out.as_deref().and_then(Format::of_path))
        .unwrap_or(Format::Json);
    let origin = client.writes();
    let mut doc = Document::new();
    for (key, c) in current(client, app, env).await? {
        if !c.secret {
            doc.insert(key, Item::Value(c.value));
            continue;
        }
        let item = match &secrets {
            Secrets::Masked => Item::Masked(c.fingerprint),
            revealed => {
                let url = format!(
                    "{origin}/v1/secrets/{app}/{env}/{}?reveal=true",
                    urlencode(&key)
                );
                let value = client.get(url).await?["value"].clone();
                match revealed {
                    Secrets::EncryptTo(to) => Item::Encrypted(transfer::encrypt(&value, to)?),
                    _ => Item::Secret(value),
                }
            }
        };
        doc.insert(key, item);
    }
    let text = transfer::write(&doc, format)?;
    match out {
        Some(path) => {
            // A file that may hold secrets is the owner's only.
            let write = if matches!(secrets, Secrets::Masked) {
                std::fs::write(&path, text)
            } else {
                meridian_net::private::write_private(&path, text.as_bytes())
            };
            write.with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} keys of {app}/{env} written to {}",
                doc.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    Ok(())
}

/// What `meridian import` does with the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Show the changes only.
    DryRun,
    /// Commit them as one transaction.
    Apply,
    /// Propose them as one change request.
    Change,
}

/// Runs `meridian import`.
#[allow(clippy::too_many_arguments)]
pub async fn import(
    client: &Client,
    file: PathBuf,
    to: &str,
    format: Option<Format>,
    mode: Mode,
    prune: bool,
    reason: Option<String>,
    identity: Option<PathBuf>,
) -> anyhow::Result<()> {
    let Some((app, env)) = to.split_once('/') else {
        anyhow::bail!("--to {to:?} is not app/env");
    };
    let format = format
        .or_else(|| Format::of_path(&file))
        .context("say --format: the file name does not tell")?;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut doc = transfer::read(&text, format).with_context(|| format!("{}", file.display()))?;
    if doc.values().any(|i| matches!(i, Item::Encrypted(_))) {
        let path = identity.context("the file holds encrypted secrets: give --identity FILE")?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let ids = transfer::identities(&text).with_context(|| format!("{}", path.display()))?;
        for (key, item) in doc.iter_mut() {
            if let Item::Encrypted(sealed) = item {
                let value = transfer::decrypt(sealed, &ids).with_context(|| key.clone())?;
                *item = Item::Secret(value);
            }
        }
    }
    let now = current(client, app, env).await?;
    let address = |k: &str| format!("{app}/{env}/{k}");
    let (mut ops, mut conditions, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let condition = |k: &str| match now.get(k) {
        Some(c) => json!({"address": address(k), "version": c.version}),
        None => json!({"address": address(k), "absent": true}),
    };
    for (key, item) in &doc {
        let current = now.get(key);
        let (value, secret) = match item {
            Item::Masked(_) => continue,
            Item::Secret(v) => (v, true),
            Item::Encrypted(_) => unreachable!("opened above"),
            // A key that holds a secret stays one.
            Item::Value(v) => (v, current.is_some_and(|c| c.secret)),
        };
        if !secret && current.is_some_and(|c| c.value == *value) {
            continue;
        }
        let shown = |v: &Value| {
            if secret {
                "(secret)".to_owned()
            } else {
                cell(v)
            }
        };
        rows.push(vec![
            if current.is_some() { "~" } else { "+" }.to_owned(),
            key.clone(),
            current.map_or(String::new(), |c| {
                if c.secret {
                    format!("(secret {})", c.fingerprint)
                } else {
                    cell(&c.value)
                }
            }),
            shown(value),
        ]);
        let mut op = json!({"op": "put", "address": address(key), "value": value});
        if secret {
            op["secret"] = true.into();
        }
        ops.push(op);
        conditions.push(condition(key));
    }
    if prune {
        for (key, c) in now.iter().filter(|(k, _)| !doc.contains_key(*k)) {
            let shown = if c.secret {
                format!("(secret {})", c.fingerprint)
            } else {
                cell(&c.value)
            };
            rows.push(vec!["-".into(), key.clone(), shown, String::new()]);
            ops.push(json!({"op": "delete", "address": address(key)}));
            conditions.push(condition(key));
        }
    }
    if ops.is_empty() {
        println!("{app}/{env} already holds what {} says", file.display());
        return Ok(());
    }
    table(&["", "key", "current", "imported"], rows);
    let mut body = json!({"conditions": conditions, "ops": ops});
    if let Some(r) = &reason {
        body["reason"] = r.clone().into();
    }
    let origin = client.writes();
    match mode {
        Mode::DryRun => println!(
            "dry run: {} change(s); --apply commits them as one transaction, --change proposes them",
            ops.len()
        ),
        Mode::Apply => {
            let answer = client
                .with_body(reqwest::Method::POST, format!("{origin}/v1/txn"), body)
                .await?;
            println!("committed as revision {}", cell(&answer["revision"]));
        }
        Mode::Change => {
            anyhow::ensure!(reason.is_some(), "--change needs --reason");
            let answer = client
                .with_body(reqwest::Method::POST, format!("{origin}/v1/changes"), body)
                .await?;
            println!(
                "proposed as change {} ({})",
                cell(&answer["id"]),
                cell(&answer["status"])
            );
        }
    }
    Ok(())
}
