"""Reading a backup back: verify (is it intact) and status (what it holds, what the next export would do)."""
