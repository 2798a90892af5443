//! Runs the `curl` examples of a Markdown page against a dev topology, in page order.
//!
//! Each ```sh block is read as shell: a `curl` command (continued over `\` line ends and open
//! quotes) followed by `#` lines is an example and its documented answer; other commands
//! (`meridian …`, `age-keygen`) are left to the CLI tests. In a documented answer `…` stands for
//! any text; everything else must be the answer's text exactly (`-i`: its status line and the
//! headers shown, then its body). An answer the page leaves out must still be a success. Every
//! JSON answer is also checked against the schema the OpenAPI document gives for its route and
//! status. Ports are the page's (`7070` the origin, `7081`–`7083` the edges) mapped to the test
//! topology's; before an edge is asked, it is given time to reach the origin's last write.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

/// What a page's run found.
pub struct Report {
    /// Examples sent.
    pub ran: usize,
    /// One paragraph per example whose answer differs.
    pub failures: Vec<String>,
}

/// One parsed `curl` command.
#[derive(Debug, Default)]
struct Curl {
    method: Option<String>,
    url: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    include_headers: bool,
    stream: bool,
}

/// Sends a page's examples.
pub struct Runner {
    origin: String,
    edges: Vec<String>,
    vars: HashMap<String, String>,
    last_write: u64,
    show: bool,
}

impl Runner {
    /// A runner for a topology at `origin` and `edges` (in region order); `vars` are the shell
    /// variables the page uses (`$MERIDIAN_TOKEN` is the admin token).
    pub fn new<const N: usize>(
        origin: String,
        edges: Vec<String>,
        vars: [(&str, String); N],
    ) -> Self {
        let mut map: HashMap<String, String> =
            vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        map.insert("MERIDIAN_TOKEN".into(), super::common::TOKEN.clone());
        Self {
            origin,
            edges,
            vars: map,
            last_write: 0,
            show: std::env::var_os("MERIDIAN_SHOW").is_some(),
        }
    }

    /// Runs every example of `page` in order.
    pub async fn run_page(&mut self, page: &str, origin_spec: &Value, edge_spec: &Value) -> Report {
        let mut report = Report {
            ran: 0,
            failures: Vec::new(),
        };
        for (line_no, command, answer) in examples(page) {
            // `NAME=$(curl … | jq -r .field)`: the field of the answer becomes `$NAME`.
            let (capture, text) = match capture(&command) {
                Some((name, field, inner)) => (Some((name, field)), inner),
                None => (None, command.as_str()),
            };
            let curl = match parse_curl(text, &self.vars) {
                Ok(Some(c)) => c,
                Ok(None) => continue,
                Err(e) => {
                    report
                        .failures
                        .push(format!("line {line_no}: {e}\n  {command}"));
                    continue;
                }
            };
            report.ran += 1;
            if curl.stream {
                if let Err(e) = self.run_stream(&curl, answer.as_deref()).await {
                    report
                        .failures
                        .push(format!("line {line_no}: {command}\n  {e}"));
                }
                continue;
            }
            let spec = if curl.url.contains(":7070") {
                origin_spec
            } else {
                edge_spec
            };
            match self.run_one(&curl, answer.as_deref(), spec).await {
                Ok(body) => {
                    if let Some((name, field)) = capture {
                        match body.as_ref().and_then(|b| b[field].as_str()) {
                            Some(v) => {
                                self.vars.insert(name.to_owned(), v.to_owned());
                            }
                            None => report.failures.push(format!(
                                "docs/API.md:{line_no}: {command}\n  the answer has no {field}"
                            )),
                        }
                    }
                }
                Err(e) => report
                    .failures
                    .push(format!("line {line_no}: {command}\n  {e}")),
            }
        }
        report
    }

