"""Mutual TLS between the stages: every internal gRPC port asks for a client certificate signed by the stack's CA.

A stage reads its certificates from one folder (`--internal-tls-dir` or FLASHSTREAM_INTERNAL_TLS_DIR), laid out as
a Kubernetes TLS Secret mounts them: `ca.crt` (the CA every stage trusts), `tls.crt` and `tls.key` (this stage's
certificate, used both to serve and to call). The tokenizer, scheduler and worker then serve only TLS and refuse a
connection whose client shows no certificate of that CA; every stage, the gateway included, dials the next one
with its own certificate. The internal token (services.common.call_auth) is still checked on every call.

Stages are known by the CA that signed them, not by their addresses (pod IPs and headless Services change): every
internal certificate names INTERNAL_SERVER_NAME, and callers check that name whatever address they dial.
`flashstream up` writes a throwaway CA and certificate per run (write_stack_certs); a deployment brings its own.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from services.common.errors import InvalidArgument

INTERNAL_SERVER_NAME = "flashstream-internal"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
# A stage dialled by address checks the internal name in the certificate, not the address.
TLS_CHANNEL_OPTIONS = (("grpc.ssl_target_name_override", INTERNAL_SERVER_NAME),)


@dataclass(frozen=True)
class InternalTls:
    """One stage's certificates (PEM bytes)."""

    ca: bytes
    cert: bytes
    key: bytes = field(repr=False)

    @classmethod
    def from_dir(cls, folder: str | Path) -> InternalTls:
        path = Path(folder)
        missing = [name for name in (CA_FILE, CERT_FILE, KEY_FILE) if not (path / name).is_file()]
        if missing:
            raise InvalidArgument(f"internal TLS folder {path} lacks {', '.join(missing)}")
        return cls((path / CA_FILE).read_bytes(), (path / CERT_FILE).read_bytes(), (path / KEY_FILE).read_bytes())

    def server_credentials(self) -> grpc.ServerCredentials:
        """TLS that requires a client certificate signed by the CA."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca,
                                           require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """TLS that trusts only the CA and shows this stage's certificate."""
        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)


def load_internal_tls(folder: str) -> InternalTls | None:
    """The certificates in `folder`; None when it is "" (plaintext internal hops)."""
    return InternalTls.from_dir(folder) if folder else None


def write_stack_certs(folder: Path, valid_days: int = 30) -> Path:
    """Writes a fresh CA and one certificate for every stage of a local stack into `folder` (key files readable by
    the owner only); returns the folder. Needs the `cryptography` package."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise InvalidArgument("making internal certificates needs the `cryptography` package "
                              "(pip install cryptography)") from exc

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("flashstream stack CA")).issuer_name(name("flashstream stack CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name(INTERNAL_SERVER_NAME)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(INTERNAL_SERVER_NAME)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CA_FILE).write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = folder / KEY_FILE
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_path, 0o600)
    return folder
