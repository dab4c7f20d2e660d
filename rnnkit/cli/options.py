"""The options of ``rnnkit train TASK``, made of declarations and never listed by hand.

A task's options are the fields of its data config, its model config, the cell registry's
options and :class:`rnnkit.train.TrainConfig` (plus its ``run_options``), each declared
once with :func:`rnnkit.config.option`: the flag, the help and the default shown come
from there, and from the task's own defaults (:class:`rnnkit.tasks.recipe.TaskSpec`).
Every option is also a key of a TOML ``--config`` file, under its field name or its flag's
name with ``_`` (``hidden_size`` or ``hidden``); the command line wins over the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import tomllib
from dataclasses import dataclass

from rnnkit.config import declared, field_default

GROUPS = {"data": "data", "model": "model", "cell": "cell options (given ones only)",
          "train": "training", "run": "run"}
TYPES = {"int": int, "float": float, "str": str}
MISSING = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """One option: the field ``key`` of group ``group``, set by ``flag``."""

    key: str
    group: str              # "data" | "model" | "cell" | "train" | "run"
    flag: str
    kind: str               # "bool" | "int" | "float" | "str" | "ints"
    help: str
    default: object = None  # a bool's default: its flag sets the opposite

    @property
    def alias(self) -> str:
        """The flag's name as a config-file key: ``hidden``, ``no_progress``."""
        return self.flag.lstrip("-").replace("-", "_")

    def from_alias(self, value):
        """A config-file value given under :attr:`alias` as the field's value."""
        negated = self.kind == "bool" and self.default is True and self.alias != self.key
        return (not value) if negated and isinstance(value, bool) else value


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None


def shown(value) -> str:
    """A default as ``--help`` writes it: ``0.002``, ``20``, ``2000,10000``."""
    if isinstance(value, float):
        return f"{value:g}"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def default_text(spec, key: str, default) -> str:
    """" (default …)" for ``--help``: the task's default of ``key``, or the declared one;
    a default that depends on a data field is given for each of its values."""
    fixed = {**spec.model_defaults, **spec.train_defaults}.get(key, default)
    parts, covered = [], False
    for field_name, table in spec.defaults_by:
        values = {}
        for value, defaults in table.items():
            if key in defaults:
                values.setdefault(shown(defaults[key]), []).append(value)
        flag = "--" + field_name.replace("_", "-")
        for value_text, when in values.items():
            parts.append(f"{value_text} for {flag} {', '.join(when)}" if when != [""]
                         else f"{value_text} without {flag}")
        choices = declared(_field(spec.data_config, field_name), "choices", ())
        covered |= bool(choices) and set(choices) <= {v for w in values.values() for v in w}
    if not covered and fixed not in ("", (), None, MISSING) and not isinstance(fixed, bool):
        parts.insert(0, shown(fixed))
    return f" (default {'; '.join(parts)})" if parts else ""


def _field(cls, name: str):
    return {f.name: f for f in dataclasses.fields(cls)}[name]


def _kind(f: dataclasses.Field) -> str:
    declared_type = f.type if isinstance(f.type, str) else f.type.__name__
    return "ints" if declared_type.startswith("tuple") else declared_type


def field_options(cls, group: str, spec, skip=frozenset()) -> list[Option]:
    """The options of a config dataclass's declared fields (not those the data sets)."""
    options = []
    for f in dataclasses.fields(cls):
        default = field_default(f)
        if f.name in skip or declared(f, "derived") or default is MISSING:
            continue
        text = declared(f, "help", "")
        if declared(f, "choices"):
            text += f": {' | '.join(map(str, declared(f, 'choices')))}"
        if f.name == "cell":
            text = _cell_help()
        flag = declared(f, "flag") or _flag(f.name, default)
        options.append(Option(f.name, group, flag, _kind(f),
                              text + default_text(spec, f.name, default), default))
    return options


def _flag(name: str, default) -> str:
    """``--name``; ``--no-name`` for a bool that is true by default (the flag sets false)."""
    stem = name.replace("_", "-")
    return f"--no-{stem}" if default is True else f"--{stem}"


def _cell_help() -> str:
    from rnnkit.cells import cell_names

    return (f"a registered cell ({', '.join(cell_names())}) or package.module:Class, a cell "
            f"of your own")


def cell_options() -> list[Option]:
    """A flag for every option of the registered cells (read from the registry now)."""
    from rnnkit.cells.registry import OPTION_CHOICES, OPTION_HELP, all_options

    options = []
    for name, default in all_options().items():
        text = OPTION_HELP.get(name, "")
        if name in OPTION_CHOICES:
            text += f": {' | '.join(OPTION_CHOICES[name])}"
        kind = "bool" if isinstance(default, bool) else type(default).__name__
        flag = _flag(name, default)
        if kind != "bool":
            text += f" (default {shown(default)})"
        options.append(Option(name, "cell", flag, kind, text, default))
    return options


