//! The client commands of the `meridian` binary: `kv`, `config`, `schema`, `txn` and `watch`
//! (through the `meridian-client` crate). Reads go
//! to `--endpoint` (any edge, or an origin node), writes and history to `--origin`; answers are
//! printed as JSON or as a table, and an error answer exits non-zero with its code and message.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

/// Where to send requests and how to print answers.
#[derive(Args, Debug, Clone)]
pub struct Client {
    /// Where reads go: any edge, or an origin node.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:7070",
        env = "MERIDIAN_ENDPOINT"
    )]
    pub endpoint: String,
    /// Where writes, history, diffs and schemas go: any origin node (followers forward to the
    /// leader). Defaults to --endpoint.
    #[arg(long, global = true, env = "MERIDIAN_ORIGIN")]
    pub origin: Option<String>,
    /// How answers are printed.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// The API token to present (`meridian dev` prints one; `meridian token create` makes
    /// more). Sent as `Authorization: Bearer`.
    #[arg(long, global = true, env = "MERIDIAN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate that `https://` nodes' certificates must chain to (the system's
    /// roots without it).
    #[arg(long, global = true, env = "MERIDIAN_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

/// Output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The API's JSON answer, pretty-printed.
    Json,
    /// Aligned columns for people.
    Table,
}

