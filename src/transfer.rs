//! The file formats of `meridian export` and `meridian import`: one app/env's keys as a flat
//! document (`key → value`) in JSON, YAML, `.env` or Java properties.
//!
//! JSON and YAML keep every value's JSON type. A secret is the object `{"$secret": value}`
//! when revealed, `{"$secret": null, "fingerprint": …}` when masked (import leaves a masked
//! secret as it is). `.env` and properties hold text: strings as they are, other values as
//! JSON text, and import reads back as JSON whatever parses as JSON (so a string `"8080"`
//! comes back a number); masked secrets are left out with a comment. In `.env`, keys are upper
//! case with `.` as `__` and `-` as `_` (`db.max-pool` ↔ `DB__MAX_POOL`; import writes
//! `db.max_pool`).

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::{Map, Value};

/// A document format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON object.
    Json,
    /// A YAML mapping.
    Yaml,
    /// `KEY=value` lines.
    Env,
    /// Java `.properties`.
    Properties,
}

impl Format {
    /// The format a file name suggests.
    pub fn of_path(path: &std::path::Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?;
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        match ext {
            "json" => Some(Format::Json),
            "yaml" | "yml" => Some(Format::Yaml),
            "properties" => Some(Format::Properties),
            "env" => Some(Format::Env),
            _ if name == ".env" || name.starts_with(".env.") => Some(Format::Env),
            _ => None,
        }
    }
}

/// One key's value in a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A plain value.
    Value(Value),
    /// A secret's value, revealed.
    Secret(Value),
    /// A secret that was not revealed (its fingerprint): import leaves it as it is.
    Masked(String),
    /// A secret's value encrypted to age recipients: `ENC[age,<base64 of the age file>]`, the
    /// age file holding the value's JSON text ([`encrypt`], [`decrypt`]).
    Encrypted(String),
}

/// How an encrypted secret's text starts.
const ENCRYPTED_PREFIX: &str = "ENC[age,";

/// Whether `text` is an encrypted secret.
pub fn is_encrypted(text: &str) -> bool {
    text.starts_with(ENCRYPTED_PREFIX) && text.ends_with(']')
}

/// Parses age X25519 recipients (`age1…`, as `age-keygen` prints them).
pub fn recipients(texts: &[String]) -> anyhow::Result<Vec<age::x25519::Recipient>> {
    texts
        .iter()
        .map(|t| {
            t.trim()
                .parse::<age::x25519::Recipient>()
                .map_err(|e| anyhow::anyhow!("--encrypt-to {t:?} is not an age recipient: {e}"))
        })
        .collect()
}

/// Reads the age X25519 identities (`AGE-SECRET-KEY-1…` lines; `#` comments) of an identity
/// file, as `age-keygen` writes it.
pub fn identities(text: &str) -> anyhow::Result<Vec<age::x25519::Identity>> {
    let ids: Vec<_> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.parse::<age::x25519::Identity>()
                .map_err(|e| anyhow::anyhow!("not an age identity: {e}"))
        })
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(!ids.is_empty(), "the identity file holds no age identity");
    Ok(ids)
}

/// `value` encrypted to every one of `recipients` (at least one).
pub fn encrypt(value: &Value, recipients: &[age::x25519::Recipient]) -> anyhow::Result<String> {
    use base64::Engine;
    use std::io::Write;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
            .map_err(|e| anyhow::anyhow!("encrypting a secret: {e}"))?;
    let mut out = Vec::new();
    let mut w = encryptor.wrap_output(&mut out)?;
    w.write_all(value.to_string().as_bytes())?;
    w.finish()?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(out);
    Ok(format!("{ENCRYPTED_PREFIX}{b64}]"))
}

/// The value an encrypted secret holds, opened with one of `identities`.
pub fn decrypt(text: &str, identities: &[age::x25519::Identity]) -> anyhow::Result<Value> {
    use base64::Engine;
    use std::io::Read;
    let b64 = text
        .strip_prefix(ENCRYPTED_PREFIX)
        .and_then(|t| t.strip_suffix(']'))
        .context("not an encrypted secret")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("an encrypted secret that is not base64")?;
    let decryptor = age::Decryptor::new(&bytes[..])?;
    let mut plain = Vec::new();
    decryptor
        .decrypt(identities.iter().map(|i| i as &dyn age::Identity))
        .map_err(|e| anyhow::anyhow!("opening an encrypted secret: {e}"))?
        .read_to_end(&mut plain)?;
    serde_json::from_slice(&plain).context("an encrypted secret that does not hold JSON")
}

/// A document: keys in order, each with its item.
pub type Document = BTreeMap<String, Item>;

const SECRET: &str = "$secret";

