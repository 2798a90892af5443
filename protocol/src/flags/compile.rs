//! Checking and compiling a flag set: `$ref` expansion, the bounds on rules, the variants a
//! rule can name, and JsonLogic compilation (once per revision, never per request).

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use datalogic_rs::{Engine, EvaluationConfig, Logic};
use serde_json::{Map, Value};

use super::document::{FlagDocument, flag_of_record, validate_flag_key};
use super::{MAX_RULE_DEPTH, MAX_RULE_NODES};
use crate::model::{EntryState, Revision};

/// The one JsonLogic engine: JsonLogic plus flagd's `fractional`, `sem_ver`, `starts_with`
/// and `ends_with`, with its own recursion bound above [`MAX_RULE_DEPTH`].
pub(super) static ENGINE: LazyLock<Engine> = LazyLock::new(|| {
    Engine::builder()
        .with_config(
            EvaluationConfig::default().with_max_recursion_depth(2 * MAX_RULE_DEPTH as u32),
        )
        .build()
});

/// Why a flag set was refused: the JSON pointer of the offending part and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// JSON pointer into the flagd document, such as `/flags/banner/defaultVariant`.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl CompileError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// One variant: its value and that value's JSON text, ready to embed in an answer.
#[derive(Debug, Clone)]
pub struct Variant {
    /// The variant's value.
    pub value: Value,
    /// `value` as JSON text.
    pub json: Box<str>,
}

/// A flag ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledFlag {
    /// The flag key.
    pub key: String,
    /// `state` is `ENABLED`.
    pub enabled: bool,
    /// Variants by name.
    pub variants: BTreeMap<String, Variant>,
    /// The variant served when targeting does not decide; `None` means the caller's code
    /// default.
    pub default_variant: Option<String>,
    /// The compiled targeting rule (`None`: no targeting, the answer is static).
    pub(super) targeting: Option<Arc<Logic>>,
    /// The rule buckets by the implicit key (flag key + `targetingKey`), so a context without
    /// a targeting key cannot be bucketed.
    pub(super) implicit_bucketing: bool,
    /// The rule reads `$flagd.timestamp`, so its answer can change with time alone.
    pub(super) uses_time: bool,
    /// Flag-set metadata with the flag's own metadata over it.
    pub metadata: Map<String, Value>,
    /// `metadata` as JSON text (empty when there is none).
    pub(super) metadata_json: Box<str>,
    /// Why the stored definition could not be compiled here (evaluates to PARSE_ERROR).
    pub broken: Option<String>,
}

/// The compiled flags of one app/env at one revision.
#[derive(Debug, Clone, Default)]
pub struct FlagSet {
    /// Flags by key.
    pub flags: BTreeMap<String, CompiledFlag>,
    /// The flag-set metadata.
    pub metadata: Map<String, Value>,
    /// The newest revision that changed any record of the set (deletions included).
    pub revision: Revision,
    /// Some flag's rule reads `$flagd.timestamp`.
    pub uses_time: bool,
}

impl FlagSet {
    /// The entity tag of a bulk evaluation of this set for request `body` at `now_s`: it
    /// changes when any flag record changes, when the context changes, and (only for sets
    /// whose rules read `$flagd.timestamp`) every second.
    pub fn etag(&self, body: &[u8], now_s: i64) -> String {
        let mut h = blake3::Hasher::new();
        h.update(&self.revision.0.to_le_bytes());
        if self.uses_time {
            h.update(&now_s.to_le_bytes());
        }
        h.update(body);
        let hash = h.finalize();
        format!("\"{}\"", hex::encode(&hash.as_bytes()[..12]))
    }
}

/// Checks and compiles a whole document, refusing it at its first error: what the origin
/// runs before it accepts a write.
pub fn compile_document(document: &FlagDocument) -> Result<FlagSet, CompileError> {
    for (name, rule) in &document.evaluators {
        let path = format!("/$evaluators/{}", escape(name));
        let mut nodes = 0;
        expand(rule, &document.evaluators, &path, 0, &mut nodes)?;
    }
    check_metadata(&document.metadata, "/metadata")?;
    let mut set = FlagSet {
        metadata: document.metadata.clone(),
        ..FlagSet::default()
    };
    for (key, definition) in &document.flags {
        validate_flag_key(key).map_err(|e| CompileError::new("/flags", e.to_string()))?;
        let flag = compile_flag(key, definition, document)?;
        set.uses_time |= flag.uses_time;
        set.flags.insert(key.clone(), flag);
    }
    Ok(set)
}

