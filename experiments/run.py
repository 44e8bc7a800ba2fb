"""Run likelihood experiments from config files and tabulate them (``results.md`` and ``results.csv``).

    python -m experiments.run --configs configs/toys/*.yaml --out results/ [--override key=value ...]
        [--repeats N] [--threads T] [--force]

Each (config, repeat) runs through ``flows.training.run`` with seed ``config.seed + repeat`` and its run
directory under ``<out>/runs/``. The metrics of every finished run are saved as one JSON record in
``<out>/records/`` right away, so an interrupted table run loses nothing: on the next call a (config, repeat)
whose record exists is skipped, unless ``--force`` is given or the config changed since (the record keeps a
fingerprint of the validated config, output section excluded). The two tables are rebuilt from all records in
``<out>/records/`` after every run and written atomically.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from experiments.published import published_for
from flows.io import atomic_write_text

__all__ = [
    "CSV_COLUMNS",
    "Experiment",
    "Record",
    "experiment_from_path",
    "main",
    "metrics_from_result",
    "run_experiments",
    "write_tables",
]

#: columns of results.csv, one row per (config, repeat)
CSV_COLUMNS: tuple[str, ...] = (
    "config",
    "dataset",
    "model",
    "repeat",
    "seed",
    "status",
    "test_log_likelihood",
    "standard_error",
    "entropy",
    "gap",
    "bits_per_dim",
    "n_params",
    "wall_time_s",
    "published_value",
    "published_unit",
    "published_model",
    "published_status",
    "published_citation",
    "run_dir",
    "error",
)


@dataclass(frozen=True)
class Experiment:
    """One config file: its id (path below ``configs/`` without suffix), dataset name and model label."""

    path: Path
    config_id: str
    dataset: str
    model: str


@dataclass
class Record:
    """The outcome of one (config, repeat) run, saved as JSON under ``<out>/records/``."""

    config: str
    dataset: str
    model: str
    repeat: int
    seed: int
    status: str  # "ok" or "failed"
    fingerprint: str
    config_path: str
    overrides: list[str] = field(default_factory=list)
    test_log_likelihood: Optional[float] = None
    standard_error: Optional[float] = None
    entropy: Optional[float] = None
    gap: Optional[float] = None
    bits_per_dim: Optional[float] = None
    n_params: Optional[int] = None
    wall_time_s: Optional[float] = None
    run_dir: Optional[str] = None
    error: Optional[str] = None
    finished_at: Optional[str] = None


# ------------------------------------------------------------------------------------------ experiments
def _config_id(path: Path) -> str:
    """``configs/toys/moons_nsf.yaml`` -> ``toys/moons_nsf``; outside a ``configs`` folder, the stem."""
    parts = path.with_suffix("").parts
    if "configs" in parts:
        tail = parts[len(parts) - 1 - parts[::-1].index("configs") + 1 :]
        if tail:
            return "/".join(tail)
    return path.stem


def _dataset_name(dataset: str) -> str:
    """``toy:moons`` -> ``moons``; ``file:/a/b.csv`` -> ``b``."""
    kind, _, name = dataset.partition(":")
    return Path(name).stem if kind == "file" else name


def experiment_from_path(path: str | Path, dataset: str, model_name: str) -> Experiment:
    """An Experiment for a config file whose ``data.dataset`` is ``dataset`` and ``model.name`` is ``model_name``.

    The model label is the file stem without the ``<dataset>_`` prefix when it has one (``power_nsf_coupling``
    -> ``nsf_coupling``), else ``model_name``.
    """
    path = Path(path)
    name = _dataset_name(dataset)
    stem = path.stem
    label = stem[len(name) + 1 :] if stem.startswith(f"{name}_") and len(stem) > len(name) + 1 else model_name
    return Experiment(path=path, config_id=_config_id(path), dataset=name, model=label)


def _parse_overrides(pairs: Sequence[str]) -> list[tuple[str, str]]:
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {pair!r} must look like key=value, e.g. train.max_steps=100")
        out.append((key.strip(), value))
    return out


def _fingerprint(config: Any) -> str:
    """sha256 of the validated config without its output section (where runs go does not change results)."""
    values = dict(config.to_dict())
    values.pop("output", None)
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -------------------------------------------------------------------------------------------- metrics
def _get(source: Any, names: Iterable[str]) -> Any:
    for name in names:
        if isinstance(source, Mapping) and source.get(name) is not None:
            return source[name]
        if not isinstance(source, Mapping) and getattr(source, name, None) is not None:
            return getattr(source, name)
    return None


def _float(value: Any) -> Optional[float]:
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    value = float(value)
    return value if math.isfinite(value) else None


def metrics_from_result(result: Any) -> dict[str, Any]:
    """Normalise a ``RunResult`` (attributes or a mapping, metrics at top level or under ``metrics``).

    Returns test_log_likelihood, standard_error, entropy, gap (test NLL - entropy), bits_per_dim, n_params,
    wall_time_s and run_dir; absent values are None.
    """
    metrics = _get(result, ["metrics"])
    sources = [s for s in (result, metrics) if s is not None]

    def pick(*names: str) -> Any:
        for source in sources:
            value = _get(source, names)
            if value is not None:
                return value
        return None

    ll = _float(pick("test_log_likelihood", "test_ll", "log_likelihood"))
    if ll is None:
        nll = _float(pick("test_nll", "nll"))
        ll = -nll if nll is not None else None
    se = _float(pick("test_log_likelihood_se", "test_ll_se", "standard_error", "test_nll_se", "se"))
    entropy = _float(pick("entropy", "true_entropy", "known_entropy", "test_entropy"))
    gap = _float(pick("gap", "entropy_gap", "test_gap"))
    if gap is None and entropy is not None and ll is not None:
        gap = -ll - entropy
    n_params = pick("n_params", "num_parameters", "parameters")
    run_dir = pick("run_dir")
    return {
        "test_log_likelihood": ll,
        "standard_error": se,
        "entropy": entropy,
        "gap": gap,
        "bits_per_dim": _float(pick("bits_per_dim", "test_bits_per_dim", "test_bpd", "bpd")),
        "n_params": int(n_params) if n_params is not None else None,
        "wall_time_s": _float(pick("wall_time_s", "wall_time", "wall_s", "seconds")),
        "run_dir": str(run_dir) if run_dir is not None else None,
    }


# ------------------------------------------------------------------------------------------- records
def _record_path(out: Path, config_id: str, repeat: int) -> Path:
    return out / "records" / f"{config_id.replace('/', '__')}__r{repeat}.json"


def _write_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text, newline="")


def _read_record(path: Path) -> Optional[Record]:
    try:
        values = json.loads(path.read_text())
        return Record(**{k: v for k, v in values.items() if k in Record.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def load_records(out: str | Path) -> list[Record]:
    """Every readable record under ``<out>/records``, sorted by config id then repeat."""
    folder = Path(out) / "records"
    records = [r for p in sorted(folder.glob("*.json")) if (r := _read_record(p)) is not None]
    return sorted(records, key=lambda r: (r.config, r.repeat))


# -------------------------------------------------------------------------------------------- tables
def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _fmt_params(n: Optional[int]) -> str:
    if n is None:
        return ""
    if n >= 1_000_000:
        return f"{n / 1e6:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _fmt_seconds(s: Optional[float]) -> str:
    if s is None:
        return ""
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _aggregate(records: Sequence[Record]) -> dict[str, Any]:
    """Mean over repeats; the ± is the test-set standard error for one run, else the SE across seeds."""
    ok = [r for r in records if r.status == "ok" and r.test_log_likelihood is not None]
    lls = [r.test_log_likelihood for r in ok]
    mean_ll = _mean(lls)
    if len(ok) >= 2:
        var = sum((v - mean_ll) ** 2 for v in lls) / (len(lls) - 1)  # type: ignore[operator]
        se: Optional[float] = math.sqrt(var / len(lls))
    else:
        se = ok[0].standard_error if ok else None
    return {
        "runs": len(ok),
        "failed": [r for r in records if r.status != "ok"],
        "test_log_likelihood": mean_ll,
        "standard_error": se,
        "entropy": _mean([r.entropy for r in ok]),
        "gap": _mean([r.gap for r in ok]),
        "bits_per_dim": _mean([r.bits_per_dim for r in ok]),
        "n_params": ok[0].n_params if ok else None,
        "wall_time_s": _mean([r.wall_time_s for r in ok]),
    }


def results_csv(records: Sequence[Record]) -> str:
    """One CSV row per record, with the published UCI number beside ours where there is one."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in records:
        row = {k: v for k, v in asdict(r).items() if k in CSV_COLUMNS}
        published = published_for(r.dataset, r.model)
        if published is not None:
            row.update(
                published_value=published.test_log_likelihood,
                published_unit=published.unit,
                published_model=published.model,
                published_status=published.status,
                published_citation=published.citation,
            )
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in CSV_COLUMNS})
    return buffer.getvalue()


