"""Parsers of setting values: text in, a value out, or ``ValueError`` with a
reason (``dbvip.config`` adds the setting's name and source).

Strict on purpose: a value is either exactly what the operator meant or it
is refused. Nothing is rounded, stripped or converted behind their back
(``int("1_0")`` and Arabic-Indic digits are Python's ideas, not an operator's;
``198.51.100.10/255.255.255.0`` is refused rather than turned into /24).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class ConfigError(Exception):
    """A setting is wrong; the message names it and its source."""


NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_UINT_RE = re.compile(r"[0-9]+")
_DECIMAL_RE = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")
_HOST_RE = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,15}")
IPInterfaceAlias = ipaddress.IPv4Interface | ipaddress.IPv6Interface
MAX_SECRET_FILE_BYTES = 4096
# No address in these ranges can be a VIP clients reach through a switch.
_NOT_A_VIP = (
    (ipaddress.ip_network("0.0.0.0/8"), "is in 0.0.0.0/8 ('this network')"),
    (ipaddress.ip_network("169.254.0.0/16"), "is link-local"),
    (ipaddress.ip_network("240.0.0.0/4"), "is reserved (240.0.0.0/4) or the broadcast address"),
    (ipaddress.ip_network("fe80::/10"), "is link-local"),
    (ipaddress.ip_network("::ffff:0:0/96"), "is an IPv4-mapped IPv6 address; give the IPv4 one"),
    (ipaddress.ip_network("::/96"), "is an IPv4-compatible IPv6 address (deprecated)"),
)


def name(text: str) -> str:
    if not NAME_RE.fullmatch(text):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting alphanumeric")
    return text


def vip(text: str) -> IPInterfaceAlias:
    address, slash, length = text.partition("/")
    if "%" in address:
        raise ValueError("must not carry an IPv6 scope (%zone): a VIP is not link-local")
    if slash and not _UINT_RE.fullmatch(length):
        raise ValueError("the prefix must be a length in decimal digits, e.g. /24 (no netmask)")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError("is not an IPv4 or IPv6 address") from None
    prefixlen = int(length) if slash else ip.max_prefixlen  # a host route by default
    shortest = 8 if ip.version == 4 else 16
    if not shortest <= prefixlen <= ip.max_prefixlen:
        raise ValueError(f"prefix length must be {shortest}-{ip.max_prefixlen}")
    iface = ipaddress.ip_interface(f"{ip}/{prefixlen}")
    if ip.is_unspecified or ip.is_multicast or ip.is_loopback:
        raise ValueError("must be a unicast host address (not unspecified, multicast or loopback)")
    for network, why in _NOT_A_VIP:
        if ip.version == network.version and ip in network:
            raise ValueError(why)
    if (
        iface.version == 4
        and iface.network.prefixlen < 31
        and iface.ip in (iface.network.network_address, iface.network.broadcast_address)
    ):
        raise ValueError("is the network or broadcast address of its prefix")
    if iface.version == 6 and iface.network.prefixlen < 127 and ip == iface.network.network_address:
        raise ValueError("is the subnet-router anycast address of its prefix")
    return iface


MAX_READER_VIPS = 64


def vip_list(text: str) -> tuple[IPInterfaceAlias, ...]:
    """Comma-separated VIPs, each under the writer VIP's rules; no address twice."""
    out: list[IPInterfaceAlias] = []
    for i, entry in enumerate(text.split(","), 1):
        item = entry.strip()
        if not item:
            raise ValueError("has an empty entry (two commas, or a trailing comma)")
        try:
            iface = vip(item)
        except ValueError as e:
            raise ValueError(f"entry {i} ({item!r}) {e}") from None
        if any(o.ip == iface.ip for o in out):
            raise ValueError(f"lists {iface.ip} twice")
        out.append(iface)
    if len(out) > MAX_READER_VIPS:
        raise ValueError(f"lists {len(out)} VIPs; at most {MAX_READER_VIPS}")
    return tuple(out)


