"""A promotion script: move ``champion`` to the current ``best`` if it is good enough.

Teams run a step like this after training (in CI or a scheduler): the exporter
keeps ``best`` on the best export, and a separate, deliberate step promotes it
to ``champion``, the alias production serving follows. ``--require`` guards
the promotion with the eval metrics stored on the version.

    python examples/promote.py --model house-prices --require "loss<400"
"""

from __future__ import annotations

import argparse
import sys

from mlflow import MlflowClient

from mlflow_best_export.promotion import PromotionRefused, promote


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="house-prices", help="registered model name")
    parser.add_argument("--require", action="append", default=[], help="e.g. 'loss<400'")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args(argv)

    client = MlflowClient(args.tracking_uri)
    try:
        result = promote(
            client,
            args.model,
            from_alias="best",
            to_alias="champion",
            requirements=args.require,
            dry_run=args.dry_run,
        )
    except PromotionRefused as refusal:
        print(f"refused: {refusal}", file=sys.stderr)
        return 1
    print(result.summary())
    champion = (
        client.get_model_version_by_alias(args.model, "champion") if not args.dry_run else None
    )
    if champion is not None:
        step = champion.tags.get("global_step")
        print(f"champion: version {champion.version}, global step {step}, ")
        print(f"serve it with models:/{args.model}@champion")
    return 0


if __name__ == "__main__":
    sys.exit(main())
