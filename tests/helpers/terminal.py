"""A command run on a real pseudo-terminal of a given size, and the screen a user would see after it (pyte, a terminal emulator)."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import sys
import termios
import time
from dataclasses import dataclass

import pyte

from tests.helpers.sim import clean_env


@dataclass
class Screen:
    """What the terminal shows at the end: its rows (trailing blanks dropped), and the exit code."""

    rows: list[str]
    returncode: int
    raw: bytes  # every byte written, escapes included


def run_on_terminal(
    *args: str,
    columns: int,
    rows: int = 60,
    timeout: float = 120.0,
    resize_to: int | None = None,
    resize_after: bytes = b"",
) -> Screen:
    """`python -m exporter ARGS` with stdin, stdout and stderr on a pty of `columns` x `rows`;
    every byte it writes fed to a pyte screen of the same size. With `resize_to`, once the
    output holds `resize_after`, between two frames, the terminal (the pty, which signals SIGWINCH, and the
    screen) becomes `resize_to` columns wide, as when a user drags the window's edge."""
    env = clean_env(TERM="xterm-256color")
    for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR"):
        env.pop(name, None)
    pid, master = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty, sized before anything runs
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        os.execve(sys.executable, [sys.executable, "-m", "exporter", *args], env)
    screen = pyte.Screen(columns, rows)
    stream = pyte.ByteStream(screen)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if not ready:
            if resize_to is not None and resize_after in raw:
                # Between two frames (nothing written for 0.1 s; they come every 0.5 s), so
                # no frame is half on the screen when its width changes.
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, resize_to, 0, 0))
                screen.resize(rows, resize_to)
                resize_to = None
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        raw += data
        stream.feed(data)
    os.close(master)
    _, status = os.waitpid(pid, 0)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(lines, os.waitstatus_to_exitcode(status), bytes(raw))
