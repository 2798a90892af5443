//! The `meridian` binary's library half: the local dev topology shared by `meridian dev`, the
//! end-to-end tests and the benchmarks.

pub mod dev;
