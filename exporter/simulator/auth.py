"""OAuth for the simulator: access tokens that expire, refresh tokens that rotate, a minting limit."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenResponse:
    """What `POST /oauth/token` answers: a status and a JSON body (a grant or an error)."""

    status: int
    body: dict[str, Any]


class TokenAuthority:
    """Issues and checks bearer tokens against an injected clock.

    - An access token lives `ttl` seconds; the static token (if any) never expires.
    - Only the newest refresh token works: each refresh returns a new one and retires the old.
    - At most one token is minted per `mint_interval` seconds; sooner is a 429.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        ttl: float,
        mint_interval: float,
        static_token: str | None,
        client_id: str,
        client_secret: str,
        redirect_uri: str,
        refresh_token: str,
        scope: str,
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.mint_interval = mint_interval
        self.static_token = static_token
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.refresh_token = refresh_token
        self.scope = scope
        self.minted = 0
        self._expiry: dict[str, float] = {}
        self._last_mint: float | None = None

    def check(self, authorization: str | None) -> str | None:
        """None when the `Authorization` header carries a live token, else why not (for a 401)."""
        if not authorization:
            return "Authorization header missing"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return "Authorization header must be 'Bearer <token>'"
        token = token.strip()
        if self.static_token is not None and secrets.compare_digest(token, self.static_token):
            return None
        expiry = self._expiry.get(token)
        if expiry is None:
            return "The access token is invalid"
        if self.clock() >= expiry:
            return "The access token expired"
        return None

    def exchange(self, form: Mapping[str, str]) -> TokenResponse:
        """Answer a form-encoded `grant_type=refresh_token` request."""
        grant_type = form.get("grant_type", "")
        if grant_type != "refresh_token":
            return _oauth_error(
                400, "unsupported_grant_type", "Only grant_type=refresh_token is supported"
            )
        if (
            form.get("client_id") != self.client_id
            or form.get("client_secret") != self.client_secret
        ):
            return _oauth_error(401, "invalid_client", "Client authentication failed")
        if form.get("redirect_uri") != self.redirect_uri:
            return _oauth_error(400, "invalid_grant", "The redirect_uri does not match")
        offered = form.get("refresh_token", "")
        if not secrets.compare_digest(offered.encode(), self.refresh_token.encode()):
            return _oauth_error(
                400, "invalid_grant", "The refresh token is invalid, expired or was already used"
            )
        now = self.clock()
        if self._last_mint is not None and now - self._last_mint < self.mint_interval:
            wait = self.mint_interval - (now - self._last_mint)
            return TokenResponse(
                429,
                {
                    "errors": [
                        {
                            "id": "tooManyTokenRequests",
                            "title": "Too Many Requests",
                            "detail": f"At most one token per {self.mint_interval:g} s; "
                            f"try again in {wait:.0f} s.",
                        }
                    ]
                },
            )
        self._last_mint = now
        self.minted += 1
        access = f"sim-access-{self.minted}-{secrets.token_urlsafe(12)}"
        self.refresh_token = f"sim-refresh-{self.minted}-{secrets.token_urlsafe(12)}"
        self._expiry[access] = now + self.ttl
        return TokenResponse(
            200,
            {
                "access_token": access,
                "token_type": "bearer",
                "refresh_token": self.refresh_token,
                "expires_in": int(self.ttl),
                "created_at": int(now),
                "scope": self.scope,
            },
        )


def _oauth_error(status: int, error: str, description: str) -> TokenResponse:
    return TokenResponse(status, {"error": error, "error_description": description})