    /// Sends one example and checks its answer; the answer's JSON, if it is JSON.
    async fn run_one(
        &mut self,
        curl: &Curl,
        answer: Option<&str>,
        spec: &Value,
    ) -> Result<Option<Value>, String> {
        let (port, path_and_query) = split_url(&curl.url)?;
        let base = match port {
            7070 => self.origin.clone(),
            7081..=7083 => self.edges[usize::from(port - 7081)].clone(),
            other => return Err(format!("port {other} is neither the origin nor an edge")),
        };
        let method = curl
            .method
            .clone()
            .unwrap_or_else(|| if curl.body.is_some() { "POST" } else { "GET" }.to_owned());
        if port != 7070 && self.last_write > 0 {
            wait_for_revision(&base, self.last_write).await?;
        }
        let client = reqwest::Client::new();
        let mut req = client.request(
            method
                .parse()
                .map_err(|e| format!("method {method}: {e}"))?,
            format!("{base}{path_and_query}"),
        );
        let mut authorization = false;
        let mut content_type = false;
        for (name, value) in &curl.headers {
            authorization |= name.eq_ignore_ascii_case("authorization");
            content_type |= name.eq_ignore_ascii_case("content-type");
            req = req.header(name, value);
        }
        if !authorization {
            req = req.bearer_auth(&self.vars["MERIDIAN_TOKEN"]);
        }
        if let Some(body) = &curl.body {
            if !content_type {
                req = req.header("content-type", "application/json");
            }
            req = req.body(body.clone());
        }
        let response = req
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let mut head = format!(
            "HTTP/1.1 {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| e.to_string())?;
        let body: Option<Value> = serde_json::from_str(&text).ok();
        if self.show {
            println!("--- {method} {path_and_query}\n{} {text}", status.as_u16());
        }
        if port == 7070
            && method != "GET"
            && status.is_success()
            && let Some(r) = body.as_ref().and_then(|b| b["revision"].as_u64())
        {
            self.last_write = self.last_write.max(r);
        }
        // The answer's shape: the schema of its route and status.
        if let Some(b) = &body {
            check_schema(spec, &method, path_and_query, status.as_u16(), b)?;
        }
        let Some(answer) = answer else {
            return if status.is_success() {
                Ok(body)
            } else {
                Err(format!("answered {status}: {text}"))
            };
        };
        let mut lines = answer.lines();
        let documented_body = if curl.include_headers {
            let status_line = lines.next().unwrap_or_default();
            if !glob(status_line.trim(), &head) {
                return Err(format!("status: documented `{status_line}`, got `{head}`"));
            }
            let mut rest = Vec::new();
            for line in lines.by_ref() {
                match line.split_once(": ") {
                    Some((name, value)) if !line.starts_with('{') => {
                        let got = headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("(absent)");
                        if !glob(value.trim(), got) {
                            return Err(format!(
                                "header {name}: documented `{value}`, got `{got}`"
                            ));
                        }
                    }
                    _ => rest.push(line.trim()),
                }
            }
            head.clear();
            rest.concat()
        } else {
            lines.map(str::trim).collect::<String>()
        };
        let documented_error = documented_body.starts_with("{\"error\"");
        if documented_error == status.is_success() {
            return Err(format!("answered {status}: {text}"));
        }
        if !glob(&documented_body, text.trim_end()) {
            return Err(format!(
                "documented:\n    {documented_body}\n  got:\n    {}",
                text.trim_end()
            ));
        }
        Ok(body)
    }
}

impl Runner {
    /// Reads an event stream (`curl -N`) until it has sent as many events as the page shows,
    /// and checks each line of them (comments, the stream's heartbeats, are not compared).
    async fn run_stream(&mut self, curl: &Curl, answer: Option<&str>) -> Result<(), String> {
        let answer = answer.ok_or("a stream example needs its documented events")?;
        // A line indented under the one before continues it.
        let mut documented: Vec<String> = Vec::new();
        for line in answer.lines() {
            match (line.starts_with("  "), documented.last_mut()) {
                (true, Some(last)) => last.push_str(line.trim()),
                _ => documented.push(line.trim().to_owned()),
            }
        }
        let events = documented
            .iter()
            .filter(|l| l.starts_with("event:"))
            .count();
        let (port, path_and_query) = split_url(&curl.url)?;
        let base = self.edges[usize::from(
            port.checked_sub(7081)
                .ok_or("streams are served by edges")?,
        )]
        .clone();
        if self.last_write > 0 {
            wait_for_revision(&base, self.last_write).await?;
        }
        let mut req = reqwest::Client::new()
            .get(format!("{base}{path_and_query}"))
            .bearer_auth(&self.vars["MERIDIAN_TOKEN"]);
        for (name, value) in &curl.headers {
            req = req.header(name, value);
        }
        let response = req.send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let mut response = response;
        let mut text = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let got: Vec<String> = loop {
            let lines: Vec<String> = text
                .lines()
                .filter(|l| !l.starts_with(':'))
                .map(str::to_owned)
                .collect();
            let seen = lines.iter().filter(|l| l.starts_with("event:")).count();
            // The events shown and the blank line that ends the last of them.
            if seen > events || (seen == events && text.ends_with("\n\n")) {
                let mut n = 0;
                break lines
                    .into_iter()
                    .take_while(|l| {
                        n += usize::from(l.starts_with("event:"));
                        n <= events
                    })
                    .collect();
            }
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
                Ok(other) => return Err(format!("the stream ended ({other:?}) after:\n{text}")),
                Err(_) => return Err(format!("{events} events did not arrive; got:\n{text}")),
            }
        };
        if self.show {
            println!("--- stream {path_and_query}\n{}", got.join("\n"));
        }
        let got: Vec<&str> = got.iter().map(|l| l.trim_end()).collect();
        let documented: Vec<&str> = documented.iter().map(String::as_str).collect();
        let matches =
            got.len() >= documented.len() && documented.iter().zip(&got).all(|(d, g)| glob(d, g));
        if matches {
            Ok(())
        } else {
            Err(format!(
                "documented:\n    {}\n  got:\n    {}",
                documented.join("\n    "),
                got.join("\n    ")
            ))
        }
    }
}

