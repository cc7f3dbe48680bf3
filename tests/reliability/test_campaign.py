"""The CI share of the randomized crash campaign (tests/reliability/campaign.py)."""

from __future__ import annotations

import campaign
import pytest


@pytest.mark.slow
@pytest.mark.parametrize("store, kills", [("local", 3), ("ram", 2), ("s3", 2)])
def test_a_small_seeded_campaign_recovers_from_every_kill(tmp_path, store, kills):
    messages = []
    tally = campaign.run(
        kills, seed=20261125, workdir=str(tmp_path), log=messages.append, store=store
    )
    assert tally.kills == kills, messages
    assert tally.line() == f"{kills} kills, {kills} recovered, 0 invariant violations", (
        tally.failures
    )


def test_the_campaign_counts_a_violation(tmp_path, monkeypatch):
    """A broken recovery must show up in the printed line, not pass silently."""
    import harness

    monkeypatch.setattr(harness.Trial, "kill_at", lambda self, point, step: True)
    monkeypatch.setattr(harness.Trial, "kill_after", lambda self, seconds: True)
    monkeypatch.setattr(harness.Trial, "recover", lambda self: None)

    def broken(self):
        raise AssertionError("disk keeps [2], want [16]")

    monkeypatch.setattr(harness.Trial, "check", broken)
    tally = campaign.run(2, seed=1, workdir=str(tmp_path), log=lambda m: None)
    assert tally.kills == 2 and tally.recovered == 0 and tally.violations >= 1
    assert tally.line().endswith(f"{tally.violations} invariant violations")
