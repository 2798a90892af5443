//! Transport plumbing shared by origin and edge: mutual-TLS material (rustls with the ring
//! provider, rcgen for the development PKI), QUIC endpoints and frame I/O on quinn, and the
//! HTTPS server and client of the origin's private Raft channel.

pub mod applied;
pub mod auth;
pub mod config;
pub mod http;
pub mod ofrep;
pub mod openapi;
pub mod peer;
pub mod private;
pub mod quic;
pub mod reads;
pub mod secrets;
pub mod serve;
pub mod slots;
pub mod tls;

pub use quic::{NetError, QuicTuning};
pub use tls::{DevPki, TlsError, TlsPaths};