/// Waits (bounded) until the edge at `base` has applied `revision`.
async fn wait_for_revision(base: &str, revision: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status: Value = reqwest::get(format!("{base}/v1/status"))
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        if status["revision"].as_u64().unwrap_or(0) >= revision {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{base} did not reach revision {revision}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The port and the path (with query) of a page URL such as `localhost:7082/v1/kv/a/b/c?raw=true`.
fn split_url(url: &str) -> Result<(u16, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .strip_prefix("localhost:")
        .or_else(|| url.strip_prefix("127.0.0.1:"))
        .ok_or_else(|| format!("{url} is not on localhost"))?;
    let slash = rest.find('/').ok_or_else(|| format!("{url} has no path"))?;
    let port = rest[..slash]
        .parse()
        .map_err(|_| format!("{url}: bad port"))?;
    Ok((port, &rest[slash..]))
}

/// Whether `text` is `pattern` where each `…` stands for any text.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('…').collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    true
}

/// The operation of `spec` that routes `method path`: literal segments win over parameters.
fn operation<'a>(spec: &'a Value, method: &str, path: &str) -> Option<&'a Value> {
    let segments: Vec<&str> = path.split('/').collect();
    let mut best: Option<(usize, &Value)> = None;
    for (template, item) in spec["paths"].as_object()? {
        let t: Vec<&str> = template.split('/').collect();
        if t.len() != segments.len() {
            continue;
        }
        let mut literal = 0;
        let matches = t.iter().zip(&segments).all(|(a, b)| {
            if a.starts_with('{') {
                !b.is_empty()
            } else {
                literal += 1;
                a == b
            }
        });
        let Some(op) = item.get(method.to_ascii_lowercase()) else {
            continue;
        };
        if matches && best.is_none_or(|(l, _)| literal > l) {
            best = Some((literal, op));
        }
    }
    best.map(|(_, op)| op)
}

/// Checks `body` against the schema `spec` documents for the route and `status`.
fn check_schema(
    spec: &Value,
    method: &str,
    path_and_query: &str,
    status: u16,
    body: &Value,
) -> Result<(), String> {
    let path = path_and_query.split('?').next().unwrap_or_default();
    let op = operation(spec, method, path)
        .ok_or_else(|| format!("{method} {path} is not in the OpenAPI document"))?;
    let response = op["responses"]
        .get(status.to_string())
        .ok_or_else(|| format!("{method} {path}: status {status} is not documented"))?;
    let response = match response.get("$ref").and_then(Value::as_str) {
        Some(r) => spec.pointer(r.trim_start_matches('#')).unwrap_or(response),
        None => response,
    };
    let Some(schema) = response.pointer("/content/application~1json/schema") else {
        return Ok(());
    };
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": spec["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::validator_for(&root).map_err(|e| format!("schema: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} {status} does not match its schema: {}",
            errors.join("; ")
        ))
    }
}