fn item_json(item: &Item) -> Value {
    match item {
        Item::Value(v) => v.clone(),
        Item::Secret(v) => Value::Object(Map::from_iter([(SECRET.to_owned(), v.clone())])),
        Item::Masked(f) => serde_json::json!({ SECRET: null, "fingerprint": f }),
        Item::Encrypted(text) => Value::String(text.clone()),
    }
}

fn json_item(v: Value) -> Item {
    if let Value::String(s) = &v
        && is_encrypted(s)
    {
        return Item::Encrypted(s.clone());
    }
    if let Value::Object(o) = &v
        && o.contains_key(SECRET)
        && o.keys().all(|k| k == SECRET || k == "fingerprint")
    {
        return match &o[SECRET] {
            Value::Null => Item::Masked(
                o.get("fingerprint")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            ),
            secret => Item::Secret(secret.clone()),
        };
    }
    Item::Value(v)
}

/// Text of a value for `.env` and properties: strings as they are, others as JSON.
fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A value read from `.env` or properties text: JSON when it parses, a string otherwise.
fn value_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// The item of a `.env` or properties value.
fn text_item(text: &str) -> Item {
    if is_encrypted(text) {
        Item::Encrypted(text.to_owned())
    } else {
        Item::Value(value_of(text))
    }
}

/// `db.max-pool` → `DB__MAX_POOL`.
pub fn env_name(key: &str) -> String {
    key.replace('.', "__").replace('-', "_").to_uppercase()
}

/// `DB__MAX_POOL` → `db.max_pool`.
pub fn key_of_env_name(name: &str) -> String {
    name.to_lowercase().replace("__", ".")
}

/// Writes `doc` in `format`.
pub fn write(doc: &Document, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => {
            let o: Map<String, Value> =
                doc.iter().map(|(k, i)| (k.clone(), item_json(i))).collect();
            let mut s = serde_json::to_string_pretty(&Value::Object(o))?;
            s.push('\n');
            s
        }
        Format::Yaml => {
            let o: Map<String, Value> =
                doc.iter().map(|(k, i)| (k.clone(), item_json(i))).collect();
            serde_norway::to_string(&Value::Object(o))?
        }
        Format::Env => {
            let mut out = String::new();
            for (k, item) in doc {
                match item {
                    Item::Value(v) | Item::Secret(v) => {
                        let text = text_of(v);
                        // Double quotes with escapes: dotenvy reads them back exactly.
                        let quoted = text
                            .replace('\\', "\\\\")
                            .replace('"', "\\\"")
                            .replace('\n', "\\n")
                            .replace('$', "\\$");
                        out.push_str(&format!("{}=\"{quoted}\"\n", env_name(k)));
                    }
                    Item::Masked(f) => out.push_str(&format!("# {k}: secret {f}, not revealed\n")),
                    Item::Encrypted(text) => {
                        out.push_str(&format!("{}=\"{text}\"\n", env_name(k)));
                    }
                }
            }
            out
        }
        Format::Properties => {
            let mut buf = Vec::new();
            {
                let mut w = java_properties::PropertiesWriter::new(&mut buf);
                for (k, item) in doc {
                    match item {
                        Item::Value(v) | Item::Secret(v) => w.write(k, &text_of(v))?,
                        Item::Masked(f) => {
                            w.write_comment(&format!("{k}: secret {f}, not revealed"))?
                        }
                        Item::Encrypted(text) => w.write(k, text)?,
                    }
                }
                w.finish()?;
            }
            String::from_utf8(buf)?
        }
    })
}

