"""The internal certificates: what `flashstream internal-certs` and `up` write, and how a stage reads them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.common.errors import InvalidArgument
from services.common.internal_tls import INTERNAL_SERVER_NAME, InternalTls, load_internal_tls, write_stack_certs
from services.up_options import parse_args


def test_the_stack_certificate_names_the_internal_server_is_signed_by_the_ca_and_its_key_is_private(
        tmp_path: Path) -> None:
    folder = write_stack_certs(tmp_path / "tls", valid_days=3)
    tls = InternalTls.from_dir(folder)
    ca, cert = x509.load_pem_x509_certificate(tls.ca), x509.load_pem_x509_certificate(tls.cert)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert names == [INTERNAL_SERVER_NAME]
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]  # serves and calls
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 3
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600


def test_a_folder_without_all_three_files_is_refused_naming_the_missing_ones(tmp_path: Path) -> None:
    folder = write_stack_certs(tmp_path / "tls")
    (folder / "tls.key").unlink()
    (folder / "ca.crt").unlink()
    with pytest.raises(InvalidArgument) as refused:
        load_internal_tls(str(folder))
    assert refused.value.message == f"internal TLS folder {folder} lacks ca.crt, tls.key"
    assert load_internal_tls("") is None  # no folder: plaintext


def test_up_uses_internal_tls_unless_told_not_to() -> None:
    assert parse_args([]).internal_tls is True
    assert parse_args(["--no-internal-tls"]).internal_tls is False
