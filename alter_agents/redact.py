"""THE redaction rule: no form of a released secret reaches a model, a caller, an error or a log.

A secret is matched however it is written: literally, as the basic-auth/base64 form it travels in,
and with any of its characters escaped the way encoders write them (`\\u005f`, `\\/`, `\\x5f`, `%5F`,
`&#95;`, `&#x5f;`, `+` for a space), so decoding JSON, a URL or HTML cannot bring it back. Every
credential the vault releases is registered here (`register`), and for as long as it is live the same
rule redacts error messages (`redact_text`), parsed values (`redact_value`), header names and values
(`redact_headers`), cut bodies (`cut`) and every log record of every library in the process.
"""

from __future__ import annotations

import base64
import bisect
import functools
import logging
import re
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

REDACTED = "[REDACTED]"
_REDACTED_BYTES = REDACTED.encode()
MIN_SECRET_LENGTH = 4
# Process-wide redaction (messages, logs) skips shorter values: a real credential is longer, and a short
# one would blank ordinary words everywhere. The call that carries a short one still redacts its body.
MIN_LIVE_LENGTH = 8
LIVE_SECONDS = 3600.0
MAX_LIVE = 4096

_live: dict[str, float] = {}
_live_lock = threading.Lock()


def register(secret: str) -> None:
    """Mark `secret` as released: from now on (for `LIVE_SECONDS` after its last release) it is redacted
    from every error message and log record of this process."""
    if len(secret) < MIN_LIVE_LENGTH:
        return
    now = time.monotonic()
    if _live.get(secret, 0.0) > now + LIVE_SECONDS / 2:
        return  # registered within the last half of its life: released again on every call, renewed later
    with _live_lock:
        _live.pop(secret, None)
        _live[secret] = now + LIVE_SECONDS
        while len(_live) > MAX_LIVE:
            del _live[next(iter(_live))]


def live() -> tuple[str, ...]:
    """The secrets released in this process that are still live."""
    now = time.monotonic()
    with _live_lock:
        while _live and next(iter(_live.values())) < now:
            del _live[next(iter(_live))]
        return tuple(_live)


def _secrets(secrets: Iterable[str] | None) -> tuple[str, ...]:
    return _normalised(live() if secrets is None else tuple(secrets))