def results_markdown(records: Sequence[Record], note: str = "") -> str:
    """A Markdown table, one row per config (mean over its repeats), published numbers where known."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.config, []).append(r)
    with_bpd = any(r.bits_per_dim is not None for r in records)
    with_published = any(published_for(r.dataset, r.model) is not None for r in records)
    header = ["config", "dataset", "model", "runs", "test log-lik. (nats) ± SE", "entropy", "gap"]
    header += ["bits/dim"] if with_bpd else []
    header += ["params", "wall time / run"]
    header += ["published"] if with_published else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for config_id, rs in groups.items():
        agg = _aggregate(rs)
        first = rs[0]
        if agg["test_log_likelihood"] is None:
            ll = "failed: " + (agg["failed"][0].error or "").splitlines()[0][:80] if agg["failed"] else ""
        else:
            ll = _fmt(agg["test_log_likelihood"])
            if agg["standard_error"] is not None:
                ll += f" ± {_fmt(agg['standard_error'])}"
        runs = str(agg["runs"]) + (f" (+{len(agg['failed'])} failed)" if agg["failed"] else "")
        row = [f"`{config_id}`", first.dataset, first.model, runs, ll, _fmt(agg["entropy"]), _fmt(agg["gap"])]
        row += [_fmt(agg["bits_per_dim"])] if with_bpd else []
        row += [_fmt_params(agg["n_params"]), _fmt_seconds(agg["wall_time_s"])]
        if with_published:
            published = published_for(first.dataset, first.model)
            row.append(
                ""
                if published is None
                else f"{published.test_log_likelihood:.2f} {published.unit} ({published.model}; "
                f"{published.status}: {published.citation})"
            )
        lines.append("| " + " | ".join(row) + " |")
    legend = (
        "Test log-likelihood in nats per example (higher is better). ± is the standard error of the test-set mean "
        "for a single run, or the standard error across seeds when runs > 1 (note: the NSF paper reports 2 SE). "
        "gap = test NLL - entropy of the data generator (>= 0 up to noise; 0 is the best achievable)."
    )
    text = "# Results\n\n" + "\n".join(lines) + "\n\n" + legend + "\n"
    return text + (f"\n{note}\n" if note else "")


def machine_note(threads: Optional[int]) -> str:
    """One line describing where the numbers were measured."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only"
    return (
        f"Measured on {platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({device}), "
        f"torch {torch.__version__}, torch threads per run: {threads or torch.get_num_threads()}; "
        f"runs started {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}."
    )


