//! The `meridian` binary's library half: the local dev topology shared by `meridian dev`, the
//! end-to-end tests and the benchmarks, and the client commands (`kv`, `config`, `schema`,
//! `txn`). It also sets the process allocator (mimalloc) for every program that links it.

pub mod cli;
pub mod dev;

/// Every program that links this crate (the `meridian` binary, the harnesses in `benches/` that
/// run origin and edge nodes in their own processes, the tests) allocates with mimalloc: under
/// write load glibc's malloc, its arena consolidation and the page faults of its trimming took
/// 10–15% of a node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
