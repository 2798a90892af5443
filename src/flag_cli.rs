//! `meridian flag …`: flag sets in flagd's format through the origin's `/v1/flags`, and
//! evaluation over OFREP at an edge (or any node given as `--endpoint`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::cli::{Client, cell, print, table};

/// `meridian flag …`
#[derive(Subcommand, Debug)]
pub enum Flag {
    /// Write a whole flagd document (`APP/ENV`) or one flag definition (`APP/ENV/FLAG`) from a
    /// JSON file (`-` for standard input); checked against flagd's schemas before it commits.
    Put {
        /// `app/env` or `app/env/flag`.
        address: String,
        /// The JSON file.
        #[arg(long, short)]
        file: PathBuf,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Print a flag set as a flagd document (`APP/ENV`), or one flag (`APP/ENV/FLAG`).
    Get {
        /// `app/env` or `app/env/flag`.
        address: String,
    },
    /// List the flags of `APP/ENV`: state, default variant, variants, targeting.
    List {
        /// `app/env`.
        namespace: String,
    },
    /// Delete one flag.
    Delete {
        /// `app/env/flag`.
        address: String,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Evaluate a flag (`APP/ENV/FLAG`) or every flag (`APP/ENV`) for a context, over OFREP
    /// at --endpoint.
    Eval {
        /// `app/env` or `app/env/flag`.
        address: String,
        /// The evaluation context, a JSON object (`{"targetingKey": "user-1"}`).
        #[arg(long, default_value = "{}")]
        context: String,
    },
    /// The versions of one flag's definition, newest first.
    History {
        /// `app/env/flag`.
        address: String,
    },
    /// Show a flag's rollout, or start, pause, resume or abort one. A plan is given as steps in
    /// order, each `variant=weight,...:hold_s` (`--step on=10,off=90:600 --step on=100,off=0:0`).
    Rollout {
        /// `app/env/flag`.
        address: String,
        /// Start a rollout with these steps (repeatable, in order).
        #[arg(long = "step", conflicts_with_all = ["pause", "resume", "abort"])]
        steps: Vec<String>,
        /// Hold the rollout at its step.
        #[arg(long, conflicts_with_all = ["resume", "abort"])]
        pause: bool,
        /// Go on from where it was paused.
        #[arg(long, conflicts_with = "abort")]
        resume: bool,
        /// Stop it and put back the definition from before it started.
        #[arg(long)]
        abort: bool,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put one flag's definition back to an earlier version.
    Rollback {
        /// `app/env/flag`.
        address: String,
        /// The version to go back to.
        #[arg(long)]
        version: u64,
        /// Why, for history and the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
}

fn parts(address: &str) -> anyhow::Result<(String, String, Option<String>)> {
    let v: Vec<&str> = address.splitn(3, '/').collect();
    match v[..] {
        [app, env] if !app.is_empty() && !env.is_empty() => Ok((app.into(), env.into(), None)),
        [app, env, flag] if !app.is_empty() && !env.is_empty() && !flag.is_empty() => {
            Ok((app.into(), env.into(), Some(flag.into())))
        }
        _ => anyhow::bail!("{address:?} is not app/env or app/env/flag"),
    }
}

fn one_flag(address: &str) -> anyhow::Result<(String, String, String)> {
    match parts(address)? {
        (app, env, Some(flag)) => Ok((app, env, flag)),
        _ => anyhow::bail!("{address:?} is not app/env/flag"),
    }
}

fn read_json(file: &PathBuf) -> anyhow::Result<Value> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))
}

fn with_reason(url: String, reason: Option<String>) -> String {
    match reason {
        Some(r) => format!(
            "{url}?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("reason", &r)
                .finish()
        ),
        None => url,
    }
}

/// `on=10,off=90:600` → `{"weights": {"on": 10, "off": 90}, "hold_s": 600}`.
fn parse_step(s: &str) -> anyhow::Result<Value> {
    let (weights, hold) = s.rsplit_once(':').unwrap_or((s, "0"));
    let hold_s: u64 = hold
        .parse()
        .with_context(|| format!("{s:?}: the hold after ':' is seconds"))?;
    let mut map = serde_json::Map::new();
    for pair in weights.split(',') {
        let (variant, weight) = pair
            .split_once('=')
            .with_context(|| format!("{s:?}: weights are variant=weight"))?;
        let weight: u32 = weight
            .parse()
            .with_context(|| format!("{s:?}: weight {weight:?} is not a whole number"))?;
        map.insert(variant.to_owned(), weight.into());
    }
    Ok(json!({"weights": map, "hold_s": hold_s}))
}

/// One line on a rollout: its state, step, weights and when the next step is due.
fn progress(flag: &str, r: &Value) -> String {
    let total = r["steps"].as_array().map_or(0, Vec::len);
    let step = r["step"].as_u64().unwrap_or(0) + 1;
    let weights: Vec<String> = r["weights"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(v, w)| format!("{v} {w}"))
        .collect();
    let mut line = format!(
        "{flag}: {}, step {step} of {total} ({})",
        cell(&r["state"]),
        weights.join(", ")
    );
    if r["state"] == "running" {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let next = r["next_at_ms"].as_u64().unwrap_or(0);
        line.push_str(&format!(
            ", next step in {} s",
            next.saturating_sub(now).div_ceil(1000)
        ));
    } else if r["state"] == "paused" {
        line.push_str(&format!(
            ", {} s of the step left",
            r["remaining_ms"].as_u64().unwrap_or(0).div_ceil(1000)
        ));
    }
    line
}

/// Runs `meridian flag …`.
pub async fn flag(client: &Client, command: Flag) -> anyhow::Result<()> {
    let out = client.output;
    let origin = client.writes();
    match command {
        Flag::Put {
            address,
            file,
            reason,
        } => {
            let (app, env, flag) = parts(&address)?;
            let body = read_json(&file)?;
            let url = match &flag {
                Some(f) => format!("{origin}/v1/flags/{app}/{env}/{f}"),
                None => format!("{origin}/v1/flags/{app}/{env}"),
            };
            let answer = client
                .with_body(reqwest::Method::PUT, with_reason(url, reason), body)
                .await?;
            print(out, &answer, |b| match &flag {
                Some(f) => println!(
                    "{app}/{env} flag {f} at version {} (revision {})",
                    cell(&b["version"]),
                    cell(&b["revision"])
                ),
                None => println!(
                    "{app}/{env} holds {} flags (revision {})",
                    cell(&b["flags"]),
                    cell(&b["revision"])
                ),
            })
        }
        Flag::Get { address } => {
            let (app, env, flag) = parts(&address)?;
            let url = match &flag {
                Some(f) => format!("{origin}/v1/flags/{app}/{env}/{f}"),
                None => format!("{origin}/v1/flags/{app}/{env}"),
            };
            let answer = client.get(url).await?;
            println!("{}", serde_json::to_string_pretty(&answer)?);
            Ok(())
        }
        Flag::List { namespace } => {
            let (app, env, None) = parts(&namespace)? else {
                anyhow::bail!("{namespace:?} is not app/env");
            };
            let answer = client.get(format!("{origin}/v1/flags/{app}/{env}")).await?;
            print(out, &answer, |b| {
                let rows = b["flags"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, f)| {
                        let variants: Vec<&str> = f["variants"]
                            .as_object()
                            .map(|v| v.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        let targeting = f["targeting"].as_object().is_some_and(|t| !t.is_empty());
                        vec![
                            k.clone(),
                            cell(&f["state"]),
                            cell(&f["defaultVariant"]),
                            variants.join(","),
                            if targeting { "yes".into() } else { "no".into() },
                        ]
                    })
                    .collect();
                table(&["flag", "state", "default", "variants", "targeting"], rows);
            })
        }
        Flag::Delete { address, reason } => {
            let (app, env, flag) = one_flag(&address)?;
            let url = with_reason(format!("{origin}/v1/flags/{app}/{env}/{flag}"), reason);
            let c = client.http()?;
            let answer = client.send(c.delete(&url), &url).await?;
            print(out, &answer, |b| {
                println!("deleted {flag} at revision {}", cell(&b["revision"]))
            })
        }
        Flag::Eval { address, context } => {
            let (app, env, flag) = parts(&address)?;
            let context: Value = serde_json::from_str(&context).context("--context is not JSON")?;
            let reads = client.endpoint.trim_end_matches('/');
            let url = match &flag {
                Some(f) => format!("{reads}/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags/{f}"),
                None => format!("{reads}/v1/flags/{app}/{env}/ofrep/v1/evaluate/flags"),
            };
            let c = client.http()?;
            let mut req = c.post(&url).json(&json!({ "context": context }));
            if let Some(t) = &client.token {
                req = req.bearer_auth(t);
            }
            let answer = req
                .send()
                .await
                .with_context(|| format!("contacting {url}"))?;
            let status = answer.status();
            let body: Value = answer
                .json()
                .await
                .with_context(|| format!("reading the answer from {url}"))?;
            if body.get("error").is_some() {
                anyhow::bail!(
                    "{status} {}: {}",
                    cell(&body["error"]["code"]),
                    cell(&body["error"]["message"])
                );
            }
            let rows_of = |items: Vec<&Value>| -> Vec<Vec<String>> {
                items
                    .into_iter()
                    .map(|e| {
                        vec![
                            cell(&e["key"]),
                            cell(&e["value"]),
                            cell(&e["variant"]),
                            cell(&e["reason"]),
                            cell(&e["errorCode"]),
                        ]
                    })
                    .collect()
            };
            print(out, &body, |b| {
                let items: Vec<&Value> = match b["flags"].as_array() {
                    Some(all) => all.iter().collect(),
                    None => vec![b],
                };
                table(
                    &["flag", "value", "variant", "reason", "error"],
                    rows_of(items),
                );
            })?;
            anyhow::ensure!(
                status.is_success(),
                "{status}: {}",
                cell(&body["errorDetails"])
            );
            Ok(())
        }
        Flag::History { address } => {
            let (app, env, flag) = one_flag(&address)?;
            let answer = client
                .get(format!("{origin}/v1/flags/{app}/{env}/{flag}/history"))
                .await?;
            print(out, &answer, |b| {
                let rows = b["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            cell(&i["version"]),
                            cell(&i["revision"]),
                            cell(&i["actor"]),
                            cell(&i["reason"]),
                            if i["deleted"] == true {
                                "(deleted)".into()
                            } else {
                                cell(&i["value"]["defaultVariant"])
                            },
                        ]
                    })
                    .collect();
                table(&["version", "revision", "actor", "reason", "default"], rows);
            })
        }
        Flag::Rollout {
            address,
            steps,
            pause,
            resume,
            abort,
            reason,
        } => {
            let (app, env, flag) = one_flag(&address)?;
            let url = format!("{origin}/v1/flags/{app}/{env}/{flag}/rollout");
            let answer = if !steps.is_empty() {
                let steps = steps
                    .iter()
                    .map(|s| parse_step(s))
                    .collect::<anyhow::Result<Vec<Value>>>()?;
                let body = json!({"steps": steps, "reason": reason});
                client.with_body(reqwest::Method::POST, url, body).await?
            } else if pause || resume || abort {
                let action = if pause {
                    "pause"
                } else if resume {
                    "resume"
                } else {
                    "abort"
                };
                let body = json!({"reason": reason});
                client
                    .with_body(reqwest::Method::POST, format!("{url}/{action}"), body)
                    .await?
            } else {
                client.get(url).await?
            };
            print(out, &answer, |b| println!("{}", progress(&flag, b)))
        }
        Flag::Rollback {
            address,
            version,
            reason,
        } => {
            let (app, env, flag) = one_flag(&address)?;
            let answer = client
                .with_body(
                    reqwest::Method::POST,
                    format!("{origin}/v1/flags/{app}/{env}/{flag}/rollback"),
                    json!({"version": version, "reason": reason}),
                )
                .await?;
            print(out, &answer, |b| {
                println!(
                    "{flag} back to version {version} (now version {}, revision {})",
                    cell(&b["version"]),
                    cell(&b["revision"])
                )
            })
        }
    }
}
