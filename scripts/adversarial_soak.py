"""Adversarial soak: nightly backups against a hostile simulator, killed at random, each night compared with the ground truth and grepped for secrets.

python3 -m scripts.adversarial_soak --runs 8 --steps 600 --nights 2

Each run is one account's life: a full export and `--nights` incremental `--detect-deletes`
runs over a simulator that changes between nights (inserts, updates, deletes and relationship
moves in every type). Every export is a real `exporter export` subprocess, SIGKILLed at random
instants and run again until it finishes, against answers that attack it:
- the seeded faults of every kind (5xx, resets, truncated and malformed JSON, HTML, slow
  bodies, 502 on big pages) and a `Date` header a day off, either way;
- hostile answers (`HostileFaults`): same-origin redirects, error documents echoing the
  Authorization header (as 503s, so the run goes on), a response trickling a few bytes a second
  (under a short `--request-deadline`), a gzip bomb (under a small `--max-response-mib`);
- with OAuth (every other run): access tokens that live a second or two, so refresh tokens
  rotate many times, and a token endpoint answering 503 and 429 first;
- once in a while a cross-origin redirect: that attempt must fail on one line (exit 1) without
  following it; the soak then stops the fault and the next attempt resumes.
Every attempt must end with a documented exit code, no traceback, at most one error line; after
each night the compacted current state must equal the API's (tests/export/test_nights.py's oracle),
`exporter verify` must pass, and no secret the run ever held (static token, client secret,
every access and refresh token issued) may appear in any output or any file of the backup.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.core.errors import ExitCode
from exporter.model.schema import RESOURCE_TYPES
from exporter.simulator import Faults, Simulator, SimulatorConfig, serve
from exporter.simulator.auth import TokenResponse
from exporter.simulator.faults import TokenFault
from tests.helpers.checks import assert_current_state_is_the_truth
from tests.helpers.sim import Running, clean_env, night

TOKEN = "soak-static-token-7d1e"  # the simulator's static token in static runs, not a secret
DOCUMENTED = {int(code) for code in ExitCode}
MAX_ATTEMPTS = 12


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.totals: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self.exit_codes: Counter[int] = Counter()
        self.failures: list[str] = []

    # -- one attempt, one export ---------------------------------------------------------------

    async def attempt(
        self, command: list[str], env: Mapping[str, str], kill_after: float | None
    ) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env),
        )
        killed = False
        if kill_after is not None:
            try:
                await asyncio.wait_for(asyncio.shield(process.wait()), timeout=kill_after)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
                    killed = True
        out, err = await process.communicate()
        code = process.returncode if process.returncode is not None else -1
        if killed and code == -signal.SIGKILL:
            self.totals["kills landed"] += 1
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    async def export(
        self,
        running: Running,
        out: Path,
        base: list[str],
        env: Mapping[str, str],
        outputs: list[str],
        cross_origin: bool,
    ) -> bool:
        """Run the export until it finishes; False (and a recorded failure) if it never does."""
        kills = [self.rng.uniform(0.2, 2.5) for _ in range(self.rng.randint(0, 2))]
        faults = running.sim.hostile
        if cross_origin:
            faults.redirect_cross = 1
        for number in range(MAX_ATTEMPTS):
            kill_after = kills[number] if number < len(kills) else None
            code, stdout, stderr = await self.attempt(base, env, kill_after)
            self.totals["attempts"] += 1
            self.exit_codes[code] += 1
            outputs += [stdout, stderr]
            problem = self.judge(code, stderr)
            if problem:
                self.failures.append(f"{out.name}: {problem}")
                return False
            if code == 0:
                return True
            if code == ExitCode.FAILED and "redirect" in stderr and faults.redirect_cross == 0:
                self.totals["cross-origin redirects refused"] += 1
        self.failures.append(f"{out.name}: no success after {MAX_ATTEMPTS} attempts")
        return False

    @staticmethod
    def judge(code: int, stderr: str) -> str | None:
        """What is wrong with one attempt's ending, or None."""
        if "Traceback" in stderr:
            return "a traceback: " + stderr[-400:]
        if code != -signal.SIGKILL and code not in DOCUMENTED:
            return f"exit code {code} is not documented"
        errors = [line for line in stderr.splitlines() if line.startswith(("error:", "stopped:"))]
        if len(errors) > 1:
            return f"{len(errors)} error lines: {errors[:3]}"
        if code not in (0, -signal.SIGKILL) and not errors:
            return f"exit {code} without an error line: {stderr[-300:]}"
        return None

    # -- one account's life --------------------------------------------------------------------

    async def account(self, number: int, work: Path) -> None:
        seed = self.rng.randrange(1 << 30)
        oauth = number % 2 == 1
        skew = self.rng.choice([0.0, 0.0, 86_400.0, -86_400.0])
        share = self.args.fault_share / 5
        cfg = SimulatorConfig(
            steps=self.args.steps,
            seed=seed,
            static_token=None if oauth else TOKEN,
            token_ttl=1.5,
            mint_interval=0.05,
            faults=Faults(
                error_rate=share,
                reset_rate=share,
                truncate_rate=share,
                malformed_rate=share,
                html_rate=share,
                big_page_502_above=400,
                date_skew_s=skew,
                seed=seed,
            ),
        )
        sim = Simulator(cfg)
        issued: set[str] = {TOKEN, cfg.client_secret, cfg.refresh_token}
        original = sim.auth.exchange

        def exchange(form: Mapping[str, str]) -> TokenResponse:
            answer = original(form)
            if answer.status == 200:
                issued.update({answer.body["access_token"], answer.body["refresh_token"]})
            return answer

        sim.auth.exchange = exchange  # type: ignore[method-assign]
        out = work / f"account-{number}"
        token_file = work / f"private-{number}" / "refresh-token.json"
        outputs: list[str] = []
        async with serve(sim, host="127.0.0.1", port=0) as root:
            running = Running(sim, root)
            env = clean_env()
            credentials = ["--token", TOKEN]
            if oauth:
                credentials = ["--token-file", str(token_file)]
                env.update(
                    {
                        "OUTREACH_CLIENT_ID": cfg.client_id,
                        "OUTREACH_CLIENT_SECRET": cfg.client_secret,
                        "OUTREACH_REFRESH_TOKEN": cfg.refresh_token,
                        "OUTREACH_REDIRECT_URI": cfg.redirect_uri,
                    }
                )
            command = [
                sys.executable,
                *("-m", "exporter", "export", "--out", str(out)),
                *("--base-url", running.base_url, *credentials),
                *("--page-size", str(self.rng.choice([100, 250, 1000]))),
                *("--concurrency", str(self.rng.choice([2, 4, 8]))),
                *("--commit-interval", "0.05", "--file-rows", "400"),
                *("--rate-limit", "100000/1", "--read-timeout", "5"),
                *("--request-deadline", "3", "--max-response-mib", "16"),
                "--verbose",
            ]
            held: dict[str, set[int]] = {t: set() for t in RESOURCE_TYPES}
            for night_number in range(self.args.nights + 1):
                self.arm(running, oauth)
                incremental = ["--incremental", "--detect-deletes"] if night_number else []
                cross = self.rng.random() < 0.25
                if not await self.export(
                    running, out, [*command, *incremental], env, outputs, cross
                ):
                    break
                try:
                    assert_current_state_is_the_truth(running, out, held)
                except AssertionError as exc:
                    self.failures.append(f"{out.name} night {night_number}: {str(exc)[:300]}")
                    break
                verify = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "exporter", "verify", str(out)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=False,
                )
                outputs += [verify.stdout, verify.stderr]
                if verify.returncode != 0:
                    self.failures.append(f"{out.name}: verify exit {verify.returncode}")
                    break
                self.totals["nights exact"] += 1
                self.totals["records held"] = sum(len(ids) for ids in held.values())
                night(running, self.rng)  # the API changes before the next night
            self.served.update(sim.hostile.served)
            self.totals["simulator requests"] += sim.counters.requests
            self.totals["tokens minted"] += sim.counters.tokens_minted
        # The token file holds the newest refresh token by design; nothing else may hold any.
        leaks = self.leaks(issued, outputs, out)
        self.totals["files grepped"] += leaks[1]
        if leaks[0]:
            self.failures.append(f"{out.name}: secret found in {leaks[0]}")
        print(
            f"account {number}: seed {seed}, {'OAuth' if oauth else 'static token'}, Date skew "
            f"{skew:+,.0f}s: {self.totals['nights exact']} nights exact so far, "
            f"{len(self.failures)} failures",
            flush=True,
        )

    def arm(self, running: Running, oauth: bool) -> None:
        """Hostile answers for the next export: a few of each kind."""
        faults = running.sim.hostile
        faults.redirect_same = self.rng.randint(0, 3)
        faults.echo_auth = self.rng.randint(0, 2)
        faults.echo_auth_status = 503  # retried, so the run goes on past it
        faults.trickle = self.rng.randint(0, 1)
        faults.trickle_bytes_per_s = 200
        faults.gzip_bomb = self.rng.randint(0, 1)
        faults.gzip_bomb_bytes = 64 << 20
        if oauth:
            faults.token = [TokenFault.UNAVAILABLE, TokenFault.RATE_LIMITED][
                : self.rng.randint(0, 2)
            ]
            faults.token_retry_after = 0.2

    @staticmethod
    def leaks(secrets: set[str], outputs: list[str], root: Path) -> tuple[str | None, int]:
        """(where a secret was found or None, files read)."""
        wanted = [s for s in secrets if s]
        for text in outputs:
            for secret in wanted:
                if secret in text:
                    return f"output ({secret[:4]}...)", 0
        files = 0
        for path in root.rglob("*") if root.exists() else []:
            if path.is_file():
                files += 1
                data = path.read_bytes()
                for secret in wanted:
                    if secret.encode() in data:
                        return f"{path} ({secret[:4]}...)", files
        return None, files

    async def run(self) -> int:
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="adversarial-soak-") as temporary:
            for number in range(1, self.args.runs + 1):
                await self.account(number, Path(temporary))
        seconds = time.monotonic() - started
        print(
            f"{self.args.runs} accounts, {self.args.nights + 1} exports each: "
            f"{self.totals['nights exact']} exact, {len(self.failures)} failed; "
            f"{self.totals['attempts']} attempts, {self.totals['kills landed']} SIGKILLs landed, "
            f"{self.totals['cross-origin redirects refused']} cross-origin redirects refused; "
            f"{self.totals['simulator requests']:,} requests served, "
            f"{self.totals['tokens minted']} tokens minted; "
            f"{self.totals['files grepped']} files and every output grepped for secrets; "
            f"{seconds:,.0f}s"
        )
        print("exit codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(self.exit_codes.items())))
        print(
            "hostile answers served: "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.served.items()))
        )
        for failure in self.failures:
            print("FAILED " + failure)
        return 1 if self.failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="accounts (each its own simulator)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--nights", type=int, default=2, help="incremental runs after the full")
    parser.add_argument("--fault-share", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(Soak(args).run()))


if __name__ == "__main__":
    main()
