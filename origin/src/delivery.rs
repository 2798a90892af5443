//! The leader delivers webhook events: every [`TICK`], the node that leads Raft takes the
//! queued events that are due (the queue is replicated: see [`meridian_core::webhooks`]),
//! POSTs each to its subscription's URL signed as Standard Webhooks describe, and commits the
//! outcome (delivered, or failed and retried after a backoff). A new leader delivers what the
//! old one had not, under the same event ids.

use std::time::Duration;

use meridian_core::apply::{Command, Proposal};
use meridian_core::history::WriteMeta;
use meridian_core::webhooks::{self, QueuedEvent, Subscription, WebhookOp};

use crate::raft::state_machine::SharedCore;
use crate::webhooks::{WebhookSecret, sign};

/// How often the leader looks for due events.
pub const TICK: Duration = Duration::from_millis(200);
/// Most events attempted per tick.
pub const MAX_PER_TICK: usize = 64;
/// How long a receiver has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTPS client verifying receivers against the platform's roots (rustls with ring).
pub fn http_client() -> Result<reqwest::Client, String> {
    use rustls_platform_verifier::BuilderVerifierExt;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_platform_verifier()
        .map_err(|e| e.to_string())?
        .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())
}

/// One attempt: `Delivered` on a 2xx answer, `Failed` otherwise.
async fn attempt(client: &reqwest::Client, sub: &Subscription, event: &QueuedEvent) -> WebhookOp {
    let now_s = meridian_core::history::now_ms() / 1000;
    let Ok(secret) = WebhookSecret::parse(&sub.secret) else {
        return WebhookOp::Failed {
            seq: event.seq,
            status: None,
            error: "the subscription's secret does not parse".into(),
        };
    };
    let signature = sign(&secret, &event.id, now_s, event.body.as_bytes());
    let sent = client
        .post(&sub.url)
        .header("content-type", "application/json")
        .header("webhook-id", &event.id)
        .header("webhook-timestamp", now_s.to_string())
        .header("webhook-signature", signature)
        .body(event.body.clone())
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_success() => WebhookOp::Delivered {
            seq: event.seq,
            status: r.status().as_u16(),
        },
        Ok(r) => WebhookOp::Failed {
            seq: event.seq,
            status: Some(r.status().as_u16()),
            error: format!("the receiver answered {}", r.status()),
        },
        Err(e) => WebhookOp::Failed {
            seq: event.seq,
            status: None,
            error: e.to_string().chars().take(512).collect(),
        },
    }
}

/// Delivers due events while this node leads, until `shutdown`.
pub async fn deliver(
    core: SharedCore,
    cluster: crate::raft::cluster::Cluster,
    leads: impl Fn() -> bool + Send + 'static,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = match http_client() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for webhook deliveries");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = shutdown.changed() => return,
        }
        if !leads() {
            continue;
        }
        let now_ms = meridian_core::history::now_ms();
        let due = {
            let mut core = core.lock().unwrap_or_else(|e| e.into_inner());
            let subs = core.webhook_subscriptions().map(<[_]>::to_vec);
            let due = webhooks::due(core.state().backend(), now_ms, MAX_PER_TICK);
            match (subs, due) {
                (Ok(subs), Ok(due)) => due
                    .into_iter()
                    .filter_map(|e| {
                        let sub = subs.iter().find(|s| s.id == e.subscription)?.clone();
                        Some((sub, e))
                    })
                    .collect::<Vec<_>>(),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "could not read the webhook queue");
                    continue;
                }
            }
        };
        for (sub, event) in due {
            let outcome = attempt(&client, &sub, &event).await;
            if let WebhookOp::Failed { error, .. } = &outcome {
                tracing::info!(event = %event.id, subscription = sub.id, %error, "webhook delivery failed; retried later");
            }
            metrics::counter!(
                "meridian_origin_webhook_attempts_total",
                "outcome" => if matches!(outcome, WebhookOp::Delivered { .. }) { "delivered" } else { "failed" }
            )
            .increment(1);
            let proposal = Proposal {
                command: Command::Webhook(outcome),
                meta: WriteMeta {
                    time_ms: meridian_core::history::now_ms(),
                    actor: "webhooks".into(),
                    ..Default::default()
                },
            };
            if let Err(e) = cluster.write(proposal).await {
                tracing::debug!(error = %e, "a delivery's outcome was not committed; delivered again later");
                break;
            }
        }
    }
}
