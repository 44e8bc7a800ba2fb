"""Bad input gets a clear error before training; legal but hard data trains to finite log-likelihoods.

Every bad case runs through the Python API (`DensityEstimator`, `run`, `load_model`) and the CLI (`main`, in
process; one case in a fresh process to check that no traceback is printed). Each checks that the message
names what was expected and what came, that the CLI prints one line on stderr with a non-zero status, that
nothing was trained (no checkpoints) and that none of the user's files changed.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flows.training.checkpoints import load_model
from flows.training.cli import main
from flows.training.config import ConfigError
from flows.training.estimator import DensityEstimator

REPO = Path(__file__).resolve().parents[1]
TINY_NSF = {"transforms": 2, "hidden_features": [16, 16], "residual_blocks": 0, "bins": 4}
FAST = {"max_epochs": 3, "batch_size": 64, "trainer": {"accelerator": "cpu"}, "num_threads": 1}


def _snapshot(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` (the user's files), to check that none changed."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and "runs" not in path.relative_to(directory).parts
    }


@pytest.fixture
def user_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder of the user's files; after the test, none of them may have changed."""
    rng = np.random.default_rng(0)
    table = rng.normal(size=(200, 3))
    pd.DataFrame(table, columns=["a", "b", "c"]).to_csv(tmp_path / "good.csv", index=False)
    with_nan = table.copy()
    with_nan[[4, 17, 90], 1] = np.nan
    with_nan[17, 2] = np.nan
    pd.DataFrame(with_nan, columns=["a", "b", "c"]).to_csv(tmp_path / "nan.csv", index=False)
    with_inf = table.copy()
    with_inf[[7], 0] = np.inf
    np.save(tmp_path / "inf.npy", with_inf)
    frame = pd.DataFrame(table, columns=["a", "b", "c"])
    frame["city"] = ["x", "y"] * 100
    frame.to_csv(tmp_path / "text.csv", index=False)
    (tmp_path / "empty.csv").write_text("a,b,c\n")
    (tmp_path / "one_row.csv").write_text("a,b,c\n1.0,2.0,3.0\n")
    (tmp_path / "table.xlsx").write_bytes(b"PK\x03\x04 not really a spreadsheet")
    pd.DataFrame(table[:, :2], columns=["a", "b"]).to_csv(tmp_path / "two_columns.csv", index=False)
    (tmp_path / "zero.csv").write_bytes(b"")
    (tmp_path / "ragged.csv").write_text("a,b,c\n1,2,3\n4,5\n6,7,8,9\n" + "1,2,3\n" * 20)
    stamps = pd.DataFrame({"a": table[:, 0], "t": 1.7e9 + np.arange(200.0)})  # unix times a second apart
    stamps.to_csv(tmp_path / "timestamps.csv", index=False)
    pd.DataFrame(table, columns=["a", "b", "c"]).to_csv(tmp_path / "semicolon.csv", sep=";", index=False)
    (tmp_path / "binary.csv").write_bytes(b"\x00\x01\x02garbage")
    (tmp_path / "folder").mkdir()
    (tmp_path / "config_dir.yaml").mkdir()
    (tmp_path / "latin1.yaml").write_bytes("seed: 0  # caf\xe9\n".encode("latin-1"))
    before = _snapshot(tmp_path)
    yield tmp_path
    after = _snapshot(tmp_path)
    assert {name: after.get(name) for name in before} == before, "a user's file was modified or removed"


def _config(directory: Path, dataset: str, **sections: dict) -> Path:
    config = {
        "seed": 0,
        "data": {"dataset": dataset},
        "model": {"name": "gaussian"},
        "train": {"batch_size": 64, "max_epochs": 2, "num_threads": 1},
        "output": {"dir": str(directory / "runs"), "name": "run", "samples": 10, "plots": False},
        "trainer": {"accelerator": "cpu"},
    }
    if dataset.split(":")[0] in ("toy", "synthetic"):  # generated rows: only a few
        config["data"].update({"n_train": 256, "n_val": 64, "n_test": 64})
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = directory / f"config-{abs(hash(dataset)) % 10_000}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.err


def _assert_one_line_error(status: int, err: str, *expected: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], (text, lines[0])