def task_options(spec) -> list[Option]:
    """Every option of ``rnnkit train TASK``, checked for clashes."""
    from rnnkit.train import TrainConfig

    options = (field_options(spec.data_config, "data", spec)
               + field_options(spec.model_config, "model", spec,
                               spec.not_options | {"cell_options"})
               + cell_options() + field_options(TrainConfig, "train", spec))
    if spec.run_options is not None:
        options += field_options(spec.run_options, "run", spec)
    for attribute in ("key", "flag"):
        names = [getattr(o, attribute) for o in options]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise RuntimeError(f"task {spec.name!r}: options declared twice: {clashes}")
    return options


def add_options(parser: argparse.ArgumentParser, options: list[Option]) -> None:
    """Add the options to ``parser``, in a section per group; none has a default, so that
    only those given reach the settings."""
    sections = {}
    for o in options:
        if o.group not in sections:
            sections[o.group] = parser.add_argument_group(GROUPS[o.group])
        section = sections[o.group]
        if o.kind == "bool":
            section.add_argument(o.flag, dest=o.key, action="store_const",
                                 const=not o.default, default=None, help=o.help)
        else:
            kind = _ints if o.kind == "ints" else TYPES[o.kind]
            section.add_argument(o.flag, dest=o.key, type=kind, default=None, help=o.help,
                                 metavar="NAME" if o.key == "cell" else o.alias.upper())


RUN_KEYS = ("out", "device")


def read_config(path: str | None, options: list[Option], command: str) -> dict:
    """The options of a TOML file, by field name (``cell_options`` as a table too)."""
    if not path:
        return {}
    try:
        with open(path, "rb") as f:
            raw = f.read()
        text = raw.decode("utf-8").removeprefix("\ufeff")     # a BOM is accepted, as in data
        config = tomllib.loads(text)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ValueError(f"{path}: line {line}: not UTF-8 text (byte {error.start})") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    by_name = {o.key: o for o in options} | {o.alias: o for o in options}
    unknown = sorted(set(config) - set(by_name) - {"cell_options", *RUN_KEYS})
    from rnnkit.cli.launch import FLAGS as LAUNCH_FLAGS

    for name in unknown:
        flag = "--" + name.replace("_", "-")
        if flag in LAUNCH_FLAGS:
            raise ValueError(f"{path}: {name}: a launch option, which starts the run's "
                             f"processes rather than setting the run; give {flag} on the "
                             f"command line")
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; see 'rnnkit {command} --help'")
    if "cell_options" in config and not isinstance(config["cell_options"], dict):
        raise ValueError(f"{path}: cell_options: expected a table of options, got "
                         f"{config['cell_options']!r}")
    values = {}
    for name, value in config.items():
        option = by_name.get(name)
        if option is None:
            values[name] = value
            continue
        value = option.from_alias(value) if name == option.alias else value
        _check_type(path, name, option.kind, value)
        values[option.key] = tuple(value) if option.kind == "ints" and \
            isinstance(value, list) else value
    return values


_TOML_TYPES = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,),
               "ints": (int, list, str)}
_TOML_NAMES = {"bool": "bool", "int": "int", "float": "float", "str": "str",
               "ints": "a list of ints"}


def _check_type(path, name: str, kind: str, value) -> None:
    """A config file's value of the option's type, else an error naming the file and key."""
    types = _TOML_TYPES.get(kind)
    if types is None:
        return
    ok = isinstance(value, types) and not (kind != "bool" and isinstance(value, bool))
    if ok and kind == "ints" and isinstance(value, list):
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ValueError(f"{path}: {name}: expected {_TOML_NAMES[kind]}, got {value!r}")


def settings(args, options: list[Option], file: dict) -> dict[str, dict]:
    """Config file < command line, split by group: {"data": {…}, "model": {…, cell_options},
    "train": {…}, "run": {…}} — only the options given."""
    given = {o.key: getattr(args, o.key) for o in options if getattr(args, o.key) is not None}
    values = {**file, **given}
    groups = {group: {} for group in GROUPS}
    for o in options:
        if o.key in values:
            groups[o.group][o.key] = values[o.key]
    cell = groups.pop("cell")
    if "cell_options" in file or cell:
        table = file.get("cell_options", {})
        if not isinstance(table, dict):
            raise ValueError(f"cell_options: expected a table of options, got {table!r}")
        groups["model"]["cell_options"] = {**table, **cell}
    return groups
