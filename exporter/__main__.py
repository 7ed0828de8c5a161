"""`python -m exporter`: the same as the `exporter` console script."""

from exporter.commands.main import main

main()