_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def boolean(text: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError("must be on or off (also true/false, yes/no, 1/0)")


def interface(text: str) -> str:
    if not _IFNAME_RE.fullmatch(text) or text in (".", ".."):
        raise ValueError("must be an interface name of 1-15 letters, digits, '_', '.', '@', '-'")
    return text


def endpoints(text: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in text.split(","))
    if not any(urls):
        raise ValueError("needs at least one http:// or https:// URL")
    seen: set[tuple[str, str, int]] = set()
    out = []
    for url in urls:
        if not url:
            raise ValueError("has an empty entry (two commas, or a trailing comma)")
        if any(c.isspace() for c in url):
            raise ValueError(f"{url!r} contains a space")
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{url!r}: the port must be 1-65535") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            raise ValueError(f"{url!r} is not http(s)://host:port")
        if parts.username is not None or parts.password is not None:
            raise ValueError(
                "an endpoint must not carry credentials; use etcd_username and etcd_password"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment or url.endswith("?"):
            raise ValueError(f"{parts.scheme}://{parts.netloc} must have no path, query or '#'")
        host = parts.hostname
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            if not _HOST_RE.fullmatch(host) or len(host) > 253 or host.isdigit():
                raise ValueError(f"{host!r} is not a host name or an IP address") from None
        else:
            if ip.is_unspecified or ip.is_multicast or "%" in host:
                raise ValueError(f"{host!r} cannot be an etcd endpoint")
            if ip.version == 6 and "[" not in parts.netloc:
                raise ValueError("an IPv6 host goes in brackets, e.g. http://[2001:db8::1]:2379")
        canonical = (parts.scheme, host.lower(), port)
        if canonical in seen:
            raise ValueError(f"{parts.scheme}://{parts.netloc} is listed twice")
        seen.add(canonical)
        out.append(f"{parts.scheme}://{parts.netloc}")
    return tuple(out)


def prefix(text: str) -> str:
    parts = text[1:].split("/")
    if not text.startswith("/") or not all(NAME_RE.fullmatch(p) for p in parts):
        raise ValueError("must look like /name or /name/name (names as for cluster)")
    return text


def readable_file(text: str) -> str:
    """A regular file this process can open (opened now, not at first use)."""
    try:
        mode = os.stat(text).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError(f"{text!r} is not a regular file")
        with open(text, "rb") as f:
            f.read(1)
    except OSError as e:
        raise ValueError(f"{text!r} cannot be read: {e.strerror}") from None
    return text


def secret_file(text: str) -> str:
    """A file holding one secret: read now, so a bad one stops the start."""
    readable_file(text)
    data = Path(text).read_bytes()
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ValueError(f"{text!r} is longer than {MAX_SECRET_FILE_BYTES} bytes: not a secret")
    try:
        value = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{text!r} is not UTF-8 text") from None
    if not value:
        raise ValueError(f"{text!r} is empty")
    if not value.isprintable():
        raise ValueError(f"{text!r} holds a control character or more than one line")
    return text


def ca_file(text: str) -> str:
    readable_file(text)
    try:
        ssl.create_default_context(cafile=text)
    except (ssl.SSLError, ValueError):
        raise ValueError(f"{text!r} holds no usable PEM CA certificate") from None
    return text


def cert_file(text: str) -> str:
    readable_file(text)
    try:  # loading it as a trust anchor parses every certificate in it
        ssl.create_default_context(cafile=text)
    except (ssl.SSLError, ValueError):
        raise ValueError(f"{text!r} holds no usable PEM certificate") from None
    return text


def cert_and_key(cert: str, key: str) -> None:
    """The client certificate and key load together (key matches certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError, ValueError):
        raise ValueError(
            "do not load together: not PEM, an encrypted key, or a key that does not match"
        ) from None


def executable(text: str) -> str:
    path = Path(text)
    if not path.is_absolute():
        raise ValueError("must be an absolute path")
    if not path.is_file():
        raise ValueError(f"{text!r} does not exist or is not a file")
    if not os.access(path, os.X_OK):
        raise ValueError(f"{text!r} is not executable")
    return text


@dataclass(frozen=True)
class Listen:
    """An address to serve HTTP on; ``port`` 0 lets the kernel choose."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def listen(text: str) -> Listen:
    host, sep, port = text.rpartition(":")
    if not sep or not _UINT_RE.fullmatch(port) or int(port) > 65535:
        raise ValueError("must be host:port, e.g. 127.0.0.1:8008 or [::1]:8008")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host {host!r} must be an IP address (IPv6 in brackets)") from None
    if (address.version == 6) != bracketed:
        raise ValueError("an IPv6 host goes in brackets, e.g. [::1]:8008, an IPv4 one not")
    if address.is_multicast or "%" in host:
        raise ValueError(f"host {host!r} cannot be listened on")
    return Listen(address.compressed, int(port))


def text(value: str) -> str:
    return value


def integer(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not _UINT_RE.fullmatch(text) or not low <= int(text) <= high:
            raise ValueError(f"must be a whole number from {low} to {high} (decimal digits)")
        return int(text)

    return parse


def seconds(low: float, strict: bool, high: float) -> Callable[[str], float]:
    bound = f"{'above' if strict else 'at least'} {low:g} and at most {high:g}"

    def parse(text: str) -> float:
        if not _DECIMAL_RE.fullmatch(text):
            raise ValueError(f"must be a decimal number of seconds {bound}, e.g. 0.5")
        value = float(text)
        if not math.isfinite(value) or value < low or (strict and value == low) or value > high:
            raise ValueError(f"must be a number of seconds {bound}")
        return value

    return parse


def choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse
