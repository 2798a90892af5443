//! The admin UI in a real headless Chromium (Debian's `chromium` and `chromium-driver`, which
//! `scripts/test` installs), driven over WebDriver against a dev topology: sign in, browse the
//! resolved configuration, reveal a secret, edit a key (a value that breaks its JSON Schema is
//! refused in the page and never sent) and see the edge serve it, roll it back, propose a change
//! to a protected key, approve and apply it as a second identity, filter the audit log, and see
//! the edges and a flag's page.
//!
//! `MERIDIAN_SCREENSHOTS=1 cargo test --test ui_browser` also writes the main pages to
//! docs/ui/*.png.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

/// ChromeDriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start() -> Self {
        let port = meridian::dev::free_port([127, 0, 0, 1].into());
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/test installs chromium and chromium-driver)");
        Self { child, port }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session (its profile in `profile`), once ChromeDriver answers.
async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1366,900",
                format!("--user-data-dir={}", profile.display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.port);
    eventually(WAIT, "chromedriver starts a session", || {
        let caps = caps.clone();
        let url = url.clone();
        async move {
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await
}

/// The first element matching the XPath `xpath`, waiting for it.
async fn find(b: &Client, xpath: &str) -> fantoccini::elements::Element {
    b.wait()
        .at_most(WAIT)
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|e| panic!("{xpath} did not appear: {e}"))
}

/// Waits until the page's text contains `text`.
async fn see(b: &Client, text: &str) {
    let xpath = format!("//body[contains(., {})]", xpath_literal(text));
    find(b, &xpath).await;
}

fn xpath_literal(s: &str) -> String {
    if !s.contains('\'') {
        format!("'{s}'")
    } else {
        format!("concat('{}')", s.replace('\'', "', \"'\", '"))
    }
}

async fn go(b: &Client, url: &str) {
    b.goto(url).await.unwrap();
}

/// Replaces the content of the textarea or input found by `xpath` with `text`.
async fn fill(b: &Client, xpath: &str, text: &str) {
    let el = find(b, xpath).await;
    el.clear().await.unwrap();
    el.send_keys(text).await.unwrap();
}

async fn click(b: &Client, xpath: &str) {
    find(b, xpath).await.click().await.unwrap();
}

async fn sign_in(b: &Client, ui: &str, token: &str) {
    go(b, &format!("{ui}#/keys")).await;
    fill(b, "//input[@type='password']", token).await;
    click(b, "//button[@type='submit' and .='Sign in']").await;
    find(b, "//nav[not(@hidden)]").await;
}

/// Every control of the page has a label and every button a name (what a screen reader says
/// and keyboard users see focused).
async fn accessible(b: &Client, page: &str) {
    let unnamed = b
        .execute(
            "return [...document.querySelectorAll('input, select, textarea')]\
               .filter(e => !e.labels || e.labels.length === 0).map(e => e.outerHTML)\
               .concat([...document.querySelectorAll('button')]\
               .filter(e => !(e.getAttribute('aria-label') || e.textContent.trim())).map(e => e.outerHTML));",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        unnamed,
        json!([]),
        "{page}: controls without a label or name"
    );
}

/// Writes the page to docs/ui/NAME.png when screenshots are asked for.
async fn screenshot(b: &Client, name: &str) {
    if std::env::var_os("MERIDIAN_SCREENSHOTS").is_none() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/ui");
    std::fs::create_dir_all(&dir).unwrap();
    // Without the passing notes, from the top of the page.
    b.execute(
        "document.getElementById('toast').replaceChildren(); window.scrollTo(0, 0);",
        vec![],
    )
    .await
    .unwrap();
    let png = b.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The value the edge at `edge` serves for `path` once it has `revision`.
async fn edge_value(c: &reqwest::Client, edge: &str, path: &str, revision: u64) -> Value {
    let (status, body) = get_json(
        c,
        &format!("{edge}/v1/kv/{path}?min_revision={revision}&wait_ms=10000"),
    )
    .await;
    assert_eq!(status, 200, "{path} at {edge}: {body}");
    body
}

async fn origin_revision(c: &reqwest::Client, origin: &str) -> u64 {
    status(c, origin).await["revision"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_person_manages_configuration_through_the_admin_ui() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, _opts) = cluster(dir.path(), 10_000).await;
    let origin = base(cluster.origin.http_addr);
    let edge = base(cluster.edges[0].http_addr);
    let c = http();
    // What the person finds: a template, a schema, a secret, a flag and a protected env.
    put(&c, &origin, "payments/_/db.host", json!("db.internal")).await;
    put(
        &c,
        &origin,
        "payments/prod/db.url",
        json!("postgres://${db.host}/pay"),
    )
    .await;
    put(&c, &origin, "payments/prod/pool", json!({"max": 10})).await;
    let ok = |r: reqwest::Response| async move {
        let s = r.status();
        assert!(
            s.is_success(),
            "{s}: {}",
            r.text().await.unwrap_or_default()
        );
    };
    ok(c.put(format!("{origin}/v1/schemas/payments/prod/pool"))
        .json(&json!({"schema": {"type": "object", "properties": {"max": {"type": "integer", "maximum": 100}}}}))
        .send()
        .await
        .unwrap())
    .await;
    ok(
        c.put(format!("{origin}/v1/secrets/payments/prod/db.password"))
            .json(&json!({"value": "s3cret-ui-value"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    ok(c.put(format!("{origin}/v1/flags/payments/prod/new-checkout"))
        .json(&json!({"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off"}))
        .send()
        .await
        .unwrap())
    .await;
    ok(c.put(format!("{origin}/v1/protections/staging"))
        .json(&json!({"resources": ["payments/staging/*"], "approvals": 1}))
        .send()
        .await
        .unwrap())
    .await;
    let (reviewer, _) = create_token(
        &c,
        &origin,
        json!({"name": "reviewer", "role": "admin", "resources": ["*/*/*"]}),
    )
    .await;

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let b = browser(&driver, profile.path()).await;
    let ui = format!("{origin}/ui");

    // Sign in: a wrong token is refused in the page; the admin's opens the namespaces.
    go(&b, &format!("{ui}#/keys")).await;
    find(&b, "//h1[.='Sign in']").await;
    accessible(&b, "sign in").await;
    screenshot(&b, "signin").await;
    fill(&b, "//input[@type='password']", "mrdn_not-a-token").await;
    click(&b, "//button[.='Sign in']").await;
    find(&b, "//*[@role='alert' and contains(., 'unauthenticated')]").await;
    // With the keyboard only: on a fresh page the token field has the focus, Enter submits.
    b.refresh().await.unwrap();
    find(&b, "//input[@type='password']").await;
    let focused = b
        .active_element()
        .await
        .unwrap()
        .attr("type")
        .await
        .unwrap();
    assert_eq!(
        focused.as_deref(),
        Some("password"),
        "the token field has the focus"
    );
    b.active_element()
        .await
        .unwrap()
        .send_keys(&format!("{}\u{E007}", *TOKEN))
        .await
        .unwrap();
    find(&b, "//nav[not(@hidden)]").await;
    find(&b, "//table//a[.='payments']").await;
    accessible(&b, "namespaces").await;
    let fcp = b
        .execute(
            "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;",
            vec![],
        )
        .await
        .unwrap();
    println!("first contentful paint of /ui: {fcp} ms");

    // The resolved configuration: the template resolved, each key's level, the secret masked.
    go(&b, &format!("{ui}#/keys/payments/prod")).await;
    see(&b, "postgres://db.internal/pay").await;
    see(&b, "inherited from payments/_").await;
    accessible(&b, "configuration").await;
    let page = b.source().await.unwrap();
    assert!(
        !page.contains("s3cret-ui-value"),
        "a secret is masked until revealed"
    );
    screenshot(&b, "config").await;
    click(&b, "//button[@aria-label='Reveal db.password']").await;
    see(&b, "s3cret-ui-value").await;

    // Edit a key: a value its schema refuses never leaves the page; a valid one reaches the edge.
    go(&b, &format!("{ui}#/key/payments/prod/pool")).await;
    find(&b, "//h2[.='History']").await;
    accessible(&b, "key").await;
    fill(&b, "//textarea", r#"{"max": 1000}"#).await;
    click(&b, "//button[.='Save']").await;
    find(
        &b,
        "//*[@role='alert' and contains(., 'violates the schema')]",
    )
    .await;
    let (_, stored) = get_json(&c, &format!("{origin}/v1/kv/payments/prod/pool")).await;
    assert_eq!(stored["version"], 1, "nothing was sent: {stored}");
    fill(&b, "//textarea", r#"{"max": 20}"#).await;
    fill(
        &b,
        "//input[@placeholder='why (recorded in history)']",
        "more connections",
    )
    .await;
    click(&b, "//button[.='Save']").await;
    see(&b, "Version 2").await;
    let served = edge_value(
        &c,
        &edge,
        "payments/prod/pool",
        origin_revision(&c, &origin).await,
    )
    .await;
    assert_eq!(served["value"], json!({"max": 20}), "{served}");
    screenshot(&b, "key").await;

    // Roll it back to version 1 from its history.
    click(&b, "//button[@aria-label='Roll back to version 1']").await;
    see(&b, "Version 3").await;
    let served = edge_value(
        &c,
        &edge,
        "payments/prod/pool",
        origin_revision(&c, &origin).await,
    )
    .await;
    assert_eq!(served["value"], json!({"max": 10}), "{served}");
    assert_eq!(served["version"], 3);

    // A protected key: the write is refused, proposed as a change request, approved and
    // applied by a second identity.
    go(&b, &format!("{ui}#/key/payments/staging/timeout")).await;
    fill(&b, "//textarea", "60").await;
    fill(
        &b,
        "//input[@placeholder='why (recorded in history)']",
        "longer timeout",
    )
    .await;
    click(&b, "//button[.='Save']").await;
    find(
        &b,
        "//*[@role='alert' and contains(., 'approval_required')]",
    )
    .await;
    click(&b, "//button[.='Propose as a change request']").await;
    find(&b, "//h1[contains(., 'Change #1')]").await;
    see(&b, "pending").await;
    click(&b, "//button[.='Sign out']").await;
    sign_in(&b, &ui, &reviewer).await;
    go(&b, &format!("{ui}#/change/1")).await;
    see(&b, "longer timeout").await;
    accessible(&b, "change request").await;
    click(&b, "//button[.='Approve']").await;
    see(&b, "approved").await;
    screenshot(&b, "change").await;
    click(&b, "//button[.='Apply']").await;
    see(&b, "applied at revision").await;
    let served = edge_value(
        &c,
        &edge,
        "payments/staging/timeout",
        origin_revision(&c, &origin).await,
    )
    .await;
    assert_eq!(served["value"], 60, "{served}");

    // The audit log, filtered: the approval, by the reviewer.
    go(&b, &format!("{ui}#/audit")).await;
    find(&b, "//table").await;
    fill(&b, "//input[@placeholder='name or name#id']", "reviewer").await;
    fill(
        &b,
        "//input[@placeholder='write, token-create…']",
        "change-approve",
    )
    .await;
    click(&b, "//button[.='Filter']").await;
    // The filtered page replaces the first: one record, the reviewer's approval.
    let rows = eventually(WAIT, "the audit log filtered", || async {
        let rows = b.find_all(Locator::XPath("//table/tbody/tr")).await.ok()?;
        let mut texts = Vec::new();
        for row in &rows {
            texts.push(row.text().await.ok()?);
        }
        (texts.len() == 1).then_some(texts)
    })
    .await;
    assert!(
        rows[0].contains("reviewer#") && rows[0].contains("change-approve"),
        "{rows:?}"
    );
    accessible(&b, "audit log").await;
    screenshot(&b, "audit").await;

    // The edges on their map, and a flag's page (its targeting checked as JSON while typed).
    go(&b, &format!("{ui}#/edges")).await;
    find(
        &b,
        "//*[local-name()='svg' and contains(@aria-label, 'us-east')]",
    )
    .await;
    assert_eq!(
        b.find_all(Locator::XPath("//table/tbody/tr"))
            .await
            .unwrap()
            .len(),
        3
    );
    // Applied-config drift: an instance reporting an old revision is flagged outdated.
    let report = c
        .post(format!("{edge}/v1/applied/payments/prod"))
        .json(&json!({"instance": "pay-1", "revision": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(report.status(), 202);
    eventually(WAIT, "the origin hears the report", || async {
        let (_, d) = get_json(&c, &format!("{origin}/v1/drift/payments/prod")).await;
        (d["instances"] == 1).then_some(())
    })
    .await;
    fill(&b, "//input[@placeholder='payments']", "payments").await;
    fill(&b, "//input[@placeholder='prod']", "prod").await;
    click(&b, "//button[.='Show drift']").await;
    find(&b, "//td[.='pay-1']/..//span[.='outdated']").await;
    accessible(&b, "edges").await;
    screenshot(&b, "edges").await;
    // Evaluations at an edge come back as exposures, drawn as a chart per variant.
    for plan in ["pro", "free", "free"] {
        let r = c
            .post(format!(
                "{edge}/v1/flags/payments/prod/ofrep/v1/evaluate/flags/new-checkout"
            ))
            .json(&json!({"context": {"targetingKey": format!("user-{plan}"), "plan": plan}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually(WAIT, "the exposures are committed", || async {
        let (_, x) = get_json(
            &c,
            &format!("{origin}/v1/flags/payments/prod/new-checkout/exposures"),
        )
        .await;
        (x["total"] == 3).then_some(())
    })
    .await;
    go(&b, &format!("{ui}#/flag/payments/prod/new-checkout")).await;
    find(&b, "//h2[.='Exposures']").await;
    find(
        &b,
        "//*[local-name()='svg' and @aria-label='Exposures of new-checkout by variant: off 3']",
    )
    .await;
    accessible(&b, "flag").await;
    // A rollout started from the page shows its progress and can be paused.
    fill(
        &b,
        "//label[contains(., 'Percent per step')]/input",
        "10, 100",
    )
    .await;
    click(&b, "//button[.='Start rollout']").await;
    find(&b, "//progress[@aria-label='Rollout step 1 of 2']").await;
    click(&b, "//button[.='Pause']").await;
    find(&b, "//button[.='Resume']").await;
    let (_, rollout) = get_json(
        &c,
        &format!("{origin}/v1/flags/payments/prod/new-checkout/rollout"),
    )
    .await;
    assert_eq!(rollout["state"], "paused", "{rollout}");
    let targeting = "//label[contains(., 'Targeting')]/textarea";
    fill(&b, targeting, "{\"if\": [").await;
    see(&b, "not JSON").await;
    fill(
        &b,
        targeting,
        r#"{"if": [{"==": [{"var": "plan"}, "pro"]}, "on", "off"]}"#,
    )
    .await;
    click(
        &b,
        "//form[@aria-label='Definition of new-checkout']//button[.='Save']",
    )
    .await;
    see(&b, "Saved new-checkout").await;
    let (_, flag) = get_json(&c, &format!("{origin}/v1/flags/payments/prod/new-checkout")).await;
    assert_eq!(flag["targeting"]["if"][1], "on", "{flag}");
    screenshot(&b, "flag").await;

    b.close().await.unwrap();
    cluster.shutdown().await;
}
