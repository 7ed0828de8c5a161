"""What a restore may be asked to do (`Mode`) and the largest id it accepts, without the restore itself (the option table reads them for --help)."""

from __future__ import annotations

from enum import StrEnum

MAX_ID = 2**63 - 1  # ids are int64 on the API (and in the backup's Parquet columns)


class Mode(StrEnum):
    RECREATE = "recreate"  # only create missing steps
    ROLLBACK = "rollback"  # only patch differing ones
    BOTH = "both"
