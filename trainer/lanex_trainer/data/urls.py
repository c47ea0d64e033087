"""How a download URL is shown: without its query string or user:password.

A URL may carry a secret (a SAS token in its query, credentials before the host). Everything that
prints, logs or records a URL (the downloader's messages, the operator's status.provenance and
annotations) shows it through `redact_url`, so there is one rule for what a reader may see.
Standard library only: the operator's API models import it too.
"""

from __future__ import annotations

from urllib.parse import urlparse

REDACTED = "<redacted>"
_SCHEMES = ("http", "https", "az", "file")


def redact_url(url: str) -> str:
    """`url` without its query string (replaced by `?<redacted>`) and user:password; others unchanged."""
    parsed = urlparse(url)
    if parsed.scheme not in _SCHEMES:
        return url
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = (parsed.hostname or "") + (f":{parsed.port}" if parsed.port else "")
    shown = parsed._replace(netloc=netloc, query="", fragment="").geturl()
    return shown + (f"?{REDACTED}" if parsed.query else "")


def has_userinfo(url: str) -> bool:
    """True when the URL carries user[:password]@ before its host."""
    return "@" in urlparse(url).netloc