/// `meridian kv …`
#[derive(Subcommand, Debug)]
pub enum Kv {
    /// Read one key (templates resolved unless --raw).
    Get {
        /// `app/env/key`.
        address: String,
        /// Show the stored value, `${…}` references unresolved.
        #[arg(long)]
        raw: bool,
        /// JSON answered (marked as a default) when the key has no value.
        #[arg(long)]
        default: Option<String>,
    },
    /// Write one key; the value is JSON (a bare word that is not JSON is taken as a string).
    Put {
        /// `app/env/key`.
        address: String,
        /// The value.
        value: String,
        /// Refuse unless the key is at this version (0: must not exist).
        #[arg(long)]
        expect_version: Option<u64>,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Delete one key.
    Delete {
        /// `app/env/key`.
        address: String,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List the keys of `app/env`, by prefix or by name.
    List {
        /// `app/env`.
        namespace: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Only these keys (comma-separated).
        #[arg(long)]
        keys: Option<String>,
        /// Keys asked for per page of a prefix list (every page is fetched); the server's
        /// default (1,000) when not given.
        #[arg(long)]
        page_size: Option<usize>,
    },
    /// A key's history, newest first.
    History {
        /// `app/env/key`.
        address: String,
        /// Most versions shown.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Only versions below this one (to page on).
        #[arg(long)]
        before: Option<u64>,
    },
    /// What changed in a key between two versions, or in `app/env` between two revisions.
    Diff {
        /// `app/env/key` (versions) or `app/env` (revisions).
        address: String,
        /// The older version (or revision).
        #[arg(long)]
        from: u64,
        /// The newer version (or revision); the newest by default.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Roll a key back to a version, or `app/env` back to a revision, as one new revision.
    Rollback {
        /// `app/env/key` (with --version) or `app/env` (with --revision).
        address: String,
        /// The key's version to restore.
        #[arg(long, conflicts_with = "revision")]
        version: Option<u64>,
        /// The revision to restore the environment to.
        #[arg(long)]
        revision: Option<u64>,
        /// Why, recorded in the history.
        #[arg(long)]
        reason: Option<String>,
    },
}

/// `meridian config …`
#[derive(Subcommand, Debug)]
pub enum Config {
    /// The resolved configuration of APP in ENV, with the level each key came from.
    Show {
        /// The app.
        app: String,
        /// The environment.
        env: String,
        /// Show stored values, `${…}` references unresolved.
        #[arg(long)]
        raw: bool,
    },
}

/// `meridian schema …`
#[derive(Subcommand, Debug)]
pub enum Schema {
    /// Register the JSON Schema in FILE for keys of `app/env` starting with PREFIX.
    Put {
        /// `app/env/prefix`.
        address: String,
        /// A file holding the JSON Schema.
        file: PathBuf,
        /// Register even if current values violate it.
        #[arg(long)]
        force: bool,
    },
    /// Show the schema registered for `app/env/prefix`.
    Get {
        /// `app/env/prefix`.
        address: String,
    },
}

pub(crate) fn split(address: &str, parts: usize, what: &str) -> anyhow::Result<Vec<String>> {
    let v: Vec<String> = address.splitn(parts, '/').map(str::to_string).collect();
    anyhow::ensure!(
        v.len() == parts && v.iter().all(|p| !p.is_empty()),
        "{address:?} is not {what}"
    );
    Ok(v)
}

impl Client {
    pub(crate) fn reads(&self) -> String {
        self.endpoint.trim_end_matches('/').to_string()
    }

    pub(crate) fn writes(&self) -> String {
        self.origin
            .as_deref()
            .unwrap_or(&self.endpoint)
            .trim_end_matches('/')
            .to_string()
    }

    pub(crate) async fn send(
        &self,
        req: reqwest::RequestBuilder,
        url: &str,
    ) -> anyhow::Result<Value> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let answer = req
            .send()
            .await
            .with_context(|| format!("contacting {url}"))?;
        let status = answer.status();
        let body: Value = answer
            .json()
            .await
            .with_context(|| format!("reading the answer from {url}"))?;
        if !status.is_success() {
            let code = body["error"]["code"].as_str().unwrap_or("error");
            let message = body["error"]["message"].as_str().unwrap_or("");
            anyhow::bail!("{status} {code}: {message}");
        }
        Ok(body)
    }

    /// An HTTP client verifying `https://` nodes against `--ca-file`.
    pub(crate) fn http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(meridian_client::http_builder(self.ca_file.as_deref())?.build()?)
    }

    pub(crate) async fn get(&self, url: String) -> anyhow::Result<Value> {
        let c = self.http()?;
        self.send(c.get(&url), &url).await
    }

    pub(crate) async fn with_body(
        &self,
        method: reqwest::Method,
        url: String,
        body: Value,
    ) -> anyhow::Result<Value> {
        let c = self.http()?;
        self.send(c.request(method, &url).json(&body), &url).await
    }
}

/// A JSON value on one line, strings without quotes; a masked secret as its fingerprint.
pub(crate) fn cell(v: &Value) -> String {
    if v["secret"] == true && v.as_object().is_some_and(|o| o.len() == 2) {
        return format!("(secret {})", cell(&v["fingerprint"]));
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The value of an entry as a table shows it: a secret as its fingerprint, never a value.
pub(crate) fn value_cell(item: &Value) -> String {
    if item["secret"] == true {
        format!("(secret {})", cell(&item["fingerprint"]))
    } else {
        cell(&item["value"])
    }
}

/// Prints rows as aligned columns under a header.
pub(crate) fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn print(
    output: Output,
    body: &Value,
    as_table: impl FnOnce(&Value),
) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(body)?),
        Output::Table => as_table(body),
    }
    Ok(())
}

fn entry_rows(items: &Value) -> Vec<Vec<String>> {
    items
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                cell(&i["key"]),
                value_cell(i),
                cell(&i["version"]),
                cell(&i["revision"]),
            ]
        })
        .collect()
}

fn diff_rows(d: &Value, prefix: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for (kind, sign) in [("added", "+"), ("removed", "-"), ("changed", "~")] {
        for c in d[kind].as_array().into_iter().flatten() {
            let path = format!("{prefix}{}", cell(&c["path"]));
            rows.push(vec![
                sign.to_string(),
                if path.is_empty() { "/".into() } else { path },
                cell(&c["from"]),
                cell(&c["to"]),
            ]);
        }
    }
    rows
}

