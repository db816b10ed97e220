"""An admission webhook's `clientConfig.url`, read as Go's net/url reads it, and the URL its call goes to.

Validation (`ValidateWebhookURL`, k8s.io/apiserver/pkg/util/webhook) parses the URL with `url.Parse`: a URL it
cannot parse is one Required error naming the parser's complaint (`parse "<url>": missing ']' in host`); a
parsed one must be https, have a host, and carry no user information (shown as `Userinfo.String()` shows it),
no fragment (shown unescaped) and no query (shown as written). Python's `urllib.parse` takes URLs Go refuses
(a port that is not a number, user information with a space, control characters) and raises on others, so
`parse` follows Go's `url.Parse` (`getScheme`, `parseAuthority`, `parseHost`, `unescape`) instead.

The call (`ClientManager.hookClientConfig`, then client-go's `RESTClient`) goes to `scheme://host` with the
URL's path as the client's API path: joined onto "/" by `path.Join` (so cleaned, without a trailing slash, and
"/" when there is none), escaped as `URL.String` escapes a path, then `?timeout=<n>s`. A service reference's
path is used the same way (`request_url`).
"""

from __future__ import annotations

from dataclasses import dataclass

from tests.kubesim.validation import go_string

# Go's `encoding` modes of net/url's escape and unescape.
PATH, HOST, ZONE, USER_PASSWORD, FRAGMENT = "path", "host", "zone", "userinfo", "fragment"

_ALNUM = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_HOST_EXTRA = frozenset(b"!$&'()*,;=:[]<>\"+")
_USERINFO_OK = frozenset(b"-._:~!$&'()*+,;=%@") | _ALNUM
_HEX = frozenset(b"0123456789abcdefABCDEF")


class URLError(ValueError):
    """`url.Parse` failed; the text is Go's `*url.Error`: `parse "<url>": <reason>`."""


@dataclass(frozen=True)
class GoURL:
    """The fields of a Go `url.URL` that webhooks use (`user` is `Userinfo.String()`, None without one)."""

    scheme: str
    host: str
    path: str
    raw_query: str
    fragment: str
    user: str | None


def _should_escape(c: int, mode: str) -> bool:
    """net/url's `shouldEscape` for one byte."""
    if c in _ALNUM:
        return False
    if mode in (HOST, ZONE) and c in _HOST_EXTRA:
        return False
    if c in b"-_.~":
        return False
    if c in b"$&+,/:;=?@":
        if mode == PATH:
            return c == ord("?")
        if mode == USER_PASSWORD:
            return c in b"@/?:"
        if mode == FRAGMENT:
            return False
    return not (mode == FRAGMENT and c in b"!()*")


def _unescape(text: bytes, mode: str) -> bytes:
    """net/url's `unescape`: %XX decoded; a bad escape, or a host byte that may not appear, is an error."""
    at = 0
    out = bytearray()
    while at < len(text):
        c = text[at]
        if c == ord("%"):
            if at + 2 >= len(text) or text[at + 1] not in _HEX or text[at + 2] not in _HEX:
                raise ValueError(f"invalid URL escape {_quote(text[at : at + 3])}")
            value = int(text[at + 1 : at + 3], 16)
            if mode == HOST and value < 0x80 and text[at : at + 3] != b"%25":
                raise ValueError(f"invalid URL escape {_quote(text[at : at + 3])}")
            if mode == ZONE and text[at : at + 3] != b"%25" and value != 0x20 and _should_escape(value, HOST):
                raise ValueError(f"invalid URL escape {_quote(text[at : at + 3])}")
            out.append(value)
            at += 3
            continue
        if mode in (HOST, ZONE) and c < 0x80 and _should_escape(c, mode):
            raise ValueError(f"invalid character {_quote(bytes([c]))} in host name")
        out.append(c)
        at += 1
    return bytes(out)


def escape(text: str, mode: str) -> str:
    """net/url's `escape` of `text`'s UTF-8 bytes."""
    raw = text.encode("utf-8", "surrogateescape")
    return "".join(f"%{c:02X}" if _should_escape(c, mode) else chr(c) for c in raw)


def _quote(raw: bytes) -> str:
    return go_string(raw.decode("utf-8", "surrogateescape"))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _valid_optional_port(port: bytes) -> bool:
    return not port or (port[:1] == b":" and all(48 <= c <= 57 for c in port[1:]))


def _parse_host(host: bytes) -> bytes:
    """`parseHost`: `host[:port]`, an IPv6 literal in brackets (with a %25 zone) or a name, unescaped."""
    if host.startswith(b"["):
        end = host.rfind(b"]")
        if end < 0:
            raise ValueError("missing ']' in host")
        if not _valid_optional_port(host[end + 1 :]):
            raise ValueError(f"invalid port {_quote(host[end + 1 :])} after host")
        zone = host[:end].find(b"%25")
        if zone >= 0:
            return _unescape(host[:zone], HOST) + _unescape(host[zone:end], ZONE) + _unescape(host[end:], HOST)
    elif (colon := host.rfind(b":")) >= 0 and not _valid_optional_port(host[colon:]):
        raise ValueError(f"invalid port {_quote(host[colon:])} after host")
    return _unescape(host, HOST)


