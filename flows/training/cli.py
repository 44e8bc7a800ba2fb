"""The `flows` command line, in LightningCLI's conventions.

    flows fit    --config a.yaml [--config b.yaml] [--train.lr 3e-4 --trainer.devices 2 ...] [--print_config]
    flows test   --ckpt runs/x/checkpoints/best.ckpt [--config a.yaml] [--dotted.key value ...]
    flows sample --ckpt runs/x/checkpoints/best.ckpt -n 1000 --out samples.csv|samples.npy [--seed 0]
                 [--context contexts.csv]   (conditional models: n samples per context row)
    flows score  --ckpt runs/x/checkpoints/best.ckpt --data table.csv [--columns a,b] --out logp.csv
                 (conditional models also read their context columns from the table, by name)

Config files merge in order; `--a.b value` (or `--a.b=value`) overrides one key with a YAML-typed value.
An unknown key or a value of the wrong type is an error that names the key (exit status 2).

Start-up is kept short: this module imports neither torch nor lightning (nor numpy), so `--help`, argument
errors and config errors answer in a fraction of a second; each command imports what it needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, Optional

import yaml

from flows.training.config import ConfigError, apply_override, load_config, merge, parse_config, read_yaml
from flows.training.process import imports_done, run_as_process

__all__ = ["console_main", "main", "split_overrides"]

#: the longest error line the CLI prints
MAX_MESSAGE = 2000


def split_overrides(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """`["--a.b", "1", "--c=x"]` -> `[("a.b", "1"), ("c", "x")]`; anything else is a ConfigError."""
    pairs: list[tuple[str, str]] = []
    index = 0
    tokens = list(tokens)
    while index < len(tokens):
        token = tokens[index]
        if not token.startswith("--") or len(token) == 2:
            raise ConfigError(f"unexpected argument {token!r}; overrides look like --section.key value")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            index += 1
        else:
            if index + 1 >= len(tokens):
                raise ConfigError(f"override {token!r} has no value")
            value = tokens[index + 1]
            index += 2
        pairs.append((key, value))
    return pairs


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flows", description="Fit normalizing-flow density models to tables (see docs/config.md)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    fit = commands.add_parser("fit", help="train a model from YAML configs; prints the test log-likelihood")
    fit.add_argument(
        "--config", "-c", action="append", default=[], help="YAML config (repeatable, merged in order)"
    )
    fit.add_argument("--print_config", action="store_true", help="print the resolved config and exit")
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue output.dir/output.name from its checkpoints/last.ckpt (from scratch when there is none)",
    )

    test = commands.add_parser("test", help="evaluate a checkpoint on its (or a config's) test split")
    test.add_argument("--ckpt", required=True, help="checkpoint written by `flows fit`")
    test.add_argument(
        "--config", "-c", action="append", default=[], help="YAML config merged over the checkpoint's"
    )

    sample = commands.add_parser("sample", help="draw samples from a checkpoint")
    sample.add_argument("--ckpt", required=True)
    sample.add_argument("-n", "--num_samples", type=int, required=True)
    sample.add_argument(
        "--out", required=True, help="output file: .csv, .tsv or .npy (image models: .png or .npy)"
    )
    sample.add_argument("--seed", type=int, default=None)
    sample.add_argument(
        "--method",
        choices=("flow", "importance", "metropolis", "hmc"),
        default="flow",
        help="target runs: importance (samples with a log_weight column), metropolis (independent MH with "
        "the flow as proposal, optionally with --local moves) or hmc (HMC in the flow's latent space); "
        "flow = plain samples",
    )
    sample.add_argument(
        "--trust-target",
        default=None,
        metavar="MODULE:ATTR",
        help="target runs whose target is your own module: import it (a checkpoint never makes flows import "
        "the code it names; give the same MODULE:ATTR it records)",
    )
    sample.add_argument("--chains", type=int, default=100, help="--method metropolis|hmc: parallel chains")
    sample.add_argument(
        "--local", choices=("rwm", "mala"), default=None, help="--method metropolis: local moves after each"
    )
    sample.add_argument("--local-steps", type=int, default=1, help="--local: moves per step")
    sample.add_argument("--step-size", type=float, default=None, help="--local / hmc: latent step size")
    sample.add_argument("--warmup", type=int, default=0, help="--local / hmc: step-size adaptation steps")
    sample.add_argument("--temperature", type=float, default=1.0, help="image models: base temperature")
    sample.add_argument("--label", type=int, default=None, help="class-conditional image models: the class")
    sample.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="class-conditional image models with autoregressive layers: classifier-free guidance weight "
        "(default: the run's image.guidance)",
    )
    sample.add_argument(
        "--context",
        default=None,
        help="conditional table models: a table holding the model's context columns (by name, else by "
        "position); -n samples are drawn for each row and written with its index in a `context_row` column",
    )

    score = commands.add_parser("score", help="log density of each row of a table under a checkpoint")
    score.add_argument("--ckpt", required=True)
    score.add_argument("--data", required=True, help="CSV / TSV / NPY / NPZ / Parquet table")
    score.add_argument(
        "--columns",
        default=None,
        help="comma-separated column names, in the model's order (default: the training columns by name when "
        "the file has a header, else all columns by position)",
    )
    score.add_argument(
        "--header", default=None, choices=["true", "false"], help="CSV/TSV header (default: sniff)"
    )
    score.add_argument("--key", default=None, help="array name inside an NPZ archive")
    score.add_argument(
        "--out", required=True, help="output file: .csv, .tsv or .npy (one log density per row)"
    )
    for command in commands.choices.values():
        command.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _fit(arguments: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    config = load_config(arguments.config, overrides)  # YAML parsed and every section validated, once
    from flows.training.pipeline import run, validate  # after the config's checks: an error stays fast

    imports_done()

    if arguments.print_config:  # the resolved config: the task's checks, the model's defaults filled in
        print(yaml.safe_dump(validate(config).to_dict(), sort_keys=False), end="")
        return 0
    run(config, resume=arguments.resume)  # the task validates the model and trainer keys, once
    return 0


def _is_image_checkpoint(path: str) -> bool:
    """True for a checkpoint of an image run (its record has an `image` entry)."""
    from flows.training.safety import read_checkpoint

    payload = read_checkpoint(path)
    record = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    return isinstance(record, dict) and "image" in record


def _test(arguments: argparse.Namespace, overrides: list[tuple[str, str]]) -> int:
    from flows.training.checkpoint_evaluation import evaluate_checkpoint
    from flows.training.checkpoints import load_model

    imports_done()
    if _is_image_checkpoint(arguments.ckpt):
        from flows.training.image_checkpoints import evaluate_image_checkpoint

        values: dict = {}
        for path in arguments.config:
            values = merge(values, read_yaml(path))
        for key, value in overrides:
            values = apply_override(values, key, value)
        evaluate_image_checkpoint(arguments.ckpt, values)
        return 0
    values = load_model(arguments.ckpt).config.to_dict()
    for path in arguments.config:
        values = merge(values, read_yaml(path))
    for key, value in overrides:
        values = apply_override(values, key, value)
    evaluate_checkpoint(parse_config(values), arguments.ckpt)
    return 0


def _sample(arguments: argparse.Namespace) -> int:
    from flows.training.checkpoints import load_model

    imports_done()
    if arguments.num_samples < 1:
        raise ConfigError(f"-n must be a positive integer, got {arguments.num_samples}")
    if _is_image_checkpoint(arguments.ckpt):
        from flows.training.image_checkpoints import sample_images

        path = sample_images(
            arguments.ckpt,
            arguments.out,
            count=arguments.num_samples,
            temperature=arguments.temperature,
            label=arguments.label,
            seed=arguments.seed,
            guidance=arguments.guidance,
        )
        print(f"wrote {arguments.num_samples} images to {path}")
        return 0
    loaded = load_model(arguments.ckpt)
    if arguments.method != "flow":
        from flows.training.cli_sampling import sample_target_run

        return sample_target_run(loaded, arguments)
    if loaded.context_columns or arguments.context is not None:
        from flows.training.cli_context import sample_given_contexts

        return sample_given_contexts(loaded, arguments)
    from flows.training.cli_score import sample_rows

    rows = sample_rows(loaded, arguments)
    print(f"wrote {rows} samples of {loaded.features} columns to {arguments.out}")
    return 0


def _score_columns(
    path: str, header: Optional[bool], model_columns: list[str]
) -> tuple[Optional[list[str]], Optional[str]]:
    """Which columns of `path` to score, and a note for stderr: the model's, by name, when the file names
    them all; None (every column, by position, with a note saying so) when the file has no names or the
    model has none of its own (`x0, x1, ...`: it was trained on unnamed data). Names the file lacks are an
    error listing them."""
    from flows.datasets import table_columns

    names = table_columns(path, header)
    if names is not None and set(model_columns) <= set(names):
        return list(model_columns), None
    unnamed_model = model_columns == [f"x{i}" for i in range(len(model_columns))]
    if names is None or unnamed_model:
        whose = f"{path} has no column names" if names is None else "the model was trained on unnamed columns"
        return None, (
            f"flows score: note: {whose}; the file's columns were matched to the model's {model_columns} "
            "by position"
        )
    missing = [c for c in model_columns if c not in names]
    raise ValueError(
        f"{path} lacks the model's columns {missing} (the model was trained on {model_columns}; the file "
        f"has {names}); name the file's columns in the model's order with --columns, or pass --header "
        "false to match by position"
    )


def _score(arguments: argparse.Namespace) -> int:
    from flows.training.checkpoints import load_model
    from flows.training.cli_score import print_score, score_rows

    imports_done()
    loaded = load_model(arguments.ckpt)
    header = None if arguments.header is None else arguments.header == "true"
    note = None
    if arguments.columns is not None:
        columns: Optional[list[Any]] = [c.strip() for c in arguments.columns.split(",")]
    else:
        columns, note = _score_columns(arguments.data, header, loaded.columns)
    tally = score_rows(loaded, arguments, columns, header)
    print_score(arguments.out, tally, note)
    return 0


def _is_run_error(error: BaseException) -> bool:
    """A divergence or a locked run directory (the user's to fix). Their modules import torch, so they are
    looked up only when already imported: an error raised before that cannot be one of them."""
    kinds = [
        getattr(sys.modules.get(module), name, None)
        for module, name in (
            ("flows.training.safety", "TrainingDivergedError"),
            ("flows.training.rundir", "RunDirectoryLocked"),
        )
    ]
    return any(isinstance(kind, type) and isinstance(error, kind) for kind in kinds)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the `flows` console script; returns the exit status."""
    parser = _parser()
    arguments, rest = parser.parse_known_args(argv)
    try:
        overrides = split_overrides(rest)
        if overrides and arguments.command in ("sample", "score"):
            raise ConfigError(f"`flows {arguments.command}` takes no config overrides, got {rest}")
        if arguments.command == "fit":
            return _fit(arguments, overrides)
        if arguments.command == "test":
            return _test(arguments, overrides)
        if arguments.command == "sample":
            return _sample(arguments)
        return _score(arguments)
    except Exception as error:  # one line on stderr, no traceback, unless --debug
        if arguments.debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if len(message) > MAX_MESSAGE:  # a value in a message can be huge (a table row, a config value)
            message = f"{message[: MAX_MESSAGE - 40]}... ({len(message)} characters in all)"
        # ConfigError is a ValueError; these are the user's to fix, anything else is a bug to report.
        if isinstance(error, (ValueError, TypeError, OSError, ImportError)) or _is_run_error(error):
            print(f"flows {arguments.command}: error: {message}", file=sys.stderr)
            return 2
        print(
            f"flows {arguments.command}: unexpected {type(error).__name__}: {message} (rerun with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return 1


def console_main() -> NoReturn:
    """The `flows` console script and `python -m flows.training.cli`: `main` as the process's one job
    (`flows.training.process.run_as_process`: imports without the cyclic collector, no teardown at exit)."""
    run_as_process(main)


if __name__ == "__main__":
    console_main()