/// Compiles the flag records of a namespace as an edge holds them. A flag that does not
/// compile here is kept, marked [`CompiledFlag::broken`], so it answers PARSE_ERROR rather
/// than vanish.
pub fn compile_namespace(namespace: &BTreeMap<String, EntryState>) -> FlagSet {
    let document = FlagDocument::from_namespace(namespace);
    let revision = namespace
        .range("_".to_owned()..)
        .take_while(|(k, _)| k.starts_with('_'))
        .filter(|(k, _)| super::is_flag_record(k))
        .map(|(_, e)| e.revision)
        .max()
        .unwrap_or_default();
    let mut set = FlagSet {
        metadata: document.metadata.clone(),
        revision,
        ..FlagSet::default()
    };
    for (key, entry) in namespace {
        let Some(flag) = flag_of_record(key) else {
            continue;
        };
        if entry.is_tombstone() {
            continue;
        }
        let compiled = match document.flags.get(flag) {
            Some(definition) => compile_flag(flag, definition, &document),
            None => Err(CompileError::new("/flags", "not JSON")),
        };
        let compiled = compiled.unwrap_or_else(|e| CompiledFlag {
            key: flag.to_owned(),
            enabled: true,
            variants: BTreeMap::new(),
            default_variant: None,
            targeting: None,
            implicit_bucketing: false,
            uses_time: false,
            metadata: Map::new(),
            metadata_json: "".into(),
            broken: Some(e.to_string()),
        });
        set.uses_time |= compiled.uses_time;
        set.flags.insert(flag.to_owned(), compiled);
    }
    set
}

/// Checks and compiles one flag definition of `document`.
pub fn compile_flag(
    key: &str,
    definition: &Value,
    document: &FlagDocument,
) -> Result<CompiledFlag, CompileError> {
    let base = format!("/flags/{}", escape(key));
    let Value::Object(flag) = definition else {
        return Err(CompileError::new(base, "a flag must be an object"));
    };
    let enabled = match flag.get("state") {
        Some(Value::String(s)) if s == "ENABLED" => true,
        Some(Value::String(s)) if s == "DISABLED" => false,
        _ => {
            return Err(CompileError::new(
                format!("{base}/state"),
                "state must be \"ENABLED\" or \"DISABLED\"",
            ));
        }
    };
    let variants = match flag.get("variants") {
        Some(Value::Object(v)) if !v.is_empty() => v,
        _ => {
            return Err(CompileError::new(
                format!("{base}/variants"),
                "variants must be an object with at least one variant",
            ));
        }
    };
    let variants: BTreeMap<String, Variant> = variants
        .iter()
        .map(|(name, value)| {
            let variant = Variant {
                json: value.to_string().into(),
                value: value.clone(),
            };
            (name.clone(), variant)
        })
        .collect();
    let default_variant = match flag.get("defaultVariant") {
        None | Some(Value::Null) => None,
        Some(Value::String(name)) if variants.contains_key(name) => Some(name.clone()),
        Some(Value::String(name)) => {
            return Err(CompileError::new(
                format!("{base}/defaultVariant"),
                format!("default variant {name:?} is not one of the flag's variants"),
            ));
        }
        Some(_) => {
            return Err(CompileError::new(
                format!("{base}/defaultVariant"),
                "defaultVariant must be a variant name or null",
            ));
        }
    };
    let mut metadata = document.metadata.clone();
    match flag.get("metadata") {
        None => {}
        Some(Value::Object(own)) => {
            check_metadata(own, &format!("{base}/metadata"))?;
            metadata.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        Some(_) => {
            return Err(CompileError::new(
                format!("{base}/metadata"),
                "metadata must be an object",
            ));
        }
    }
    let metadata_json: Box<str> = if metadata.is_empty() {
        "".into()
    } else {
        Value::Object(metadata.clone()).to_string().into()
    };
    let mut compiled = CompiledFlag {
        key: key.to_owned(),
        enabled,
        variants,
        default_variant,
        targeting: None,
        implicit_bucketing: false,
        uses_time: false,
        metadata,
        metadata_json,
        broken: None,
    };
    let rule = match flag.get("targeting") {
        None | Some(Value::Null) => return Ok(compiled),
        Some(Value::Object(o)) if o.is_empty() => return Ok(compiled),
        Some(rule) => rule,
    };
    let path = format!("{base}/targeting");
    let mut nodes = 0;
    let expanded = expand(rule, &document.evaluators, &path, 0, &mut nodes)?;
    check_results(&expanded, &path, &compiled.variants)?;
    let mut facts = Facts::default();
    facts.scan(&expanded);
    let logic = ENGINE
        .compile(&expanded)
        .map_err(|e| CompileError::new(&path, format!("not a valid rule: {e}")))?;
    compiled.targeting = Some(Arc::new(logic));
    compiled.implicit_bucketing = facts.implicit_bucketing;
    compiled.uses_time = facts.uses_time;
    Ok(compiled)
}

/// A JSON pointer segment (RFC 6901).
fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn check_metadata(metadata: &Map<String, Value>, path: &str) -> Result<(), CompileError> {
    for (k, v) in metadata {
        if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
            return Err(CompileError::new(
                format!("{path}/{}", escape(k)),
                "metadata values must be strings, numbers or booleans",
            ));
        }
    }
    Ok(())
}

