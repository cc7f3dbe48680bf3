"""A randomized crash campaign: kill real training anywhere, restart, check invariants.

Run it on demand from the repository root::

    python tests/reliability/campaign.py --kills 50 [--seed N] [--workdir DIR]

Each episode starts a fresh model directory and SQLite tracking store with a
random ``exports_to_keep``, then kills training one to three times in a row
(random kill point of ``tiny.KILL_POINTS``, random step), restarts it to the
end and checks every invariant of ``harness.check_invariants``. A kill counts
as recovered when its episode ends with every invariant true. The last line is
``N kills, N recovered, 0 invariant violations`` (the real counts); the exit
status is 1 when any invariant was violated.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import tiny  # noqa: E402  (harness puts tests/ on sys.path)

# Kill points that fire at exactly their step; the others fire at the first chance at or after it.
EXACT_STEP_POINTS = ("before_export", "before_retention")


@dataclass
class Tally:
    """What the campaign did."""

    kills: int = 0
    recovered: int = 0
    violations: int = 0
    attempts: int = 0
    episodes: int = 0
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.kills} kills, {self.recovered} recovered, "
            f"{self.violations} invariant violations"
        )


def choose_kill(rng: random.Random, trial: harness.Trial) -> tuple[str, int] | None:
    """A random kill point and a step at which it can still fire in this model directory."""
    point = rng.choice(tiny.KILL_POINTS)
    if point in EXACT_STEP_POINTS:
        later = [s for s in harness.STEPS if s > trial.latest_checkpoint_step()]
        if not later:
            return None
        return point, rng.choice(later)
    return point, rng.choice(harness.NEW_BEST_STEPS)


def run_episode(rng: random.Random, root: Path, tally: Tally, kills_left: int, log) -> None:
    trial = harness.Trial(root, keep=rng.choice((1, 2, 3)))
    tally.episodes += 1
    killed = []
    try:
        for _ in range(min(rng.choice((1, 1, 2, 3)), kills_left)):
            chosen = choose_kill(rng, trial)
            if chosen is None:
                break
            tally.attempts += 1
            if not trial.kill_at(*chosen):
                break  # training finished before the point was reached
            killed.append(f"{chosen[0]}:{chosen[1]}")
            tally.kills += 1
        trial.recover()
        trial.check()
    except Exception as err:  # noqa: BLE001 - every failure is counted and the campaign goes on
        tally.violations += 1
        message = f"episode {tally.episodes} in {root} (keep={trial.keep}, kills {killed}): {err}"
        tally.failures.append(message)
        log(f"VIOLATION {message}\n{traceback.format_exc()}")
        return
    tally.recovered += len(killed)
    log(f"episode {tally.episodes}: keep={trial.keep} kills {killed or 'none'} recovered")
    shutil.rmtree(root, ignore_errors=True)  # violations keep their directory for post-mortems


def run(kills: int, seed: int | None = None, workdir: str | None = None, log=print) -> Tally:
    """Run episodes until ``kills`` processes were killed; return the tally."""
    seed = random.randrange(2**32) if seed is None else seed
    rng = random.Random(seed)
    base = Path(workdir or tempfile.mkdtemp(prefix="mlflow-best-export-campaign-"))
    base.mkdir(parents=True, exist_ok=True)
    log(f"seed {seed}, work directory {base}")
    tally = Tally()
    # A bound on attempts, so a kill point that never fires cannot loop forever.
    while tally.kills < kills and tally.attempts < 4 * kills + 10:
        run_episode(rng, base / f"episode-{tally.episodes + 1}", tally, kills - tally.kills, log)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="how many processes to kill")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workdir", default=None, help="where episodes run (default: a temp dir)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    tally = run(args.kills, args.seed, args.workdir, log=lambda m: print(m, flush=True))
    print(
        f"{tally.episodes} episodes, {tally.attempts} kill attempts, "
        f"{time.monotonic() - start:.0f} s",
        flush=True,
    )
    print(tally.line(), flush=True)
    return 1 if tally.violations else 0


if __name__ == "__main__":
    sys.exit(main())