def _untrained(directory: Path) -> bool:
    return not (directory / "runs" / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------
# Data errors: the API


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.array([[0.0, 1.0], [np.nan, 2.0], [3.0, np.nan], [4.0, 5.0]]), ["2 NaN", "2 rows", "[1, 2]"]),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [3.0, 4.0]]), ["0 NaN and 1 infinite", "[1]"]),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0], "name": ["x", "y", "z"]}), ["non-numeric", "'name'"]),
        (np.array([["1.0", "2.0"], ["x", "3"]], dtype=object), ["non-numeric", "could not convert"]),
        (np.zeros((0, 3)), ["empty", "(0, 3)"]),
        (np.ones((1, 3)), ["at least 2 rows", "got 1"]),
        (np.ones((4, 2, 2)), ["2-D table", "(4, 2, 2)"]),
        ([[1.0, 2.0], [3.0]], ["rectangular"]),
        (pd.DataFrame({"a": [1.0, 2.0, 3.0], "z": [1 + 1j, 2.0, 3.0]}), ["real-valued", "'z (complex128)'"]),
        (
            np.r_[[[1e300, 0.0]], np.arange(40.0).reshape(20, 2)],
            ["float32 range", "x0 (|x| up to 1e+300)", "64-true"],
        ),
        (pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=["a", "a"]), ["several columns named ['a']"]),
        (
            pd.DataFrame([[1.0, 2.0], [3.0, 4.0]], columns=[1, "1"]),
            ["several columns named ['1']", "[1, '1']"],
        ),
        (
            np.ma.masked_equal([[1.0, -999.0], [2.0, 3.0], [-999.0, 4.0], [5.0, 6.0]], -999.0),
            ["masked array with 2 masked entries in 2 rows", "[0, 2]"],
        ),
    ],
    ids=[
        "nan",
        "inf",
        "text-column",
        "text-entries",
        "empty",
        "one-row",
        "3-d",
        "ragged",
        "complex",
        "1e300",
        "duplicate-names",
        "names-equal-as-text",
        "masked",
    ],
)
def test_fit_rejects_bad_tables_before_training(data: object, expected: list[str], tmp_path: Path) -> None:
    estimator = DensityEstimator("gaussian", output_dir=tmp_path / "runs", **FAST)
    with pytest.raises((ValueError, TypeError)) as caught:
        estimator.fit(data)
    for text in expected:
        assert text in str(caught.value), (text, str(caught.value))
    assert not (tmp_path / "runs").exists()  # raised before anything was trained or written
    assert not hasattr(estimator, "flow_")


@pytest.fixture(scope="module")
def fitted() -> DensityEstimator:
    rows = np.random.default_rng(1).normal(size=(256, 3))
    return DensityEstimator("gaussian", **FAST).fit(rows)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (np.zeros((5, 2)), ["2 features", "fitted on 3"]),
        (np.zeros((5, 4)), ["4 features", "fitted on 3"]),
        (np.array([[0.0, np.nan, 1.0], [1.0, 2.0, 3.0]]), ["1 NaN", "[0]"]),
        (pd.DataFrame({"a": [1.0, 2.0], "b": ["u", "v"], "c": [0.0, 1.0]}), ["non-numeric", "'b'"]),
        (
            pd.DataFrame({"a": [1.0, 2.0], "b": [1j, 0j], "c": [0.0, 1.0]}),
            ["real-valued", "'b (complex128)'"],
        ),
        (np.array([1.0 + 2j, 0.0, 0.0]), ["real-valued", "complex128"]),
        (np.array(["1.0", "x", "2"], dtype=object), ["non-numeric", "could not convert"]),
    ],
    ids=["too-few-features", "too-many-features", "nan", "text", "complex-column", "complex-row", "text-row"],
)
def test_score_rejects_bad_rows(fitted: DensityEstimator, data: object, expected: list[str]) -> None:
    with pytest.raises((ValueError, TypeError)) as caught:
        fitted.score_samples(data)
    for text in expected:
        assert text in str(caught.value), (text, str(caught.value))


def test_sample_rejects_bad_counts_and_seeds(fitted: DensityEstimator) -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="positive integer"):
            fitted.sample(bad)
    with pytest.raises(TypeError, match="random_state"):
        fitted.sample(3, random_state="zero")
    with pytest.raises(RuntimeError, match="not fitted"):
        DensityEstimator("gaussian").sample(3)


# ----------------------------------------------------------------------------------------------------------
# Config and hyper-parameter errors: the API


@pytest.mark.parametrize(
    ("arguments", "error", "expected"),
    [
        ({"lrr": 0.1}, ConfigError, ["'model.lrr'", "valid keys"]),
        ({"batch_size": "big"}, ConfigError, ["'train.batch_size'", "int", "'big'"]),
        ({"lr": -1e-3}, ConfigError, ["'train.lr'", "positive", "-0.001"]),
        ({"max_epochs": 0}, ConfigError, ["'train.max_epochs'"]),
        ({"gradient_clip": 0.0}, ConfigError, ["'train.gradient_clip'", "positive"]),
        ({"bins": "eight"}, ConfigError, ["'model.bins'", "int", "'eight'"]),
        ({"trainer": {"max_epochs": 3}}, ConfigError, ["'trainer.max_epochs'", "train.max_epochs"]),
        ({"model": "flowy"}, ConfigError, ["'model.name'", "'flowy'", "nsf"]),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "negative-lr",
        "zero-epochs",
        "zero-clip",
        "bins-type",
        "reserved",
        "model",
    ],
)
def test_estimator_options_are_checked_at_construction(
    arguments: dict, error: type, expected: list[str]
) -> None:
    options = {"model": "nsf", **arguments}
    with pytest.raises(error) as caught:
        DensityEstimator(**options)
    for text in expected:
        assert text in str(caught.value), (text, str(caught.value))


