//! Deterministic TLS for the simulator: Ed25519 certificates derived from fixed seeds (so every
//! handshake has the same length), rustls with the ring provider whose `secure_random` draws
//! from the run's seed, and quinn-proto endpoint and connection configs with seeded reset keys,
//! token keys, endpoint RNG and connection-ID generator.
//!
//! One source of nondeterminism is left in the bytes, not in the behaviour: ring's X25519
//! draws its ephemeral keys from the OS. Key shares have a fixed length, so packet sizes,
//! timings and every decision are unchanged; the trace hash covers those, not ciphertext.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator};
use rand::{Rng, SeedableRng, rngs::Xoshiro256PlusPlus};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The TLS server name every simulated node's certificate carries.
pub const SERVER_NAME: &str = "node.meridian.sim";

thread_local! {
    static TLS_RNG: RefCell<Xoshiro256PlusPlus> = RefCell::new(Xoshiro256PlusPlus::seed_from_u64(0));
}

/// Reseeds the randomness rustls draws in this thread.
pub fn reseed(seed: u64) {
    TLS_RNG.with(|r| *r.borrow_mut() = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed_71e5));
}

#[derive(Debug)]
struct SeededRandom;

impl rustls::crypto::SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        TLS_RNG.with(|r| r.borrow_mut().fill_bytes(buf));
        Ok(())
    }
}

static SEEDED_RANDOM: SeededRandom = SeededRandom;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        secure_random: &SEEDED_RANDOM,
        ..rustls::crypto::ring::default_provider()
    })
}

/// Why TLS material could not be built (a bug in the simulator, never input).
#[derive(Debug, thiserror::Error)]
pub enum SimTlsError {
    /// Certificate generation.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls configuration.
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    /// Client verifier.
    #[error("verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// QUIC crypto.
    #[error("quic crypto: {0}")]
    Quic(#[from] quinn_proto::crypto::rustls::NoInitialCipherSuite),
}

fn ed25519_key(seed: u8) -> Result<(rcgen::KeyPair, PrivateKeyDer<'static>), SimTlsError> {
    // PKCS#8 v1 for Ed25519 is a fixed 16-byte header followed by the 32-byte seed.
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&[seed; 32]);
    let pkcs8 = PrivatePkcs8KeyDer::from(der);
    let key = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)?;
    Ok((key, PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The simulation's PKI: one CA and one node certificate shared by every simulated node (each
/// is both a server, for edges and peers, and a client).
pub struct SimPki {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl SimPki {
    /// Builds the fixed PKI.
    pub fn new() -> Result<Self, SimTlsError> {
        let (ca_key, _) = ed25519_key(1)?;
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Meridian sim CA");
        ca_params.serial_number = Some(rcgen::SerialNumber::from(1u64));
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let (node_key, node_der) = ed25519_key(2)?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        params.serial_number = Some(rcgen::SerialNumber::from(2u64));
        let cert = params.signed_by(&node_key, &issuer)?;
        Ok(Self {
            ca: ca_cert.der().clone(),
            cert: cert.der().clone(),
            key: node_der,
        })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, SimTlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone())?;
        Ok(Arc::new(roots))
    }

    /// A quinn-proto server config demanding client certificates.
    pub fn server_config(
        &self,
        seed: u64,
        transport: Arc<quinn_proto::TransportConfig>,
    ) -> Result<quinn_proto::ServerConfig, SimTlsError> {
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider())
                .build()?;
        let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        crypto.alpn_protocols = vec![b"meridian/1".to_vec()];
        let quic = quinn_proto::crypto::rustls::QuicServerConfig::try_from(crypto)?;
        let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &seed.to_le_bytes())
            .extract(b"meridian-sim-token-key");
        let mut config = quinn_proto::ServerConfig::new(Arc::new(quic), Arc::new(token_key));
        config.transport_config(transport);
        // Address-validation tokens carry wall-clock timestamps, which have no meaning in
        // virtual time; the simulator neither issues nor stores them.
        let mut tokens = quinn_proto::ValidationTokenConfig::default();
        tokens.sent(0);
        config.validation_token_config(tokens);
        Ok(config)
    }

    /// A quinn-proto client config presenting the node certificate.
    pub fn client_config(
        &self,
        transport: Arc<quinn_proto::TransportConfig>,
    ) -> Result<quinn_proto::ClientConfig, SimTlsError> {
        let mut crypto = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        crypto.alpn_protocols = vec![b"meridian/1".to_vec()];
        let quic = quinn_proto::crypto::rustls::QuicClientConfig::try_from(crypto)?;
        let mut config = quinn_proto::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport);
        config.token_store(Arc::new(quinn_proto::NoneTokenStore));
        Ok(config)
    }
}

/// An endpoint config whose reset key, RNG and connection IDs all derive from `seed`.
pub fn endpoint_config(seed: u64) -> quinn_proto::EndpointConfig {
    let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed.to_le_bytes());
    let mut config = quinn_proto::EndpointConfig::new(Arc::new(reset_key));
    let mut rng_seed = [0u8; 32];
    Xoshiro256PlusPlus::seed_from_u64(seed).fill_bytes(&mut rng_seed);
    config.rng_seed(Some(rng_seed));
    config.cid_generator(move || {
        Box::new(SeededCids(Xoshiro256PlusPlus::seed_from_u64(seed ^ 0xc1d)))
    });
    config
}

/// Connection IDs from a seeded generator.
struct SeededCids(Xoshiro256PlusPlus);

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; 8];
        self.0.fill_bytes(&mut bytes);
        ConnectionId::new(&bytes)
    }
    fn cid_len(&self) -> usize {
        8
    }
    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The congestion controller: Cubic with a 64-packet initial window, so an edge that
/// reconnects after a partition receives its backlog in a few round trips rather than
/// creeping up from ten packets across a 200 ms path. Shared with the production shells.
pub fn congestion() -> quinn_proto::congestion::CubicConfig {
    let mut c = quinn_proto::congestion::CubicConfig::default();
    c.initial_window(64 * 1200);
    c
}
