//! TLS with rustls: termination with a certificate that can be replaced at any time without
//! touching open connections, and origination to backends.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;

use super::spec::{TlsCertificate, UpstreamTls};

/// A certificate or CA bundle that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("private key: {0}")]
    Key(String),
    #[error("CA bundle: {0}")]
    Ca(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM chain and key into what rustls serves.
pub(crate) fn certified_key(cert: &TlsCertificate) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Certificate("no PEM certificate found".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&cert.key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| TlsError::Key(format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(certified))
}

/// The certificate a frontend serves, swapped atomically on rotation: a new handshake gets
/// the new one, open connections keep what they negotiated.
#[derive(Debug, Default)]
pub(crate) struct CertSlot(ArcSwapOption<CertifiedKey>);

impl CertSlot {
    pub(crate) fn store(&self, key: Option<Arc<CertifiedKey>>) {
        self.0.store(key);
    }
}

#[derive(Debug)]
struct Resolver(Arc<CertSlot>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.0.load_full()
    }
}

/// The server configuration of a terminating frontend: ALPN `h2` then `http/1.1`.
pub(crate) fn server_config(slot: Arc<CertSlot>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver(slot)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// TLS origination to a frontend's backends.
#[derive(Clone, Debug)]
pub(crate) struct ClientTls {
    /// ALPN `h2`, `http/1.1`.
    any: Arc<rustls::ClientConfig>,
    /// ALPN `http/1.1` only, for `Upgrade` requests.
    http1: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl ClientTls {
    pub(crate) fn new(spec: &UpstreamTls) -> Result<ClientTls, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?;
        let base = match &spec.ca_pem {
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| TlsError::Ca(e.to_string()))?;
                    roots.add(cert).map_err(|e| TlsError::Ca(e.to_string()))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Ca("no PEM certificate found".into()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(EncryptOnly(
                    provider().signature_verification_algorithms,
                )))
                .with_no_client_auth(),
        };
        let server_name = match &spec.server_name {
            Some(name) => Some(
                ServerName::try_from(name.clone())
                    .map_err(|e| TlsError::Ca(format!("server name {name:?}: {e}")))?,
            ),
            None => None,
        };
        let mut any = base.clone();
        any.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let mut http1 = base;
        http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(ClientTls {
            any: Arc::new(any),
            http1: Arc::new(http1),
            server_name,
        })
    }

    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        stream: TcpStream,
        offer_h2: bool,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let config = if offer_h2 { &self.any } else { &self.http1 };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        tokio_rustls::TlsConnector::from(Arc::clone(config))
            .connect(name, stream)
            .await
    }
}

/// Accepts any certificate but still checks that the peer holds its key: the connection is
/// encrypted, the backend not authenticated (used when no CA is configured).
#[derive(Debug)]
struct EncryptOnly(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