/// Replaces every `{"$ref": "name"}` with the named evaluator, bounding depth and size.
fn expand(
    rule: &Value,
    evaluators: &Map<String, Value>,
    path: &str,
    depth: usize,
    nodes: &mut usize,
) -> Result<Value, CompileError> {
    *nodes += 1;
    if *nodes > MAX_RULE_NODES {
        return Err(CompileError::new(
            path,
            format!("the rule has more than {MAX_RULE_NODES} parts once $ref is expanded"),
        ));
    }
    if depth > MAX_RULE_DEPTH {
        return Err(CompileError::new(
            path,
            format!("the rule nests deeper than {MAX_RULE_DEPTH} levels once $ref is expanded"),
        ));
    }
    match rule {
        Value::Object(o) => {
            if o.len() == 1
                && let Some(target) = o.get("$ref")
            {
                let here = format!("{path}/$ref");
                let Value::String(name) = target else {
                    return Err(CompileError::new(here, "$ref must name an evaluator"));
                };
                let Some(evaluator) = evaluators.get(name) else {
                    return Err(CompileError::new(
                        here,
                        format!("evaluator {name:?} is not defined in $evaluators"),
                    ));
                };
                return expand(evaluator, evaluators, &here, depth + 1, nodes);
            }
            let mut out = Map::with_capacity(o.len());
            for (k, v) in o {
                let child = format!("{path}/{}", escape(k));
                out.insert(k.clone(), expand(v, evaluators, &child, depth + 1, nodes)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| expand(v, evaluators, &format!("{path}/{i}"), depth + 1, nodes))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

/// Checks that every variant name a rule can return as a literal exists: the branches of
/// `if` and the buckets of `fractional` (flagd turns a boolean result into `"true"` or
/// `"false"`).
fn check_results(
    rule: &Value,
    path: &str,
    variants: &BTreeMap<String, Variant>,
) -> Result<(), CompileError> {
    let missing = |name: &str| {
        CompileError::new(
            path,
            format!("targeting can return variant {name:?}, which the flag does not have"),
        )
    };
    match rule {
        Value::String(name) if !variants.contains_key(name) => Err(missing(name)),
        Value::Bool(b) if !variants.contains_key(&b.to_string()) => Err(missing(&b.to_string())),
        Value::Object(o) if o.len() == 1 => {
            let (op, args) = o.iter().next().expect("one entry");
            let Value::Array(args) = args else {
                return Ok(());
            };
            match op.as_str() {
                "if" | "?:" => {
                    let n = args.len();
                    for (i, arg) in args.iter().enumerate() {
                        if i % 2 == 1 || (i == n - 1 && n % 2 == 1 && n > 1) {
                            check_results(arg, &format!("{path}/{op}/{i}"), variants)?;
                        }
                    }
                    Ok(())
                }
                "fractional" => {
                    for (i, arg) in args.iter().enumerate() {
                        if let Value::Array(bucket) = arg
                            && let Some(Value::String(name)) = bucket.first()
                            && !variants.contains_key(name)
                        {
                            return Err(CompileError::new(
                                format!("{path}/fractional/{i}/0"),
                                format!(
                                    "bucket variant {name:?} is not one of the flag's variants"
                                ),
                            ));
                        }
                    }
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// What a rule needs from a context.
#[derive(Default)]
struct Facts {
    implicit_bucketing: bool,
    uses_time: bool,
}

impl Facts {
    fn scan(&mut self, rule: &Value) {
        match rule {
            Value::Object(o) => {
                for (op, args) in o {
                    match (op.as_str(), args) {
                        ("fractional", Value::Array(a))
                            if a.first().is_some_and(Value::is_array) =>
                        {
                            self.implicit_bucketing = true;
                        }
                        ("var", Value::String(v)) if v == "$flagd.timestamp" => {
                            self.uses_time = true;
                        }
                        ("var", Value::Array(a))
                            if a.first().and_then(Value::as_str) == Some("$flagd.timestamp") =>
                        {
                            self.uses_time = true;
                        }
                        _ => {}
                    }
                    self.scan(args);
                }
            }
            Value::Array(items) => items.iter().for_each(|v| self.scan(v)),
            _ => {}
        }
    }
}
