"""The ``mlflow-best-export`` command line: history, sync, promote, rollback, aliases, gc.

Exit codes: 0 success, 1 the command could not do what was asked (the reason
is printed as one line on stderr), 2 bad usage.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
from collections.abc import Callable

import click

from mlflow_best_export import fs
from mlflow_best_export.records import EvalHistory

logger = logging.getLogger(__name__)

_TRACKING_URI_HELP = (
    "MLflow tracking URI (default: MLFLOW_TRACKING_URI, else MLflow's sqlite:///mlflow.db)."
)


class CommandError(click.ClickException):
    """A failure reported as one line and exit code 1."""

    exit_code = 1

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        """Print ``Error: <message>`` as one line on stderr."""
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


def _one_line_errors(fn: Callable) -> Callable:
    """Turn expected failures (bad input, MLflow errors) into one clear line and exit 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mlflow.exceptions import MlflowException

        from mlflow_best_export import store
        from mlflow_best_export.tracking import first_line

        try:
            return fn(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (ValueError, OSError) as err:
            raise CommandError(first_line(err)) from err
        except Exception as err:
            # MLflow's errors and anything else (SQLAlchemy's from a broken store, say) are
            # one line too, the store's diagnosis first; the traceback with --verbose.
            logger.info("%s failed", fn.__name__, exc_info=True)
            explained = store.diagnose(store.resolve_uri(kwargs.get("tracking_uri")), err)
            if explained is None and isinstance(err, MlflowException):
                explained = first_line(err.message)
            raise CommandError(explained or f"{type(err).__name__}: {first_line(err)}") from err

    return wrapper


def _client(tracking_uri: str | None):
    """An MlflowClient; a missing embedded SQLite store is created whole first."""
    from mlflow.tracking import MlflowClient

    from mlflow_best_export import store

    store.ensure(store.resolve_uri(tracking_uri))
    return MlflowClient(tracking_uri=tracking_uri)


def _check_model_dir(model_dir: str) -> None:
    """A model directory that exists, on a filesystem this process can read (else exit 1)."""
    fs.check_filesystem(model_dir)
    if not fs.isdir(model_dir):
        raise CommandError(f"The model directory {model_dir!r} does not exist.")


def console_main() -> None:
    """The ``mlflow-best-export`` command: ``main`` with an exit that S3 cannot spoil.

    tensorflow-io's S3 filesystem aborts the interpreter at exit once used
    (status 134, see ``fs.exit_process``); the command's own status is kept.
    """
    try:
        main.main(prog_name="mlflow-best-export")
        code: int | str | None = 0
    except SystemExit as done:
        code = done.code
    if fs.aborts_at_exit():
        if isinstance(code, str):
            click.echo(code, err=True)
            code = 1
        fs.exit_process(code or 0)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlflow-best-export")
@click.option("-v", "--verbose", is_flag=True, help="Log what happens (INFO).")
def main(verbose: bool) -> None:
    """Best Estimator exports, kept in step with MLflow."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


# -- history ----------------------------------------------------------------------------------


def _best_metric(history: EvalHistory, metric: str | None) -> str | None:
    keys = {k for r in history.records for k in r.metrics}
    if metric is not None:
        if keys and metric not in keys:
            raise CommandError(f"No eval record has the metric {metric!r}; it has {sorted(keys)}.")
        return metric
    return "loss" if "loss" in keys else None


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--pattern",
    default="eval/*.tfevents.*",
    show_default=True,
    help="Eval event files, relative to MODEL_DIR.",
)
@click.option("--metric", default=None, help="Metric that marks the best record [default: loss].")
@click.option(
    "--mode",
    type=click.Choice(["min", "max"]),
    default="min",
    show_default=True,
    help="Whether a smaller or a bigger METRIC is better.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw METRIC over steps, exports marked, into this PNG file.",
)
@click.option(
    "--exporter-name",
    default="best_exporter",
    show_default=True,
    help="Exporter whose kept exports the plot highlights.",
)
@_one_line_errors
def history(model_dir, pattern, metric, mode, fmt, plot, exporter_name) -> None:
    """Print the eval history recovered from MODEL_DIR's event files; mark the best."""
    from mlflow_best_export.history import read_eval_history
    from mlflow_best_export.ranking import Comparison, Ranking

    _check_model_dir(model_dir)
    hist = read_eval_history(model_dir, pattern)
    if not hist.records:
        raise CommandError(f"No eval records under {fs.join(model_dir, pattern)}.")
    metric = _best_metric(hist, metric)
    frame = hist.to_pandas()
    best_step = None
    if metric is not None:
        best = Ranking.of(Comparison(metric, mode)).best(hist.records)
        best_step = best.step if best else None
    frame.insert(0, "best", frame["step"] == best_step)

    if fmt == "csv":
        click.echo(frame.to_csv(index=False), nl=False)
    elif fmt == "json":
        rows = json.loads(frame.to_json(orient="records"))
        click.echo(
            json.dumps(
                {"metric": metric, "mode": mode, "best_step": best_step, "records": rows}, indent=2
            )
        )
    else:
        shown = frame.drop(columns=["wall_time"])
        shown["best"] = shown["best"].map({True: "*", False: ""})
        click.echo(shown.to_string(index=False))
        if best_step is not None:
            click.echo(f"\nbest: step {best_step} ({metric}, {mode})")
    if plot:
        _plot(hist, model_dir, exporter_name, metric, mode, plot)


def _plot(hist, model_dir, exporter_name, metric, mode, path) -> None:
    from mlflow_best_export import exports as exports_lib
    from mlflow_best_export.plots import history_figure

    if metric is None:
        raise CommandError("--plot needs --metric: the history has no 'loss'.")
    kept = exports_lib.list_exports(fs.join(model_dir, "export", exporter_name))
    steps = [e.step for e in kept if e.step is not None]
    figure = history_figure(hist, metric, higher_is_better=mode == "max", kept_steps=steps)
    figure.savefig(path)
    click.echo(f"plot written to {path}", err=True)


# -- sync -------------------------------------------------------------------------------------


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option(
    "--registered-model",
    "registered_model",
    default=None,
    help="Register kept exports as versions of this model.",
)
@click.option("--alias", default="best", show_default=True, help="Alias moved to the best.")
@click.option("--exporter-name", default="best_exporter", show_default=True)
@click.option(
    "--pattern",
    default="eval/*.tfevents.*",
    show_default=True,
    help="Eval event files, relative to MODEL_DIR.",
)
@click.option(
    "--metric", default=None, help="Rank exports by this metric (default: what the exports record)."
)
@click.option("--mode", type=click.Choice(["min", "max"]), default=None)
@click.option("--experiment-name", default=None, help="Experiment of a run created here.")
@click.option("--run-id", default=None, help="Mirror into this run.")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@_one_line_errors
def sync(
    model_dir,
    registered_model,
    alias,
    exporter_name,
    pattern,
    metric,
    mode,
    experiment_name,
    run_id,
    tracking_uri,
) -> None:
    """Bring MLflow in line with MODEL_DIR (what the exporter does when it starts).

    Mirrors missing eval metrics, logs and registers kept exports that have no
    model or version yet, deletes what this exporter logged for exports that
    are gone (never a version with another alias), and moves the alias.
    """
    from mlflow_best_export import mirror
    from mlflow_best_export.ranking import Comparison
    from mlflow_best_export.settings import MlflowSettings
    from mlflow_best_export.tags import validate_alias, validate_registered_model_name

    _check_model_dir(model_dir)
    if registered_model is not None:
        validate_registered_model_name(registered_model)
    alias = validate_alias(alias, "--alias")
    compare_fn = None
    if metric is not None:
        compare_fn = Comparison(metric, mode or "min")
    elif mode is not None:
        raise click.UsageError("--mode needs --metric.")

    bar = _Progress()
    try:
        report = mirror.sync(
            model_dir if fs.is_url(model_dir) else os.path.abspath(model_dir),
            MlflowSettings(
                tracking_uri=tracking_uri,
                experiment_name=experiment_name,
                run_id=run_id,
                registered_model_name=registered_model,
                alias=alias,
            ),
            exporter_name=exporter_name,
            event_file_pattern=pattern,
            compare_fn=compare_fn,
            progress=bar,
        )
    finally:
        bar.close()
    click.echo(f"run {report.run_id}: {report.summary()}")
    if report.protected_versions:
        click.echo(
            f"kept versions {', '.join(report.protected_versions)} of {registered_model}: "
            f"their exports are gone but they carry another alias."
        )


class _Progress:
    """A click progress bar, shown only when there are several models to upload."""

    def __init__(self) -> None:
        self._bar = None

    def __call__(self, what: str, done: int, total: int) -> None:
        if self._bar is None and total >= 3:
            self._bar = click.progressbar(
                length=total, label="logging and registering exports", file=sys.stderr
            )
            self._bar.__enter__()
        if self._bar is not None:
            self._bar.update(done - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


# -- promote ----------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option("--from-alias", default="best", show_default=True, help="Alias to promote from.")
@click.option("--to-alias", default="champion", show_default=True, help="Alias to move.")
@click.option(
    "--require",
    "requirements",
    multiple=True,
    help="Metric requirement such as 'loss<0.3'; may be repeated.",
)
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@_one_line_errors
def promote(name, from_alias, to_alias, requirements, dry_run, tracking_uri) -> None:
    """Move alias TO_ALIAS of registered model NAME to the version FROM_ALIAS is on.

    Refuses (exit 1) when the source alias is missing or a requirement fails.
    """
    from mlflow_best_export import promotion

    try:
        parsed = [promotion.Requirement.parse(r) for r in requirements]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--require") from None
    client = _client(tracking_uri)
    _registered_model(client, name)
    result = promotion.promote(
        client,
        name,
        from_alias=from_alias,
        to_alias=to_alias,
        requirements=parsed,
        dry_run=dry_run,
    )
    click.echo(result.summary())


@main.command()
@click.argument("name")
@click.option("--alias", default="champion", show_default=True, help="Alias to move back.")
@click.option("--dry-run", is_flag=True, help="Say what would happen; change nothing.")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@_one_line_errors
def rollback(name, alias, dry_run, tracking_uri) -> None:
    """Move ALIAS of NAME back to the version that held it before its last promotion.

    The requirements recorded with that promotion are checked again; refuses
    (exit 1) when there is nothing to roll back or they fail.
    """
    from mlflow_best_export import promotion

    client = _client(tracking_uri)
    _registered_model(client, name)
    click.echo(promotion.rollback(client, name, alias=alias, dry_run=dry_run).summary())


@main.command()
@click.argument("name")
@click.option("--alias", default=None, help="Only this alias [default: every alias].")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@_one_line_errors
def aliases(name, alias, fmt, tracking_uri) -> None:
    """Print the recorded alias moves of NAME (promotions and rollbacks), oldest first."""
    from dataclasses import asdict

    from mlflow_best_export import promotion

    client = _client(tracking_uri)
    model = _registered_model(client, name)
    moves = promotion.alias_history(client, name, alias)
    if fmt == "json":
        click.echo(json.dumps([asdict(m) for m in moves], indent=2))
        return
    current = {a: str(v) for a, v in (model.aliases or {}).items()}
    shown = {alias: current[alias]} if alias in current else ({} if alias else current)
    for name_, version in sorted(shown.items()):
        click.echo(f"@{name_} is on version {version}")
    if not moves:
        click.echo("no recorded moves.")
    for move in moves:
        click.echo(move.summary())


def _registered_model(client, name):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise CommandError(f"No registered model named {name!r}.") from err
        raise


# -- gc ---------------------------------------------------------------------------------------


@main.command()
@click.argument("name")
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Versions to keep per exporter (use the exporter's exports_to_keep or more: "
    "it re-registers exports it still keeps on disk).",
)
@click.option(
    "--keep-latest",
    type=click.IntRange(min=1),
    default=None,
    help="Also keep this many versions of the highest global steps per exporter "
    "(AnyOf(KeepBestN(keep), KeepLatestN(keep_latest))).",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@click.option("--tracking-uri", default=None, help=_TRACKING_URI_HELP)
@_one_line_errors
def gc(name, keep, keep_latest, dry_run, tracking_uri) -> None:
    """Apply registry retention to NAME: keep the best versions of each exporter.

    Only versions this package created are considered, ranked by the metric
    their exporter compared; a version carrying an alias is never deleted.
    Deleted versions take their logged model and its artifacts with them, and
    the artifacts of logged models that earlier releases deleted but left in
    the artifact store (in the experiments of NAME's versions) are reclaimed.
    """
    from mlflow_best_export import cleanup, reconcile
    from mlflow_best_export.registry import Registry
    from mlflow_best_export.retention import AnyOf, KeepBestN, KeepLatestN

    client = _client(tracking_uri)
    _registered_model(client, name)
    policy = KeepBestN(keep)
    if keep_latest is not None:
        policy = AnyOf(policy, KeepLatestN(keep_latest))
    deletions, reasons = cleanup.gc_plan(client, name, policy)
    if not deletions.delete_versions:
        click.echo(f"nothing to delete in {name}.")
    elif dry_run:
        for entry in deletions.delete_versions:
            click.echo(f"would delete {name} version {entry.version} ({reasons[entry.version]})")
    else:
        report = reconcile.SyncReport()
        try:
            reconcile.apply(deletions, Registry(client, registered_model_name=name), report=report)
        finally:  # what was deleted is said, also when a later deletion failed
            for version in report.versions_deleted:
                click.echo(f"deleted {name} version {version} ({reasons[version]})")
    for entry in deletions.protected:
        click.echo(f"kept {name} version {entry.version}: it carries {', '.join(entry.aliases)}")
    # Storage that crashes or earlier code left behind: deleted logged models' artifacts.
    for leftover in cleanup.find_leftovers(client, cleanup.experiments_of(client, name)):
        size = _human_size(leftover.size)
        if dry_run:
            click.echo(f"would reclaim {size} of deleted logged model {leftover.model_id}")
        else:
            cleanup.reclaim_leftover(client, leftover)
            click.echo(f"reclaimed {size} of deleted logged model {leftover.model_id}")


def _human_size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    console_main()
