"""Running a command's coroutine: the first SIGINT/SIGTERM asks for a clean stop, a second (or a grace period) cancels."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable
from typing import Any

import click

from exporter.core.errors import Interrupted


def run_stoppable(
    coro_factory: Callable[[], Any], on_signal: Callable[[], None], grace: float | None = None
) -> Any:
    """Run the coroutine. The first SIGINT/SIGTERM asks for a clean stop (`on_signal`: no new
    requests, what was fetched is committed); requests still in flight `grace` seconds later
    (None: never; export passes `STOP_GRACE`), or at a second signal, are cancelled and
    `Interrupted` (exit 130, one line) is raised. No signal, however many, ends in a traceback."""

    async def runner() -> Any:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        signals_seen = 0
        cancelled = False

        def cancel() -> None:
            nonlocal cancelled
            if not cancelled and task is not None and not task.done():
                cancelled = True  # once: a second cancel would interrupt the final commit
                task.cancel()

        def handle() -> None:
            nonlocal signals_seen
            signals_seen += 1
            if signals_seen == 1:
                bound = f" (at most {grace:g} s)" if grace is not None else ""
                click.echo(
                    f"stopping: finishing requests in flight{bound} and committing (signal "
                    "again to stop now)",
                    err=True,
                )
                on_signal()
                if grace is not None:
                    loop.call_later(grace, cancel)
            else:
                cancel()

        def dump_tasks() -> None:
            """SIGUSR1: print what every task is waiting on (for a run that seems stuck)."""
            for other in asyncio.all_tasks():
                click.echo(f"task {other.get_name()}:", err=True)
                other.print_stack(limit=6, file=sys.stderr)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, handle)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        try:
            return await coro_factory()
        except asyncio.CancelledError:
            if not cancelled:
                raise
            # The run has committed what it fetched; end the tasks it left (fetchers stuck on
            # an answer) here, so none ends later with an error nobody reads.
            others = [t for t in asyncio.all_tasks() if t is not task]
            for other in others:
                other.cancel()
            if others:
                await asyncio.wait(others, timeout=5)
            raise Interrupted(
                "requests still in flight were cancelled; what was done before them is "
                "committed. Run the same command again to resume"
            ) from None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    try:
        return asyncio.run(runner())
    except KeyboardInterrupt:  # a SIGINT after the handlers were removed, while shutting down
        raise Interrupted("interrupted. Run the same command again to resume") from None
