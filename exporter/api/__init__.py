"""Talking to the Outreach API: credentials (auth), request budgets (ratelimit), the HTTP transport (client), JSON:API documents, the links.next chain (pagination), the account behind a token."""
