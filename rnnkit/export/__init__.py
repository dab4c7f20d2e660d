"""``rnnkit export``: a trained model as ONNX graphs or ``torch.export`` programs.

What is written (``OUT`` a folder; see ``docs/export.md``)::

    OUT/export.json          metadata: task, graphs with their inputs/outputs and shapes,
                             states per layer, special ids, vocabulary files, the model's
                             config.json, the rnnkit version, the command that made it
    OUT/<graph>.onnx         --format onnx (opset 18+, one self-contained file each)
    OUT/<graph>.pt2          --format torch-export (``torch.export.save``; for torch users,
                             rnnkit itself never loads it)
    OUT/tokenizer.json …     the model's tokenizer / label files, copied

Graphs per task: language model ``step`` and ``sequence`` (a conditioned one also
``initial_state``); classifier ``classifier``; tagger ``tagger``; translator ``encoder``
and ``decoder_step`` (see :mod:`rnnkit.export.graphs`).

How — and why this way. The time axis must stay dynamic, and every cell must export,
including the cells with no ONNX operator (peepholes, GRU with the reset before the
product, layer-normalised, minGRU/minLSTM, IndRNN, a user's own cell). So nothing here
maps a layer to ONNX's ``LSTM``/``GRU`` operators: a whole sequence is the cells' own
``step_forward`` (the one forward per cell) inside ``torch``'s ``scan`` higher-order
operator, captured by ``torch.export`` with dynamic dimensions (``torch.export.Dim``)
and converted by the dynamo-based ONNX exporter (``torch.onnx.export(..., dynamo=True)``,
onnxscript), which in torch 2.13 turns ``scan`` into an ONNX ``Scan`` whose body is the
step's graph. Of torch 2.13's choices:

- TorchScript-based export (``dynamo=False``) with a scripted loop would need every
  cell's Python to be TorchScript-compatible (user cells are not) and is deprecated;
- a Python ``for`` loop under ``torch.export`` unrolls to the example's length: the graph
  would only work at that T;
- ``torch.export`` with ``scan`` gives one program for both formats: the same program is
  saved as ``.pt2`` and converted to ONNX, so the two formats cannot disagree.

Details that matter (each found the hard way with torch 2.13):

- ``scan`` needs the parameters not to require grad while exporting (its autograd path
  saves symbolic sizes that the ONNX exporter's decomposition cannot stack: "'SymInt'
  object has no attribute 'unsqueeze'"), so export runs on a copy of the model with
  ``requires_grad`` off (:func:`frozen_copy`);
- the body is handed to the ``scan`` operator itself (``scan_op``) with every tensor it
  reads as an explicit input, not through the ``scan`` front end, which first compiles
  the body with dynamo: that doubled the export time and adds nothing here;
- the exporter rebuilds its table of ONNX translations on every call (0.6 s); it is
  built once per process while rnnkit exports (:func:`_torchlib_once`);
- a padded step of a variable-length batch keeps its state by ``where(mask, new, old)``,
  which keeps rnnkit's exact-lengths invariant inside one static loop.

A one-step graph needs no loop: it is :meth:`rnnkit.layers.RecurrentStack.step`. Both
``scan_op`` and the translation table are torch internals (``torch._higher_order_ops``,
``torch.onnx._internal``); the tests export every cell, so a torch release that moves them
fails there first.
"""

from __future__ import annotations

import copy
import shlex
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

import rnnkit
from rnnkit.export.graphs import GRAPHS, Graph, graphs_of

FORMATS = ("onnx", "torch-export")
SUFFIX = {"onnx": ".onnx", "torch-export": ".pt2"}
METADATA = "export.json"
META_FORMAT = "rnnkit.export"
META_VERSION = 1
# Files copied beside the graphs when the model folder has them: its vocabularies
# (tokenizer.json, and hf_tokenizer.json for byte-level BPE) and its label lists.
VOCABULARY_FILES = (*(f"{folder}{name}" for folder in ("", "words/", "chars/", "source/",
                                                      "target/")
                      for name in ("tokenizer.json", "hf_tokenizer.json")),
                    "labels.json", "tags.json")
OPSET = 18


