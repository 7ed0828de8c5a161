"""The click command line: one module per command, the option table, the error exit."""
