"""One recipe trains every task.

A task module declares what is its own in a :class:`TaskSpec` (its data and model configs,
its defaults, how it reads its data and builds its vocabularies — ``prepare`` — its model,
its metrics and output formats); :func:`train` does the rest, the same way for all:

1. the directory's lock is taken (:class:`rnnkit.runlock.RunLock`) and held to the end, so
   that one process at a time trains in it; a new run refuses a directory that holds a
   model (a start stopped before its first checkpoint is replaced); a resumed one reads
   ``run.json`` (a finished run trains nothing); temporary files a killed write left are
   removed;
2. the settings: the task's defaults, then what was given (the Python API and the CLI both
   come through here, so they share every default);
3. ``prepare``: read the splits, build (or, on resume, load) the vocabularies, encode;
4. the model config, then the run's files — vocabularies, then ``run.json`` — written once
   every input has been read and checked; a refused start leaves the directory as it
   found it (what it added removed, a folder it made too);
5. seed, model, the training loop (:class:`rnnkit.train.Trainer`), then the best weights
   reloaded and measured on the validation split, and the task's ``finish``.

A run directory holds ``run.json`` = {"task", "data", "model", "train"}: the settings a run
was started with (data paths absolute), so that ``resume`` needs nothing else, from any
working directory; also its "command", its finish options ("run") and, after a resume,
the budget it was given ("train" updated) and its command (in "resumed").

Under torchrun (:mod:`rnnkit.train.distributed`) process 0 does all of the above and tells
the others how its start went; they then read the run's settings and vocabularies from the
directory (which must be one all machines see), take their shares of the data, and train
with it; only process 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import socket
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

import torch

from rnnkit import checkpoint
from rnnkit.files import remove_stale_temporaries
from rnnkit.card import write_card
from rnnkit.cells.registry import named_by_file
from rnnkit.config import MAX_VOCAB, check_cell, declared, field_default
from rnnkit.runlock import RunLock, refuse_if_held
from rnnkit.tasks.pretrained import check_language_model
from rnnkit.tasks.common import absolute_paths, config_from_dict, device_of
from rnnkit.train import Trainer, TrainConfig, distributed
from rnnkit.train.config import check_precision
from rnnkit.train.metrics import require_tensorboard
from rnnkit.train.distributed import SINGLE, World
from rnnkit.train.state import exact_kernels

RUN = "run.json"
TRAIN_FIELDS = {f.name: f for f in fields(TrainConfig)}


@dataclass(frozen=True)
class Prepared:
    """What a task's ``prepare`` hands the recipe: its data read, encoded and ready."""

    sizes: dict                 # model config fields the data sets (vocabulary sizes, …)
    files: dict                 # a new run's files: {"words": tokenizer, "labels.json": {…}}
    config: dict                # config.json's entries besides "task" and "model"
    report: str                 # one log line about the data
    make_task: Callable         # (model, seed, device) -> the task the Trainer runs
    model_kwargs: dict = field(default_factory=dict)   # more arguments of the model class


@dataclass(frozen=True)
class TaskSpec:
    """A task's declaration: everything :func:`train` and the CLI need to know about it.

    ``prepare(data_cfg, model_options, out, *, resume, log) -> Prepared``; ``model(model
    config, **Prepared.model_kwargs)``; ``describe_model(model config) -> str``;
    ``finish(task, summary, train_cfg, log, **run options)`` runs after a finished run;
    ``evaluate(directory, path, **options) -> metrics`` and ``report(metrics, path) ->
    lines`` serve ``rnnkit eval``; ``predict(directory, path, **options) -> text or None``
    serves ``rnnkit predict``.
    """

    name: str                   # run.json's and config.json's "task"
    summary: str                # one line for ``rnnkit train --help``
    description: str            # a paragraph for ``rnnkit train NAME --help``
    data_config: type
    model_config: type
    model: Callable
    prepare: Callable
    describe_model: Callable
    model_defaults: Mapping = field(default_factory=dict)   # over the model config's own
    train_defaults: Mapping = field(default_factory=dict)   # over TrainConfig's own
    defaults_by: tuple = ()     # ((data field, {its value: {field: default}}), …)
    not_options: frozenset = frozenset()   # model config fields this task does not offer
    finish: Callable | None = None
    run_options: type | None = None        # a dataclass: the options of ``finish``
    default_out: str = ""       # the model directory when none is named
    evaluate: Callable | None = None
    report: Callable | None = None
    predict: Callable | None = None
    use: str = ""               # the command that uses a trained model
    init_from: Callable | None = None   # (model, Prepared, LM directory, log): --init-from

    @property
    def command(self) -> str:
        """Its name on the command line: ``rnnkit train conditioned-lm``."""
        return self.name.replace("_", "-")


