//! TLS to backends: bundled roots by default (a scratch image has no system store), extra CA
//! bundles for on-prem stacks, and an explicit, loudly logged `insecureSkipVerify`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// How to verify one backend's certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsPolicy {
    /// PEM bundle whose certificates are trusted in addition to the bundled roots.
    pub ca_file: Option<String>,
    /// Accept any certificate (still encrypted, not authenticated).
    pub insecure: bool,
}

/// Builds the rustls config for a policy; `None` means ureq's default (bundled roots).
pub fn client_config(policy: &TlsPolicy) -> Result<Option<Arc<ClientConfig>>, String> {
    if policy.ca_file.is_none() && !policy.insecure {
        return Ok(None);
    }
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| format!("TLS setup failed: {}", e))?;
    let config = if policy.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &policy.ca_file {
            let mut added = 0;
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read CA file {}: {}", path, e))?
            {
                let cert = cert.map_err(|e| format!("CA file {}: {}", path, e))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("CA file {}: unusable certificate: {}", path, e))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!("CA file {} holds no PEM certificate", path));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Some(Arc::new(config)))
}

/// Skips certificate checks but still checks handshake signatures, so the session is at least
/// bound to the key the server presented.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
