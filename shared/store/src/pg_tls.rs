//! TLS to PostgreSQL with libpq's `sslmode` semantics, on rustls (ring provider).
//!
//! tokio-postgres itself knows only `disable` / `prefer` / `require` and never verifies a
//! certificate by itself; this module reads the libpq parameters out of the URL (`sslmode`,
//! `sslrootcert`), hands tokio-postgres the mode it understands, and builds the rustls
//! verifier that gives each libpq mode its meaning:
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | when the server offers TLS | no |
//! | `require` | always | no (with a CA file: as `verify-ca`, like libpq) |
//! | `verify-ca` | always | chain to the CA file |
//! | `verify-full` | always | chain to the CA file and host name |
//!
//! The CA comes from `sslrootcert=` in the URL or [`crate::StoreOptions::ca_file`]
//! (`FLEET_DATABASE_CA_FILE`). Client certificates (`sslcert`, `sslkey`, `sslcrl`…) are
//! refused with a configuration error rather than silently ignored.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::StoreError;

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// libpq tries plaintext first; here it behaves like `prefer` (TLS when offered).
    Allow,
    /// TLS when the server offers it, unverified; plaintext otherwise (the default).
    Prefer,
    /// TLS always, certificate not checked (checked like `verify-ca` when a CA is given).
    Require,
    /// TLS always, certificate chain checked against the CA file.
    VerifyCa,
    /// TLS always, chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, StoreError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(StoreError::Config(format!(
                    "sslmode `{other}` in the database URL is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )));
            }
        })
    }

    /// The name as written in a URL.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres understands.
    fn wire(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow | SslMode::Prefer => "prefer",
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
        }
    }
}

/// What the URL and options ask for, after the libpq-only parameters were taken out.
#[derive(Debug)]
pub(crate) struct PgTls {
    /// The URL tokio-postgres can parse (its own `sslmode`, no `sslrootcert`).
    pub url: String,
    /// The libpq mode asked for.
    pub mode: SslMode,
    /// Where the trusted CA comes from, if anywhere.
    pub ca_file: Option<PathBuf>,
}

/// libpq parameters fleet does not implement; refusing them beats ignoring a client certificate.
const UNSUPPORTED: &[&str] = &[
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "sslcertmode",
];

/// Splits the libpq TLS parameters out of `url`; `ca_file` (FLEET_DATABASE_CA_FILE) is used
/// when the URL names no `sslrootcert`.
pub(crate) fn parse(url: &str, ca_file: Option<&Path>) -> Result<PgTls, StoreError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = SslMode::Prefer;
    let mut root: Option<PathBuf> = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => mode = SslMode::parse(&percent_decode(v))?,
            "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
            k if UNSUPPORTED.contains(&k) => {
                return Err(StoreError::Config(format!(
                    "`{k}` in the database URL is not supported: fleet does not present client certificates to PostgreSQL; remove it and authenticate with a password (FLEET_DATABASE_URL_FILE)"
                )));
            }
            _ => kept.push(pair),
        }
    }
    kept.push(match mode.wire() {
        "disable" => "sslmode=disable",
        "prefer" => "sslmode=prefer",
        _ => "sslmode=require",
    });
    let ca_file = root.or_else(|| ca_file.map(Path::to_path_buf));
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && ca_file.is_none() {
        return Err(StoreError::Config(format!(
            "sslmode={} needs the CA that signed the PostgreSQL server's certificate: set FLEET_DATABASE_CA_FILE (or sslrootcert= in the URL) to its PEM file, or use sslmode=require to encrypt without verifying",
            mode.as_str()
        )));
    }
    Ok(PgTls {
        url: format!("{base}?{}", kept.join("&")),
        mode,
        ca_file,
    })
}

impl PgTls {
    /// The rustls connector for this mode (also built for `disable`, where it is never used).
    pub(crate) fn connector(&self) -> Result<MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verify = match (self.mode, &self.ca_file) {
            (SslMode::VerifyFull, Some(ca)) => Verify::Full(ca),
            (SslMode::VerifyCa | SslMode::Require, Some(ca)) => Verify::Chain(ca),
            _ => Verify::Nothing,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match verify {
            Verify::Nothing => Arc::new(Unverified(provider.clone())),
            Verify::Chain(ca) | Verify::Full(ca) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| StoreError::Config(format!("CA file {}: {e}", ca.display())))?;
                if matches!(verify, Verify::Full(_)) {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::Config(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

enum Verify<'a> {
    Nothing,
    Chain(&'a Path),
    Full(&'a Path),
}

/// Reads every certificate of a PEM file into a root store.
fn roots(path: &Path) -> Result<RootCertStore, StoreError> {
    let bad = |what: String| {
        StoreError::Config(format!(
            "CA file {} (FLEET_DATABASE_CA_FILE / sslrootcert): {what}",
            path.display()
        ))
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(format!("cannot read it: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let mut store = RootCertStore::empty();
    for cert in certs {
        store
            .add(cert)
            .map_err(|e| bad(format!("unusable certificate: {e}")))?;
    }
    Ok(store)
}

/// `verify-ca`: the chain must lead to the CA; the name in the certificate may differ.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` / `require` without a CA: encrypt, accept any certificate (libpq does the same);
/// the handshake signatures are still checked, so the session key belongs to that certificate.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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

/// Decodes `%XX` escapes of a URL query value (`+` stays, as in libpq).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        let escaped = match (b[i], b.get(i + 1), b.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)),
            _ => None,
        };
        match escaped {
            Some((h, l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_parameters_are_taken_out_and_mapped() {
        let t = parse(
            "postgres://u@h/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem",
            None,
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert_eq!(
            t.url,
            "postgres://u@h/db?application_name=x&sslmode=require"
        );

        let t = parse("postgres://u@h/db", Some(Path::new("/ca"))).unwrap();
        assert_eq!(t.mode, SslMode::Prefer);
        assert_eq!(t.url, "postgres://u@h/db?sslmode=prefer");
        assert_eq!(t.ca_file.as_deref(), Some(Path::new("/ca")));
    }

    #[test]
    fn unusable_settings_are_config_errors_naming_the_fix() {
        let e = parse("postgres://h/db?sslmode=verify-ca", None).unwrap_err();
        assert!(e.to_string().contains("FLEET_DATABASE_CA_FILE"), "{e}");
        let e = parse("postgres://h/db?sslcert=/c.pem", None).unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = parse("postgres://h/db?sslmode=maybe", None).unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        assert!(!e.is_transient());
    }
}
