//! The drift views: `meridian edges` (what each edge serves against the origin's history) and
//! `meridian drift` (which revision each service instance applied). Both ask any origin node,
//! which merges every member's view, and exit non-zero when anything is flagged.

use serde_json::Value;

use crate::cli::{Client, cell, print, table};

/// A row's flags, comma-separated.
fn flags(row: &Value) -> String {
    let flags: Vec<String> = row["flags"]
        .as_array()
        .into_iter()
        .flatten()
        .map(cell)
        .collect();
    flags.join(",")
}

/// The members the node asked could not reach, on standard error.
fn unreachable(body: &Value) {
    for u in body["unreachable_nodes"].as_array().into_iter().flatten() {
        eprintln!("unreachable: {}", cell(u));
    }
}

/// `meridian edges`: the drift view of every edge the endpoint's cluster has heard from (the
/// origin node asked merges every member's view); with `--output table`, flagged edges are
/// marked. Exits non-zero when any edge is flagged, so scripts and alerts can use it.
pub async fn edges(client: &Client, lag_threshold_ms: Option<u64>) -> anyhow::Result<()> {
    let origin = client.writes();
    let query = lag_threshold_ms.map_or(String::new(), |t| format!("?lag_threshold_ms={t}"));
    let body = client.get(format!("{origin}/v1/edges{query}")).await?;
    let flagged = body["flagged"].as_u64().unwrap_or(0);
    print(client.output, &body, |b| {
        let rows = b["edges"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    cell(&r["edge_id"]),
                    cell(&r["region"]),
                    cell(&r["revision"]),
                    match r["digest_match"].as_bool() {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => "?".into(),
                    },
                    cell(&r["behind_revisions"]),
                    cell(&r["lag_ms"]),
                    cell(&r["last_report_ms"]),
                    flags(r),
                ]
            })
            .collect();
        table(
            &[
                "edge",
                "region",
                "revision",
                "digest",
                "behind",
                "lag_ms",
                "report_ms",
                "flags",
            ],
            rows,
        );
        unreachable(b);
    })?;
    anyhow::ensure!(flagged == 0, "{flagged} edge(s) flagged");
    Ok(())
}

/// `meridian drift APP ENV`: every service instance of `app/env` the cluster has heard from,
/// with the revision it applied; `outdated`, `unapproved`, `ahead` and `silent` instances are
/// flagged and make the exit status non-zero.
pub async fn drift(
    client: &Client,
    app: &str,
    env: &str,
    silent_after_ms: Option<u64>,
) -> anyhow::Result<()> {
    let origin = client.writes();
    let query = silent_after_ms.map_or(String::new(), |t| format!("?silent_after_ms={t}"));
    let body = client
        .get(format!("{origin}/v1/drift/{app}/{env}{query}"))
        .await?;
    let flagged = body["flagged"].as_u64().unwrap_or(0);
    print(client.output, &body, |b| {
        println!(
            "{app}/{env}: revision {}, last changed at {}; {} instance(s)",
            cell(&b["revision"]),
            cell(&b["current_revision"]),
            cell(&b["instances"])
        );
        let rows = b["rows"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                vec![
                    cell(&r["instance"]),
                    cell(&r["revision"]),
                    cell(&r["current_revision"]),
                    cell(&r["prefix"]),
                    cell(&r["via"]),
                    cell(&r["last_report_ms"]),
                    flags(r),
                ]
            })
            .collect();
        table(
            &[
                "instance",
                "revision",
                "current",
                "prefix",
                "via",
                "report_ms",
                "flags",
            ],
            rows,
        );
        unreachable(b);
    })?;
    anyhow::ensure!(flagged == 0, "{flagged} instance(s) flagged");
    Ok(())
}
