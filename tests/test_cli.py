"""The mlflow-best-export command line, through click's runner and as a subprocess.

One real training run (tiny Estimator, SQLite store) is shared by the module;
each test that changes the registry works on its own copy of the store.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import tiny
from click.testing import CliRunner
from conftest import subprocess_env
from mlflow.tracking import MlflowClient
from mlflow_checks import check_mlflow

from mlflow_best_export import MLflowBestExporter
from mlflow_best_export.cli import main
from mlflow_best_export.promotion import Requirement

LOSSES = [50, 30, 40, 20, 25, 10, 60, 5, 8]  # new bests at steps 2, 4, 8, 12, 16


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model_dir = str(root / "model")
    store = f"sqlite:///{root}/mlflow.db"
    cwd = os.getcwd()
    os.chdir(root)  # MLflow's default artifact root is ./mlruns
    try:
        exporter = MLflowBestExporter(
            serving_input_receiver_fn=tiny.raw_serving_input_receiver_fn,
            exports_to_keep=3,
            tracking_uri=store,
            registered_model_name="tiny",
        )
        tiny.train(model_dir, exporter, LOSSES)
        exporter.close()
    finally:
        os.chdir(cwd)
    return model_dir, root / "mlflow.db"


@pytest.fixture
def store(trained, tmp_path):
    """A private copy of the trained run's store."""
    _, db = trained
    shutil.copy(db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def cli(*args: str, code: int = 0):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result


def cli_process(*args: str, code: int = 0):
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_best_export.cli", *args],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    return proc


# -- help ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [[], ["history"], ["sync"], ["promote"], ["rollback"], ["aliases"], ["gc"]]
)
def test_every_command_has_help(command):
    assert "Usage:" in cli(*command, "--help").output


# -- every command, as users type it -------------------------------------------------------------


def console(*args: str, code: int = 0) -> subprocess.CompletedProcess:
    """The installed ``mlflow-best-export`` command in a fresh process (nothing imported yet)."""
    command = os.path.join(os.path.dirname(sys.executable), "mlflow-best-export")
    proc = subprocess.run(
        [command, *args], env=subprocess_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr[-3000:])
    return proc


@pytest.mark.slow
def test_every_documented_command_works_in_a_fresh_process(trained, store):
    """Each command of the README's "Command line", each in a process of its own, on a store
    the exporter filled; MLflow's client says what changed."""
    model_dir, _ = trained
    client = MlflowClient(store)
    uri = ("--tracking-uri", store)
    assert "best: step 16" in console("history", model_dir).stdout
    assert "in step" in console("sync", model_dir, "--registered-model", "tiny", *uri).stdout
    best, middle, _ = _versions_by_loss(client)
    console("promote", "tiny", "--require", "loss<400", "--dry-run", *uri)
    assert "champion" not in client.get_registered_model("tiny").aliases
    console("promote", "tiny", "--from-alias", "best", "--to-alias", "champion", *uri)
    client.set_registered_model_alias("tiny", "best", middle.version)
    console("promote", "tiny", "--require", "loss<400", *uri)
    assert client.get_model_version_by_alias("tiny", "champion").version == middle.version
    table = console("aliases", "tiny", *uri).stdout
    assert f"@champion is on version {middle.version}" in table
    moves = json.loads(
        console("aliases", "tiny", "--alias", "champion", "--format", "json", *uri).stdout
    )
    assert [m["to_version"] for m in moves] == [str(best.version), str(middle.version)]
    console("rollback", "tiny", "--alias", "champion", "--dry-run", *uri)
    assert client.get_model_version_by_alias("tiny", "champion").version == middle.version
    console("rollback", "tiny", "--alias", "champion", *uri)
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    console("gc", "tiny", "--keep", "3", "--dry-run", *uri)
    console("gc", "tiny", "--keep", "3", "--keep-latest", "1", *uri)
    assert len(client.search_model_versions("name = 'tiny'")) == 3
    assert "Usage:" in console("--help").stdout


# -- history ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_history_marks_the_best_in_every_format(trained, tmp_path):
    model_dir, _ = trained
    table = cli("history", model_dir).output
    assert "best: step 16 (loss, min)" in table
    best_line = next(line for line in table.splitlines() if line.strip().startswith("*"))
    assert " 16 " in f" {best_line} "

    rows = cli("history", model_dir, "--format", "csv").output.splitlines()
    assert rows[0].startswith("best,step,wall_time,checkpoint_path")
    assert len(rows) == 1 + len(LOSSES)
    assert [r.split(",")[1] for r in rows[1:] if r.startswith("True")] == ["16"]

    data = json.loads(
        cli("history", model_dir, "--format", "json", "--metric", "score", "--mode", "max").output
    )
    assert data["best_step"] == 16 and len(data["records"]) == len(LOSSES)

    plot = tmp_path / "history.png"
    cli("history", model_dir, "--plot", str(plot))
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_history_errors_are_one_line(tmp_path):
    result = cli("history", str(tmp_path / "nope"), code=1)
    assert (
        result.output.strip()
        == f"Error: The model directory {str(tmp_path / 'nope')!r} does not exist."
    )
    result = cli("history", str(tmp_path), code=1)
    assert "No eval records" in result.output
    cli("history", str(tmp_path), "--format", "xml", code=2)


