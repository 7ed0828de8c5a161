"""Writing a backup back into an account: plan, journal of sent writes, send."""