/// A value from the command line: JSON if it parses, a string otherwise.
pub(crate) fn value_arg(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

/// Runs `meridian kv …`.
pub async fn kv(client: &Client, command: Kv) -> anyhow::Result<()> {
    let out = client.output;
    match command {
        Kv::Get {
            address,
            raw,
            default,
        } => {
            split(&address, 3, "app/env/key")?;
            let mut url = format!("{}/v1/kv/{address}?raw={raw}", client.reads());
            if let Some(d) = default {
                url.push_str(&format!("&default={}", urlencode(&d)));
            }
            let body = client.get(url).await?;
            print(out, &body, |b| {
                table(
                    &["key", "value", "version", "revision"],
                    entry_rows(&json!([b])),
                )
            })
        }
        Kv::Put {
            address,
            value,
            expect_version,
            reason,
        } => {
            split(&address, 3, "app/env/key")?;
            let mut body = json!({"value": value_arg(&value)});
            if let Some(v) = expect_version {
                body["expect_version"] = json!(v);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            let url = format!("{}/v1/kv/{address}", client.writes());
            let answer = client.with_body(reqwest::Method::PUT, url, body).await?;
            print(out, &answer, |b| {
                table(
                    &["key", "value", "version", "revision"],
                    entry_rows(&json!([b])),
                )
            })
        }
        Kv::Delete { address, reason } => {
            split(&address, 3, "app/env/key")?;
            let mut url = format!("{}/v1/kv/{address}", client.writes());
            if let Some(r) = reason {
                url.push_str(&format!("?reason={}", urlencode(&r)));
            }
            let c = client.http()?;
            let answer = client.send(c.delete(&url), &url).await?;
            print(out, &answer, |b| {
                println!("deleted at revision {}", b["revision"])
            })
        }
        Kv::List {
            namespace,
            prefix,
            keys,
            page_size,
        } => {
            split(&namespace, 2, "app/env")?;
            let base = format!("{}/v1/kv/{namespace}", client.reads());
            let body = match keys {
                Some(k) => client.get(format!("{base}?keys={}", urlencode(&k))).await?,
                None => {
                    // Every page, each read at least at the first page's revision.
                    let mut first = format!("{base}?prefix={}", urlencode(&prefix));
                    if let Some(n) = page_size {
                        first.push_str(&format!("&limit={n}"));
                    }
                    let mut body = client.get(first.clone()).await?;
                    let min = body["revision"].as_u64().unwrap_or(0);
                    while let Some(cursor) = body["next_cursor"].as_str().map(str::to_owned) {
                        let url =
                            format!("{first}&cursor={}&min_revision={min}", urlencode(&cursor));
                        let mut page = client.get(url).await?;
                        let items = page["items"].as_array_mut().map(std::mem::take);
                        if let (Some(all), Some(items)) = (body["items"].as_array_mut(), items) {
                            all.extend(items);
                        }
                        if let (Some(all), Some(errors)) =
                            (body["errors"].as_object_mut(), page["errors"].as_object())
                        {
                            all.extend(errors.clone());
                        }
                        body["next_cursor"] = page["next_cursor"].take();
                    }
                    body
                }
            };
            print(out, &body, |b| {
                table(
                    &["key", "value", "version", "revision"],
                    entry_rows(&b["items"]),
                );
                for m in b["missing"].as_array().into_iter().flatten() {
                    println!("missing: {}", cell(m));
                }
                for (k, why) in b["errors"].as_object().into_iter().flatten() {
                    println!("unresolved: {k}: {}", cell(why));
                }
            })
        }
        Kv::History {
            address,
            limit,
            before,
        } => {
            split(&address, 3, "app/env/key")?;
            let mut url = format!("{}/v1/kv/{address}/history?limit={limit}", client.writes());
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let body = client.get(url).await?;
            print(out, &body, |b| {
                let rows = b["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| {
                        vec![
                            cell(&i["version"]),
                            cell(&i["revision"]),
                            cell(&i["time_ms"]),
                            cell(&i["actor"]),
                            if i["deleted"] == true {
                                "(deleted)".into()
                            } else {
                                cell(&i["value"])
                            },
                            cell(&i["reason"]),
                        ]
                    })
                    .collect();
                table(
                    &["version", "revision", "time_ms", "actor", "value", "reason"],
                    rows,
                );
                if !b["next_before"].is_null() {
                    println!("more: --before {}", b["next_before"]);
                }
            })
        }
        Kv::Diff { address, from, to } => {
            let to_q = to.map(|t| format!("&to={t}")).unwrap_or_default();
            let (url, whole_env) = if split(&address, 3, "app/env/key").is_ok() {
                (
                    format!("{}/v1/kv/{address}/diff?from={from}{to_q}", client.writes()),
                    false,
                )
            } else {
                split(&address, 2, "app/env or app/env/key")?;
                (
                    format!("{}/v1/diff/{address}?from={from}{to_q}", client.writes()),
                    true,
                )
            };
            let body = client.get(url).await?;
            print(out, &body, |b| {
                let mut rows = Vec::new();
                if whole_env {
                    for a in b["added"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            "+".into(),
                            cell(&a["key"]),
                            String::new(),
                            cell(&a["value"]),
                        ]);
                    }
                    for r in b["removed"].as_array().into_iter().flatten() {
                        rows.push(vec![
                            "-".into(),
                            cell(&r["key"]),
                            cell(&r["value"]),
                            String::new(),
                        ]);
                    }
                    for c in b["changed"].as_array().into_iter().flatten() {
                        rows.extend(diff_rows(c, &cell(&c["key"])));
                    }
                } else {
                    rows = diff_rows(b, "");
                }
                table(&["", "path", "from", "to"], rows);
            })
        }
        Kv::Rollback {
            address,
            version,
            revision,
            reason,
        } => {
            let (url, body) = match (version, revision) {
                (Some(v), None) => {
                    split(&address, 3, "app/env/key")?;
                    (
                        format!("{}/v1/kv/{address}/rollback", client.writes()),
                        json!({"version": v, "reason": reason}),
                    )
                }
                (None, Some(r)) => {
                    split(&address, 2, "app/env")?;
                    (
                        format!("{}/v1/rollback/{address}", client.writes()),
                        json!({"revision": r, "reason": reason}),
                    )
                }
                _ => anyhow::bail!("give --version (for app/env/key) or --revision (for app/env)"),
            };
            let answer = client.with_body(reqwest::Method::POST, url, body).await?;
            print(out, &answer, |b| {
                println!(
                    "rolled back to {}; now at revision {}",
                    b["rolled_back_to"], b["revision"]
                )
            })
        }
    }
}