@pytest.mark.parametrize(("option", "expected"), [({"bins": 1}, "bins"), ({"transforms": 0}, "transforms")])
def test_invalid_model_hyperparameters_fail_before_training(
    option: dict, expected: str, tmp_path: Path
) -> None:
    estimator = DensityEstimator("nsf", output_dir=tmp_path / "runs", **FAST, **option)
    with pytest.raises(ValueError, match=expected) as caught:
        estimator.fit(np.random.default_rng(0).normal(size=(64, 2)))
    assert ">=" in str(caught.value) or "at least" in str(caught.value), str(caught.value)
    assert not (tmp_path / "runs" / "checkpoints").exists()


# ----------------------------------------------------------------------------------------------------------
# Checkpoint errors: the API


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real checkpoint of a tiny `flows fit` run (3 features)."""
    directory = tmp_path_factory.mktemp("fit")
    config = _config(
        directory, "synthetic:gaussian_mixture", data={"target": {"features": 3, "components": 1}}
    )
    assert main(["fit", "--config", str(config)]) == 0
    return directory / "runs" / "run" / "checkpoints" / "best.ckpt"


def _damaged(checkpoint: Path, directory: Path) -> dict[str, Path]:
    """Checkpoint files that are broken in different ways."""
    raw = checkpoint.read_bytes()
    files = {
        "truncated": directory / "truncated.ckpt",
        "garbage": directory / "garbage.ckpt",
        "no-state-dict": directory / "list.ckpt",
        "foreign": directory / "foreign.ckpt",
        "wrong-weights": directory / "wrong-weights.ckpt",
    }
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    torch.save([1, 2, 3], files["no-state-dict"])
    torch.save({"state_dict": {"layer.weight": torch.zeros(2, 2)}, "epoch": 3}, files["foreign"])
    payload = torch.load(checkpoint, weights_only=False)
    payload["hyper_parameters"]["features"] = 5  # the record says 5 features, the weights have 3
    torch.save(payload, files["wrong-weights"])
    return files


DAMAGE_MESSAGES = {
    "truncated": ["not a readable checkpoint", "truncated or corrupted", "bytes"],
    "garbage": ["not a readable checkpoint", "truncated or corrupted"],
    "no-state-dict": ["not a flows checkpoint", "state_dict", "list"],
    "foreign": ["no flows model record", "written by flows"],
    "wrong-weights": ["do not fit the model"],
}


def test_damaged_and_foreign_checkpoints_are_clear_errors(checkpoint: Path, tmp_path: Path) -> None:
    files = _damaged(checkpoint, tmp_path)
    for kind, path in files.items():
        for load in (load_model, DensityEstimator.load):
            with pytest.raises(ValueError) as caught:
                load(path)
            for text in DAMAGE_MESSAGES[kind]:
                assert text in str(caught.value), (kind, text, str(caught.value))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model(tmp_path / "missing.ckpt")


# ----------------------------------------------------------------------------------------------------------
# The same errors through the CLI: one line on stderr, exit status 2, nothing trained


@pytest.mark.parametrize(
    ("file", "extra", "expected"),
    [
        ("nan.csv", {}, ["4 NaN and 0 infinite values in 3 rows", "[4, 17, 90]"]),
        ("inf.npy", {}, ["0 NaN and 1 infinite", "[7]"]),
        ("text.csv", {}, ["non-numeric columns", "'city'"]),
        ("empty.csv", {}, ["empty", "(0, 3)"]),
        ("one_row.csv", {}, ["at least 2 rows", "got 1"]),
        ("missing.csv", {}, ["table file not found", "missing.csv"]),
        ("table.xlsx", {}, ["unsupported table format '.xlsx'", ".csv"]),
        ("good.csv", {"columns": ["a", "z"]}, ["column 'z' not found", "['a', 'b', 'c']"]),
        ("zero.csv", {}, ["zero.csv is empty (0 bytes)", "expected a table"]),
        ("ragged.csv", {}, ["ragged.csv is ragged", "expected 3 fields", "line 3 has 2", "line 4 has 4"]),
        ("timestamps.csv", {}, ["spread is too small", "t (values up to 1.7e+09 with std 57.7", "float32"]),
        ("semicolon.csv", {}, ["looks separated by semicolons", "'a;b;c'", "sep=';'"]),
        ("binary.csv", {}, ["is not a text table", "NUL bytes"]),
        ("folder", {}, ["folder is a directory", "expected a table file"]),
    ],
    ids=[
        "nan",
        "inf",
        "text-column",
        "empty",
        "one-row",
        "missing",
        "unknown-format",
        "unknown-column",
        "zero-bytes",
        "ragged",
        "timestamps",
        "semicolons",
        "binary",
        "directory",
    ],
)
def test_cli_fit_rejects_bad_files(
    user_dir: Path, capsys: pytest.CaptureFixture[str], file: str, extra: dict, expected: list[str]
) -> None:
    config = _config(user_dir, f"file:{user_dir / file}", data=extra)
    status, err = _cli(capsys, "fit", "--config", str(config))
    _assert_one_line_error(status, err, "flows fit: error:", *expected)
    assert _untrained(user_dir)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (["--train.lrr", "0.1"], ["unknown config key 'train.lrr'", "did you mean 'lr'"]),
        (["--train.lr", "abc"], ["'train.lr'", "expected float", "'abc'"]),
        (["--train.lr", "-0.5"], ["'train.lr'", "positive", "-0.5"]),
        (["--train.batch_size", "0"], ["'train.batch_size'", "positive"]),
        (["--model.name", "nsf", "--model.bins", "1"], ["bins", ">= 2", "1"]),
        (["--model.name", "nsf", "--model.tails", "cubic"], ["tails", "'cubic'"]),
        (["--data.dataset", "toy:spiral"], ["unknown toy 'spiral'", "moons"]),
        (["--seed", "-5"], ["'seed'", "integer in [0, 2**32)", "-5"]),
        (["--seed", "4294967296"], ["'seed'", "integer in [0, 2**32)", "4294967296"]),
        (["--data.num_workers", "100000"], ["'data.num_workers'", "at most 4 per core", "100000"]),
        (["--train.num_threads", "100000"], ["'train.num_threads'", "at most 4 per core", "100000"]),
        (["--output.samples", "1000000000000"], ["'output.samples'", "[0, 100,000,000]"]),
        (["--train.lr", ".nan"], ["'train.lr'", "finite positive number", "nan"]),
        (["--train.lr", ".inf"], ["'train.lr'", "finite positive number", "inf"]),
        (["--train.noise_std", ".inf"], ["'train.noise_std'", "finite", "inf"]),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "negative-lr",
        "zero-batch",
        "bins-1",
        "bad-tails",
        "unknown-toy",
        "negative-seed",
        "huge-seed",
        "workers",
        "threads",
        "samples",
        "nan-lr",
        "inf-lr",
        "inf-noise",
    ],
)
def test_cli_fit_rejects_bad_configs(
    user_dir: Path, capsys: pytest.CaptureFixture[str], override: list[str], expected: list[str]
) -> None:
    config = _config(user_dir, "toy:moons")
    status, err = _cli(capsys, "fit", "--config", str(config), *override)
    _assert_one_line_error(status, err, "flows fit: error:", *expected)
    assert _untrained(user_dir)


def test_cli_missing_config_file_and_bad_yaml(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, err = _cli(capsys, "fit", "--config", str(user_dir / "nope.yaml"))
    _assert_one_line_error(status, err, "config file not found", "nope.yaml")
    bad = user_dir / "runs" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text("train: [unclosed\n")
    status, err = _cli(capsys, "fit", "--config", str(bad))
    _assert_one_line_error(status, err, "not valid YAML")


def test_cli_config_that_is_a_directory_or_not_utf8(
    user_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = _cli(capsys, "fit", "--config", str(user_dir / "config_dir.yaml"))
    _assert_one_line_error(
        status, err, "config path", "config_dir.yaml is a directory", "expected a YAML file"
    )
    status, err = _cli(capsys, "fit", "--config", str(user_dir / "latin1.yaml"))
    _assert_one_line_error(status, err, "latin1.yaml is not UTF-8", "0xe9", "expected a UTF-8")


def test_cli_score_and_sample_reject_bad_input(
    user_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = user_dir / "runs" / "scores.csv"
    cases = [
        (
            ["score", "--ckpt", str(checkpoint), "--data", str(user_dir / "two_columns.csv")],
            ["2 columns", "expects 3"],
        ),
        (["score", "--ckpt", str(checkpoint), "--data", str(user_dir / "nan.csv")], ["4 NaN", "[4, 17, 90]"]),
        (
            ["score", "--ckpt", str(checkpoint), "--data", str(user_dir / "text.csv")],
            ["non-numeric", "'city'"],
        ),
        (["score", "--ckpt", str(checkpoint), "--data", str(user_dir / "missing.csv")], ["not found"]),
        (
            ["score", "--ckpt", str(user_dir / "none.ckpt"), "--data", str(user_dir / "good.csv")],
            ["not found"],
        ),
        (
            ["score", "--ckpt", str(checkpoint), "--data", str(user_dir / "table.xlsx")],
            ["unsupported table format"],
        ),
        (
            ["sample", "--ckpt", str(checkpoint), "-n", "0", "--out", str(out)],
            ["-n must be a positive integer"],
        ),
        (
            ["sample", "--ckpt", str(checkpoint), "-n", "5", "--out", str(user_dir / "runs" / "s.xlsx")],
            [".csv"],
        ),
    ]
    for argv, expected in cases:
        if argv[0] == "score":
            argv = [*argv, "--out", str(out)]
        status, err = _cli(capsys, *argv)
        _assert_one_line_error(status, err, f"flows {argv[0]}: error:", *expected)
    assert not out.exists()


def test_cli_damaged_checkpoints(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _damaged(checkpoint, tmp_path)
    for kind, path in files.items():
        for argv in (
            ["sample", "--ckpt", str(path), "-n", "3", "--out", str(tmp_path / "s.csv")],
            ["test", "--ckpt", str(path)],
        ):
            status, err = _cli(capsys, *argv)
            _assert_one_line_error(status, err, *DAMAGE_MESSAGES[kind])
    assert not (tmp_path / "s.csv").exists()


def test_cli_resume_refuses_a_checkpoint_of_another_model(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = checkpoint.parent.parent
    config = _config(
        run_dir.parent.parent,
        "synthetic:gaussian_mixture",
        data={"target": {"features": 3, "components": 1}},
        model={"name": "maf", "transforms": 1},
    )
    status, err = _cli(capsys, "fit", "--config", str(config), "--resume")
    _assert_one_line_error(status, err, "cannot resume", "'gaussian'", "'maf'")
    # the same model on other data, or with another seed, is another run too (a loader setting is not)
    same_model = _config(
        run_dir.parent.parent,
        "synthetic:gaussian_mixture",
        data={"target": {"features": 3, "components": 1}, "num_workers": 1},
    )
    status, err = _cli(capsys, "fit", "--config", str(same_model), "--resume", "--seed", "5")
    _assert_one_line_error(status, err, "cannot resume", "seed 0 (the config: 5)")
    assert "num_workers" not in err
    status, err = _cli(capsys, "fit", "--config", str(config), "--resume", "--output.name", "null")
    _assert_one_line_error(status, err, "output.name")


@pytest.mark.slow
def test_console_errors_have_no_traceback_unless_debug(user_dir: Path) -> None:
    config = _config(user_dir, f"file:{user_dir / 'nan.csv'}")
    command = [sys.executable, "-m", "flows.training.cli", "fit", "--config", str(config)]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert quiet.returncode == 2
    assert quiet.stderr.strip().count("\n") == 0 and "Traceback" not in quiet.stderr
    assert "4 NaN" in quiet.stderr
    loud = subprocess.run([*command, "--debug"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "4 NaN" in loud.stderr


# ----------------------------------------------------------------------------------------------------------
# Legal but hard data: handled with warnings, finite log-likelihoods, no NaN in training


def _hard_tables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 400
    base = rng.normal(size=(n, 2))
    return {
        "constant-column": np.c_[base, np.full(n, 3.0)],
        "discrete-column": np.c_[base, rng.integers(0, 3, n)],
        "integer-dtype": rng.integers(-5, 5, (n, 3)),
        "float32-dtype": base.astype(np.float32),
        "magnitude-1e8": base * 1e8 + 1e8,
        "cauchy-tails": rng.standard_cauchy((n, 2)),
        "tiny-magnitude": base * 1e-8,
    }


HARD_WARNINGS = {
    "constant-column": "constant columns ['x2']",
    "discrete-column": "discrete or heavily repeated columns ['x2 (3 distinct values)']",
    "integer-dtype": "discrete or heavily repeated columns",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_hard_tables()))
def test_hard_but_legal_data_trains_to_finite_log_likelihoods(name: str) -> None:
    table = _hard_tables()[name]
    estimator = DensityEstimator("nsf", **{**FAST, "max_epochs": 10}, lr=3e-3, **TINY_NSF)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator.fit(table)
    messages = [str(w.message) for w in caught]
    if name in HARD_WARNINGS:
        assert any(HARD_WARNINGS[name] in m for m in messages), messages
    else:
        assert not any("constant columns" in m or "discrete" in m for m in messages), messages
    scores = estimator.score_samples(table)
    assert scores.shape == (table.shape[0],) and np.isfinite(scores).all()
    assert np.isfinite(estimator.best_val_nll_)
    samples = estimator.sample(200, random_state=0)
    assert np.isfinite(samples).all()
    for parameter in estimator.flow_.parameters():
        assert torch.isfinite(parameter).all()
    # Scores are in data units: rescaling the data by c shifts each log-density by -D log c.
    if name == "magnitude-1e8":
        assert np.mean(scores) == pytest.approx(-2 * np.log(1e8) - np.log(2 * np.pi * np.e), abs=0.3)


@pytest.mark.slow
def test_discrete_column_is_dequantised_on_request() -> None:
    table = _hard_tables()["discrete-column"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DensityEstimator("gaussian", **FAST, dequantize=True).fit(table)
    assert not any("discrete or heavily repeated" in str(w.message) for w in caught)


@pytest.mark.slow
def test_cli_fit_of_a_hard_table_warns_and_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _hard_tables()["constant-column"]
    pd.DataFrame(table, columns=["a", "b", "k"]).to_csv(tmp_path / "hard.csv", index=False)
    config = _config(tmp_path, f"file:{tmp_path / 'hard.csv'}", model={"name": "nsf", **TINY_NSF})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["fit", "--config", str(config)]) == 0
    assert any("constant columns ['k']" in str(w.message) for w in caught)
    metrics = yaml.safe_load((tmp_path / "runs" / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["test_log_likelihood"]) and metrics["test_nonfinite_rows"] == 0


# ----------------------------------------------------------------------------------------------------------
# Untrusted input (issue #10): nothing silently wrong


def test_score_samples_is_never_nan_far_from_the_data(fitted: DensityEstimator) -> None:
    far = np.array(
        [
            [1e300, 1e300, 1e300],
            [1e300, -1e300, 0.0],
            [-1e300, 0.0, 1e300],
            [1e30, 1e30, 1e30],
            [1e38, 0.0, 0.0],
        ]
    )
    rows = np.vstack([far, np.zeros((1, 3))])
    scores = fitted.score_samples(rows)
    assert scores.shape == (6,) and not np.isnan(scores).any(), scores
    assert np.all(scores[:5] == -np.inf) and np.isfinite(scores[5])
    assert fitted.score_samples(far[0]).tolist() == [-np.inf]  # one row, 1-D


def test_fit_warns_about_extreme_outliers_naming_the_column() -> None:
    rows = np.random.default_rng(0).normal(size=(200, 2))
    rows[[3, 50], 1] = [1e15, -2e14]
    with pytest.warns(UserWarning, match=r"extreme outliers .* \['x1 \(2 rows\)'\]"):
        DensityEstimator("gaussian", **{**FAST, "max_epochs": 1}).fit(rows)


def test_standardisation_statistics_do_not_overflow_at_1e300() -> None:
    from flows.training.models import standardization_of

    mean, std = standardization_of(np.array([[1e300], [-1e300], [5e299], [0.0]]))
    assert np.isfinite(mean).all() and np.isfinite(std).all()
    np.testing.assert_allclose(std, [np.std([1.0, -1.0, 0.5, 0.0]) * 1e300], rtol=1e-12)


def test_resolution_check_counts_the_rounding_of_the_training_dtype() -> None:
    from flows.training.standardization import check_table_resolution

    rows = np.random.default_rng(0).normal(size=(100, 3)) + [0.0, 1e4, 1e6]
    rows[:, 0] = 7.0  # a constant column is fine
    check_table_resolution(rows[:, :2], ["a", "b"], torch.float32)  # 1e4: rounded by up to 5e-4
    # 1e6: float32 steps of 0.0625, rounding by up to 0.031 (0.033 of a std)
    with pytest.raises(ValueError, match=r"context columns whose .* c \(values up to 1e\+06 with std 0.9"):
        check_table_resolution(rows, ["a", "b", "c"], torch.float32, what="context columns")
    check_table_resolution(rows, ["a", "b", "c"], torch.float64)
    # ordinary columns pass: years (one row of 2024 among 2023s), GPS longitudes ~100 m apart, epoch
    # milliseconds over 12 hours, prices
    rng = np.random.default_rng(1)
    years = np.r_[np.full(2999, 2023.0), 2024.0]
    longitude = 100.0 + 0.001 * rng.normal(size=3000)
    millis = 1.7e12 + rng.uniform(0, 12 * 3600e3, size=3000)
    prices = np.exp(rng.normal(3, 1, size=3000)).round(2)
    table = np.column_stack([years, longitude, millis, prices])
    check_table_resolution(table, ["year", "lon", "ms", "price"], torch.float32)


def test_fit_refuses_a_column_float32_cannot_resolve() -> None:
    rows = np.random.default_rng(0).normal(size=(60, 2)) + [0.0, 1e9]  # e.g. timestamps seconds apart
    with pytest.raises(ValueError) as caught:
        DensityEstimator("gaussian", **FAST).fit(rows)
    for text in [
        "spread is too small",
        "x1 (values up to 1e+09",
        "float32 rounds them by up to 32",
        "64-true",
    ]:
        assert text in str(caught.value), str(caught.value)


def test_the_resolution_check_looks_at_the_modelled_rows() -> None:
    """Category codes and integer columns: what the flow models, not the raw values (ids near 1e9 are
    categories 0, 1, 2; a year column dequantised with U[0, 1) noise spreads over its cells)."""
    rng = np.random.default_rng(9)
    ids = 1e9 + rng.integers(0, 3, size=120)
    rows = np.column_stack([rng.normal(size=120), ids])
    DensityEstimator("maf", transforms=1, categorical_columns=[1], **FAST).fit(rows)
    years = np.column_stack([rng.normal(size=120), np.r_[np.full(119, 2023.0), 2024.0]])
    DensityEstimator("gaussian", discrete_columns=[1], **FAST).fit(years)


def test_float64_fit_resolves_a_large_offset_that_float32_cannot() -> None:
    """A 64-bit precision builds the model in float64: the standardisation of 1e12 + N(0, 1) is not rounded
    to float32 (it was: a mean off by up to 32,768 standard deviations, scores of -1e14)."""
    rows = np.random.default_rng(3).normal(size=(200, 2))
    options = {**FAST, "max_epochs": 1, "trainer": {"accelerator": "cpu", "precision": "64-true"}}
    plain = DensityEstimator("gaussian", **options).fit(rows)
    shifted = DensityEstimator("gaussian", **options).fit(rows + 1e12)
    # (the same fit up to rounding in float64 at 1e12, ~1e-4 per value, which moves the optimiser's path)
    np.testing.assert_allclose(shifted.score_samples(rows + 1e12), plain.score_samples(rows), atol=0.1)
    assert abs(shifted.score(rows + 1e12) - plain.score(rows)) < 0.02
    assert shifted.sample(2000, random_state=0).std(axis=0).min() > 0.8
    assert torch.get_default_dtype() == torch.float32  # restored after the fit


def test_conditional_fit_refuses_an_unresolvable_context_column() -> None:
    rng = np.random.default_rng(4)
    context = rng.normal(size=(80, 1)) + 1e10
    with pytest.raises(ValueError, match=r"context columns whose spread is too small .*float32"):
        DensityEstimator("gaussian", **FAST).fit(rng.normal(size=(80, 2)), context=context)


def test_float64_fit_keeps_its_dtype_through_save_and_load(tmp_path: Path) -> None:
    rows = np.random.default_rng(2).normal(size=(128, 2)) * [1.0, 1e-9] + [0.0, 1.0]
    options = {**FAST, "max_epochs": 1, "trainer": {"accelerator": "cpu", "precision": "64-true"}}
    estimator = DensityEstimator("gaussian", **options).fit(rows)
    loaded = DensityEstimator.load(estimator.save(tmp_path / "f64.pt"))
    assert {p.dtype for p in loaded.flow_.parameters()} == {torch.float64}
    assert load_model(tmp_path / "f64.pt").dtype == torch.float64
    np.testing.assert_array_equal(loaded.score_samples(rows[:20]), estimator.score_samples(rows[:20]))
    assert loaded.sample(5, random_state=0).dtype == np.float64


@pytest.fixture(scope="module")
def named_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A `flows fit` checkpoint of a table with named columns a, b, c of very different scales."""
    directory = tmp_path_factory.mktemp("named")
    table = np.random.default_rng(3).normal(size=(300, 3)) * [1.0, 10.0, 100.0] + [0.0, 50.0, -500.0]
    pd.DataFrame(table, columns=["a", "b", "c"]).to_csv(directory / "train.csv", index=False)
    config = _config(directory, f"file:{directory / 'train.csv'}", output={"samples": 0})
    assert main(["fit", "--config", str(config)]) == 0
    return directory / "runs" / "run" / "checkpoints" / "best.ckpt", table[:40]