# -- settings -------------------------------------------------------------------------------

def train_defaults(spec: TaskSpec, data_cfg) -> dict:
    """The task's training defaults for this data: its own, then those that depend on a
    data field (a language model's level)."""
    defaults = dict(spec.train_defaults)
    for key, table in spec.defaults_by:
        defaults.update(table.get(getattr(data_cfg, key), {}))
    return {k: v for k, v in defaults.items() if k in TRAIN_FIELDS}


def train_settings(spec: TaskSpec, data_cfg, train) -> TrainConfig:
    """The TrainConfig of a new run: the task's defaults, then what was given.

    ``train``: a dict of the fields given, or a TrainConfig — whose fields left at
    TrainConfig's own defaults take the task's (pass a dict to insist on one of those) —
    or None.
    """
    if isinstance(train, TrainConfig):
        train = {name: getattr(train, name) for name, f in TRAIN_FIELDS.items()
                 if getattr(train, name) != f.default}
    given = dict(train or {})
    unknown = sorted(set(given) - set(TRAIN_FIELDS))
    if unknown:
        raise ValueError(f"train options: unknown {unknown}")
    cfg = TrainConfig(**{**train_defaults(spec, data_cfg), **given})
    if cfg.init_from:
        if spec.init_from is None:
            takers = " and ".join(n for n, s in _tasks().items() if s.init_from is not None)
            raise ValueError(f"init_from: a {spec.name} model does not start from a language "
                             f"model ({takers} do)")
        check_language_model(cfg.init_from)
    return cfg


def _tasks() -> dict:
    from rnnkit.tasks import TASKS

    return TASKS


def model_settings(spec: TaskSpec, given: Mapping | None) -> dict:
    """The model options of a new run: the task's defaults, then what was given — checked
    at once, before any data is read: the model config is built with stand-ins for the
    sizes the data sets (each the largest allowed, so that no check of a given option fails
    for want of the data), and every error it raises is the given options' own."""
    options = {**spec.model_defaults, **(given or {})}
    cell = {f.name: field_default(f) for f in fields(spec.model_config)
            if f.name in ("cell", "cell_options")}
    cell.update({k: options[k] for k in cell if k in options})
    check_cell(SimpleNamespace(**cell))
    stand_ins = {f.name: MAX_VOCAB for f in fields(spec.model_config)
                 if declared(f, "derived") and f.type in (int, "int")}
    config_from_dict(spec.model_config, {**options, **stand_ins}, "model options")
    return options


# -- run files ------------------------------------------------------------------------------

def check_start(out: Path, resume: bool) -> None:
    """Refuse at once what :func:`train` would refuse about ``out`` before reading any data
    (no run to resume, a model there already, a process training in it); creates nothing.
    The launcher calls it before it starts the processes."""
    if resume and not out.is_dir():
        raise ValueError(f"{out}: no such run directory to resume")
    if not out.is_dir():
        return
    refuse_if_held(out)
    if resume:
        check_resumable(out)
    else:
        check_new_run(out, log=lambda text: None)