/// Runs `meridian config …`.
pub async fn config(client: &Client, command: Config) -> anyhow::Result<()> {
    let Config::Show { app, env, raw } = command;
    let url = format!("{}/v1/config/{app}/{env}?raw={raw}", client.reads());
    let body = client.get(url).await?;
    print(client.output, &body, |b| {
        let rows = b["config"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| vec![k.clone(), cell(v), cell(&b["sources"][k])])
            .collect();
        table(&["key", "value", "from"], rows);
        for (k, why) in b["errors"].as_object().into_iter().flatten() {
            println!("unresolved: {k}: {}", cell(why));
        }
        println!("revision {}", b["revision"]);
    })
}

/// Runs `meridian schema …`.
pub async fn schema(client: &Client, command: Schema) -> anyhow::Result<()> {
    match command {
        Schema::Put {
            address,
            file,
            force,
        } => {
            split(&address, 3, "app/env/prefix")?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let schema: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let url = format!("{}/v1/schemas/{address}", client.writes());
            let answer = client
                .with_body(
                    reqwest::Method::PUT,
                    url,
                    json!({"schema": schema, "force": force}),
                )
                .await?;
            print(client.output, &answer, |_| {
                println!("schema registered for {address}")
            })
        }
        Schema::Get { address } => {
            split(&address, 3, "app/env/prefix")?;
            let url = format!("{}/v1/schemas/{address}", client.writes());
            let body = client.get(url).await?;
            // A schema is JSON either way.
            println!(
                "{}",
                serde_json::to_string_pretty(match client.output {
                    Output::Json => &body,
                    Output::Table => &body["schema"],
                })?
            );
            Ok(())
        }
    }
}