def _scores(path: Path) -> np.ndarray:
    return pd.read_csv(path)["log_prob"].to_numpy()


def test_cli_score_matches_columns_by_name(
    named_checkpoint: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, rows = named_checkpoint
    frame = pd.DataFrame(rows, columns=["a", "b", "c"])
    frame.to_csv(tmp_path / "same.csv", index=False)
    frame[["c", "a", "b"]].assign(city="x").to_csv(tmp_path / "shuffled.csv", index=False)
    for name in ("same", "shuffled"):
        status = main(
            [
                "score",
                "--ckpt",
                str(checkpoint),
                "--data",
                str(tmp_path / f"{name}.csv"),
                "--out",
                str(tmp_path / f"{name}.out.csv"),
            ]
        )
        assert status == 0 and "note" not in capsys.readouterr().err
    np.testing.assert_array_equal(_scores(tmp_path / "shuffled.out.csv"), _scores(tmp_path / "same.out.csv"))
    # --columns picks numeric columns out of a file that also holds text
    out = tmp_path / "picked.out.csv"
    assert (
        main(
            [
                "score",
                "--ckpt",
                str(checkpoint),
                "--data",
                str(tmp_path / "shuffled.csv"),
                "--columns",
                "a,b,c",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(_scores(out), _scores(tmp_path / "same.out.csv"))
    # a headerless file is matched by position, and says so
    np.savetxt(tmp_path / "bare.csv", rows, delimiter=",")
    assert (
        main(["score", "--ckpt", str(checkpoint), "--data", str(tmp_path / "bare.csv"), "--out", str(out)])
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "bare.csv has no column names" in err and "matched to the model's ['a', 'b', 'c'] by position" in err
    )
    np.testing.assert_allclose(_scores(out), _scores(tmp_path / "same.out.csv"), rtol=1e-12)


def test_cli_score_refuses_missing_or_duplicate_names(
    named_checkpoint: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint, rows = named_checkpoint
    pd.DataFrame(rows, columns=["a", "x", "y"]).to_csv(tmp_path / "renamed.csv", index=False)
    (tmp_path / "dup.csv").write_text("a,b,a\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    out = tmp_path / "out.csv"
    status, err = _cli(
        capsys, "score", "--ckpt", str(checkpoint), "--data", str(tmp_path / "renamed.csv"), "--out", str(out)
    )
    _assert_one_line_error(
        status, err, "renamed.csv lacks the model's columns ['b', 'c']", "['a', 'x', 'y']", "--columns"
    )
    status, err = _cli(
        capsys, "score", "--ckpt", str(checkpoint), "--data", str(tmp_path / "dup.csv"), "--out", str(out)
    )
    _assert_one_line_error(status, err, "dup.csv has duplicate column names ['a']")
    assert not out.exists()


def test_config_columns_select_numeric_columns_of_a_mixed_table(user_dir: Path) -> None:
    from flows.datasets import load_table

    table, names = load_table(user_dir / "text.csv", columns=["c", "a"])
    assert names == ["c", "a"] and table.shape == (200, 2)
    np.testing.assert_array_equal(table, pd.read_csv(user_dir / "good.csv")[["c", "a"]].to_numpy())


def test_validation_and_scored_frames_are_matched_to_the_fitted_columns_by_name() -> None:
    """Reordered columns are reordered back; renamed ones are an error, never taken by position."""
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(rng.normal(size=(150, 3)) * [1.0, 5.0, 0.2], columns=["a", "b", "c"])
    val = frame.iloc[100:]
    fit = dict(FAST, max_epochs=2)
    ordered = DensityEstimator("gaussian", **fit).fit(frame.iloc[:100], X_val=val)
    shuffled = DensityEstimator("gaussian", **fit).fit(frame.iloc[:100], X_val=val[["c", "a", "b"]])
    assert shuffled.best_val_nll_ == pytest.approx(ordered.best_val_nll_, rel=1e-12)
    np.testing.assert_array_equal(ordered.score_samples(val[["b", "c", "a"]]), ordered.score_samples(val))
    renamed = val.rename(columns={"a": "A"})
    with pytest.raises(ValueError, match=r"X_val lacks the columns \['a'\]: it has \['A', 'b', 'c'\]"):
        DensityEstimator("gaussian", **fit).fit(frame.iloc[:100], X_val=renamed)
    with pytest.raises(ValueError, match=r"X lacks the columns \['a'\]"):
        ordered.score_samples(renamed)
    # fitted on an array: frames are read by position, whatever their names
    by_position = DensityEstimator("gaussian", **fit).fit(frame.to_numpy())
    np.testing.assert_array_equal(
        by_position.score_samples(renamed), by_position.score_samples(val.to_numpy())
    )


def test_context_frames_are_matched_by_name_too() -> None:
    rng = np.random.default_rng(6)
    context = pd.DataFrame(rng.normal(size=(120, 2)), columns=["u", "v"])
    x = pd.DataFrame({"y": context["u"] + 0.1 * rng.normal(size=120)})
    fit = dict(FAST, max_epochs=2)
    ordered = DensityEstimator("maf", transforms=1, hidden_features=(8,), **fit).fit(
        x.iloc[:90], X_val=x.iloc[90:], context=context.iloc[:90], context_val=context.iloc[90:]
    )
    swapped = DensityEstimator("maf", transforms=1, hidden_features=(8,), **fit).fit(
        x.iloc[:90], X_val=x.iloc[90:], context=context.iloc[:90], context_val=context.iloc[90:][["v", "u"]]
    )
    assert swapped.best_val_nll_ == pytest.approx(ordered.best_val_nll_, rel=1e-12)
    scores = ordered.score_samples(x.iloc[90:], context=context.iloc[90:])
    np.testing.assert_array_equal(
        ordered.score_samples(x.iloc[90:], context=context.iloc[90:][["v", "u"]]), scores
    )
    with pytest.raises(ValueError, match=r"context lacks the columns \['u'\]"):
        ordered.score_samples(x.iloc[90:], context=context.iloc[90:].rename(columns={"u": "w"}))


def test_one_row_as_a_series_or_a_number_is_scored_as_one_row() -> None:
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(rng.normal(size=(100, 2)), columns=["a", "b"])
    fitted = DensityEstimator("gaussian", **FAST).fit(frame)
    expected = fitted.score_samples(frame.iloc[:3])
    np.testing.assert_array_equal(fitted.score_samples(frame.iloc[1]), expected[1:2])  # a row of df.iloc
    np.testing.assert_array_equal(fitted.score_samples(frame.iloc[1][["b", "a"]]), expected[1:2])
    one = DensityEstimator("gaussian", **FAST).fit(frame[["a"]])
    np.testing.assert_array_equal(one.score_samples(0.25), one.score_samples(np.array([[0.25]])))


def test_a_text_context_column_gets_advice_that_applies_to_contexts() -> None:
    rng = np.random.default_rng(8)
    context = pd.DataFrame({"g": ["a", "b"] * 30})
    with pytest.raises(
        TypeError, match=r"context has non-numeric columns \['g'\]; encode them as numbers"
    ) as caught:
        DensityEstimator("gaussian", **FAST).fit(rng.normal(size=(60, 1)), context=context)
    assert "declare them categorical" not in str(caught.value)


def test_a_flows_fit_checkpoint_scores_one_row_files_and_named_frames(
    named_checkpoint: tuple[Path, np.ndarray], tmp_path: Path
) -> None:
    """`flows score` of a one-row NPY (read whole, not streamed), and the checkpoint loaded as an estimator
    matching a reordered DataFrame by name (it has no feature_names_in_: the header gave the names)."""
    checkpoint, rows = named_checkpoint
    np.save(tmp_path / "one.npy", rows[:1])
    assert main(["score", "--ckpt", str(checkpoint), "--data", str(tmp_path / "one.npy"), "--out",
                 str(tmp_path / "one.csv")]) == 0  # fmt: skip
    estimator = DensityEstimator.load(checkpoint)
    expected = estimator.score_samples(rows[:5])
    np.testing.assert_allclose(_scores(tmp_path / "one.csv"), expected[:1], rtol=1e-5)
    frame = pd.DataFrame(rows[:5], columns=["a", "b", "c"])
    np.testing.assert_array_equal(estimator.score_samples(frame[["c", "a", "b"]]), expected)
    with pytest.raises(ValueError, match=r"X lacks the columns \['a'\]"):
        estimator.score_samples(frame.rename(columns={"a": "A"}))