def check_new_run(out: Path, log=print) -> None:
    """Refuse to start a run in a directory that holds a model or a run already — except a
    run stopped before its first checkpoint (run.json and vocabularies, but no train state
    and no weights): that unfinished start is replaced, and said so."""
    taken = [n for n in (checkpoint.TRAIN_STATE, checkpoint.WEIGHTS, checkpoint.CONFIG, RUN,
                         "tokenizer.json") if (out / n).exists()]
    if taken and not unfinished_start(out):
        raise ValueError(f"{out}: holds a model or run already ({', '.join(taken)}); use "
                         f"--resume to continue it, or choose another --out")
    if taken:
        log(f"{out}: replacing an unfinished start (a run stopped before its first "
            f"checkpoint: {', '.join(taken)})")


def unfinished_start(out: Path) -> bool:
    """Whether ``out`` holds a run that was stopped before its first checkpoint: no train
    state, no weights, no config.json (only run.json and vocabulary files, if anything)."""
    return not any((out / n).exists() for n in (checkpoint.TRAIN_STATE, checkpoint.WEIGHTS,
                                                checkpoint.CONFIG))


def check_resumable(out: Path) -> None:
    """Refuse at once a ``--resume`` with nothing to resume, saying what to do instead."""
    if not (out / RUN).is_file():
        raise ValueError(f"{out}: no run to resume (no {RUN}); start a new run without "
                         f"--resume")
    if unfinished_start(out):
        raise ValueError(f"{out}: the run was stopped before its first checkpoint, so it "
                         f"has no checkpoint to resume yet; start it again without --resume "
                         f"(same --out) to restart it in place")


