//! The load generator's TLS client (`oxio-loadgen --tls`): rustls with the ring provider,
//! TLS 1.3 only, driven over a non-blocking [`Stream`].
//!
//! [`TlsStream`] reads and writes plaintext with the non-blocking contract of a socket:
//! `WouldBlock` is returned only after the socket itself returned it, so a caller that
//! waits for edge-triggered readiness after `WouldBlock` never misses a wake-up. TLS
//! records that could not be written at once stay in rustls's buffer and are flushed by
//! the next read or write, whichever comes first.

use std::io::{self, ErrorKind, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::event::Source;
use mio::{Interest, Registry, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::SignatureScheme;
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore};

use crate::Stream;

/// The client configuration shared by every connection: ring's default TLS 1.3 cipher
/// suites and key exchange groups, no session resumption (every handshake is a full one).
///
/// With `ca`, the server's certificate must chain to the certificates in that PEM file;
/// without it the certificate is not checked, though the handshake signature still is
/// (a benchmark on the loopback interface needs the cryptography, not the trust).
pub fn client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| format!("TLS: {e}"))?;
    let mut config = match ca {
        Some(path) => {
            let shown = path.display();
            let mut roots = RootCertStore::empty();
            for cert in
                CertificateDer::pem_file_iter(path).map_err(|e| format!("--ca {shown}: {e}"))?
            {
                let cert = cert.map_err(|e| format!("--ca {shown}: {e}"))?;
                roots.add(cert).map_err(|e| format!("--ca {shown}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("--ca {shown}: no certificate in the file"));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                provider.signature_verification_algorithms,
            )))
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// Accepts any server certificate, but verifies the handshake signatures made with it.
#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
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
        verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Parses the name the client asks for (SNI) and checks the certificate against: a DNS
/// name or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string()).map_err(|e| format!("--server-name {name:?}: {e}"))
}

/// A TLS client session over a connected non-blocking socket.
pub struct TlsStream {
    conn: ClientConnection,
    sock: Stream,
}

impl TlsStream {
    /// Starts a session on `sock` (connected, non-blocking); nothing is sent until the
    /// first [`TlsStream::handshake`].
    pub fn new(
        sock: Stream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<TlsStream> {
        let conn = ClientConnection::new(config, name).map_err(io::Error::other)?;
        Ok(TlsStream { conn, sock })
    }

    /// Advances the handshake as far as the socket allows: `Ok(true)` once it is complete
    /// and the client's last handshake message has been written, `Ok(false)` when the
    /// socket would block (wait for readiness and call again).
    pub fn handshake(&mut self) -> io::Result<bool> {
        loop {
            let write_blocked = self.flush_records()?;
            if !self.conn.is_handshaking() {
                return Ok(!write_blocked);
            }
            if !self.fill()? {
                return Ok(false);
            }
        }
    }

    /// The negotiated protocol version and cipher suite, e.g. `TLSv1_3
    /// TLS13_AES_256_GCM_SHA384`, once the handshake is complete.
    pub fn describe(&self) -> Option<String> {
        let conn = &self.conn;
        let version = conn.protocol_version()?;
        let suite = conn.negotiated_cipher_suite()?;
        Some(format!("{version:?} {:?}", suite.suite()))
    }

    /// Writes pending TLS records until there are none (`Ok(false)`) or the socket would
    /// block (`Ok(true)`).
    fn flush_records(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    /// Reads TLS records from the socket once and processes them: `Ok(true)` when some
    /// arrived, `Ok(false)` when the socket would block. A peer that closes the socket
    /// during the handshake is an error.
    fn fill(&mut self) -> io::Result<bool> {
        let n = match self.conn.read_tls(&mut self.sock) {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        };
        if let Err(e) = self.conn.process_new_packets() {
            // Send the alert rustls queued, if the socket takes it; the error stands.
            let _ = self.flush_records();
            return Err(io::Error::new(ErrorKind::InvalidData, e));
        }
        if n == 0 && self.conn.is_handshaking() {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "the server closed the connection during the TLS handshake",
            ));
        }
        Ok(true)
    }
}

impl Read for TlsStream {
    /// Plaintext the server sent: `Ok(0)` at end-of-file (close_notify, or the socket
    /// closed: rustls tells which), `WouldBlock` once the socket has nothing more.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.flush_records()?;
        loop {
            match self.conn.reader().read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
            if !self.fill()? {
                return Err(ErrorKind::WouldBlock.into());
            }
            self.flush_records()?;
        }
    }
}

impl Write for TlsStream {
    /// Takes plaintext into the session (encrypted at once) and writes what the socket
    /// accepts; `WouldBlock` only when rustls's buffer is full and the socket would block.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let blocked = self.flush_records()?;
            let taken = self.conn.writer().write(buf)?;
            if taken > 0 {
                self.flush_records()?;
                return Ok(taken);
            }
            if blocked {
                return Err(ErrorKind::WouldBlock.into());
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A load generator's connection: plaintext, or TLS over the same kind of socket.
pub enum Connection {
    /// The socket itself.
    Plain(Stream),
    /// A TLS session over the socket (boxed: rustls's state is large).
    Tls(Box<TlsStream>),
}

impl Connection {
    fn socket(&mut self) -> &mut Stream {
        match self {
            Connection::Plain(s) => s,
            Connection::Tls(t) => &mut t.sock,
        }
    }

    /// Reads up to `buf.len()` bytes of plaintext and drops them; returns how many. A
    /// plain connection drops them in the kernel ([`Stream::discard`]); TLS must decrypt
    /// them into `buf`.
    pub fn discard(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(s) => s.discard(buf),
            Connection::Tls(t) => t.read(buf),
        }
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(s) => s.read(buf),
            Connection::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Connection::Plain(s) => s.write(buf),
            Connection::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Connection {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket().register(registry, token, interests)
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.socket().reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket().deregister(registry)
    }
}
