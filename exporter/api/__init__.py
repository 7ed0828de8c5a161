"""Talking to the Outreach API: credentials, the HTTP client (rate limit, retries, origin checks), pagination, the account behind a token."""