def load_for_export(directory: str | Path):
    """(task, model in eval mode, config.json) of a model directory, through the task's
    own loader (which checks the config against the weights)."""
    from rnnkit.checkpoint import read_config

    task = read_config(directory).get("task")
    if task == "lm":
        from rnnkit.tasks.lm import load_lm
        model, _, config = load_lm(directory)
    elif task == "conditioned_lm":
        from rnnkit.tasks.conditioned_lm import load_conditioned_lm
        model, _, config = load_conditioned_lm(directory)
    elif task == "classifier":
        from rnnkit.tasks.classifier import load_classifier
        model, _, config = load_classifier(directory)
    elif task == "tagger":
        from rnnkit.tasks.tagger import load_tagger
        model, _, _, config = load_tagger(directory)
    elif task == "translator":
        from rnnkit.tasks.translator import load_translator
        model, _, _, config = load_translator(directory)
    else:
        raise ValueError(f"{directory}: 'rnnkit export' exports {', '.join(sorted(GRAPHS))} "
                         f"models, this is a {task!r} model")
    if getattr(model, "direct", None) is not None:
        raise ValueError(f"{directory}: a language model with direct connections "
                         f"(--direct-size) cannot be exported yet; its graphs would need the "
                         f"hashed history as a state")
    return task, model, config


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` in eval mode with no parameter requiring grad (what ``scan``
    needs while exporting); ``model`` itself is not changed."""
    clone = copy.deepcopy(model).eval()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


def export_program(graph: Graph) -> torch.export.ExportedProgram:
    """``torch.export`` of one graph with its dynamic axes (``torch.export.Dim`` per axis
    name, shared between the inputs that carry it)."""
    from torch.utils._pytree import tree_flatten, tree_unflatten

    flat, spec = tree_flatten(graph.example)
    if len(flat) != len(graph.dynamic) or len(flat) != len(graph.inputs):
        raise AssertionError(f"graph {graph.name}: {len(flat)} inputs, "
                             f"{len(graph.dynamic)} dynamic specs, {len(graph.inputs)} names")
    dims: dict[str, torch.export.Dim] = {}

    def dim(name: str):
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1)
        return dims[name]

    dynamic = tree_unflatten([{k: dim(n) for k, n in d.items()} for d in graph.dynamic], spec)
    with torch.no_grad(), _quiet_exporter():
        return torch.export.export(graph.module, graph.example, dynamic_shapes=tuple(dynamic))


def convert(graph: Graph, program: torch.export.ExportedProgram, fmt: str):
    """What :func:`save_graph` writes: the program itself (torch-export), or its ONNX
    conversion with the specs' input and output names and axis names."""
    if fmt == "torch-export":
        return program
    with torch.no_grad(), _torchlib_once(), _quiet_exporter():
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=[i.name for i in graph.inputs],
            output_names=[o.name for o in graph.outputs], opset_version=OPSET,
            verbose=False)
    _name_axes(onnx_program.model.graph, graph)
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(onnx_program.model)     # unused constants onnxruntime warns of
    return onnx_program


@contextmanager
def _quiet_exporter():
    """The exporter's chatter (its progress lines, "torchvision is not installed", torch's
    own deprecation warnings) kept off rnnkit's output; its errors still raise."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


# ONNX files are protobufs, limited to 2 GiB: a graph whose weights take more is written
# with its weights in a second file beside it, ``<name>.onnx.data``.
ONNX_INLINE_BYTES = 1 << 30


def save_graph(converted, path: Path, fmt: str) -> list[str]:
    """Write one converted graph (see :func:`convert`) atomically -> the names written.

    ``.pt2`` and an ONNX file with its weights inside are each written to a temporary
    file renamed into place; a larger ONNX graph is written with its weights file into a
    temporary folder beside ``path``, then the weights and the graph are renamed into
    place, in that order."""
    from rnnkit.files import atomic_write

    if fmt == "torch-export":
        import io

        buffer = io.BytesIO()                   # torch.export.save wants a .pt2 name or a
        with _quiet_exporter():                 # buffer, and the temporary file has neither
            torch.export.save(converted, buffer)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
        return [path.name]
    program = converted.exported_program
    size = 0 if program is None else sum(t.numel() * t.element_size()
                                         for t in program.state_dict.values())
    if size <= ONNX_INLINE_BYTES:
        atomic_write(path, lambda tmp: converted.save(tmp, external_data=False))
        return [path.name]
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        try:
            converted.save(os.path.join(folder, path.name), external_data=True)
        except OSError as error:
            raise OSError(f"{path}: cannot write ({error.strerror or error})") from None
        data = path.name + ".data"
        os.replace(os.path.join(folder, data), path.parent / data)
        os.replace(os.path.join(folder, path.name), path)
    return [path.name, data]


_REGISTRIES: dict = {}


@contextmanager
def _torchlib_once():
    """Build the exporter's table of ONNX translations once per process, not once per
    graph (it takes about 0.6 s of each ``torch.onnx.export`` call in torch 2.13). rnnkit
    passes no custom translations, so the table is never changed and can be shared. Only
    while rnnkit exports; where torch's internals differ, nothing is changed."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
        original = ONNXRegistry.__dict__["from_torchlib"]
    except (ImportError, KeyError):
        yield
        return

    def cached(cls, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in _REGISTRIES:
            _REGISTRIES[key] = original.__func__(cls, *args, **kwargs)
        return _REGISTRIES[key]

    ONNXRegistry.from_torchlib = classmethod(cached)
    try:
        yield
    finally:
        ONNXRegistry.from_torchlib = original


def _name_axes(onnx_graph, graph: Graph) -> None:
    """Give the ONNX inputs' and outputs' dynamic axes the names of the specs ("T", "B",
    …) instead of the exporter's symbols ("s52")."""
    from torch.onnx._internal._lazy_import import onnx_ir as ir

    names: dict[str, str] = {}
    for value, spec in zip(onnx_graph.inputs, graph.inputs):
        for dim, axis in zip(value.shape or (), spec.shape):
            if isinstance(axis, str) and not isinstance(dim, int):
                names.setdefault(str(dim), axis)
    for value in [*onnx_graph.inputs, *onnx_graph.outputs]:
        if value.shape is not None:
            value.shape = ir.Shape([d if isinstance(d, int) else names.get(str(d), str(d))
                                    for d in value.shape])


def export_graphs(task: str, model: torch.nn.Module, out: str | Path,
                  fmt: str = "onnx") -> dict:
    """Export every graph of a model of ``task`` into the folder ``out`` (created):
    -> ``{graph name: {"file", "summary", "inputs", "outputs"}}`` (the metadata's
    "graphs"). ``model`` is not changed."""
    check_format(fmt)
    out = Path(out)
    graphs = graphs_of(task, frozen_copy(model))
    converted = []
    for graph in graphs:            # every graph converted before the first file is written
        try:
            converted.append(convert(graph, export_program(graph), fmt))
        except (ValueError, OSError):
            raise
        except Exception as error:   # the exporter's own failure, e.g. an untraceable cell
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"export: the {graph.name!r} graph could not be exported "
                             f"({type(error).__name__}: {first})") from None
    described = {}
    for graph, done in zip(graphs, converted):
        files = save_graph(done, out / f"{graph.name}{SUFFIX[fmt]}", fmt)
        described[graph.name] = {"file": files[0], **({"weights": files[1]} if files[1:]
                                                      else {}),
                                 "summary": graph.summary,
                                 "inputs": [i.to_dict() for i in graph.inputs],
                                 "outputs": [o.to_dict() for o in graph.outputs]}
    return described


def check_format(fmt: str) -> None:
    """Raise ValueError naming ``--format`` for a format not in :data:`FORMATS`."""
    if fmt not in FORMATS:
        raise ValueError(f"--format: expected one of {list(FORMATS)}, got {fmt!r}")


def check_out(out: str | Path, force: bool = False) -> Path:
    """The output folder: refused if it is a file, or a folder that is not empty (unless
    ``force``)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"--out: {out} exists and is not empty; choose another folder or "
                         f"pass --force to overwrite the files an export writes")
    return out


def state_layout(task: str, model) -> list[dict]:
    """The recurrent states a step graph carries: name, layer, state name, shape; and for
    a language model whose cell does not start from zeros (a user's cell may declare
    another initial state), ``initial_value``: the (H,) row every stream starts from."""
    if task in ("lm", "conditioned_lm"):
        cfg = model.config
        states = []
        for k, layer in enumerate(model.layers):
            first = layer.cell.initial_state(1, cfg.hidden_size)
            for n, value in zip(layer.cell.state_names, first):
                states.append({"name": f"{n}_l{k}", "layer": k, "state": n,
                               "shape": [1, "B", cfg.hidden_size]})
                if bool((value != 0).any()):
                    states[-1]["initial_value"] = value[0].tolist()
        if cfg.condition:
            states.append({"name": "condition_vector", "state": "condition",
                           "shape": [1, "B", cfg.condition_dim]})
        return states
    if task == "translator":
        cfg = model.config
        return [{"name": n, "layers": cfg.decoder_layers, "state": n,
                 "shape": [cfg.decoder_layers, "B", cfg.hidden_size]}
                for n in model.decoder.cell.state_names]
    return []


def special_ids(task: str, config: dict) -> dict:
    """The ids every rnnkit vocabulary starts with, and what they mean for ``task``."""
    from rnnkit.special import LINE_END_ID, PAD_ID, UNK_ID

    ids = {"pad": PAD_ID, "unk": UNK_ID, "line_end": LINE_END_ID}
    if task in ("lm", "conditioned_lm"):
        ids["eos"] = None if config.get("level") == "char" else LINE_END_ID
    if task == "translator":
        ids["bos"] = ids["eos"] = LINE_END_ID
    return ids


INT8 = ("onnxruntime's dynamic quantisation: int8 weights for every MatMul/Gemm (the Scan "
        "bodies' too), activations quantised per call")


def quantize_graphs(out: Path, graphs: dict) -> None:
    """Replace each written ONNX graph by its int8 version (onnxruntime's
    ``quantize_dynamic``, QInt8 weights, sub-graphs included), atomically."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    from rnnkit.files import atomic_write

    for name, graph in graphs.items():
        if "weights" in graph:
            raise ValueError(f"--int8: the {name!r} graph keeps its weights in a separate "
                             f"file (over 1 GiB); quantise it with onnxruntime yourself")
        path = out / graph["file"]
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)          # its advice to pre-process the graph first
        try:
            atomic_write(path, lambda tmp, path=path: quantize_dynamic(
                str(path), tmp, weight_type=QuantType.QInt8,
                extra_options={"EnableSubgraph": True}))
        finally:
            root.setLevel(level)


def export_model(directory: str | Path, out: str | Path, fmt: str = "onnx", *,
                 force: bool = False, command: str | None = None, int8: bool = False) -> dict:
    """Export the model in ``directory`` to the folder ``out``; returns the metadata
    written to ``out/export.json``.

    Args:
        directory: a trained model folder (config.json, model.safetensors, tokenizers).
        out: the folder to write; refused if it exists and is not empty, unless ``force``.
        fmt: "onnx" or "torch-export".
        command: recorded in the metadata (default: the equivalent ``rnnkit export``).
        int8: (ONNX only) quantise the graphs' matrix products to int8 (:data:`INT8`).

    Raises:
        ValueError naming the file or option: not a model folder, a config that does not
        match its weights, an unsupported task or format, a non-empty ``out``.
    """
    from rnnkit.files import atomic_write, write_json

    check_format(fmt)
    if int8 and fmt != "onnx":
        raise ValueError(f"--int8: for --format onnx (a {fmt} program stays float; "
                         f"rnnkit's own --int8 runs generate, score and eval in int8)")
    out = check_out(out, force)
    directory = Path(directory)
    task, model, config = load_for_export(directory)
    graphs = export_graphs(task, model, out, fmt)
    if int8:
        quantize_graphs(out, graphs)
    copied = []
    for name in VOCABULARY_FILES:
        source = directory / name
        if source.is_file():
            atomic_write(out / name, lambda tmp, source=source: shutil.copyfile(source, tmp))
            copied.append(name)
    if command is None:
        command = shlex.join(["rnnkit", "export", str(directory), "--format", fmt,
                              "--out", str(out)] + (["--force"] if force else [])
                             + (["--int8"] if int8 else []))
    states = state_layout(task, model)
    meta = {
        "format": META_FORMAT, "version": META_VERSION, "rnnkit": rnnkit.__version__,
        "torch": torch.__version__, "command": command, "task": task,
        "export_format": fmt, "int8": INT8 if int8 else None, "graphs": graphs,
        "states": states,
        "initial_state": ("the initial_state graph" if "initial_state" in graphs
                          else "initial_value" if any("initial_value" in s for s in states)
                          else "zeros"),
        "special_ids": special_ids(task, config), "vocabulary_files": copied,
        "config": config,
    }
    write_json(out / METADATA, meta)
    return meta


__all__ = ["FORMATS", "METADATA", "export_model", "export_graphs", "graphs_of",
           "state_layout", "check_out", "check_format"]