/// Each example of `page`: its line, its command text and its documented answer, if any.
fn examples(page: &str) -> Vec<(usize, String, Option<String>)> {
    let mut out = Vec::new();
    let mut in_sh = false;
    let lines: Vec<&str> = page.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
            i += 1;
            continue;
        }
        if !in_sh || line.trim().is_empty() || line.starts_with('#') {
            i += 1;
            continue;
        }
        let start = i;
        let mut command = String::from(line);
        while (command.ends_with('\\') || open_quote(&command)) && i + 1 < lines.len() {
            i += 1;
            if command.ends_with('\\') {
                command.pop();
            } else {
                command.push('\n');
            }
            command.push_str(lines[i]);
        }
        i += 1;
        let mut answer = Vec::new();
        while i < lines.len() && lines[i].starts_with('#') {
            let a = lines[i].trim_start_matches('#');
            answer.push(a.strip_prefix(' ').unwrap_or(a).to_owned());
            i += 1;
        }
        out.push((
            start + 1,
            command,
            (!answer.is_empty()).then(|| answer.join("\n")),
        ));
    }
    out
}

/// `NAME=$(curl … | jq -r .field)` as (NAME, field, the curl command).
fn capture(command: &str) -> Option<(&str, &str, &str)> {
    let (name, rest) = command.split_once("=$(")?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return None;
    }
    let (inner, field) = rest.strip_suffix(')')?.rsplit_once(" | jq -r .")?;
    Some((name, field, inner))
}

/// Whether `s` ends inside a quote.
fn open_quote(s: &str) -> bool {
    words(s, &HashMap::new()).is_err()
}

/// Splits shell text into words: single and double quotes, `$VAR` in double quotes and bare
/// words, `\` escapes, a `#` comment; an error for an open quote.
fn words(s: &str, vars: &HashMap<String, String>) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars().peekable();
    let expand = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, into: &mut String| {
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                name.push(c);
                chars.next();
            } else {
                break;
            }
        }
        into.push_str(vars.get(&name).map(String::as_str).unwrap_or(""));
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("open single quote".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => w.extend(chars.next()),
                        Some('$') => expand(&mut chars, w),
                        Some(c) => w.push(c),
                        None => return Err("open double quote".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '$' => expand(&mut chars, word.get_or_insert_with(String::new)),
            '#' if word.is_none() => break,
            c if c.is_whitespace() => out.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(word);
    Ok(out)
}

/// A `curl` command's request, or `None` for another command.
fn parse_curl(command: &str, vars: &HashMap<String, String>) -> Result<Option<Curl>, String> {
    let words = words(command, vars)?;
    let Some(("curl", args)) = words.split_first().map(|(a, b)| (a.as_str(), b)) else {
        return Ok(None);
    };
    let mut curl = Curl::default();
    let mut args = args.iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-X" => curl.method = args.next().cloned(),
            "-d" | "--data" => curl.body = args.next().cloned(),
            "-H" => {
                let h = args.next().ok_or("-H without a header")?;
                let (n, v) = h.split_once(':').ok_or("a header without `:`")?;
                curl.headers
                    .push((n.trim().to_owned(), v.trim().to_owned()));
            }
            flags if flags.starts_with('-') && !flags.starts_with("--") => {
                for f in flags[1..].chars() {
                    match f {
                        's' => {}
                        'i' => curl.include_headers = true,
                        'N' => curl.stream = true,
                        other => return Err(format!("curl flag -{other} is not understood")),
                    }
                }
            }
            url => curl.url = url.to_owned(),
        }
    }
    if curl.url.is_empty() {
        return Err("curl without a URL".into());
    }
    Ok(Some(curl))
}
