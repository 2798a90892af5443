//! Applied-revision reports: a watch tells the edge which revision of its app/env this
//! instance has applied (`POST /v1/applied/{app}/{env}`), for the origin's drift view
//! (`GET /v1/drift/{app}/{env}`). An event counts as applied once the service asks the watch
//! for the next one. Reports go from one background task per watch at a time, again every
//! [`REPORT_EVERY`] so a stopped instance shows as silent; a failed report is retried with the
//! next one and never disturbs the watch.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// How often a watching instance reports again when nothing changed.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);
/// Longest instance name (longer ones are cut).
pub const MAX_INSTANCE_BYTES: usize = 128;
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The instance name reports go under by default: `MERIDIAN_INSTANCE`, else the host name
/// (a pod's name on Kubernetes), else `pid-<pid>`; made printable and cut to 128 bytes.
pub fn default_instance() -> String {
    let raw = std::env::var("MERIDIAN_INSTANCE")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()));
    sanitize(&raw)
}

/// `name` with every character that is not printable ASCII replaced by `-`, cut to
/// [`MAX_INSTANCE_BYTES`].
pub fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '-' })
        .take(MAX_INSTANCE_BYTES)
        .collect()
}

#[derive(Debug, Default)]
struct Progress {
    /// The newest revision applied.
    applied: Option<u64>,
    /// The last revision reported, and when.
    reported: Option<(u64, Instant)>,
    /// Whether a task is sending.
    sending: bool,
}

/// One watch's reporter.
pub(crate) struct Reporter {
    http: reqwest::Client,
    url: String,
    instance: String,
    prefix: String,
    progress: Arc<Mutex<Progress>>,
}

impl Reporter {
    pub(crate) fn new(
        http: reqwest::Client,
        endpoint: &str,
        app: &str,
        env: &str,
        prefix: &str,
        instance: String,
    ) -> Self {
        Self {
            http,
            url: format!(
                "{endpoint}/v1/applied/{}/{}",
                crate::encode(app),
                crate::encode(env)
            ),
            instance,
            prefix: prefix.to_owned(),
            progress: Default::default(),
        }
    }

    /// The service has applied `revision`.
    pub(crate) fn applied(&self, revision: u64) {
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.applied.is_some_and(|r| r >= revision) {
                return;
            }
            p.applied = Some(revision);
        }
        self.send_if_due();
    }

    /// Starts a sending task if the applied revision was not reported, or not for
    /// [`REPORT_EVERY`], and none is running.
    pub(crate) fn send_if_due(&self) {
        {
            let mut p = self.progress.lock().unwrap_or_else(|e| e.into_inner());
            if p.sending || !due(&p) {
                return;
            }
            p.sending = true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.progress
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sending = false;
            return;
        };
        let (http, url, instance, prefix, progress) = (
            self.http.clone(),
            self.url.clone(),
            self.instance.clone(),
            self.prefix.clone(),
            self.progress.clone(),
        );
        runtime.spawn(async move {
            loop {
                let revision = {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    match p.applied {
                        Some(r) if due(&p) => r,
                        _ => {
                            p.sending = false;
                            return;
                        }
                    }
                };
                let body = json!({"instance": instance, "revision": revision, "prefix": prefix});
                let sent = http
                    .post(&url)
                    .timeout(REPORT_TIMEOUT)
                    .json(&body)
                    .send()
                    .await;
                let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                match sent {
                    Ok(r) if r.status().is_success() => {
                        p.reported = Some((revision, Instant::now()));
                    }
                    failed => {
                        let why = match failed {
                            Ok(r) => r.status().to_string(),
                            Err(e) => e.to_string(),
                        };
                        tracing::debug!(%why, "reporting the applied revision failed");
                        // Tried again on the next event or keep-alive.
                        p.sending = false;
                        return;
                    }
                }
            }
        });
    }
}

fn due(p: &Progress) -> bool {
    match (p.applied, p.reported) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(a), Some((r, at))) => a != r || at.elapsed() >= REPORT_EVERY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_are_printable_and_bounded() {
        assert_eq!(sanitize("web 1\n"), "web-1-");
        assert_eq!(sanitize(&"é".repeat(200)).len(), MAX_INSTANCE_BYTES);
        assert!(!default_instance().is_empty());
    }

    #[test]
    fn a_report_is_due_when_the_revision_moved_or_time_passed() {
        let mut p = Progress::default();
        assert!(!due(&p));
        p.applied = Some(3);
        assert!(due(&p));
        p.reported = Some((3, Instant::now()));
        assert!(!due(&p));
        p.applied = Some(4);
        assert!(due(&p));
        p.reported = Some((4, Instant::now() - REPORT_EVERY));
        assert!(due(&p));
    }
}
