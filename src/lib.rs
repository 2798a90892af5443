//! The `meridian` binary's library half: the local dev topology shared by `meridian dev`, the
//! end-to-end tests and the benchmarks, and the client commands (`kv`, `config`, `schema`,
//! `txn`). It also owns how a node process uses memory: the allocator (mimalloc) of every
//! program that links it, and [`disable_transparent_huge_pages`] for the programs that run nodes.

pub mod access;
pub mod audit_cli;
pub mod change_cli;
pub mod cli;
pub mod dev;
pub mod drift_cli;
pub mod flag_cli;
pub mod secret_cli;
pub mod transfer;
pub mod transfer_cli;

/// Every program that links this crate (the `meridian` binary, the harnesses in `benches/` that
/// run origin and edge nodes in their own processes, the tests) allocates with mimalloc: under
/// write load glibc's malloc, its arena consolidation and the page faults of its trimming took
/// 10–15% of a node's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process and the processes it starts (Linux;
/// elsewhere it does nothing), as Redis does by default (`disable-thp yes`).
///
/// mimalloc hands memory it no longer uses back to the kernel after a few milliseconds and
/// faults it in again when it needs it. Where the kernel backs anonymous memory with huge pages
/// (`/sys/kernel/mm/transparent_hugepage/enabled` set to `always`, as on this project's build
/// machine), each such fault zeroes a whole 2 MiB page however little of it is used: under write
/// load that zeroing took 9% of the origin nodes' CPU, and with it off the cluster's write p99
/// fell from 27–28 ms to 17–19 ms (README, write throughput). Call it first thing in `main`: it
/// applies to every page faulted in afterwards.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    rustix::thread::disable_transparent_huge_pages(true)?;
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn transparent_huge_pages_are_off_once_disabled() {
        super::disable_transparent_huge_pages().unwrap();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