@pytest.mark.slow
def test_history_unknown_metric(trained):
    result = cli("history", trained[0], "--metric", "auc", code=1)
    assert "No eval record has the metric 'auc'" in result.output


@pytest.mark.slow
def test_history_as_a_subprocess(trained, tmp_path):
    assert "best: step 16" in cli_process("history", trained[0]).stdout
    proc = cli_process("history", str(tmp_path / "nope"), code=1)
    assert proc.stderr.strip().startswith("Error: The model directory")
    assert len(proc.stderr.strip().splitlines()) == 1


# -- sync ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sync_repairs_and_then_has_nothing_to_do(trained, store):
    model_dir, _ = trained
    client = MlflowClient(store)
    best = client.get_model_version_by_alias("tiny", "best")
    client.delete_registered_model_alias("tiny", "best")
    client.delete_model_version("tiny", best.version)

    out = cli("sync", model_dir, "--registered-model", "tiny", "--tracking-uri", store).output
    assert "versions created for steps 16;" in out and "alias moved to step 16" in out
    check_mlflow(model_dir, store, registered_model_name="tiny", best_step=16)
    out = cli_process(
        "sync", model_dir, "--registered-model", "tiny", "--tracking-uri", store
    ).stdout
    assert "in step" in out


def test_sync_errors(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli("sync", str(tmp_path / "nope"), "--tracking-uri", store, code=1)
    assert "does not exist" in result.output
    result = cli("sync", str(tmp_path), "--alias", "latest", "--tracking-uri", store, code=1)
    assert "reserved" in result.output
    cli("sync", str(tmp_path), "--mode", "max", "--tracking-uri", store, code=2)


# -- promote ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_promote_moves_the_alias_when_requirements_hold(store):
    client = MlflowClient(store)
    best = client.get_model_version_by_alias("tiny", "best")
    out = cli(
        "promote",
        "tiny",
        "--to-alias",
        "champion",
        "--require",
        "loss<10",
        "--dry-run",
        "--tracking-uri",
        store,
    ).output
    assert "would move tiny@champion" in out
    assert "champion" not in client.get_registered_model("tiny").aliases
    cli(
        "promote", "tiny", "--require", "loss<10", "--require", "score>-10", "--tracking-uri", store
    )
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    assert "already version" in cli("promote", "tiny", "--tracking-uri", store).output


def _versions_by_loss(client):
    """The live versions of 'tiny', best (smallest loss) first, read from MLflow itself."""
    versions = client.search_model_versions("name='tiny'")
    return sorted(versions, key=lambda v: float(v.tags["metric.loss"]))


@pytest.mark.slow
def test_promotions_are_audited_and_rolled_back_step_by_step(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    client = MlflowClient(store)
    best, middle, worst = _versions_by_loss(client)
    assert client.get_model_version_by_alias("tiny", "best").version == best.version
    # First promotion: champion did not exist.
    cli("promote", "tiny", "--require", "loss<100", "--tracking-uri", store)
    # The exporter (or anyone) moves best; the next promotion follows it.
    client.set_registered_model_alias("tiny", "best", middle.version)
    cli("promote", "tiny", "--require", "loss<100", "--tracking-uri", store)
    assert client.get_model_version_by_alias("tiny", "champion").version == middle.version

    moves = json.loads(cli("aliases", "tiny", "--format", "json", "--tracking-uri", store).output)
    assert [(m["from_version"], m["to_version"], m["action"]) for m in moves] == [
        (None, str(best.version), "promote"),
        (str(best.version), str(middle.version), "promote"),
    ]
    assert all(m["user"] == "alice" and m["requirements"] == ["loss<100"] for m in moves)
    assert all(m["alias"] == "champion" and m["source_alias"] == "best" for m in moves)
    table = cli("aliases", "tiny", "--tracking-uri", store).output
    assert f"@champion is on version {middle.version}" in table and "by alice" in table

    dry = cli("rollback", "tiny", "--dry-run", "--tracking-uri", store).output
    assert f"would move tiny@champion back from version {middle.version} to {best.version}" in dry
    assert client.get_model_version_by_alias("tiny", "champion").version == middle.version
    cli("rollback", "tiny", "--alias", "champion", "--tracking-uri", store)
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    # The first promotion had nothing before it: a second rollback is refused.
    result = cli("rollback", "tiny", "--tracking-uri", store, code=1)
    assert "had no version before" in result.output
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    moves = json.loads(cli("aliases", "tiny", "--format", "json", "--tracking-uri", store).output)
    assert [(m["action"], m["undoes"]) for m in moves][-1] == ("rollback", moves[1]["id"])
    # Each move is a tag of its own (two promotions at once cannot overwrite a record).
    history = [k for k in client.get_registered_model("tiny").tags if ".alias_history." in k]
    assert sorted(history) == sorted(
        f"mlflow_best_export.alias_history.champion.{m['id']}" for m in moves
    )


@pytest.mark.slow
def test_rollback_checks_the_requirements_of_the_promotion_it_undoes(store):
    from mlflow_best_export import promotion

    client = MlflowClient(store)
    best, middle, worst = _versions_by_loss(client)
    threshold = (float(best.tags["metric.loss"]) + float(middle.tags["metric.loss"])) / 2
    client.set_registered_model_alias("tiny", "champion", middle.version)  # set by hand
    client.set_registered_model_alias("tiny", "best", middle.version)
    promotion.promote(client, "tiny", requirements=["loss<1000"])  # already there: no move
    client.set_registered_model_alias("tiny", "best", best.version)
    promotion.promote(client, "tiny", requirements=[f"loss<{threshold}"])
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    # Back to middle would fail the requirement recorded with that promotion.
    with pytest.raises(promotion.PromotionRefused, match=f"fails loss<{threshold:g}"):
        promotion.rollback(client, "tiny", alias="champion")
    assert client.get_model_version_by_alias("tiny", "champion").version == best.version
    result = cli("rollback", "tiny", "--alias", "staging", "--tracking-uri", store, code=1)
    assert "has no alias 'staging'" in result.output


@pytest.mark.slow
def test_promote_refuses_with_a_reason(store):
    client = MlflowClient(store)
    result = cli("promote", "tiny", "--require", "loss<0.001", "--tracking-uri", store, code=1)
    assert "fails loss<0.001" in result.output
    result = cli("promote", "tiny", "--require", "auc>0.5", "--tracking-uri", store, code=1)
    assert "no metric 'auc'" in result.output
    assert "champion" not in client.get_registered_model("tiny").aliases
    result = cli("promote", "tiny", "--from-alias", "staging", "--tracking-uri", store, code=1)
    assert "has no alias 'staging'" in result.output
    result = cli("promote", "nosuch", "--tracking-uri", store, code=1)
    assert result.output.strip() == "Error: No registered model named 'nosuch'."
    proc = cli_process("promote", "nosuch", "--tracking-uri", store, code=1)
    assert proc.stderr.strip() == "Error: No registered model named 'nosuch'."
    proc = cli_process(
        "promote", "tiny", "--require", "loss<0.001", "--tracking-uri", store, code=1
    )
    assert "fails loss<0.001" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = cli_process(
        "promote", "tiny", "--from-alias", "staging", "--tracking-uri", store, code=1
    )
    assert "has no alias 'staging'" in proc.stderr
    cli("promote", "tiny", "--require", "loss<<1", "--tracking-uri", store, code=2)
    cli("promote", "tiny", "--to-alias", "v3", "--tracking-uri", store, code=1)


@pytest.mark.parametrize(
    ("text", "tags", "ok"),
    [
        ("loss<0.3", {"metric.loss": "0.2"}, True),
        ("loss <= 0.2", {"metric.loss": "0.2"}, True),
        ("auc>=0.9", {"metric.auc": "0.8"}, False),
        ("acc==1", {"metric.acc": "1.0"}, True),
        ("acc!=1", {"metric.acc": "1.0"}, False),
        ("loss<1", {"metric.loss": "nan"}, False),
    ],
)
def test_requirement_parsing_and_checking(text, tags, ok):
    assert (Requirement.parse(text).check(tags) is None) is ok


# -- gc -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gc_keeps_the_best_and_anything_with_an_alias(store):
    client = MlflowClient(store)
    versions = {
        v.tags["global_step"]: v.version for v in client.search_model_versions("name = 'tiny'")
    }
    assert sorted(versions, key=int) == ["8", "12", "16"]
    client.set_registered_model_alias("tiny", "champion", versions["8"])

    out = cli("gc", "tiny", "--keep", "1", "--dry-run", "--tracking-uri", store).output
    assert f"would delete tiny version {versions['12']}" in out
    assert f"kept tiny version {versions['8']}: it carries champion" in out
    assert len(client.search_model_versions("name = 'tiny'")) == 3

    out = cli_process("gc", "tiny", "--keep", "1", "--tracking-uri", store).stdout
    assert f"deleted tiny version {versions['12']}" in out
    live = sorted(v.tags["global_step"] for v in client.search_model_versions("name = 'tiny'"))
    assert live == ["16", "8"]
    assert "nothing to delete" in cli("gc", "tiny", "--keep", "1", "--tracking-uri", store).output


def test_gc_errors(tmp_path):
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = cli("gc", "nosuch", "--tracking-uri", store, code=1)
    # (MLflow itself logs the creation of the fresh store before.)
    assert result.output.strip().splitlines()[-1] == "Error: No registered model named 'nosuch'."
    cli("gc", "nosuch", "--keep", "0", "--tracking-uri", store, code=2)
