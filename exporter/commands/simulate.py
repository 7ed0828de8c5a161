"""`exporter simulate`: the simulator's own command (flags to a `SimulatorConfig`, served until a signal), each option also read from an OUTREACH_SIMULATE_* variable."""

from __future__ import annotations

import click

from exporter.simulator.cli import simulate

# The simulator declares its own flags (exporter/simulator/cli.py); like every command's, each
# has its variable, shown in --help. Its own prefix keeps them apart from the exporter's
# (OUTREACH_SIMULATE_TOKEN is the token the simulator accepts, OUTREACH_TOKEN the one sent).
for _param in simulate.params:
    if isinstance(_param, click.Option) and _param.name not in (None, "help") and not _param.envvar:
        _param.envvar = f"OUTREACH_SIMULATE_{_param.name}".upper()
        _param.show_envvar = True

__all__ = ["simulate"]
