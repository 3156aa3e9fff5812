"""TLS for DICOM (PS3.15 B.1, the BCP 195 profile): SSL contexts for the SCP and for each SCU peer.

pynetdicom wraps its sockets in whatever context it is given (``start_server(ssl_context=...)``
and ``associate(tls_args=(context, server_hostname))``); this module only builds those contexts
from certificate files, so that keys stay in files (mounted secrets) and never in the database.
TLS 1.2 is the floor; peers verify each other's certificate chains, and the SCU checks the
destination's host name (or IP address) against its certificate.
"""

import ssl
from dataclasses import dataclass
from pathlib import Path

from radlight.errors import ConfigurationError


@dataclass(frozen=True)
class TlsClient:
    """How the SCU speaks TLS to one destination.

    ``ca_file``: the certificates that may sign the destination's (None = the system's store);
    ``cert_file`` and ``key_file``: our client certificate, for peers that require one.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


def _readable(path: str | Path, what: str) -> str:
    if not Path(path).is_file():
        raise ConfigurationError(f"{what} {str(path)!r} is not a readable file")
    return str(path)


def _load_chain(context: ssl.SSLContext, cert_file: str | Path, key_file: str | Path) -> None:
    try:
        context.load_cert_chain(_readable(cert_file, "certificate"), _readable(key_file, "key"))
    except ssl.SSLError as exc:
        raise ConfigurationError(f"cannot load certificate {cert_file!s}: {exc}") from exc


def _load_ca(context: ssl.SSLContext, ca_file: str | Path) -> None:
    try:
        context.load_verify_locations(cafile=_readable(ca_file, "CA file"))
    except ssl.SSLError as exc:
        raise ConfigurationError(f"cannot load CA file {ca_file!s}: {exc}") from exc


def server_context(
    *,
    cert_file: Path,
    key_file: Path,
    ca_file: Path | None,
    require_client_cert: bool,
) -> ssl.SSLContext:
    """The SCP's context: our certificate, and the CA that client certificates must chain to."""
    if require_client_cert and ca_file is None:
        raise ConfigurationError("requiring client certificates needs a CA file to check them")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert_file, key_file)
    if ca_file is not None:
        _load_ca(context, ca_file)
    if ca_file is None:
        context.verify_mode = ssl.CERT_NONE
    else:
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def client_context(tls: TlsClient) -> ssl.SSLContext:
    """The SCU's context for one destination: verify its chain and name; offer our certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_file is not None:
        _load_ca(context, tls.ca_file)
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigurationError("a client certificate needs both its certificate and key file")
    if tls.cert_file is not None and tls.key_file is not None:
        _load_chain(context, tls.cert_file, tls.key_file)
    return context
