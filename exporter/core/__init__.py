"""The vocabulary every layer shares: errors and exit codes, bounded file reads, events, settings. Imports nothing else of the exporter."""
