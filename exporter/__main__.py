"""`python -m exporter`: the same as the `exporter` console script."""

from exporter.cli import main

main()
