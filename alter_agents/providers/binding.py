"""THE destination rule: the hosts, ports and schemes a provider's credential may be sent to.

A host entry is `name`, `name:port`, `*.domain` or `*.domain:port` (IPv6 literals in brackets). An entry
without a port matches only the scheme's default port (443 for https, 80 for http), so another service
on the same host never receives the credential. `*.domain` matches any name below `domain` (not `domain`
itself), and `domain` must be at least a registrable domain (`*.acme.com`, never `*.com` or `*`).
Plain http is allowed only to loopback hosts, and only when the provider spec says so. The vault, the
outgoing call and the tools all ask this module; none re-implements it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from publicsuffixlist import PublicSuffixList

from alter_agents.errors import HostNotAllowedError, InvalidArgumentsError
from alter_agents.models import Injection

DEFAULT_PORTS = {"https": 443, "http": 80}


@dataclass(frozen=True, slots=True)
class HostEntry:
    """One parsed entry of a provider's `hosts`."""

    host: str
    port: int | None = None
    wildcard: bool = False

    def matches(self, host: str, port: int, scheme: str) -> bool:
        if port != (self.port if self.port is not None else DEFAULT_PORTS.get(scheme)):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


@functools.lru_cache(maxsize=1)
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList(only_icann=True)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=1024)
def parse_entry(text: str) -> HostEntry:
    """Parse and check one host entry; `ValueError` with a one-line reason when it is unsafe or malformed."""
    entry = text.strip().lower()
    port: int | None = None
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"host entry {text!r} is malformed")
            port = _port(text, rest[1:])
    else:
        host, sep, rest = entry.rpartition(":")
        if sep:
            port = _port(text, rest)
        else:
            host = entry
    host = host.rstrip(".")
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if not host or "*" in host or "/" in host or "@" in host or " " in host:
        raise ValueError(
            f"host entry {text!r} is not allowed: use a host name, or '*.' followed by a registrable domain"
        )
    if wildcard and (_is_ip(host) or _suffixes().privatesuffix(host) is None):
        raise ValueError(f"host entry {text!r} is too wide: a wildcard needs a registrable domain, e.g. '*.acme.com'")
    return HostEntry(host, port, wildcard)


def registrable(host: str) -> str:
    """The registrable domain of `host` (`api.github.com` → `github.com`), or the host itself."""
    return str(_suffixes().privatesuffix(host) or host)


def _port(text: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"host entry {text!r} has an invalid port")
    return int(value)


def _entries(hosts: Iterable[str]) -> list[HostEntry]:
    entries = []
    for text in hosts:
        try:
            entries.append(parse_entry(text))
        except ValueError:
            continue  # an unsafe entry matches nothing (the providers file refuses it when loaded)
    return entries


@functools.lru_cache(maxsize=1024)
def parse_url(url: str) -> httpx.URL:
    """`url` parsed once: an agent repeats its URLs, and parsing costs more than a call's own checks.
    Raises `httpx.InvalidURL` or `TypeError` like `httpx.URL` (failures are not cached)."""
    return httpx.URL(url)


def host_of(url: str, default: str = "") -> str:
    """`url`'s host, or `default` when it does not parse (for messages and span attributes; never its
    query string, where a credential may ride)."""
    try:
        return str(parse_url(url).host)
    except (httpx.InvalidURL, TypeError):
        return default


def _normal_host(url: httpx.URL) -> str:
    return url.host.lower().rstrip(".")


def url_matches(url: httpx.URL, hosts: Iterable[str]) -> bool:
    """True when `url`'s host and port are those of one of the entries in `hosts`."""
    port = url.port or DEFAULT_PORTS.get(url.scheme, 0)
    host = _normal_host(url)
    return any(entry.matches(host, port, url.scheme) for entry in _entries(hosts))


def claims(url: str, hosts: Iterable[str]) -> bool:
    """True when `url` (any scheme http/https) is one a provider with `hosts` serves."""
    try:
        parsed = parse_url(url)
    except (httpx.InvalidURL, TypeError):
        return False
    return parsed.scheme in DEFAULT_PORTS and url_matches(parsed, hosts)


def check_destination(url: str, provider: str, hosts: Iterable[str], allow_http: bool) -> httpx.URL:
    """Refuse a URL the credential may not be sent to; return it parsed."""
    return _check_destination(url, provider, tuple(hosts), allow_http)


@functools.lru_cache(maxsize=1024)
def _check_destination(url: str, provider: str, hosts: tuple[str, ...], allow_http: bool) -> httpx.URL:
    """Pure, so an agent's repeated URLs are parsed once; refusals are raised, never cached."""
    try:
        parsed = parse_url(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise HostNotAllowedError(url, provider, hosts, reason=f"it is not a valid URL ({exc})") from None
    host = _normal_host(parsed)
    if parsed.scheme == "http":
        if not (allow_http and is_loopback(host)):
            raise HostNotAllowedError(url, provider, hosts, reason="only https URLs are allowed")
    elif parsed.scheme != "https":
        raise HostNotAllowedError(url, provider, hosts, reason="only https URLs are allowed")
    if parsed.userinfo:
        raise HostNotAllowedError(url, provider, hosts, reason="URLs with user info are not allowed")
    if not url_matches(parsed, hosts):
        raise HostNotAllowedError(url, provider, hosts)
    return parsed


def entry_for(url: httpx.URL) -> str:
    """The host entry that names exactly `url`'s host and port (for a provider known only by a URL)."""
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{host}:{url.port}" if url.port else host


# -- what a caller may not put on a credentialed request ------------------------------------

CREDENTIAL_HEADERS = frozenset({
    "authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token",
    "private-token", "x-goog-api-key",
})
FRAMING_HEADERS = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "keep-alive", "te", "trailer",
    "expect",
})


def refused_headers(names: Iterable[str], injection: Injection | None = None) -> list[str]:
    """The header names a caller may not set: credentials (the fixed list and the provider's own injection
    header), and framing, which only the HTTP client may decide. Case-insensitive."""
    own = injection.header.lower() if injection and injection.header and not injection.query else None
    refused = []
    for name in names:
        low = name.lower()
        if low in CREDENTIAL_HEADERS or low in FRAMING_HEADERS or low.startswith("proxy-") or low == own:
            refused.append(name)
    return sorted(refused)


def refuse_caller_parts(
    injection: Injection | None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, object] | None = None,
    url: str | None = None,
) -> None:
    """Refuse a call whose headers or query would carry a credential or framing of the caller's own."""
    refused = refused_headers(headers or {}, injection)
    if refused:
        raise InvalidArgumentsError(
            f"Do not send the header(s) {', '.join(refused)}: credentials and message framing are added for "
            "you. Remove them and call again.",
            refused_headers=refused,
        )
    param = injection.query.lower() if injection and injection.query else None
    if param is None:
        return
    names = [k for k in (query or {}) if k.lower() == param]
    if url:
        with contextlib.suppress(httpx.InvalidURL, TypeError):
            names += [k for k in parse_url(url).params if k.lower() == param]
    if names:
        raise InvalidArgumentsError(
            f"Do not send the query parameter {names[0]}: the credential is added for you. Remove it and call "
            "again.",
            refused_query=sorted(set(names)),
        )
