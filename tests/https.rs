//! The client API over HTTPS: an origin and an edge given a certificate serve only TLS, and the
//! CLI and `meridian-client` verify them against a CA file.

mod common;

use common::*;
use meridian::dev::{REGIONS, edge_config, origin_cluster_configs, pki};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_edge_serve_https_verified_against_the_ca_file() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let opts = options(dir.path());
    let pki = pki(dir.path()).unwrap();
    // The dev origin certificate names 127.0.0.1; both listeners serve it.
    let https = meridian_net::tls::HttpsPaths {
        cert: pki.origin.cert.clone(),
        key: pki.origin.key.clone(),
    };
    let mut config = origin_cluster_configs(&opts, &pki).remove(0);
    config.https = Some(https.clone());
    let origin = meridian_origin::start(config).await.unwrap();
    let mut config = edge_config(
        dir.path(),
        &pki,
        REGIONS[0],
        "127.0.0.1:0".parse().unwrap(),
        origin.quic_addr,
    );
    config.https = Some(https);
    let edge = meridian_edge::start(config).await.unwrap();
    meridian::dev::wait_for_token(std::slice::from_ref(&edge), &TOKEN)
        .await
        .unwrap();
    let origin_url = format!("https://{}", origin.http_addr);
    let edge_url = format!("https://{}", edge.http_addr);

    // The CLI writes over HTTPS with the CA file, and refuses a server it cannot verify.
    let cli = |ca: Option<&std::path::Path>| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_meridian"));
        c.args(["kv", "put", "pay/prod/tls", "\"on\""])
            .env("MERIDIAN_ORIGIN", &origin_url)
            .env("MERIDIAN_ENDPOINT", &origin_url)
            .env("MERIDIAN_TOKEN", TOKEN.as_str())
            .env("RUST_LOG", "error");
        if let Some(ca) = ca {
            c.env("MERIDIAN_CA_FILE", ca);
        }
        c
    };
    let out = cli(Some(&pki.ca)).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(None).output().await.unwrap();
    assert!(!out.status.success(), "an unknown CA is refused");

    // The client library reads it at the edge over HTTPS.
    let client =
        meridian_client::Client::with_options(&edge_url, Some(&TOKEN), Some(&pki.ca)).unwrap();
    let got = eventually(WAIT, "the edge serves the write over HTTPS", || async {
        client.get("pay", "prod", "tls").await.ok()
    })
    .await;
    assert_eq!(got.value.value, json!("on"));

    // Plain HTTP to an HTTPS listener gets no answer.
    let plain = http()
        .get(format!("http://{}/v1/status", edge.http_addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    edge.shutdown().await;
    origin.shutdown().await;
}

const WAIT: std::time::Duration = std::time::Duration::from_secs(20);