def save_run(out: Path, spec: TaskSpec, data_cfg, model_cfg, train_cfg: TrainConfig,
             files: dict, command: str | None = None, run_options: dict | None = None) -> None:
    """Start a run's directory: its vocabularies and lists (``files``), then ``run.json``
    (with the data config's paths made absolute, so the run resumes from anywhere, the
    ``command`` that started it, if given, and the options of the task's ``finish``, which
    a resume keeps unless it is given others)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, thing in files.items():
        if name.endswith(".json"):
            checkpoint.write_json(out / name, thing)
        else:
            thing.save(out / name)
    checkpoint.write_json(out / RUN, {"task": spec.name, "data": absolute_paths(data_cfg),
                                      "model": model_cfg.to_dict(),
                                      "train": asdict(train_cfg),
                                      **({"command": command} if command else {}),
                                      **({"run": run_options} if run_options else {})})


def record_resume(out: Path, train_cfg: TrainConfig, command: str | None,
                  run_options: dict) -> None:
    """Keep a resume whose train state has loaded in ``out``'s run.json: its budget and
    finish options (the next resume and :func:`finished` read them), and its command under
    "resumed" (the model card shows it after the start's). A resume refused before then
    leaves run.json as it was."""
    run = checkpoint.read_json(out / RUN)
    run["train"] = {**run.get("train", {}),
                    **{k: v for k, v in asdict(train_cfg).items()
                       if TRAIN_FIELDS[k].metadata.get("resume") == "budget"}}
    if run_options:
        run["run"] = run_options
    if command:
        run["resumed"] = [*run.get("resumed", []), command]
    checkpoint.write_json(out / RUN, run)


def read_run(out: Path, spec: TaskSpec, train_overrides: dict | None = None):
    """The settings of the run in ``out``: (data config, model options, train config), the
    train config updated with ``train_overrides`` (a new budget, say)."""
    run = checkpoint.read_json(out / RUN)
    if run.get("task") != spec.name:
        raise ValueError(f"{out / RUN}: a {run.get('task')!r} run, not a {spec.name!r} run")
    try:
        data_cfg = spec.data_config(**run["data"])
        model = dict(run["model"])
        train_cfg = TrainConfig(**{**run["train"], **(train_overrides or {})})
    except (KeyError, TypeError) as error:
        raise ValueError(f"{out / RUN}: not a run file rnnkit can resume ({error})") from None
    return data_cfg, _legacy(spec, model), train_cfg


def _legacy(spec: TaskSpec, model: dict) -> dict:
    """A model config dict of an older rnnkit in today's form (if the config says how)."""
    legacy = getattr(spec.model_config, "legacy_fields", None)
    return legacy(model) if legacy is not None and isinstance(model, dict) else model


# -- the recipe -----------------------------------------------------------------------------

def train(spec: TaskSpec, data_cfg, model_options: Mapping | None, train_cfg,
          out: str | Path, *, resume: bool = False, train_overrides: dict | None = None,
          device: str | None = "cpu", log=print, command: str | None = None,
          **run_options) -> dict:
    """Train a model of task ``spec`` into the directory ``out``.

    Args:
        data_cfg: the task's data config (None: its defaults); model_options: fields of
            its model config (the ones the data sets are ignored); train_cfg: see
            :func:`train_settings`.
        resume: continue the run in ``out`` from its last checkpoint with the settings it
            was started with (the three above are not used); ``train_overrides`` may
            change fields such as epochs, max_steps, max_minutes.
        run_options: the options of the task's ``finish`` (a language model's sample),
            kept in run.json; a resume keeps the run's own unless given others.
        command: the command line of this process: a new run keeps it in run.json for
            the model card (``README.md``, :mod:`rnnkit.card`) written when the run ends;
            in a distributed run every process's must be process 0's (launch options
            aside), or the start is refused.

    On CUDA, the run sets cuDNN's deterministic algorithms and cuBLAS's fixed workspace for
    the rest of the process (:func:`rnnkit.train.state.exact_kernels`: exact resume needs
    them).

    Returns:
        the loop's summary plus "valid" metrics of the best model; resuming a run whose
        budget is used up trains nothing and returns {"reason": "finished", "step", …}.

    The directory's lock (:class:`rnnkit.runlock.RunLock`) is held throughout: a second
    training or resume of the same directory is refused at once, naming the holder.

    Started by torchrun, the process joins the run's other processes (see the module
    docstring); ``device`` "cuda" is then the process's own GPU.
    """
    out = Path(out)
    requested = device_of(device)
    exact_kernels(requested)
    world, dev = distributed.join(requested, distributed.timeout())
    start = distributed.Start(world)
    finished = False                      # set just before a successful return
    try:
        if not world.writer:
            summary = _follow(spec, out, dev, world, resume=resume,
                              train_overrides=train_overrides, command=command, log=log)
            finished = True
            return summary
        before = {}
        try:
            check_start(out, resume)
            before = _snapshot(out)
            with RunLock(out):
                summary = _train_locked(spec, data_cfg, model_options, train_cfg, out, dev,
                                        before, start, resume=resume,
                                        train_overrides=train_overrides, log=log,
                                        command=command, **run_options)
                if (out / checkpoint.WEIGHTS).is_file():
                    write_card(out)
                finished = True
                return summary
        except BaseException as error:
            start.tell(error=error)               # the others may be waiting on the start
            raise
        finally:
            if before.get("absent"):
                _remove_empty(out, before["absent"])      # a refused start leaves no folder
    except RuntimeError as error:
        if distributed.is_lost_contact(error):
            raise distributed.lost_contact(error) from None
        raise
    finally:
        distributed.leave(world, finished=finished)


def _follow(spec: TaskSpec, out: Path, dev, world: World, *, resume: bool,
            train_overrides, command: str | None, log) -> dict:
    """:func:`train` in a process other than process 0: wait for process 0's start, then
    build the same task from the run directory and train this process's share."""
    start = world.await_start()
    if start.get("finished"):
        return start["finished"]
    world.answer_start(_cannot_follow(out, command, start, world.rank))
    # the first process of another machine than process 0's says where the run is seen
    said = log if world.local_rank == 0 else distributed.quiet
    here = os.environ.get("LOCAL_WORLD_SIZE", "1")
    said(f"{here} process(es) here joined a run of {world.size}; process 0, on "
         f"{start.get('host')}, prints its progress and writes {start.get('out')}")
    data_cfg, options, train_cfg = read_run(out, spec, train_overrides)
    prepared = spec.prepare(data_cfg, options, out, resume=True, log=distributed.quiet)
    with named_by_file(out / RUN):
        model_cfg = config_from_dict(spec.model_config, {**options, **prepared.sizes},
                                     str(out / RUN))
    torch.manual_seed(train_cfg.seed)
    model = spec.model(model_cfg, **prepared.model_kwargs).to(dev)
    task = _task_for(prepared, model, train_cfg.seed, dev, world)
    config = {"task": spec.name, "model": model_cfg.to_dict(), **prepared.config}
    summary = fit(task, train_cfg, out, config, resume=resume, log=distributed.quiet,
                  world=world)
    said(f"the run ended ({summary['reason']}) at step {summary['step']}")
    return summary


def _cannot_follow(out: Path, command: str | None, start: dict, rank: int) -> str | None:
    """Why process ``rank`` cannot follow process 0's start (None: it can): process 0's run
    directory must be this one (a folder every machine sees), and its command this
    process's own (the others read the run's settings from process 0's files)."""
    here = socket.gethostname()
    if not (out / RUN).is_file():
        return (f"--out {out}: process 0 (on {start['host']}) wrote the run's files into "
                f"{start['out']}, and {out / RUN} cannot be seen on {here}; --out must name "
                f"a folder every machine sees (a shared file system), the same on each")
    theirs = start.get("command")
    if command is None or theirs is None:
        return None
    mine, zeros = _run_arguments(command), _run_arguments(theirs)
    if mine == zeros:
        return None
    differences = "; ".join(
        f"{name} {mine.get(name, '(not given)')} in process {rank}'s, "
        f"{zeros.get(name, '(not given)')} in process 0's"
        for name in sorted(mine.keys() | zeros.keys()) if mine.get(name) != zeros.get(name))
    return (f"its command line differs from process 0's ({differences}); start the same "
            f"command on every machine")


def _run_arguments(command: str) -> dict[str, str]:
    """A recorded command's arguments that every machine must give alike, as {flag: value}
    ("(given)" for a flag without one; "the command" for the words before the first
    flag): those after ``rnnkit`` (not torchrun's), less the launch options, which are each
    machine's own (--nproc: its number of GPUs; --rdzv-endpoint: another name of the same
    host), and less --out (the run directory is compared as a folder, above)."""
    from rnnkit.cli.launch import without_launch_options

    argv = shlex.split(command)
    argv = without_launch_options(argv[argv.index("rnnkit") + 1:] if "rnnkit" in argv else argv)
    found = {"the command": " ".join(t for t in argv[:next(
        (k for k, t in enumerate(argv) if t.startswith("--")), len(argv))]), **_flags(argv)}
    found.pop("--out", None)
    return found


def _flags(words: list[str]) -> dict[str, str]:
    """The flags of a command's words with their values, ``--flag value`` and
    ``--flag=value`` alike ("(given)" for a flag without one)."""
    found = {}
    for k, token in enumerate(words):
        if token.startswith("--"):
            flag, eq, value = token.partition("=")
            has_value = not eq and k + 1 < len(words) and not words[k + 1].startswith("--")
            found[flag] = value if eq else (words[k + 1] if has_value else "(given)")
    return found


def _task_for(prepared: Prepared, model, seed: int, dev, world: World):
    """The task the Trainer runs; in a distributed run, with its share of the batches and
    the world its evaluation combines over."""
    task = prepared.make_task(model, seed, dev)
    if world.size > 1:
        shard = getattr(task.batches, "shard", None)
        if shard is None:
            raise ValueError(f"the batches of this task ({type(task.batches).__name__}) cannot "
                             f"be shared between processes (no shard method); train it in "
                             f"one process")
        task.world = world
        shard(world.rank, world.size)
    return task


def _train_locked(spec, data_cfg, model_options, train_cfg, out: Path, dev, before: dict,
                  start: distributed.Start, *, resume: bool, train_overrides, log, command,
                  **run_options) -> dict:
    """:func:`train`'s work, done while the directory's lock is held."""
    try:
        if resume:
            check_resumable(out)
            data_cfg, options, train_cfg = read_run(out, spec, train_overrides)
            run_options = {**checkpoint.read_json(out / RUN).get("run", {}), **run_options}
            _remove_stale_temporaries(out, log)
            done = finished(out, train_cfg)
            if done is not None:
                budget = [f.metadata.get("flag") or f"--{k.replace('_', '-')}"
                          for k, f in TRAIN_FIELDS.items()
                          if f.metadata.get("resume") == "budget"]
                log(f"{out}: the run is finished ({done['why']}); nothing to train. To train "
                    f"on, resume with a larger {', '.join(budget[:-1])} or {budget[-1]}")
                done = {key: value for key, value in done.items() if key != "why"}
                start.tell(finished=done)
                return done
            check_processes(out, start.world)
        else:
            check_new_run(out, log)
            _remove_stale_temporaries(out, log)
            if spec.run_options is not None:       # its defaults filled in: run.json's
                run_options = asdict(spec.run_options(**run_options))
            data_cfg = spec.data_config() if data_cfg is None else data_cfg
            options = model_settings(spec, model_options)
            train_cfg = train_settings(spec, data_cfg, train_cfg)
        check_precision(train_cfg.precision, dev)
        if train_cfg.tensorboard:
            require_tensorboard()
        prepared = spec.prepare(data_cfg, options, out, resume=resume, log=log)
        with named_by_file(out / RUN) if resume else nullcontext():
            model_cfg = config_from_dict(spec.model_config, {**options, **prepared.sizes},
                                         str(out / RUN) if resume else "model options")
        log(prepared.report)
        torch.manual_seed(train_cfg.seed)
        model = spec.model(model_cfg, **prepared.model_kwargs).to(dev)
        task = _task_for(prepared, model, train_cfg.seed, dev, start.world)
        if not resume:
            if train_cfg.init_from:
                spec.init_from(model, prepared, train_cfg.init_from, log)
            save_run(out, spec, data_cfg, model_cfg, train_cfg, prepared.files, command,
                     run_options)
        start.tell(out=str(out.resolve()), host=socket.gethostname(), command=command)
        start.agree()                       # the others see the run directory, same command
    except BaseException:
        if not resume:
            _restore(out, before)
        raise
    before.pop("absent", None)                        # the run exists now: keep its folder
    world = start.world
    where = f"on {dev}" if not world.backend else \
        f"on {world.size} process{'es' if world.size > 1 else ''} ({world.backend}, {dev.type})"
    log(f"model: {spec.describe_model(model_cfg)}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters, {where}")
    config = {"task": spec.name, "model": model_cfg.to_dict(), **prepared.config}
    summary = fit(task, train_cfg, out, config, resume=resume, log=log, world=world,
                  resumed=lambda: record_resume(out, train_cfg, command, run_options))
    if spec.finish is not None and summary["reason"] != "interrupted":
        spec.finish(task, summary, train_cfg, log, **run_options)
    return summary


# -- the run directory's state ---------------------------------------------------------------



def _snapshot(out: Path) -> dict:
    """What ``out`` holds before a start: {"names": its entries} or {"absent": the first
    missing folder of its path}."""
    if out.is_dir():
        return {"names": set(os.listdir(out))}
    missing = out
    while not missing.parent.exists() and missing.parent != missing:
        missing = missing.parent
    return {"absent": missing, "names": set()}


def _restore(out: Path, before: dict) -> None:
    """Undo a refused start: remove what it added to ``out`` (the lock file goes with the
    lock, and a folder that was not there with it: see :func:`train`)."""
    if not out.is_dir():
        return
    for name in set(os.listdir(out)) - before["names"]:
        path = out / name
        if name == ".lock":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _remove_empty(out: Path, top: Path) -> None:
    """Remove ``out`` and its parents up to ``top`` where they are empty."""
    path = out
    while True:
        try:
            path.rmdir()
        except OSError:
            return
        if path == top or path.parent == path:
            return
        path = path.parent


def _remove_stale_temporaries(out: Path, log) -> None:
    """Remove the temporary files a killed write left in the run directory (the lock is
    held, so no write of this run is in flight)."""
    stale = remove_stale_temporaries(out) if out.is_dir() else []
    if stale:
        log(f"{out}: removed {len(stale)} temporary file(s) left by an interrupted write")


def train_state_meta(out: Path) -> dict:
    """The JSON part of the train state in ``out`` (read from its header alone), or {} when
    it cannot be read (the loop then says why)."""
    try:
        from safetensors import safe_open

        with safe_open(str(out / checkpoint.TRAIN_STATE), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(checkpoint._META_KEY, "{}"))["meta"]
        return meta if isinstance(meta, dict) else {}
    except Exception:                 # noqa: BLE001 — unreadable: let the loop report it
        return {}


def check_processes(out: Path, world: World) -> None:
    """Refuse at once to resume a run with another number of processes than trained it
    (:func:`rnnkit.train.load_train_state` says why)."""
    saved = train_state_meta(out).get("processes", 1)
    if saved != world.size:
        machines, each = _layout(out)
        how = ("in one process (no --nproc, no torchrun)" if saved == 1 else
               f"with --nproc {saved} (or torchrun with {saved} processes in all)"
               if machines * each != saved or machines == 1 else
               f"as it was started, on {machines} machines with --nproc {each} each "
               f"(--nnodes {machines} --rdzv-endpoint HOST:PORT), or with torchrun with "
               f"{saved} processes in all")
        raise ValueError(f"{out}: the run was trained by {saved} process(es), and this resume "
                         f"has {world.size}; each process's data position, carried state and "
                         f"random streams are its own, so resume it {how}")


def _layout(out: Path) -> tuple[int, int]:
    """(machines, processes on each) of the command that started the run in ``out``, as
    run.json records it (``--nnodes``, ``--nproc`` or ``--nproc-per-node``, 1 each unless
    given; 0 for a value that is not a number)."""
    try:
        flags = _flags(shlex.split(checkpoint.read_json(out / RUN).get("command") or ""))
    except (OSError, ValueError, AttributeError):
        return 1, 1
    machines = flags.get("--nnodes", "1")                     # both launchers' defaults: 1
    each = flags.get("--nproc", flags.get("--nproc-per-node", "1"))
    return tuple(int(v) if v.isdigit() else 0 for v in (machines, each))


def finished(out: Path, train_cfg: TrainConfig) -> dict | None:
    """If the train state in ``out`` has used up ``train_cfg``'s budget (the loop's stop
    rules: epochs, the halving schedule, max_steps, max_minutes), a summary of the finished run with "why";
    else None (also when the train state cannot be read: the loop then says why)."""
    meta = train_state_meta(out)
    try:
        step, epoch = int(meta["step"]), int(meta["epoch"])
        elapsed = float(meta.get("elapsed") or 0.0)
    except Exception:                 # noqa: BLE001 — unreadable: let the loop report it
        return None
    if epoch >= train_cfg.epochs:
        why = f"{epoch} epochs done, --epochs {train_cfg.epochs}"
    elif (meta.get("schedule") or {}).get("converged"):
        why = "the halving schedule ended it: a second epoch short of --min-improvement"
    elif train_cfg.max_steps and step >= train_cfg.max_steps:
        why = f"step {step} of --max-steps {train_cfg.max_steps}"
    elif train_cfg.max_minutes and elapsed >= train_cfg.max_minutes * 60:
        why = f"{elapsed / 60:.1f} minutes of --max-minutes {train_cfg.max_minutes}"
    else:
        return None
    best = meta.get("best")
    return {"reason": "finished", "why": why, "step": step, "epoch": epoch,
            "best_valid_objective": math.inf if best is None else best,
            "minutes": elapsed / 60, "units": meta.get("units", 0)}


def fit(task, train_cfg: TrainConfig, out: Path, config: dict, *, resume: bool, log,
        world: World = SINGLE, resumed=None) -> dict:
    """Run the training loop (``resumed``: see :meth:`Trainer.fit`), then reload the best
    weights and add their validation metrics to the summary as "valid" (unless the run was
    interrupted); in a distributed run, every process does (process 0 says whether there
    are weights to reload)."""
    summary = Trainer(task, train_cfg, out, config, log=log, world=world).fit(
        resume=resume, resumed=resumed)
    if summary["reason"] == "interrupted":      # all processes alike: nothing more to agree
        return summary                         # on (a peer may be gone once it has saved)
    if world.broadcast((out / checkpoint.WEIGHTS).is_file()):        # written by process 0
        checkpoint.load_weights(out, task.model)
        summary["valid"] = task.evaluate("valid")
        log(f"best model: valid {task.describe(summary['valid'])}")
    return summary


def load_model(spec: TaskSpec, directory: str | Path, config: dict, device: str | None = "cpu",
               sizes: dict | None = None, **model_kwargs):
    """The model of a trained directory of task ``spec``, in eval mode on ``device``.

    ``config``: the directory's config.json (``checkpoint.read_config``); ``sizes``: model
    config fields its vocabularies give (``{"vocab_size": …}``), checked against the model's;
    ``model_kwargs``: more arguments of the model class.
    """
    where = Path(directory) / checkpoint.CONFIG
    if not isinstance(config.get("model"), dict):
        raise ValueError(f"{where}: no valid model configuration")
    with named_by_file(where):
        model_cfg = config_from_dict(spec.model_config, _legacy(spec, config["model"]),
                                     str(where))
    for key, size in (sizes or {}).items():
        if getattr(model_cfg, key) != size:
            raise ValueError(f"{directory}: the model's vocabulary sizes do not match its "
                             f"tokenizers ({key} {getattr(model_cfg, key)}, tokenizer {size})")
    # The tensors config.json implies, found on the meta device (nothing is allocated) and
    # matched with the header of the weights file before the model is built for real.
    from rnnkit.config import MAX_PARAMETERS
    try:
        with torch.device("meta"):
            implied = {k: tuple(v.shape) for k, v in
                       spec.model(model_cfg, **model_kwargs).state_dict().items()}
    except (NotImplementedError, RuntimeError):     # a custom cell that needs real tensors
        implied = None                              # (its sizes are bounded by the config)
    implied_count = sum(math.prod(shape) for shape in (implied or {}).values())
    if implied_count > MAX_PARAMETERS:
        raise ValueError(f"{where}: the model would have {implied_count:,} parameters, more "
                         f"than the {MAX_PARAMETERS:,} rnnkit loads")
    weights = Path(directory) / checkpoint.WEIGHTS
    stored = None
    try:
        if implied is None:
            raise LookupError
        from safetensors import safe_open
        with safe_open(str(weights), "pt") as f:
            stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            header = json.loads((f.metadata() or {}).get(checkpoint._META_KEY, "{}"))
        for name, target in dict(header.get("aliases", {})).items():
            stored[name] = stored[target]
    except Exception:       # unreadable or not rnnkit's: load_weights says what is wrong
        stored = None
    if stored is not None and stored != implied:
        stored_count = sum(math.prod(shape) for shape in stored.values())
        first = next(k for k in list(implied) + list(stored) if implied.get(k) != stored.get(k))
        raise ValueError(
            f"{weights}: the weights do not match the model in {where}: tensor {first!r} is "
            f"{'absent' if first not in stored else f'shape {list(stored[first])}'} in the "
            f"file but {'absent' if first not in implied else f'shape {list(implied[first])}'}"
            f" for the configuration ({stored_count:,} parameters in the file, "
            f"{implied_count:,} implied by the configuration)")
    model = spec.model(model_cfg, **model_kwargs)
    checkpoint.load_weights(directory, model)
    return model.to(device_of(device)).eval()
