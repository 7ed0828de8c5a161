"""Whose data a base URL serves: its canonical form, and the account the API says a token belongs to.

Two spellings of one API (`http://LOCALHOST:80/api/v2/`, `http://localhost/api/v2`) must name one
target, and two accounts behind one URL must not. So an `Account` is:
1. `origin`: the base URL made canonical (scheme and host lower-cased, the default port dropped,
   `.`/`..`/empty path segments resolved, no trailing slash, no userinfo, query or fragment);
2. `org`: the account's own identifier as the API states it, when it states one. The API's root
   (`GET <base>`) answers a token-info document, `{"meta": {"org": {"guid": ...}, "user": ...}}`
   (confidence L: seen in one secondary source, so an API that answers anything else there
   simply leaves `org` unknown), except 404: nothing is there, so the base URL's path is wrong
   (`/api/v3`, `/v2`), and every later request would 404 too; that is the user's to fix (exit 2).
Two accounts are the same when both orgs are known and equal; when either is unknown, when their
canonical origins are equal. A different org behind the same URL is a different account.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from exporter.core.errors import ApiError, AuthError, ExitCode, UsageError

if TYPE_CHECKING:
    from exporter.api.client import ApiClient

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ORG_KEYS = ("guid", "id", "shortname", "name")  # first one present names the org


def canonical_base_url(url: str) -> str:
    """`url` as one spelling per target; raises ValueError for what is not an http(s) URL."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port  # ValueError for a port that is not a number
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        netloc += f":{port}"
    path = "/" + posixpath.normpath("/" + unquote(parts.path)).lstrip("/")
    path = path.rstrip("/")
    return urlunsplit((scheme, netloc, path, "", ""))


@dataclass(frozen=True)
class Account:
    """A target API account: its canonical base URL and, when the API says, its org id."""

    origin: str
    org: str | None = None

    @property
    def label(self) -> str:
        """How messages name it: the org when known, with the URL."""
        return f"{self.origin} (org {self.org})" if self.org else self.origin

    def same_as(self, other: Account) -> bool:
        if self.org is not None and other.org is not None:
            return self.org == other.org
        return self.origin == other.origin

    def to_json(self) -> dict[str, str | None]:
        return {"origin": self.origin, "org": self.org}

    @classmethod
    def from_json(cls, data: Any) -> Account | None:
        """An Account recorded by `to_json`, or None for anything else (older state files)."""
        if not isinstance(data, dict):
            return None
        origin, org = data.get("origin"), data.get("org")
        if not isinstance(origin, str) or not (org is None or isinstance(org, str)):
            return None
        try:
            return cls(canonical_base_url(origin), org)
        except ValueError:
            return None


def org_of(document: Any) -> str | None:
    """The org id a token-info document states, or None."""
    meta = document.get("meta") if isinstance(document, dict) else None
    org = meta.get("org") if isinstance(meta, dict) else None
    if not isinstance(org, dict):
        return None
    for key in _ORG_KEYS:
        value = org.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            text = str(value).strip()
            # An identifier, not prose: bounded and printable, so it can be stored and shown.
            if len(text) <= 200 and text.isprintable():
                return text
    return None


async def identify(client: ApiClient, base_url: str) -> Account:
    """The account behind `base_url` for the client's token (one GET of the API's root).

    A refused token is an AuthError (raised: nothing should go on with it); any other answer
    that does not state an org leaves it unknown."""
    origin = canonical_base_url(base_url)
    try:
        document = await client.get_document(base_url.rstrip("/"), max_attempts=3)
    except AuthError as exc:
        if exc.status == 403:
            return Account(origin)  # a token without a scope for the root: not a refusal
        raise
    except ApiError as exc:
        if exc.status == 404:
            raise UsageError(
                f"{origin} answers 404 (not found): no API there; check --base-url "
                "(Outreach's is https://api.outreach.io/api/v2)"
            ) from None
        if exc.exit_code is not ExitCode.FAILED:
            raise
        return Account(origin)
    return Account(origin, org_of(document))
