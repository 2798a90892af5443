//! Mutual-TLS material: loading certificates and keys from PEM files, building rustls configs
//! (ring provider, TLS 1.3 only) for quinn, and generating a throwaway development PKI and
//! Ed25519 signing key for `meridian dev`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id for Meridian replication v1.
pub const ALPN: &[u8] = b"meridian/1";
/// The TLS server name edges use when they dial an origin.
pub const ORIGIN_SERVER_NAME: &str = "origin.meridian";

/// Why TLS material could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{path}: {source}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file held no certificate.
    #[error("{0}: no certificate found")]
    NoCertificate(PathBuf),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// quinn refused the rustls configuration.
    #[error("QUIC crypto configuration: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    /// A private key file may be read by the group or others.
    #[error("{path}: private key is readable by other users (mode {mode:o}); run chmod 600 on it")]
    KeyOpenToOthers {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A signing key file was not 32 bytes of hex.
    #[error("{0}: expected 64 hex characters (an Ed25519 key)")]
    BadSigningKey(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Paths of one node's identity: its certificate chain, its key, and the CA it trusts for peers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// PEM certificate chain presented to peers.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificate that peers' certificates must chain to.
    pub ca: PathBuf,
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Refuses a private key file that others may read.
fn check_private(path: &Path) -> Result<(), TlsError> {
    match crate::private::open_to_others(path).map_err(io_err(path))? {
        Some(mode) => Err(TlsError::KeyOpenToOthers {
            path: path.to_owned(),
            mode,
        }),
        None => Ok(()),
    }
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_private(path)?;
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        path: path.to_owned(),
        source,
    })
}

fn roots(ca: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        store.add(cert)?;
    }
    Ok(Arc::new(store))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config that demands a client certificate chaining to `paths.ca`.
pub fn server_crypto(paths: &TlsPaths) -> Result<rustls::ServerConfig, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&paths.ca)?, provider())
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The ALPN id of the Raft channel between origin nodes (HTTP/1.1 inside mutual TLS).
pub const RAFT_ALPN: &[u8] = b"http/1.1";

/// A rustls server config for the Raft channel: TLS 1.3, and a client certificate that chains to
/// `paths.ca` *and* is issued for the origin role (valid for [`ORIGIN_SERVER_NAME`]). An edge's
/// certificate from the same CA, or no certificate, fails the handshake.
pub fn origin_peer_server_crypto(paths: &TlsPaths) -> Result<rustls::ServerConfig, TlsError> {
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(&paths.ca)?, provider())
            .build()?;
    let verifier = Arc::new(RoleVerifier {
        inner,
        role: rustls::pki_types::ServerName::try_from(ORIGIN_SERVER_NAME)
            .map_err(|_| rustls::Error::General("invalid role name".into()))?,
    });
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)?;
    config.alpn_protocols = vec![RAFT_ALPN.to_vec()];
    Ok(config)
}

/// A rustls client config for the Raft channel: presents this node's origin certificate and
/// trusts servers under `paths.ca` (the caller checks the server for [`ORIGIN_SERVER_NAME`]).
/// No ALPN: the HTTPS connector sets it.
pub fn origin_peer_client_crypto(paths: &TlsPaths) -> Result<rustls::ClientConfig, TlsError> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&paths.ca)?)
        .with_client_auth_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)?)
}

/// A client certificate verifier that, on top of the chain check, requires the certificate to
/// be valid for one role name: the CA issues certificates to origins and edges alike, and only
/// origins may speak Raft.
#[derive(Debug)]
struct RoleVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    role: rustls::pki_types::ServerName<'static>,
}

impl rustls::server::danger::ClientCertVerifier for RoleVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        cert.verify_is_valid_for_subject_name(&self.role)
            .map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
            })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A rustls client config that presents `paths.cert` and trusts servers under `paths.ca`.
pub fn client_crypto(paths: &TlsPaths) -> Result<rustls::ClientConfig, TlsError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(&paths.ca)?)
        .with_client_auth_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Reads an Ed25519 secret key stored as 64 hex characters.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, TlsError> {
    check_private(path)?;
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| TlsError::BadSigningKey(path.to_owned()))?;
    let secret: [u8; 32] = bytes
        .try_into()
        .map_err(|_| TlsError::BadSigningKey(path.to_owned()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// Reads an Ed25519 public key stored as 64 hex characters.
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, TlsError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let bytes = hex::decode(text.trim()).map_err(|_| TlsError::BadSigningKey(path.to_owned()))?;
    let public: [u8; 32] = bytes
        .try_into()
        .map_err(|_| TlsError::BadSigningKey(path.to_owned()))?;
    VerifyingKey::from_bytes(&public).map_err(|_| TlsError::BadSigningKey(path.to_owned()))
}

/// Where [`ensure_dev_pki`] put everything.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The folder.
    pub dir: PathBuf,
    /// CA certificate.
    pub ca: PathBuf,
    /// Origin identity.
    pub origin: TlsPaths,
    /// Ed25519 signing key (hex).
    pub signing_key: PathBuf,
    /// Ed25519 public key (hex).
    pub signing_pub: PathBuf,
}

impl DevPki {
    /// The identity of an edge (created by [`ensure_dev_pki`]).
    pub fn edge(&self, edge_id: &str) -> TlsPaths {
        TlsPaths {
            cert: self.dir.join(format!("edge-{edge_id}.pem")),
            key: self.dir.join(format!("edge-{edge_id}.key")),
            ca: self.ca.clone(),
        }
    }
}

fn write(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(io_err(path))
}

fn write_key(path: &Path, contents: &str) -> Result<(), TlsError> {
    crate::private::write_private(path, contents.as_bytes()).map_err(io_err(path))
}