/// Reads a document in `format`.
pub fn read(text: &str, format: Format) -> anyhow::Result<Document> {
    let object = |v: Value| -> anyhow::Result<Document> {
        let Value::Object(o) = v else {
            anyhow::bail!("the document must be an object of keys and values");
        };
        Ok(o.into_iter().map(|(k, v)| (k, json_item(v))).collect())
    };
    match format {
        Format::Json => object(serde_json::from_str(text).context("not JSON")?),
        Format::Yaml => object(serde_norway::from_str(text).context("not YAML")?),
        Format::Env => {
            let mut doc = Document::new();
            for pair in dotenvy::from_read_iter(text.as_bytes()) {
                let (name, value) = pair.context("not a .env file")?;
                doc.insert(key_of_env_name(&name), text_item(&value));
            }
            Ok(doc)
        }
        Format::Properties => {
            let map = java_properties::read(text.as_bytes()).context("not a properties file")?;
            Ok(map.into_iter().map(|(k, v)| (k, text_item(&v))).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn sample() -> Document {
        Document::from([
            ("db.url".into(), Item::Value(json!("postgres://h/db?x=1"))),
            (
                "pool".into(),
                Item::Value(json!({"max": 10, "debug": true})),
            ),
            (
                "weird".into(),
                Item::Value(json!("a \"quoted\" $HOME\nline")),
            ),
            ("db.password".into(), Item::Secret(json!("s3cret"))),
            ("api.key".into(), Item::Masked("ab12".into())),
        ])
    }

    #[test]
    fn json_and_yaml_keep_types_and_secrets() {
        for format in [Format::Json, Format::Yaml] {
            let text = write(&sample(), format).unwrap();
            assert_eq!(
                read(&text, format).unwrap(),
                sample(),
                "{format:?}:\n{text}"
            );
        }
    }

    #[test]
    fn env_and_properties_keep_text_and_leave_masked_secrets_out() {
        for format in [Format::Env, Format::Properties] {
            let text = write(&sample(), format).unwrap();
            let back = read(&text, format).unwrap();
            assert!(!back.contains_key("api.key"), "{text}");
            assert_eq!(
                back["pool"],
                Item::Value(json!({"max": 10, "debug": true})),
                "{text}"
            );
            assert_eq!(
                back["weird"],
                Item::Value(json!("a \"quoted\" $HOME\nline")),
                "{text}"
            );
            // The secret comes back as its value (import writes it as a secret because the
            // key holds one).
            let key = |k: &str| match format {
                Format::Env => key_of_env_name(&env_name(k)),
                _ => k.to_owned(),
            };
            assert_eq!(
                back[&key("db.password")],
                Item::Value(json!("s3cret")),
                "{text}"
            );
            assert_eq!(
                back[&key("db.url")],
                Item::Value(json!("postgres://h/db?x=1")),
                "{text}"
            );
        }
    }

    #[test]
    fn encrypted_secrets_survive_every_format_and_open_only_with_a_recipients_identity() {
        let key = age::x25519::Identity::generate();
        let other = age::x25519::Identity::generate();
        let to = recipients(&[key.to_public().to_string()]).unwrap();
        let secret = json!({"user": "app", "password": "s3cret \"quoted\""});
        let sealed = encrypt(&secret, &to).unwrap();
        assert!(
            is_encrypted(&sealed) && !sealed.contains("s3cret"),
            "{sealed}"
        );
        let doc = Document::from([("db.creds".to_owned(), Item::Encrypted(sealed.clone()))]);
        for format in [Format::Json, Format::Yaml, Format::Env, Format::Properties] {
            let text = write(&doc, format).unwrap();
            assert!(!text.contains("s3cret"), "{format:?}: {text}");
            let back = read(&text, format).unwrap();
            let item = back.values().next().unwrap();
            assert_eq!(item, &Item::Encrypted(sealed.clone()), "{format:?}: {text}");
        }
        use age::secrecy::ExposeSecret;
        let file = format!("# created: now\n{}\n", key.to_string().expose_secret());
        assert_eq!(
            decrypt(&sealed, &identities(&file).unwrap()).unwrap(),
            secret
        );
        assert!(decrypt(&sealed, &[other]).is_err());
        assert!(identities("# nothing\n").is_err());
        assert!(recipients(&["age1nope".into()]).is_err());
        assert!(decrypt("ENC[age,!!]", &identities(&file).unwrap()).is_err());
    }

    #[test]
    fn formats_follow_the_file_name() {
        let f = |p: &str| Format::of_path(std::path::Path::new(p));
        assert_eq!(f("prod.yml"), Some(Format::Yaml));
        assert_eq!(f("/x/.env"), Some(Format::Env));
        assert_eq!(f(".env.production"), Some(Format::Env));
        assert_eq!(f("app.properties"), Some(Format::Properties));
        assert_eq!(f("dump.bin"), None);
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[ -~\\n]{0,20}".prop_map(Value::String),
        ];
        leaf.prop_recursive(2, 8, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// JSON and YAML give back exactly what they were given.
        #[test]
        fn typed_formats_round_trip(entries in prop::collection::btree_map("[a-z][a-z0-9_.-]{0,12}", value(), 0..8)) {
            let doc: Document = entries.into_iter().map(|(k, v)| (k, json_item(v))).collect();
            for format in [Format::Json, Format::Yaml] {
                let text = write(&doc, format).unwrap();
                prop_assert_eq!(&read(&text, format).unwrap(), &doc);
            }
        }

        /// `.env` and properties give back every string exactly, whatever it holds, as long as
        /// it does not parse as JSON.
        #[test]
        fn text_formats_keep_strings(s in "[ -~\\n\\t]{0,30}") {
            prop_assume!(serde_json::from_str::<Value>(&s).is_err());
            let doc = Document::from([("k".to_owned(), Item::Value(Value::String(s.clone())))]);
            for format in [Format::Env, Format::Properties] {
                let text = write(&doc, format).unwrap();
                prop_assert_eq!(&read(&text, format).unwrap(), &doc, "{:?}: {}", format, text);
            }
        }
    }
}
