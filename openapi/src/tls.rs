//! TLS for the listeners: certificates and keys from PEM files, client-certificate
//! verification (mutual TLS) against a configured CA, and reloading without a restart.
//!
//! A [`TlsSource`] holds the current `rustls::ServerConfig`. [`TlsSource::reload`] builds a
//! new one from the files; if that fails, the old one stays and the error is logged. The
//! app reloads on SIGHUP and whenever one of the files changes (polled).

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use rustls::{RootCertStore, ServerConfig, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use sha2::{Digest, Sha256};
use switchboard_core::peer::PeerIdentity;

use crate::{Error, Result, config::TlsConfig};

/// What identifies a file's version: its modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    std::fs::metadata(path)
        .ok()
        .and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// The TLS configuration of one listener, reloadable.
pub struct TlsSource {
    /// The listener's name, for logs.
    pub name: String,
    cfg: TlsConfig,
    state: RwLock<(Arc<ServerConfig>, Vec<Stamp>)>,
}

impl TlsSource {
    /// Loads the listener's certificate, key and client CA. Errors name the file.
    pub fn load(name: &str, cfg: &TlsConfig) -> Result<Arc<TlsSource>> {
        let built = build(cfg)?;
        Ok(Arc::new(TlsSource {
            name: name.to_owned(),
            cfg: cfg.clone(),
            state: RwLock::new((Arc::new(built), stamps(cfg))),
        }))
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.state
            .read()
            .map(|s| s.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// Whether the listener requires client certificates.
    pub fn mutual(&self) -> bool {
        self.cfg.client_ca.is_some()
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> std::time::Duration {
        self.cfg.handshake_timeout.get()
    }

    /// Rebuilds from the files. On failure the current configuration stays.
    pub fn reload(&self) -> Result<()> {
        let new_stamps = stamps(&self.cfg);
        let built = build(&self.cfg)?;
        if let Ok(mut s) = self.state.write() {
            *s = (Arc::new(built), new_stamps);
        }
        tracing::info!(listener = %self.name, "TLS certificates reloaded");
        Ok(())
    }

    /// Reloads if a file changed since the last load. A failed reload is logged and
    /// retried when the files change again.
    pub fn reload_if_changed(&self) {
        let now = stamps(&self.cfg);
        let changed = self.state.read().map(|s| s.1 != now).unwrap_or(false);
        if changed {
            if let Err(e) = self.reload() {
                tracing::error!(listener = %self.name, error = %e, "TLS reload failed; keeping the previous certificates");
                if let Ok(mut s) = self.state.write() {
                    s.1 = now;
                }
            }
        }
    }
}

fn stamps(cfg: &TlsConfig) -> Vec<Stamp> {
    let mut v = vec![stamp(&cfg.cert), stamp(&cfg.key)];
    if let Some(ca) = &cfg.client_ca {
        v.push(stamp(ca));
    }
    v
}

fn io_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("{}: {what}: {e}", path.display()))
}

/// Reads every certificate of a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| io_err(path, "cannot read certificates", e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io_err(path, "not a PEM certificate file", e))?;
    if certs.is_empty() {
        return Err(io_err(path, "no certificate found", "empty"));
    }
    Ok(certs)
}

fn build(cfg: &TlsConfig) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&cfg.cert)?;
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| io_err(&cfg.key, "cannot read the private key", e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let builder = match &cfg.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| io_err(ca, "not a usable CA certificate", e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| io_err(ca, "cannot verify clients with it", e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| io_err(&cfg.cert, "certificate and key do not fit", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The identity of a certificate: subject, issuer, serial and SHA-256 fingerprint.
pub fn identity(der: &[u8]) -> PeerIdentity {
    let sha256 = hex::encode(Sha256::digest(der));
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => PeerIdentity {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            sha256,
            serial: cert.raw_serial_as_string().replace(':', ""),
        },
        Err(_) => PeerIdentity {
            subject: String::new(),
            issuer: String::new(),
            sha256,
            serial: String::new(),
        },
    }
}

/// Paths a TLS configuration reads, for `check`.
pub fn files(cfg: &TlsConfig) -> Vec<PathBuf> {
    let mut v = vec![cfg.cert.clone(), cfg.key.clone()];
    v.extend(cfg.client_ca.clone());
    v
}
