"""``rnnkit train TASK``: one command per task of :data:`rnnkit.tasks.TASKS`, its options
made of the task's declarations (see :mod:`rnnkit.cli.options`), run by the one recipe."""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from rnnkit.cli import launch
from rnnkit.cli.options import add_options, read_config, settings, shown, task_options
from rnnkit.train import distributed


# The whole command of a run started by ``--nproc`` (launch options included), handed by
# the launcher to its processes: what run.json and the model card record.
COMMAND_ENV = "RNNKIT_RUN_COMMAND"


def recorded_command(argv: list[str]) -> str:
    """The command that started this process's run, as run.json records it: the launcher's
    (``--nproc`` …) for a process it started; ``torchrun … -m rnnkit …`` for one torchrun
    started; else ``rnnkit ARGV``."""
    own = shlex.join(["rnnkit", *argv])
    if os.environ.get(COMMAND_ENV):
        return os.environ[COMMAND_ENV]
    if distributed.launched() and os.environ.get("LOCAL_WORLD_SIZE", "").isdigit():
        per_machine = int(os.environ["LOCAL_WORLD_SIZE"])
        machines = max(1, int(os.environ["WORLD_SIZE"]) // max(1, per_machine))
        return (f"torchrun --nnodes {machines} --nproc-per-node {per_machine} -m "
                f"{own}")
    return own


def _log_to(args):
    stream = sys.stderr if args.json else sys.stdout
    return lambda text: print(text, file=stream, flush=True)


def _defaults_line(spec, options) -> str:
    """"Defaults: …" of a task's ``--help`` description, from its declaration."""
    flags = {o.key: o.flag.lstrip("-") for o in options}

    def listed(defaults: dict) -> str:
        return ", ".join(f"{flags.get(k, k)} {shown(v)}" for k, v in defaults.items())

    parts = [listed({**spec.train_defaults, **spec.model_defaults})]
    for field_name, table in spec.defaults_by:
        alike: dict[str, list[str]] = {}
        for value, defaults in table.items():
            alike.setdefault(listed(defaults), []).append(value)
        for text, values in alike.items():
            when = f"--{flags[field_name]} {'/'.join(values)}" if values != [""] \
                else f"without --{flags[field_name]}"
            parts.append(f"{when}: {text}")
    parts = [p for p in parts if p]
    return f" Defaults: {'; '.join(parts)}." if parts else ""


def add_commands(commands) -> None:
    """``rnnkit train`` and a subcommand per registered task."""
    from rnnkit.tasks import TASKS

    train = commands.add_parser("train", help="train a model",
                                description="Train a model of a task into a directory.")
    tasks = train.add_subparsers(dest="task", metavar="TASK", required=True)
    for spec in TASKS.values():
        out = (f"model directory to write (default: {spec.default_out}, or "
               f"{spec.default_out}-2, … when that holds a run)" if spec.default_out
               else "model directory to write (required)")
        options = task_options(spec)
        sub = tasks.add_parser(
            spec.command, help=spec.summary,
            description=f"{spec.description}{_defaults_line(spec, options)} Options may also "
            "come from a TOML file (--config); the command line wins.")
        sub.add_argument("--out", help=out)
        free = ", ".join(o.flag for o in options if _may_change(o))
        sub.add_argument("--resume", action="store_true",
                         help="continue the run in --out from its last checkpoint (another "
                         f"option given must have the run's value; these may change: {free})")
        sub.add_argument("--config", help="TOML file of options (keys as in --help, with _)")
        sub.add_argument("--device", help="cpu | cuda | auto (default cpu)")
        sub.add_argument("--json", action="store_true", help="print the summary as JSON")
        add_options(sub, options)
        launch.add_options(sub)
        sub.set_defaults(run=run_train, spec=spec, options=options)


def model_directory(args, spec, file: dict, log) -> str:
    """--out (or the config file's ``out``); else the task's default directory, numbered
    on when it holds a run already."""
    out = args.out or file.get("out")
    if out is not None and not isinstance(out, str):
        raise ValueError(f"{args.config}: out: expected a folder name, got {out!r}")
    if out:
        return out
    if distributed.launched():
        raise ValueError("--out: under torchrun, name the model directory (every process "
                         "must write to the same one)")
    if not spec.default_out:
        raise ValueError("--out: expected the model directory to write")
    out, k = spec.default_out, 2
    while not args.resume and Path(out).exists() and any(Path(out).iterdir()):
        out, k = f"{spec.default_out}-{k}", k + 1
    log(f"model directory: {out}")
    return out


@contextmanager
def _flags_named(options):
    """An error about an option's field (``"batch_size: expected …"``, also after
    ``"model options: "``) names its flag too: ``"--batch-size (batch_size): expected …"``
    (the field, a --config file's key, only where the flag spells it otherwise)."""
    try:
        yield
    except ValueError as error:
        text = str(error).removeprefix("model options: ")
        for o in options:
            if text.startswith(f"{o.key}:"):
                named = o.flag if o.flag == "--" + o.key else f"{o.flag} ({o.key})"
                raise ValueError(f"{named}{text[len(o.key):]}") from None
        raise


def _checked(spec, options, groups: dict):
    """The data config of a new run, its model options and training settings checked too,
    before anything is read or written; an error names the flag."""
    from rnnkit.tasks import recipe

    with _flags_named(options):
        data_cfg = spec.data_config(**groups["data"])
        recipe.model_settings(spec, groups["model"])
        recipe.train_settings(spec, data_cfg, groups["train"])
    return data_cfg


def _check_resume(args, options, file: dict, spec, out: Path) -> None:
    """``--resume`` continues a run with the settings it was started with: an option of its
    data, model or training (other than the training budget) given now, on the command line
    or in the --config file, must have the run's own value (so that the command that
    started a run, with ``--resume`` added, resumes it); another value is refused, naming
    both."""
    saved = _run_values(spec, out, options)
    if saved is None:                   # no run of this task here: the recipe says so
        return
    given = {o.key: getattr(args, o.key) for o in options if getattr(args, o.key) is not None}
    table = file.get("cell_options") or {}
    values = {**{k: v for k, v in file.items() if k != "cell_options"}, **table, **given}
    kept = _as_run_keeps(spec, saved, values, options)
    refused = []
    for o in options:
        if o.key not in values or _may_change(o) or _same(kept[o.key], saved.get(o.key)):
            continue
        if o.key in given:
            named = o.flag if o.kind == "bool" else f"{o.flag} {_spelled(values[o.key])}"
            has = "was started without it" if o.kind == "bool" else \
                f"has {_spelled(saved.get(o.key))}"
        else:
            named = f"{o.key} = {_spelled(values[o.key])} in {args.config}"
            has = f"has {_spelled(saved.get(o.key))}"
        refused.append(f"{named} ({'the run ' + has if o.key in saved else 'not in the run'})")
    had = saved[CELL_OPTIONS]
    for name in sorted(set(table) - {o.key for o in options}):     # a cell of your own's
        if name not in had or not _same(table[name], had[name]):
            has = f"the run has {_spelled(had[name])}" if name in had else "not in the run"
            refused.append(f"cell_options.{name} = {_spelled(table[name])} in {args.config} "
                           f"({has})")
    if refused:
        allowed = [o.flag for o in options if _may_change(o)]
        raise ValueError(f"--resume: continues the run with the settings it was started "
                         f"with; {'; '.join(refused)}: cannot change (a resume may change "
                         f"only {', '.join(allowed)})")


def _same(value, saved) -> bool:
    """Whether an option's value is the run's: equal, or two spellings of one file."""
    if value == saved:
        return True
    return isinstance(value, str) and isinstance(saved, str) and bool(value and saved) and \
        os.path.exists(value) and os.path.exists(saved) and os.path.samefile(value, saved)


def _spelled(value) -> str:
    """A value as a message shows it: TOML's true/false, "" for an empty text."""
    if isinstance(value, bool):
        return str(value).lower()
    return '""' if value == "" else shown(value)


def _may_change(option) -> bool:
    """Whether a resume may give ``option`` another value than the run's: the budget, the
    display (progress bar, TensorBoard) and the task's finish options."""
    from rnnkit.tasks import recipe

    field = recipe.TRAIN_FIELDS.get(option.key) if option.group == "train" else None
    return option.group == "run" or (field is not None and field.metadata.get("resume"))


CELL_OPTIONS = "cell_options"           # _run_values' key of the run's whole table


def _run_values(spec, out: Path, options) -> dict | None:
    """The value of every option in the run in ``out``, by key, as a resume reads them
    (:func:`rnnkit.tasks.recipe.read_run`: an older rnnkit's fields in today's form, the
    default for a field added since), plus the run's cell options under
    :data:`CELL_OPTIONS`; None if ``out`` holds no run of this task to read."""
    from dataclasses import fields

    from rnnkit.cells.registry import all_options
    from rnnkit.config import MISSING as NONE, field_default
    from rnnkit.tasks import recipe

    try:
        data_cfg, model, train_cfg = recipe.read_run(out, spec)
    except (OSError, ValueError):
        return None
    defaults = {f.name: field_default(f) for f in fields(spec.model_config)}
    model = {**{k: v for k, v in defaults.items() if v is not NONE}, **model}
    cells = model.get("cell_options") or {}
    groups = {"cell": {**all_options(), **cells}, "data": asdict(data_cfg), "model": model,
              "train": asdict(train_cfg)}
    return {**{o.key: groups[o.group][o.key] for o in options
               if o.group in groups and o.key in groups[o.group]}, CELL_OPTIONS: cells}


def _as_run_keeps(spec, saved: dict, values: dict, options) -> dict:
    """Option values as run.json keeps them: tuples as lists, data paths absolute (the
    run's data config with the given data options)."""
    from rnnkit.tasks.common import absolute_paths

    kept = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    data = {o.key: values[o.key] for o in options if o.group == "data" and o.key in values}
    run_data = {o.key: saved[o.key] for o in options if o.group == "data" and o.key in saved}
    try:
        absolute = absolute_paths(spec.data_config(**{**run_data, **data}))
        kept.update({k: absolute[k] for k in data})
    except (ValueError, TypeError):     # not a config the run could have: refused as given
        pass
    return kept


def run_train(args) -> int:
    from rnnkit.tasks import recipe

    spec, options, log = args.spec, args.options, _log_to(args)
    file = read_config(args.config, options, f"train {spec.command}")
    groups = settings(args, options, file)
    with _flags_named(options):
        run_options = asdict(spec.run_options(**groups["run"])) if spec.run_options else {}
    if args.resume:                     # the run's own, saved at its start, unless given now
        run_options = {k: v for k, v in run_options.items() if k in groups["run"]}
    out = model_directory(args, spec, file, log)
    if args.resume:
        _check_resume(args, options, file, spec, Path(out))
    else:
        data_cfg = _checked(spec, options, groups)
    device = args.device or file.get("device") or "cpu"
    if launch.wanted(args):
        launch.check(args, device)
        recipe.check_start(Path(out), args.resume)     # at once, not from the processes
        if not args.resume:            # refused here, before the processes start (seconds)
            from rnnkit.tasks.common import device_of
            from rnnkit.train.config import check_precision

            check_precision(groups["train"].get("precision", "fp32"), device_of(device))
        if not args.out and not file.get("out"):      # every process must write to the same
            args.argv += ["--out", out]
        os.environ[COMMAND_ENV] = recorded_command(args.argv)     # for the processes
        try:
            return launch.launch(args, device, out)
        finally:
            del os.environ[COMMAND_ENV]
    common = dict(device=device, log=log, **run_options)
    command = recorded_command(args.argv)
    if args.resume:
        budget = {k: v for k, v in groups["train"].items()
                  if recipe.TRAIN_FIELDS[k].metadata.get("resume")}
        summary = recipe.train(spec, None, None, None, out, resume=True,
                               train_overrides=budget, command=command, **common)
    else:
        summary = recipe.train(spec, data_cfg, groups["model"], groups["train"], out,
                               command=command, **common)
    if args.json and distributed.is_writer_process():
        print(json.dumps(summary, indent=2))
    if summary["reason"] == "interrupted":          # 130 for Ctrl-C, 143 for SIGTERM
        return 128 + signal.Signals[summary.get("signal", "SIGINT")]
    return 0
