"""What an export does with the backup in `--out`: start, resume, extend or refuse."""

from __future__ import annotations

from exporter.backup.checkpoint import RunState
from exporter.core.errors import UsageError


class FinishedExport(UsageError):
    """A run without --incremental met a finished backup of the very account it exports
    (confirmed by `Export._check_account`): nothing to do, nothing was changed. The fleet
    counts exactly this as "already done"."""

    def __init__(self, message: str, state: RunState) -> None:
        super().__init__(message)
        self.state = state
