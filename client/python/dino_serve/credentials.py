"""Authentication and transport security options of :class:`dino_serve.DinoClient`: bearer
tokens (sent as "authorization: Bearer <token>" metadata) and TLS / mutual-TLS channel
credentials."""
from __future__ import annotations

import os
from typing import Union

import grpc

__all__ = ["read_token_file", "check_token", "read_pem", "channel_credentials", "PemSource"]

# PEM data as bytes, as a str holding "-----BEGIN ...", or the path of a file holding it.
PemSource = Union[bytes, str, "os.PathLike[str]"]


def read_token_file(path: str | os.PathLike[str]) -> str:
    """The bearer token in ``path``, without surrounding whitespace. ValueError (naming the
    file, never the token) when the rest is empty or not visible ASCII."""
    with open(path, "rb") as f:
        token = f.read().strip()
    if not token:
        raise ValueError("token file %s is empty" % os.fspath(path))
    if any(c < 0x21 or c > 0x7E for c in token):
        raise ValueError("token file %s: the token holds whitespace, control or non-ASCII "
                         "characters" % os.fspath(path))
    return token.decode("ascii")


def check_token(token: str) -> str:
    """``token`` if it is non-empty visible ASCII (what an HTTP/2 header value may hold), else
    ValueError (without echoing the token)."""
    if not token or any(ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ValueError("the token is empty or holds whitespace, control or non-ASCII "
                         "characters")
    return token


def read_pem(source: PemSource | None) -> bytes | None:
    """PEM bytes from ``source``: bytes as they are, a str starting with "-----BEGIN" as its
    text, any other str or path-like as the file it names; None stays None."""
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii")
    with open(source, "rb") as f:
        return f.read()


def channel_credentials(root_certificates: PemSource | None = None,
                        certificate_chain: PemSource | None = None,
                        private_key: PemSource | None = None) -> grpc.ChannelCredentials:
    """TLS channel credentials. ``root_certificates``: the CA(s) that signed the server's
    certificate (None: the system's default roots). ``certificate_chain`` and ``private_key``
    (give both or neither): the client's own certificate, for servers that require mutual
    TLS."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("mutual TLS needs both certificate_chain and private_key")
    return grpc.ssl_channel_credentials(root_certificates=read_pem(root_certificates),
                                        private_key=read_pem(private_key),
                                        certificate_chain=read_pem(certificate_chain))
