"""Tests for experiments.run: tables and their columns, resuming, --force, config changes, failures."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from experiments.figures import toy_density_figure
from experiments.published import PUBLISHED_UCI, published_for
from experiments.run import CSV_COLUMNS, experiment_from_path, main, metrics_from_result, run_experiments

TOY_CONFIG = """
seed: 3
data: {dataset: "toy:moons", n_train: 256, n_val: 64, n_test: 128}
model: {name: nsf}
train: {batch_size: 64, max_steps: 4, max_epochs: null}
"""

UCI_CONFIG = """
data: {dataset: "uci:power", root: /nonexistent}
model: {name: nsf}
train: {max_steps: 2}
"""


def _write_configs(root: Path) -> list[Path]:
    (root / "configs" / "toys").mkdir(parents=True)
    (root / "configs" / "uci").mkdir(parents=True)
    toy = root / "configs" / "toys" / "moons_nsf.yaml"
    toy.write_text(TOY_CONFIG)
    uci = root / "configs" / "uci" / "power_nsf_coupling.yaml"
    uci.write_text(UCI_CONFIG)
    return [toy, uci]


class FakeRunner:
    """Stands in for flows.training.run: log-likelihood depends on the seed and a train option."""

    def __init__(self, fail_on: str = "") -> None:
        self.calls: list[Any] = []
        self.fail_on = fail_on

    def __call__(self, config: Any) -> dict[str, Any]:
        self.calls.append(config)
        if self.fail_on and self.fail_on in config.data.dataset:
            raise RuntimeError("loss is NaN")
        ll = -2.5 + 0.01 * config.seed - 0.001 * config.train.batch_size
        metrics = {
            "test_log_likelihood": ll,
            "test_log_likelihood_se": 0.02,
            "n_params": 1234,
            "wall_time": 1.5,
        }
        if config.data.dataset.startswith("toy:"):
            metrics["entropy"] = 2.394
        return {"metrics": metrics, "run_dir": f"{config.output.dir}/{config.output.name}"}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


def test_runner_writes_both_tables_with_columns(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)
    out = tmp_path / "results"
    fake = FakeRunner()
    records = run_experiments(configs, out, runner=fake, log=lambda _: None)
    assert [r.config for r in records] == ["toys/moons_nsf", "uci/power_nsf_coupling"]
    # the runner put the run directory under <out>/runs and kept the config's seed
    assert fake.calls[0].output.dir == str(out / "runs") and fake.calls[0].seed == 3
    assert fake.calls[0].output.name == "toys__moons_nsf__r0"
    rows = _read_csv(out / "results.csv")
    toy, uci = rows
    assert (toy["dataset"], toy["model"], uci["dataset"], uci["model"]) == (
        "moons",
        "nsf",
        "power",
        "nsf_coupling",
    )
    expected_ll = -2.5 + 0.03 - 0.064
    assert float(toy["test_log_likelihood"]) == pytest.approx(expected_ll)
    assert float(toy["gap"]) == pytest.approx(-expected_ll - 2.394)  # test NLL - entropy
    assert toy["entropy"] == "2.394" and uci["entropy"] == "" and uci["gap"] == ""
    assert toy["published_value"] == ""
    assert float(uci["published_value"]) == 0.64 and uci["published_unit"] == "nats"
    assert uci["published_status"] == "copied" and "Table 1" in uci["published_citation"]
    md = (out / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| config"))
    for column in (
        "test log-lik. (nats) ± SE",
        "entropy",
        "gap",
        "params",
        "wall time / run",
        "published",
    ):
        assert column in header
    assert "bits/dim" not in header  # no run reported it
    assert f"{expected_ll:.3f} ± 0.020" in md and "1.2k" in md and "0.64 nats (RQ-NSF (C)" in md


def test_runner_skips_existing_and_force_reruns(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)
    out = tmp_path / "results"
    first = FakeRunner()
    run_experiments(configs, out, runner=first, log=lambda _: None)
    assert len(first.calls) == 2
    before = (out / "results.csv").read_text()
    again = FakeRunner()
    assert run_experiments(configs, out, runner=again, log=lambda _: None) == []
    assert again.calls == [] and (out / "results.csv").read_text() == before
    forced = FakeRunner()
    records = run_experiments(configs[:1], out, runner=forced, force=True, log=lambda _: None)
    assert len(forced.calls) == 1 and len(records) == 1
    # the other config's record is kept in the tables
    assert len(_read_csv(out / "results.csv")) == 2


def test_runner_reruns_when_the_config_changes(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)
    out = tmp_path / "results"
    run_experiments(configs[:1], out, runner=FakeRunner(), log=lambda _: None)
    changed = FakeRunner()
    run_experiments(configs[:1], out, overrides=["train.batch_size=32"], runner=changed, log=lambda _: None)
    assert len(changed.calls) == 1 and changed.calls[0].train.batch_size == 32
    (row,) = _read_csv(out / "results.csv")
    assert float(row["test_log_likelihood"]) == pytest.approx(-2.5 + 0.03 - 0.032)
    # changing only where the output goes is not a change of the experiment
    same = FakeRunner()
    run_experiments(
        configs[:1],
        out,
        overrides=["train.batch_size=32", "output.samples=7"],
        runner=same,
        log=lambda _: None,
    )
    assert same.calls == []


def test_repeats_use_consecutive_seeds_and_aggregate(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)[:1]
    out = tmp_path / "results"
    fake = FakeRunner()
    run_experiments(configs, out, repeats=3, runner=fake, log=lambda _: None)
    assert [c.seed for c in fake.calls] == [3, 4, 5]
    rows = _read_csv(out / "results.csv")
    assert [r["repeat"] for r in rows] == ["0", "1", "2"]
    lls = [float(r["test_log_likelihood"]) for r in rows]
    mean = sum(lls) / 3
    se = math.sqrt(sum((v - mean) ** 2 for v in lls) / 2 / 3)
    assert f"{mean:.3f} ± {se:.3f}" in (out / "results.md").read_text()


def test_failed_run_is_recorded_and_retried(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)
    out = tmp_path / "results"
    records = run_experiments(configs, out, runner=FakeRunner(fail_on="uci:"), log=lambda _: None)
    assert [r.status for r in records] == ["ok", "failed"] and "loss is NaN" in (records[1].error or "")
    assert "failed: RuntimeError: loss is NaN" in (out / "results.md").read_text()
    retry = FakeRunner()
    run_experiments(configs, out, runner=retry, log=lambda _: None)
    assert [c.data.dataset for c in retry.calls] == ["uci:power"]
    record = json.loads((out / "records" / "uci__power_nsf_coupling__r0.json").read_text())
    assert record["status"] == "ok"


def test_invalid_config_fails_before_any_run(tmp_path: Path) -> None:
    configs = _write_configs(tmp_path)
    bad = tmp_path / "configs" / "toys" / "bad.yaml"
    bad.write_text("model: {name: nsf}\ntrain: {learning_rate: 1.0}\n")
    fake = FakeRunner()
    with pytest.raises(ValueError, match="learning_rate"):
        run_experiments([*configs, bad], tmp_path / "out", runner=fake, log=lambda _: None)
    # model options are checked against the preset's signature before anything runs
    bad.write_text("model: {name: nsf, hidden_layers: 3}\n")
    with pytest.raises(ValueError, match="hidden_layers"):
        run_experiments([*configs, bad], tmp_path / "out", runner=fake, log=lambda _: None)
    assert fake.calls == []
    with pytest.raises(ValueError, match="key=value"):
        run_experiments(configs, tmp_path / "out", overrides=["train.lr"], runner=fake, log=lambda _: None)


def test_metrics_from_result_accepts_attributes_and_nll() -> None:
    class Result:
        metrics = {"test_nll": 1.25, "test_nll_se": 0.1, "entropy": 1.0, "bits_per_dim": 3.5}
        n_params = 10
        run_dir = Path("runs/x")
        wall_time_s = 2.0

    m = metrics_from_result(Result())
    assert m["test_log_likelihood"] == -1.25 and m["standard_error"] == 0.1
    assert m["gap"] == pytest.approx(0.25) and m["bits_per_dim"] == 3.5
    assert m["n_params"] == 10 and m["run_dir"] == "runs/x" and m["wall_time_s"] == 2.0


def test_model_label_from_file_name() -> None:
    e = experiment_from_path("configs/uci/gas_nsf_autoregressive.yaml", "uci:gas", "nsf")
    assert (e.config_id, e.dataset, e.model) == ("uci/gas_nsf_autoregressive", "gas", "nsf_autoregressive")
    e = experiment_from_path("my/run.yaml", "file:data/table.csv", "maf")
    assert (e.config_id, e.dataset, e.model) == ("run", "table", "maf")


def test_published_numbers_cover_every_uci_pair() -> None:
    assert len(PUBLISHED_UCI) == 20
    assert published_for("HEPMASS", "nsf_autoregressive").test_log_likelihood == -14.01  # type: ignore[union-attr]
    assert published_for("bsds300", "maf").test_log_likelihood == 155.69  # type: ignore[union-attr]
    assert published_for("moons", "nsf") is None
    assert published_for("cifar10", "glow").unit == "bits/dim"  # type: ignore[union-attr]


def test_cli_main_requires_configs(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([])
    assert "--configs" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_end_to_end_with_the_real_training_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two tiny configs through `python -m experiments.run` and flows.training.run: tables, skip, --force."""
    pytest.importorskip("lightning")
    folder = tmp_path / "configs" / "toys"
    folder.mkdir(parents=True)
    tiny = (
        "data: {{dataset: 'toy:{name}', n_train: 64, n_val: 32, n_test: 32}}\n"
        "model: {{name: {model}, transforms: 1, hidden_features: [8]}}\n"
        "train: {{batch_size: 16, max_steps: 2, max_epochs: 1, val_every_n_steps: 2, early_stopping_patience: null}}\n"
        "trainer: {{accelerator: cpu, log_every_n_steps: 1}}\n"
        "output: {{samples: 8, plots: false, logger: csv}}\n"
    )
    paths = []
    for name, model in (("moons", "maf"), ("8gaussians", "realnvp")):
        path = folder / f"{name}_{model}.yaml"
        path.write_text(tiny.format(name=name, model=model))
        paths.append(str(path))
    out = tmp_path / "results"
    argv = ["--configs", *paths, "--out", str(out), "--threads", "1"]
    import torch

    threads = torch.get_num_threads()
    assert main(argv) == 0
    assert torch.get_num_threads() == threads  # --threads applies to the runs only
    rows = _read_csv(out / "results.csv")
    assert [(r["config"], r["model"], r["status"]) for r in rows] == [
        ("toys/8gaussians_realnvp", "realnvp", "ok"),
        ("toys/moons_maf", "maf", "ok"),
    ]
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert float(row["test_log_likelihood"]) == pytest.approx(metrics["test_log_likelihood"])
        assert (
            float(row["gap"]) == pytest.approx(metrics["gap"]) and int(row["n_params"]) == metrics["n_params"]
        )
    md = (out / "results.md").read_text()
    assert "`toys/moons_maf`" in md and "`toys/8gaussians_realnvp`" in md
    # the docs figure reloads both best checkpoints and draws their densities
    figure = toy_density_figure(out, tmp_path / "toys.png", grid_size=20, dpi=30)
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(argv) == 0
    assert "(0 new runs)" in capsys.readouterr().out
    assert main([*argv[:-2], "--force"]) == 0  # threads left at the default
    assert "(2 new runs)" in capsys.readouterr().out


def test_default_runner_resets_dynamo_before_compiled_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs with train.compile start from an empty dynamo cache, so a long experiment list never reaches
    dynamo's recompile limit; runs without it leave other compiled code alone."""
    import torch

    import experiments.run as runner_module
    import flows.training

    resets: list[int] = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    monkeypatch.setattr(flows.training, "run", lambda config: {"metrics": {}})
    from flows.training.config import parse_config

    for compile_flag, expected in ((False, 0), (True, 1)):
        resets.clear()
        runner_module._default_run(
            parse_config({"data": {"dataset": "toy:moons"}, "train": {"compile": compile_flag}})
        )
        assert len(resets) == expected