/// Runs `meridian txn FILE`: the file holds the body of `POST /v1/txn`.
pub async fn txn(client: &Client, file: PathBuf) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let body: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
    let url = format!("{}/v1/txn", client.writes());
    let answer = client.with_body(reqwest::Method::POST, url, body).await?;
    print(client.output, &answer, |b| {
        let rows = b["changed"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                vec![
                    format!(
                        "{}/{}/{}",
                        cell(&c["app"]),
                        cell(&c["env"]),
                        cell(&c["key"])
                    ),
                    cell(&c["version"]),
                    if c["deleted"] == true {
                        "deleted".into()
                    } else {
                        "put".into()
                    },
                ]
            })
            .collect();
        table(&["address", "version", "change"], rows);
        println!("revision {}", b["revision"]);
    })
}

/// Percent-encodes a query value.
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `meridian watch`: prints every event of an edge's watch as one JSON line
/// (`{"event":"change",...}` or `{"event":"resync",...}`) until interrupted or refused.
pub async fn watch(
    endpoint: &str,
    token: Option<&str>,
    ca_file: Option<&std::path::Path>,
    app: &str,
    env: &str,
    prefix: &str,
    since: Option<String>,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    use meridian_client::WatchEvent;
    let client = meridian_client::Client::with_options(endpoint, token, ca_file)?;
    let mut events = Box::pin(client.watch(app, env, prefix, since));
    while let Some(event) = events.next().await {
        let line = match event? {
            WatchEvent::Change {
                id,
                revision,
                app,
                env,
                key,
                value,
                version,
                actor,
                reason,
            } => json!({"event": "change", "id": id, "revision": revision, "app": app,
                        "env": env, "key": key, "deleted": value.is_none(), "value": value,
                        "version": version, "actor": actor, "reason": reason}),
            WatchEvent::Resync {
                id,
                revision,
                entries,
            } => json!({"event": "resync", "id": id, "revision": revision,
                        "entries": entries.into_iter().map(|(key, value, version)|
                            json!({"key": key, "value": value, "version": version}))
                            .collect::<Vec<_>>()}),
        };
        println!("{line}");
    }
    Ok(())
}

/// `meridian backup --out FILE`: the origin's `GET /v1/backup`, written 0600.
pub async fn backup(client: &Client, out: &std::path::Path) -> anyhow::Result<()> {
    let url = format!("{}/v1/backup", client.writes());
    let c = client.http()?;
    let req = match &client.token {
        Some(t) => c.get(&url).bearer_auth(t),
        None => c.get(&url),
    };
    let answer = req
        .send()
        .await
        .with_context(|| format!("contacting {url}"))?;
    let status = answer.status();
    if !status.is_success() {
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        anyhow::bail!(
            "{status} {}: {}",
            body["error"]["code"].as_str().unwrap_or("error"),
            body["error"]["message"].as_str().unwrap_or("")
        );
    }
    let bytes = answer
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    meridian_net::private::write_private(out, &bytes)
        .with_context(|| format!("writing {}", out.display()))?;
    let (info, _) = meridian_origin::backup::parse(&bytes)?;
    println!(
        "backup of revision {} (digest {}) from {} written to {}",
        info.revision,
        info.digest,
        info.node_id,
        out.display()
    );
    Ok(())
}
