"""A self-signed certificate for the TLS benchmarks (net.py --tls, http_bench.py --tls), and
the one server-side TLS context every loop is given.

`make_certificate(directory)` writes a fresh ECDSA P-256 certificate for `localhost` and
127.0.0.1, valid two days, with the openssl command line when it is on PATH, else with the
`cryptography` package when it is installed; failing both, it falls back to the test
certificate that ships with CPython's test suite (`test/certdata/keycert.pem`, RSA, key
and certificate in one file).
"""

from __future__ import annotations

import datetime
import importlib.util
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

OPENSSL_TIMEOUT = 60.0
NAME = "localhost"


@dataclass(frozen=True)
class Certificate:
    certfile: Path
    keyfile: Path
    origin: str  # how it was made, for the report
    # The certificate is a valid end-entity certificate for `localhost` and 127.0.0.1 that
    # can serve as its own trust root: clients may verify against it.
    verifiable: bool


def server_context(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """The server context every loop gets: TLS 1.3 only, OpenSSL's default TLS 1.3 cipher
    suites, no client certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def client_context(cert: Certificate) -> ssl.SSLContext:
    """A client context that trusts `cert` (or, for a certificate that cannot serve as its
    own root, checks nothing: these clients only talk to our own servers on loopback)."""
    if not cert.verifiable:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=str(cert.certfile))


def _with_openssl(openssl: str, directory: Path) -> Certificate:
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    argv = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv += ["-nodes", "-days", "2", "-subj", f"/CN={NAME}"]
    argv += ["-addext", f"subjectAltName=DNS:{NAME},IP:127.0.0.1"]
    argv += ["-addext", "basicConstraints=critical,CA:FALSE"]
    argv += ["-keyout", str(keyfile), "-out", str(certfile)]
    subprocess.run(argv, capture_output=True, timeout=OPENSSL_TIMEOUT, check=True)
    return Certificate(certfile, keyfile, "openssl req, ECDSA P-256", True)


def _with_cryptography(directory: Path) -> Certificate:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [x509.DNSName(NAME), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(certfile, keyfile, "cryptography, ECDSA P-256", True)


def _cpython_test_certificate() -> Certificate | None:
    """CPython's test certificate, found relative to the `test` package (not imported)."""
    spec = importlib.util.find_spec("test")
    for root in (spec.submodule_search_locations or []) if spec else []:
        for candidate in (Path(root) / "certdata" / "keycert.pem", Path(root) / "keycert.pem"):
            if candidate.is_file():
                return Certificate(candidate, candidate, f"CPython's {candidate}, RSA", False)
    return None


def make_certificate(directory: Path) -> Certificate:
    """A certificate and key for `localhost` written into `directory` (see the module doc)."""
    openssl = shutil.which("openssl")
    errors = []
    if openssl:
        try:
            return _with_openssl(openssl, directory)
        except (OSError, subprocess.SubprocessError) as e:
            errors.append(f"openssl: {e}")
    if importlib.util.find_spec("cryptography") is not None:
        try:
            return _with_cryptography(directory)
        except Exception as e:  # any failure of an optional path: fall through
            errors.append(f"cryptography: {e}")
    found = _cpython_test_certificate()
    if found is not None:
        return found
    errors.append("no openssl command, no cryptography package, no CPython test certificate")
    raise RuntimeError("cannot make a TLS certificate: " + "; ".join(errors))


def certificate_if(wanted: bool, directory: Path, script: str, log) -> Certificate | None:
    """`make_certificate` for a benchmark script's `--tls`: None when not wanted; logs
    where the certificate came from; a failure ends the script with its reason."""
    if not wanted:
        return None
    try:
        cert = make_certificate(directory)
    except RuntimeError as e:
        raise SystemExit(f"{script}: {e}") from e
    log(f"TLS certificate: {cert.origin}")
    return cert