/// A key file this program wrote, perhaps with a looser mode in an earlier version.
fn keep_key(path: &Path) -> Result<(), TlsError> {
    crate::private::narrow_file(path).map_err(io_err(path))
}

/// Creates (once) a throwaway CA, an origin certificate, one client certificate per edge id and
/// an Ed25519 signing key under `dir` (0700; private keys 0600). Existing files are kept, so
/// restarts reuse them.
pub fn ensure_dev_pki(dir: &Path, edge_ids: &[&str]) -> Result<DevPki, TlsError> {
    crate::private::private_dir(dir).map_err(io_err(dir))?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca.key");
    let pki = DevPki {
        dir: dir.to_owned(),
        ca: ca_path.clone(),
        origin: TlsPaths {
            cert: dir.join("origin.pem"),
            key: dir.join("origin.key"),
            ca: ca_path.clone(),
        },
        signing_key: dir.join("signing.key"),
        signing_pub: dir.join("signing.pub"),
    };

    let (ca_params, ca_key) = if ca_path.exists() && ca_key_path.exists() {
        keep_key(&ca_key_path)?;
        let key_pem = std::fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let ca_key = rcgen::KeyPair::from_pem(&key_pem)?;
        (ca_params(), ca_key)
    } else {
        let ca_key = rcgen::KeyPair::generate()?;
        let cert = ca_params().self_signed(&ca_key)?;
        write(&ca_path, &cert.pem())?;
        write_key(&ca_key_path, &ca_key.serialize_pem())?;
        (ca_params(), ca_key)
    };
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let leaf = |cert_path: &Path, key_path: &Path, names: Vec<String>| {
        if cert_path.exists() && key_path.exists() {
            return keep_key(key_path);
        }
        let key = rcgen::KeyPair::generate()?;
        let params = rcgen::CertificateParams::new(names)?;
        let cert = params.signed_by(&key, &issuer)?;
        write(cert_path, &cert.pem())?;
        write_key(key_path, &key.serialize_pem())
    };
    leaf(
        &pki.origin.cert,
        &pki.origin.key,
        vec![
            ORIGIN_SERVER_NAME.into(),
            "localhost".into(),
            "127.0.0.1".into(),
        ],
    )?;
    for id in edge_ids {
        let paths = pki.edge(id);
        leaf(
            &paths.cert,
            &paths.key,
            vec![edge_certificate_name(id), "localhost".into()],
        )?;
    }

    if pki.signing_key.exists() {
        keep_key(&pki.signing_key)?;
    } else {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        write_key(&pki.signing_key, &hex::encode(key.to_bytes()))?;
        write(
            &pki.signing_pub,
            &hex::encode(key.verifying_key().to_bytes()),
        )?;
    }
    Ok(pki)
}

fn ca_params() -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Meridian dev CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    params
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_keys_are_written_0600_and_refused_when_others_may_read_them() {
        let dir = tempfile::tempdir().unwrap();
        let pki = ensure_dev_pki(&dir.path().join("pki"), &["e1"]).unwrap();
        assert_eq!(mode(&pki.dir), 0o700);
        for key in [
            pki.dir.join("ca.key"),
            pki.origin.key.clone(),
            pki.edge("e1").key,
            pki.signing_key.clone(),
        ] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        server_crypto(&pki.origin).unwrap();
        load_signing_key(&pki.signing_key).unwrap();

        for (path, bits) in [(&pki.origin.key, 0o640), (&pki.signing_key, 0o604)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
        }
        let e = origin_peer_server_crypto(&pki.origin).unwrap_err();
        assert!(
            matches!(&e, TlsError::KeyOpenToOthers { mode: 0o640, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("chmod 600"), "{e}");
        let e = load_signing_key(&pki.signing_key).unwrap_err();
        assert!(
            matches!(&e, TlsError::KeyOpenToOthers { mode: 0o604, .. }),
            "{e}"
        );

        // The dev PKI narrows keys it wrote itself (earlier versions wrote them 0644).
        ensure_dev_pki(&pki.dir, &["e1"]).unwrap();
        assert_eq!(mode(&pki.origin.key), 0o600);
        assert_eq!(mode(&pki.signing_key), 0o600);
    }
}

/// The name an edge's certificate is issued for: `<edge_id>.edge.meridian`.
pub fn edge_certificate_name(edge_id: &str) -> String {
    format!("{edge_id}.edge.meridian")
}

/// Whether the client certificate of `conn` (already verified against the CA by the handshake)
/// was issued for the edge `edge_id`: an edge may only speak for itself.
pub fn is_certified_edge(conn: &quinn::Connection, edge_id: &str) -> bool {
    let Some(chain) = conn
        .peer_identity()
        .and_then(|i| i.downcast::<Vec<CertificateDer<'static>>>().ok())
    else {
        return false;
    };
    let Some(leaf) = chain.first() else {
        return false;
    };
    let Ok(name) = rustls::pki_types::ServerName::try_from(edge_certificate_name(edge_id)) else {
        return false;
    };
    webpki::EndEntityCert::try_from(leaf)
        .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
}

/// The certificate and key an HTTP listener serves HTTPS with (`[https]` of a node's config).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpsPaths {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (mode 0600).
    pub key: PathBuf,
}

/// The TLS config a client API is served with: `paths`' certificate, or plain HTTP without.
pub fn https_acceptor(
    paths: Option<&HttpsPaths>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    paths
        .map(https_server_crypto)
        .transpose()
        .map(|c| c.map(Arc::new))
}

/// A rustls server config for a client API: TLS 1.2 and 1.3, no client certificate (callers
/// present bearer tokens), HTTP/1.1.
pub fn https_server_crypto(paths: &HttpsPaths) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(&paths.cert)?, load_key(&paths.key)?)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