def write_tables(out: str | Path, note: str = "") -> tuple[Path, Path]:
    """Rebuild ``results.csv`` and ``results.md`` in ``out`` from its records (atomic writes)."""
    out = Path(out)
    records = load_records(out)
    csv_path, md_path = out / "results.csv", out / "results.md"
    _write_atomic(csv_path, results_csv(records))
    _write_atomic(md_path, results_markdown(records, note))
    return csv_path, md_path


# ------------------------------------------------------------------------------------------- running
def _default_run(config: Any) -> Any:
    from flows.training import run

    if config.train.compile:
        import torch

        # Each run compiles its own model; graphs kept from earlier runs of this process would count against
        # dynamo's recompile limit (8 per function), after which later runs would silently train eagerly.
        torch._dynamo.reset()
    return run(config)


def run_experiments(
    config_paths: Sequence[str | Path],
    out: str | Path = "results",
    overrides: Sequence[str] = (),
    repeats: int = 1,
    force: bool = False,
    threads: Optional[int] = None,
    runner: Any = None,
    log: Any = None,
) -> list[Record]:
    """Run every (config, repeat) not already recorded in ``out``; return the records of this call's runs.

    ``runner(config) -> RunResult`` defaults to ``flows.training.run``; ``overrides`` are ``key=value``
    strings applied after the file (values parsed as YAML). Tables are rewritten after every run.
    ``threads`` sets ``torch.set_num_threads`` for the runs and is restored afterwards.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    runner = runner or _default_run
    out = Path(out)
    pairs = _parse_overrides(overrides)
    if threads is not None and all(key != "train.num_threads" for key, _ in pairs):
        pairs.append(("train.num_threads", str(threads)))  # else each run's `auto` would choose its own
    import torch

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    note = machine_note(threads)
    try:
        return _run_all(config_paths, out, overrides, pairs, repeats, force, runner, log, note)
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)


def _run_all(
    config_paths: Sequence[str | Path],
    out: Path,
    overrides: Sequence[str],
    pairs: list[tuple[str, str]],
    repeats: int,
    force: bool,
    runner: Any,
    log: Any,
    note: str,
) -> list[Record]:
    """Validate every config, then run the (config, repeat) pairs that have no up-to-date record."""
    from flows.training.config import load_config
    from flows.training.pipeline import validate

    # validate every config before running any, so that a typo fails fast
    planned = []
    for path in config_paths:
        base = load_config([path], pairs)
        validate(base)
        experiment = experiment_from_path(path, base.data.dataset, str(base.model["name"]))
        planned.append((experiment, base.seed))
    ids = [e.config_id for e, _ in planned]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"several config files map to the same result id: {duplicates}")
    done: list[Record] = []
    for experiment, base_seed in planned:
        for repeat in range(repeats):
            seed = base_seed + repeat
            run_name = f"{experiment.config_id.replace('/', '__')}__r{repeat}"
            config = load_config(
                [experiment.path],
                [
                    ("output.progress_bar", "false"),
                    *pairs,
                    ("seed", seed),
                    ("output.dir", str(out / "runs")),
                    ("output.name", run_name),
                ],
            )
            fingerprint = _fingerprint(config)
            record_path = _record_path(out, experiment.config_id, repeat)
            existing = _read_record(record_path)
            if existing is not None and existing.status == "ok" and not force:
                if existing.fingerprint == fingerprint:
                    log(f"skip {experiment.config_id} (repeat {repeat}): result exists in {record_path}")
                    continue
                log(f"rerun {experiment.config_id} (repeat {repeat}): the config changed since {record_path}")
            log(f"run  {experiment.config_id} (repeat {repeat}, seed {seed})")
            record = Record(
                config=experiment.config_id,
                dataset=experiment.dataset,
                model=experiment.model,
                repeat=repeat,
                seed=seed,
                status="ok",
                fingerprint=fingerprint,
                config_path=str(experiment.path),
                overrides=list(overrides),
            )
            start = time.perf_counter()
            try:
                metrics = metrics_from_result(runner(config))
            except Exception as error:  # one failed run must not lose the others
                record.status = "failed"
                record.error = f"{type(error).__name__}: {error}"
                record.wall_time_s = time.perf_counter() - start
                log(f"FAILED {experiment.config_id}: {record.error}\n{traceback.format_exc()}")
            else:
                for key, value in metrics.items():
                    setattr(record, key, value)
                if record.wall_time_s is None:
                    record.wall_time_s = time.perf_counter() - start
                if record.run_dir is None:
                    record.run_dir = str(out / "runs" / run_name)
                log(
                    f"done {experiment.config_id}: test log-lik {_fmt(record.test_log_likelihood)} "
                    f"± {_fmt(record.standard_error)} in {_fmt_seconds(record.wall_time_s)}"
                )
            record.finished_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
            _write_atomic(record_path, json.dumps(asdict(record), indent=2) + "\n")
            write_tables(out, note)
            done.append(record)
    write_tables(out, note)
    return done


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--configs", nargs="+", required=True, help="YAML config files (shell globs welcome)")
    parser.add_argument("--out", default="results", help="output folder for records, runs and tables")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="e.g. train.max_steps=200 (repeatable)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="runs per config, seeds seed, seed+1, ...")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for the runs")
    parser.add_argument("--force", action="store_true", help="rerun configs whose result already exists")
    args = parser.parse_args(argv)
    records = run_experiments(
        args.configs, args.out, args.override, repeats=args.repeats, force=args.force, threads=args.threads
    )
    out = Path(args.out)
    print(f"wrote {out / 'results.md'} and {out / 'results.csv'} ({len(records)} new runs)")
    return 1 if any(r.status != "ok" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