@functools.lru_cache(maxsize=64)
def _normalised(chosen: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({s for s in chosen if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True))


def _hex(n: int, width: int) -> str:
    return "".join(f"[{d}{d.upper()}]" if d.isalpha() else d for d in f"{n:0{width}x}")


def _char(c: str) -> str:
    """Every way an encoder may write the character `c`."""
    o = ord(c)
    alts = [re.escape(c)]
    if o < 0x10000:
        alts.append(r"\\u" + _hex(o, 4))
    alts.append(r"&\#0*" + str(o) + ";")
    alts.append(r"&\#[xX]0*" + _hex(o, 1) + ";")
    utf8 = c.encode("utf-8")
    alts.append("".join("%" + _hex(b, 2) for b in utf8))
    if o < 0x100:
        alts.append(r"\\x" + _hex(o, 2))
    if c == "/":
        alts.append(r"\\/")
    if c == " ":
        alts.append(r"\+")
    return "(?:" + "|".join(alts) + ")"


@functools.lru_cache(maxsize=1024)
def _literal_forms(secret: str) -> tuple[str, ...]:
    """The secret as it travels: itself, and base64 as basic auth (`secret:`) or alone."""
    return secret, base64.b64encode(f"{secret}:".encode()).decode(), base64.b64encode(secret.encode()).decode()


@functools.lru_cache(maxsize=1024)
def _lower_forms(secret: str) -> tuple[str, ...]:
    return tuple(form.lower() for form in _literal_forms(secret))


@functools.lru_cache(maxsize=1024)
def _byte_forms(secret: str) -> tuple[bytes, ...]:
    return tuple(form.encode() for form in _literal_forms(secret))


@functools.lru_cache(maxsize=64)
def _patterns(secrets: tuple[str, ...], ignore_case: bool) -> tuple[re.Pattern[str], re.Pattern[bytes]]:
    parts = [re.escape(form) for s in secrets for form in _literal_forms(s)[1:]]
    parts += ["".join(_char(c) for c in s) for s in secrets]
    source = "|".join(sorted(parts, key=len, reverse=True))
    flags = re.IGNORECASE if ignore_case else 0
    return re.compile(source, flags), re.compile(source.encode("utf-8"), flags)


def redact_bytes(data: bytes, secrets: Iterable[str] | None = None) -> bytes:
    """`data` with every form of every secret replaced by `[REDACTED]`."""
    chosen = _secrets(secrets)
    if not chosen or not data:
        return data
    if data.find(b"\\") < 0 and data.find(b"%") < 0 and data.find(b"&#") < 0 and data.find(b"+") < 0:
        # Without an escape character no escaped form can be there: the literal forms are enough. (`find` and
        # `replace`, not `in`: on bytes, `in` first tries its operand as an int, formatting a TypeError.)
        for s in chosen:
            for form in _byte_forms(s):
                data = data.replace(form, _REDACTED_BYTES)
        return data
    return _patterns(chosen, False)[1].sub(_REDACTED_BYTES, data)


def redact_text(text: str, secrets: Iterable[str] | None = None, *, ignore_case: bool = False) -> str:
    """`text` with every form of every secret redacted; `ignore_case` for host names."""
    chosen = _secrets(secrets)
    if not chosen or not text:
        return text
    present = _present(text, chosen, ignore_case)
    if not present:
        return text
    return _patterns(present, ignore_case)[0].sub(REDACTED, text)


def _present(text: str, secrets: tuple[str, ...], ignore_case: bool) -> tuple[str, ...]:
    """The secrets that occur in `text` in some form: a substring search on the text and on its decoded
    form, so a process holding thousands of live secrets compiles a pattern only for those present."""
    decoded = _decode(text)
    views: tuple[str, ...] = (text,) if decoded == text else (text, decoded)
    if ignore_case:
        views = tuple(v.lower() for v in views)
    found = []
    for secret in secrets:
        for form in _lower_forms(secret) if ignore_case else _literal_forms(secret):
            if form in views[0] or form in views[-1]:
                found.append(secret)
                break
    return tuple(found)


def _may_hold(text: str, secrets: tuple[str, ...]) -> bool:
    """A quick, conservative `_present`: any escape at all, or a literal form in any case, says maybe."""
    if "\\" in text or "%" in text or "&#" in text or "+" in text:
        return True
    low = text.lower()
    return any(form in low for secret in secrets for form in _lower_forms(secret))


def _decode_one(match: re.Match[str]) -> str:
    code = next(g for g in match.groups() if g is not None)
    if code == "/":
        return "/"
    value = int(code, 10 if match.group(4) else 16)
    return chr(value) if value < 0x110000 else match.group(0)


def _decode(text: str) -> str:
    return _ESCAPE_AT.sub(_decode_one, text) if "\\" in text or "%" in text or "&#" in text else text


def redact_value(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """A parsed JSON value with every string (object keys included) redacted."""
    chosen = _secrets(secrets)
    if not chosen:
        return value
    return _walk(value, chosen)


def _walk(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return redact_text(value, secrets)
    if isinstance(value, dict):
        return {redact_text(str(k), secrets): _walk(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_walk(v, secrets) for v in value]
    return value


def redact_headers(items: Iterable[tuple[str, str]], secrets: Iterable[str] | None = None) -> dict[str, str]:
    """Headers (lowercased names) with values redacted; a header whose *name* holds a secret is dropped."""
    chosen = _secrets(secrets)
    items = list(items)
    if not chosen or not _may_hold("\n".join(map("\n".join, items)), chosen):
        return {name.lower(): value for name, value in items}
    headers: dict[str, str] = {}
    for name, value in items:
        if redact_text(name, chosen, ignore_case=True) != name:
            continue
        headers[name.lower()] = redact_text(value, chosen)
    return headers


def redact_raw_headers(raw: Sequence[tuple[bytes, bytes]], secrets: Iterable[str] | None = None,
                       ) -> list[tuple[bytes, bytes]]:
    """`redact_headers` for headers as they came off the wire (names lowercased, order and repeats kept);
    checked without decoding them one by one, which almost never finds anything."""
    chosen = _secrets(secrets)
    if not chosen or not _may_hold(b"\n".join(map(b"\n".join, raw)).decode("utf-8", "replace"), chosen):
        return [(name.lower(), value) for name, value in raw]
    texts = [(name.decode("latin-1"), value.decode("utf-8", "surrogateescape")) for name, value in raw]
    return [(name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
            for name, value in redact_headers(texts, chosen).items()]


# -- cutting at a size limit ------------------------------------------------------------------

_ESCAPE_AT = re.compile(
    r"\\u([0-9a-fA-F]{4})|\\x([0-9a-fA-F]{2})|%([0-9a-fA-F]{2})|&#0*([0-9]+);|&#[xX]0*([0-9a-fA-F]+);|\\(/)"
)
_PARTIAL_ESCAPE = re.compile(
    r"(?:\\u[0-9a-fA-F]{0,3}|\\x[0-9a-fA-F]?|%[0-9a-fA-F]?|&#[xX]?[0-9a-fA-F]*|\\)\Z"
)


def cut(data: bytes, limit: int, secrets: Iterable[str] | None = None) -> bytes:
    """`data[:limit]`, shortened further so that no beginning of a secret (in any form, `MIN_SECRET_LENGTH`
    characters or more: fewer tell nothing) is left at the edge."""
    data = data[:limit]
    chosen = _secrets(secrets)
    if not chosen or not data:
        return data
    start = max(0, len(data) - max(12 * len(s) for s in chosen))
    window = data[start:].decode("latin-1")
    if partial := _PARTIAL_ESCAPE.search(window):  # an escape cut in half: never worth keeping
        window = window[: partial.start()]
    chars, offsets = _decoded_with_offsets(window)
    candidates = _prefix_index(chosen)
    for i in range(len(chars) - MIN_SECRET_LENGTH + 1):
        piece = chars[i:]
        at = bisect.bisect_left(candidates, piece)
        if at < len(candidates) and candidates[at].startswith(piece):
            return data[: start + offsets[i]]
    return data[: start + len(window)]


def _decoded_with_offsets(window: str) -> tuple[str, list[int]]:
    """`window` with escapes decoded, and where in `window` each decoded character began."""
    chars: list[str] = []
    offsets: list[int] = []
    i = 0
    while i < len(window):
        match = _ESCAPE_AT.match(window, i)
        if match is not None:
            chars.append(_decode_one(match))
            offsets.append(i)
            i = match.end()
        else:
            chars.append(window[i])
            offsets.append(i)
            i += 1
    return "".join(chars), offsets


@functools.lru_cache(maxsize=64)
def _prefix_index(secrets: tuple[str, ...]) -> list[str]:
    """Every form of the secrets, sorted, so 'is this the beginning of one?' is a binary search."""
    forms = {form.encode("utf-8").decode("latin-1") for s in secrets for form in _literal_forms(s)}
    return sorted(forms)


# -- logs -------------------------------------------------------------------------------------

_installed = False
_formatter = logging.Formatter()


def _scrub(record: logging.LogRecord, secrets: Sequence[str]) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a malformed call still must not log the secret in its raw parts
        message = f"{record.msg} {record.args}"
    clean = redact_text(message, secrets)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact_text(_formatter.formatException(record.exc_info), secrets)
    elif record.exc_text:
        record.exc_text = redact_text(record.exc_text, secrets)
    if record.stack_info:
        record.stack_info = redact_text(record.stack_info, secrets)


def install_log_redaction() -> None:
    """Redact every live secret from every log record made in this process, whatever the logger, level
    or handler: the record factory runs before any filter, formatter or handler sees the record."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        secrets = _secrets(None)
        if secrets:
            _scrub(record, secrets)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


install_log_redaction()
