//! The `meridian` binary's library half: the local dev topology shared by `meridian dev`, the
//! end-to-end tests and the benchmarks, and the client commands (`kv`, `config`, `schema`,
//! `txn`).

pub mod cli;
pub mod dev;