def _parse_authority(authority: bytes) -> tuple[str | None, bytes]:
    """`parseAuthority`: (`Userinfo.String()` or None, the host)."""
    at = authority.rfind(b"@")
    host = _parse_host(authority[at + 1 :] if at >= 0 else authority)
    if at < 0:
        return None, host
    userinfo = authority[:at]
    if any(c not in _USERINFO_OK for c in userinfo):
        raise ValueError("net/url: invalid userinfo")
    name, colon, password = userinfo.partition(b":")
    shown = escape(_text(_unescape(name, USER_PASSWORD)), USER_PASSWORD)
    if colon:
        shown += ":" + escape(_text(_unescape(password, USER_PASSWORD)), USER_PASSWORD)
    return shown, host


def parse(raw_url: str) -> GoURL:
    """`url.Parse`; URLError with Go's text when it fails."""
    raw = raw_url.encode("utf-8", "surrogateescape")
    head, hash_mark, frag = raw.partition(b"#")
    try:
        parsed = _parse(head)
    except ValueError as exc:
        raise URLError(f"parse {_quote(head)}: {exc}") from None
    if not hash_mark or not frag:
        return parsed
    try:
        fragment = _text(_unescape(frag, FRAGMENT))
    except ValueError as exc:
        raise URLError(f"parse {_quote(raw)}: {exc}") from None
    return GoURL(parsed.scheme, parsed.host, parsed.path, parsed.raw_query, fragment, parsed.user)


def _scheme(raw: bytes) -> tuple[bytes, bytes]:
    """`getScheme`: (scheme, rest); a leading ':' is an error."""
    for i, c in enumerate(raw):
        if chr(c).isascii() and chr(c).isalpha():
            continue
        if c in b"0123456789+-.":
            if i == 0:
                return b"", raw
            continue
        if c == ord(":"):
            if i == 0:
                raise ValueError("missing protocol scheme")
            return raw[:i], raw[i + 1 :]
        return b"", raw
    return b"", raw


def _parse(raw: bytes) -> GoURL:
    if any(c < 0x20 or c == 0x7F for c in raw):
        raise ValueError("net/url: invalid control character in URL")
    if raw == b"*":
        return GoURL("", "", "*", "", "", None)
    scheme, rest = _scheme(raw)
    scheme = scheme.lower()
    query = b""
    if rest.endswith(b"?") and rest.count(b"?") == 1:
        rest = rest[:-1]
    else:
        rest, _, query = rest.partition(b"?")
    if not rest.startswith(b"/"):
        if scheme:
            return GoURL(_text(scheme), "", "", _text(query), "", None)  # opaque: no host, no path
        if b":" in rest.partition(b"/")[0]:
            raise ValueError("first path segment in URL cannot contain colon")
    user: str | None = None
    host = b""
    if (scheme or not rest.startswith(b"///")) and rest.startswith(b"//"):
        authority, slash, tail = rest[2:].partition(b"/")
        rest = slash + tail
        user, host = _parse_authority(authority)
    path = _unescape(rest, PATH)
    return GoURL(_text(scheme), _text(host), _text(path), _text(query), "", user)


def clean_path(path: str) -> str:
    """`path.Join("/", path)`: rooted, with `.` and `..` resolved, repeated and trailing slashes gone."""
    parts: list[str] = []
    for segment in path.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if parts:
                parts.pop()
            continue
        parts.append(segment)
    return "/" + "/".join(parts)


def request_url(scheme: str, host: str, path: str, timeout_seconds: int) -> str:
    """The URL a webhook call is POSTed to, as the Go client prints it (`Request.URL`): the host escaped for a
    host, the cleaned path escaped for a path, the timeout as `time.Duration` prints whole seconds."""
    return f"{scheme}://{escape(host, HOST)}{escape(clean_path(path), PATH)}?timeout={timeout_seconds}s"


def split_host_port(host: str) -> tuple[str, str]:
    """`splitHostPort`: (the host without a valid port and without an IPv6 literal's brackets, the port)."""
    port = ""
    colon = host.rfind(":")
    if colon >= 0 and _valid_optional_port(host[colon:].encode()):
        host, port = host[:colon], host[colon + 1 :]
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port


def dial_address(host: str) -> str:
    """The host:port a call connects to (`canonicalAddr`): the URL's host name, and its port or 443, joined as
    `net.JoinHostPort` joins them (an IPv6 address in brackets)."""
    name, port = split_host_port(host)
    return f"[{name}]:{port or 443}" if ":" in name else f"{name}:{port or 443}"
