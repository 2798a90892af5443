//! Transport plumbing shared by origin and edge: mutual-TLS material (rustls with the ring
//! provider, rcgen for the development PKI) and QUIC endpoints and frame I/O on quinn.

pub mod config;
pub mod http;
pub mod quic;
pub mod reads;
pub mod tls;

pub use quic::{NetError, QuicTuning};
pub use tls::{DevPki, TlsError, TlsPaths};
