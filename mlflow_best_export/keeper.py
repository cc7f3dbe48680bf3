"""The decisions of a best exporter, as pure functions of what is known.

Given the kept exports, the eval history before a candidate and a retention
policy, ``Keeper`` says what to export (the candidate? lost bests from their
checkpoints?) and what to delete. It performs nothing: the caller exports,
deletes and mirrors. ``MLflowBestExporter`` is one caller; any training loop
that evaluates checkpoints can be another.

The rules:

- the baseline is the best *kept* export, the model a user can serve, so a
  restarted process never exports a model worse than one already kept;
- an earlier eval that beat everything kept but has no export (the process
  stopped between the eval and the export) is a lost best; it is exported
  from its checkpoint if the checkpoint still exists and retention would
  keep it; otherwise it is reported as unrecoverable;
- the candidate is exported when it beats the baseline (NaN and infinity never
  win; see ``ranking``);
- after exporting, the kept exports that the policy does not keep are deleted.
  Exports that cannot be ranked (they lack the compared metric) are never
  deleted.

This module imports neither TensorFlow nor MLflow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from mlflow_best_export import ranking, retention
from mlflow_best_export.ranking import CompareFn, Ranking
from mlflow_best_export.retention import Candidate, RetentionPolicy

__all__ = ["Candidate", "Decision", "Keeper"]


@dataclass(frozen=True)
class Decision:
    """What to do with one candidate.

    Attributes:
      baseline: the best kept export before anything is exported (None: none).
      recover: lost bests to export from their checkpoints now, oldest first.
      unrecoverable: lost bests whose checkpoint is gone, oldest first.
      export: True when the candidate beats the baseline and the recovered bests.
    """

    baseline: Candidate | None
    recover: tuple[Candidate, ...]
    unrecoverable: tuple[Candidate, ...]
    export: bool


@dataclass(frozen=True)
class Keeper:
    """Decides export / recover / delete under one compare function and one policy.

    Attributes:
      compare_fn: a ``ranking.Comparison`` (exact ordering and NaN rules), or
        any function of ``(best_eval_result, current_eval_result)``, used pairwise.
      policy: which of the ranked exports to keep.
    """

    compare_fn: CompareFn = ranking.loss_smaller
    policy: RetentionPolicy = retention.KeepBestN(5)

    @functools.cached_property
    def ranking(self) -> Ranking:
        """How candidates rank under ``compare_fn``, worked out once."""
        return Ranking.of(self.compare_fn)

    def rank(self, candidates: Iterable[Candidate]) -> list[Candidate]:
        """The candidates that can be compared, best first (ties: the later step first)."""
        return self.ranking.rank(candidates)

    def decide(
        self,
        kept: Sequence[Candidate],
        earlier: Sequence[Candidate],
        candidate: Candidate,
        recoverable: Callable[[Candidate], bool] = lambda c: True,
    ) -> Decision:
        """Decide on ``candidate``, given the kept exports and the evals before it.

        Args:
          kept: the exports on disk (any order).
          earlier: the eval history before the candidate's step, ascending step.
          candidate: the eval offered for export.
          recoverable: whether a lost best can still be exported (its
            checkpoint exists); called once per lost best.

        Returns:
          The decision; ``recover`` is what retention would keep of the lost bests.

        Raises:
          ValueError: if the candidate lacks the compared metric (the message
            names the keys it has).
        """
        ranked = self.rank(kept)
        baseline = ranked[0] if ranked else None
        # An eval whose step is kept was exported, even if its float32 history value
        # differs by rounding from the float64 result stored with the export.
        exported = {c.step for c in kept}
        unexported = [r for r in earlier if r.step < candidate.step and r.step not in exported]
        # Only an eval that beats the baseline can be a lost best, so only those are
        # checked for a checkpoint (a file system call each).
        base = baseline.metrics if baseline else None
        contenders = [r for r in unexported if self.ranking.beats(base, r.metrics)]
        can = {id(r): recoverable(r) for r in contenders}
        unrecoverable = tuple(r for r in self.new_bests(contenders, baseline) if not can[id(r)])
        # The bests that can still be exported make their own chain: each one beats the
        # baseline and the recoverable ones before it.
        chain = self.new_bests([r for r in contenders if can[id(r)]], baseline)
        # Only what retention would keep is worth exporting.
        survivors = {id(c) for c in self.keep(list(kept) + chain)}
        recover = tuple(r for r in chain if id(r) in survivors)
        best = recover[-1] if recover else baseline
        better = self.ranking.better(best.metrics if best else None, candidate.metrics)
        return Decision(baseline, recover, unrecoverable, better)

    def new_bests(
        self, history: Iterable[Candidate], baseline: Candidate | None
    ) -> list[Candidate]:
        """The evals, in order, that each beat ``baseline`` and every eval before them."""
        return self.ranking.new_bests(history, baseline.metrics if baseline else None)

    def keep(self, kept: Iterable[Candidate]) -> list[Candidate]:
        """What the policy keeps of ``kept``, best first."""
        return retention.kept(self.policy, self.rank(kept))

    def retire(self, kept: Iterable[Candidate]) -> list[Candidate]:
        """The candidates of ``kept`` to delete: ranked ones the policy does not keep."""
        ranked = self.rank(kept)
        keep = {id(c) for c in retention.kept(self.policy, ranked)}
        return [c for c in ranked if id(c) not in keep]
