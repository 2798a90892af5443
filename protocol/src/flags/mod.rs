//! Feature flags in OpenFeature's flagd format (DESIGN §4c): how a flag set is stored as
//! signed records, how it is checked and compiled once per revision, and how a flag is
//! evaluated with flagd's semantics.
//!
//! A flag set of `app/env` is the flagd document `{"flags": {…}, "$evaluators": {…},
//! "metadata": {…}}`. It is stored as records of that namespace, so flags replicate, sign,
//! version and roll back like keys: each flag at key `_flag.<flag key>` (its flagd definition
//! as the value) and the set's evaluators and metadata at `_flagset`. Both keys start with
//! `_`, which [`crate::Address::parse`] refuses, so no client key can collide with them.
//!
//! - [`document`]: the document, its records and the flag key grammar.
//! - [`compile`]: `$ref` expansion, the bounds on rules, static variant checks and
//!   compilation into a [`FlagSet`].
//! - [`eval`]: evaluation against a context, with flagd's reasons and error codes.
//! - [`index`]: the compiled flag sets of a published state, rebuilt per changed namespace.

pub mod compile;
pub mod document;
pub mod eval;
pub mod exposure;
pub mod index;
pub mod rollout;

pub use compile::{CompileError, CompiledFlag, FlagSet, compile_document, compile_namespace};
pub use document::{
    FLAG_PREFIX, FLAGSET_KEY, FlagDocument, MAX_FLAG_KEY_BYTES, flag_of_record, is_flag_record,
    record_key, validate_flag_key,
};
pub use eval::{ContextError, ErrorCode, EvalContext, Outcome, Reason, Resolution};
pub use index::FlagIndex;

/// The arena an evaluation's context and intermediate values live in (reset per request).
pub use datalogic_rs::bumpalo::Bump;

/// The deepest a targeting rule may nest after `$ref` expansion (refused at write time).
pub const MAX_RULE_DEPTH: usize = 32;
/// The most JSON nodes a targeting rule may have after `$ref` expansion (refused at write
/// time): with [`MAX_RULE_DEPTH`] this bounds what one evaluation can cost.
pub const MAX_RULE_NODES: usize = 4096;
/// The largest evaluation request body (an OFREP `{"context": …}`), in bytes.
pub const MAX_CONTEXT_BYTES: usize = 64 * 1024;
