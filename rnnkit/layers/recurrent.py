"""Recurrent layers: one direction, deep stacks, bidirectional — drop-ins for ``torch.nn``.

``rnnkit.RNN``, ``rnnkit.LSTM`` and ``rnnkit.GRU`` take the constructor arguments and the
call signature of their ``torch.nn`` namesakes, hold the same parameters under the same
names (``weight_ih_l{k}[_reverse]``, ``weight_hh_…``, ``bias_ih_…``, ``bias_hh_…``; gate
order LSTM i,f,g,o and GRU r,z,n); other cells declare theirs
(:meth:`rnnkit.cells.Cell.param_shapes`: IndRNN's ``weight_hh`` is a vector, minGRU and
minLSTM have neither ``weight_hh`` nor ``bias_hh``). The layers add rnnkit's own options:

- ``nonlinearity`` "tanh" | "relu" | "sigmoid" (RNN), ``peephole`` (LSTM),
  ``reset_after`` (GRU; True is the PyTorch form, False Cho et al.'s);
- ``RecurrentStack(..., cell="name", cell_options={...})`` runs any cell of the registry
  (:mod:`rnnkit.cells.registry`) or a ``"package.module:Class"`` cell of your own;
- ``backend``: "bptt" (rnnkit's hand-derived BPTT engine), "native" (PyTorch's fused
  kernels, standard cells only), "autograd" (the engine's forward under autograd — the
  reference), "scan" (the parallel scan of :mod:`rnnkit.scan`, for min_gru and min_lstm),
  "triton" (the fused Triton kernels of :mod:`rnnkit.kernels`, for the LSTM, the GRU and
  the tanh RNN on a CUDA device, dense batches; an optional extra, never chosen by
  "auto") or "auto" (see :data:`AUTO_BACKEND`);
- ``init`` "uniform" | "orthogonal" | "identity" (default: the cell's own, "uniform" but
  for the IRNN) and ``forget_bias`` (see ``layers.init``);
- ``weight_dropout``: DropConnect on the recurrent weights in training (AWD-LSTM's
  weight drop, without patching any module; refused for a cell without one);
- ``forward(input, hx=None, lengths=None)``: ``lengths`` gives per-example lengths of a
  padded batch; outputs past an example's length are zero and its final state is the state
  at its own last token.

Per layer, the input runs through the cell in each direction (the reverse direction from
each example's own last token); directions are concatenated, and dropout is applied between
layers when training. ``initial_state(B)`` and ``step(x, state)`` run the stack one time
step at a time (generation, decoders, export).

Pickling: a layer saved whole with ``torch.save`` loads with ``torch.load(weights_only=True)``
under ``torch.serialization.safe_globals([rnnkit.LSTM])`` (its own class, nothing else) for
every registered cell: the pickle holds the cell's registry name and options, not the cell.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit import compiled
from rnnkit.autograd import recurrent_autograd, recurrent_bptt
from rnnkit.bptt import input_projection
from rnnkit.cells import Cell, is_user_cell, make_cell
from rnnkit.cells.base import engine_params
from rnnkit.layers.init import check_init, init_layer, set_forget_bias
from rnnkit.native import native_stack
from rnnkit.scan import recurrent_scan, supports as scan_supports

BACKENDS = ("auto", "bptt", "native", "autograd", "scan", "triton")
# "auto" picks PyTorch's fused kernel where one computes the cell, rnnkit's engine elsewhere
# — and the engine on the CPU where its compiled loop beats the kernel (rnnkit.compiled.
# prefers: the GRU and the Elman RNN).
AUTO_BACKEND = {True: "native", False: "bptt"}


def _recurrent_triton(*args, **kwargs):
    """:func:`rnnkit.kernels.recurrent_triton`, Triton imported on first use."""
    from rnnkit.kernels import recurrent_triton

    return recurrent_triton(*args, **kwargs)


TRITON_MODES = ("LSTM", "GRU", "RNN_TANH")     # the cells rnnkit.kernels has steps for


def _check_triton(cell: Cell) -> None:
    """Refuse the "triton" backend for a cell its kernels do not compute."""
    if cell.native_mode not in TRITON_MODES:
        raise ValueError(f"backend: 'triton' has kernels for the LSTM, the GRU (reset after) "
                         f"and the tanh RNN, not {cell!r}; use 'auto'")


def _triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device`` (else a layer built for them runs
    its cell on the "bptt" engine: the same math, so that a model trained with them loads
    and runs anywhere)."""
    from rnnkit import kernels

    return kernels.available(device.type)[0]


_ENGINES = {"bptt": recurrent_bptt, "autograd": recurrent_autograd, "scan": recurrent_scan,
            "triton": _recurrent_triton}


def _shape(x) -> str:
    return "(" + ", ".join(str(s) for s in x.shape) + ")"


class RecurrentStack(nn.Module):
    """A deep, optionally bidirectional recurrent network over any rnnkit cell.

    Use the subclasses :class:`RNN`, :class:`LSTM` and :class:`GRU`; their docstrings list
    the arguments. ``RecurrentStack(input_size, hidden_size, ..., cell="lstm_peephole")``
    runs any registered cell (``cell_options`` its options, e.g. ``{"peephole": True}`` for
    ``"lstm"``); ``cell="package.module:Class"`` or ``cell=MyCell()`` a cell of your own
    (see ``docs/custom_cell.md``) with the "bptt" or "autograd" backend. Inputs and outputs
    follow ``torch.nn.LSTM`` (L = num_layers, D = 2 if bidirectional else 1):

    Inputs: ``input, hx=None, lengths=None``
        - input: (T, B, I), or (B, T, I) with ``batch_first``, or unbatched (T, I), or a
          ``PackedSequence``;
        - hx: (L*D, B, H) initial hidden state (LSTM: a tuple ``(h_0, c_0)``), zeros if None;
        - lengths: (B,) per-example lengths in [1, T] of a padded batch (list or tensor).

    Outputs: ``output, h_n`` (LSTM: ``output, (h_n, c_n)``)
        - output: (T, B, D*H) (batch_first: (B, T, D*H)) — the last layer's hidden states,
          zero past each example's length; a ``PackedSequence`` for a packed input;
        - h_n (and c_n): (L*D, B, H) final states, each example's at its own last token.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 cell: Cell | str = "lstm", cell_options: dict | None = None,
                 backend: str = "auto", init: str | None = None,
                 forget_bias: float | None = None, weight_dropout: float = 0.0):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: expected a positive int, got {value!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout <= 1):
            raise ValueError(f"dropout: expected a number in [0, 1], got {dropout!r}")
        if not (isinstance(weight_dropout, (int, float)) and 0 <= weight_dropout < 1):
            raise ValueError(f"weight_dropout: expected a number in [0, 1), got {weight_dropout!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend: expected one of {list(BACKENDS)}, got {backend!r}")
        if isinstance(cell, str):
            self.cell_name, self.cell_options = cell, dict(cell_options or {})
            self.cell = make_cell(cell, **self.cell_options)
        elif isinstance(cell, Cell) and not cell_options:
            self.cell_name, self.cell_options, self.cell = None, {}, cell
        else:
            raise ValueError(f"cell: expected a registered name or an rnnkit.cells.Cell "
                             f"(cell_options only with a name), got {type(cell).__name__}")
        init = self.cell.default_init if init is None else init
        check_init(init)
        if backend == "native" and self.cell.native_mode is None:
            raise ValueError(f"backend: 'native' has no PyTorch kernel for the cell "
                             f"{self.cell!r}; use 'bptt', 'autograd' or 'auto'")
        if backend == "scan" and not scan_supports(self.cell):
            raise ValueError(f"backend: 'scan' trains cells whose state is linear in the "
                             f"previous one (min_gru, min_lstm, without zoneout or recurrent "
                             f"dropout), not {self.cell!r}; use 'bptt', 'autograd' or 'auto'")
        if backend == "triton":
            _check_triton(self.cell)
        if forget_bias is not None and ("forget" not in self.cell.gate_names or not bias
                                        or not self.cell.biases_shift_gates):
            raise ValueError(f"forget_bias: only for a cell with a forget gate whose biases "
                             f"reach it (and bias=True), got {self.cell!r}")
        if weight_dropout and self.cell.weight_hh_shape(hidden_size) is None:
            raise ValueError(f"weight_dropout: the cell {self.cell!r} has no recurrent weight "
                             f"to drop")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional = bidirectional
        self.weight_dropout = float(weight_dropout)
        self.backend, self.init, self.forget_bias = backend, init, forget_bias
        self.num_directions = 2 if bidirectional else 1
        kw = {"device": device, "dtype": dtype}
        H = hidden_size
        # per layer-direction, in torch order: {name in the cell's param_shapes: full name}
        self._param_names: list[dict[str, str]] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else H * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                names = {}
                for base, shape in self.cell.param_shapes(layer_input, H, bias).items():
                    self.register_parameter(base + suffix, nn.Parameter(torch.empty(shape, **kw)))
                    names[base] = base + suffix
                self._param_names.append(names)
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------

    def _params(self, index: int, for_forward: bool = False):
        """(weight_ih, weight_hh, bias_ih, bias_hh, extra) of layer-direction ``index``
        (None for each of the four the cell or layer does not have).

        ``for_forward`` with ``weight_dropout`` in training gives ``weight_hh`` with
        DropConnect applied (Wan et al. 2013; AWD-LSTM's weight drop): a fresh mask per
        forward call, the same for every time step; the parameter itself is never modified.
        """
        p = {base: getattr(self, name) for base, name in self._param_names[index].items()}
        if for_forward and self.weight_dropout and self.training:
            p["weight_hh"] = F.dropout(p["weight_hh"], self.weight_dropout, training=True)
        return engine_params(p)

    def layer_params(self, index: int):
        """(weight_ih, weight_hh, bias_ih, bias_hh, extra) of layer-direction ``index``
        (``layer * D + direction``; None for each of the four the cell or layer does not
        have): the parameters themselves, as a step in eval mode reads them."""
        return self._params(index)

    def reset_parameters(self) -> None:
        """Initialise every parameter by ``self.init`` (and ``self.forget_bias``)."""
        for index in range(len(self._param_names)):
            w_ih, w_hh, b_ih, b_hh, extra = self._params(index)
            biases = [b for b in (b_ih, b_hh) if b is not None]
            init_layer(self.init, self.hidden_size, w_ih, w_hh, biases, list(extra),
                       weight_hh_uniform=self.cell.weight_hh_uniform)
            with torch.no_grad():
                for base, value in self.cell.extra_param_values.items():   # LN gains = 1, …
                    getattr(self, self._param_names[index][base]).fill_(value)
            if self.forget_bias is not None:
                set_forget_bias(self.forget_bias, self.hidden_size,
                                self.cell.gate_names.index("forget"), b_ih, b_hh)

    # -- pickling: the cell travels as its registry name and options ----------------------

    def __getstate__(self):
        state = self.__dict__.copy()
        if self.cell_name is not None and not is_user_cell(self.cell_name):
            del state["cell"]               # rebuilt from the registry on load
        return state

    def __setstate__(self, state):
        if "cell" not in state:
            state["cell"] = _registered_cell(state["cell_name"], state["cell_options"])
        super().__setstate__(state)

    def flatten_parameters(self) -> None:
        """Accepted for drop-in compatibility with ``torch.nn``; parameters stay as they are."""

    def resolved_backend(self, device: torch.device | str | None = None) -> str:
        """The backend a forward call on ``device`` (None: the parameters') will use:
        "bptt", "native", "autograd", "scan" or "triton"."""
        weight = getattr(self, self._param_names[0]["weight_ih"])
        device = torch.device(weight.device if device is None else device)
        if self.backend == "triton":
            return "triton" if _triton_runs_on(device) else "bptt"
        if self.backend != "auto":
            return self.backend
        if (device.type == "cpu" and weight.dtype in (torch.float32, torch.float64)
                and not torch.is_autocast_enabled("cpu") and compiled.prefers(self.cell)):
            return "bptt"               # the compiled loop, where it runs (float32/64)
        return AUTO_BACKEND[self.cell.native_mode is not None]

    # -- one step at a time ------------------------------------------------------------------

    def initial_state(self, batch_size: int):
        """The state before the first step for ``batch_size`` sequences, in the format of
        ``hx``: (L*D, B, H), or a tuple of such for a cell with several states (LSTM:
        ``(h_0, c_0)``). The cell declares it (zeros for every built-in cell)."""
        p = getattr(self, self._param_names[0]["weight_ih"])
        per_layer = [self.cell.initial_state(batch_size, self.hidden_size, dtype=p.dtype,
                                             device=p.device)
                     for _ in range(self.num_layers * self.num_directions)]
        return self._pack_state(tuple(torch.stack(s) for s in zip(*per_layer)))

    def step(self, x: Tensor, state=None):
        """One time step through every layer, as ``forward`` computes it in eval mode (no
        dropout): x (B, I), state as ``hx`` (None: :meth:`initial_state`) -> output (B, H)
        of the last layer, the new state (L, B, H) (a tuple for several states).

        The inference path of generation and decoders: each layer is one input product and
        the cell's ``step_forward``. One direction only (a bidirectional stack needs the
        whole sequence).
        """
        if self.bidirectional:
            raise ValueError("step: a bidirectional stack needs the whole sequence; "
                             "call it on the sequence instead")
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"step: expected x of shape (B, {self.input_size}), got "
                             f"{_shape(x) if isinstance(x, Tensor) else type(x).__name__}")
        self._check_feature_size(x, "x")
        states = self._initial_state(state, x.shape[0], x, False)      # (L, B, H) each
        new = []
        for layer in range(self.num_layers):
            w_ih, w_hh, b_ih, b_hh, extra = self._params(layer)
            xw = input_projection(self.cell, x, w_ih, b_ih, b_hh)        # (B, G*H)
            s, _ = self.cell.step_forward(xw, tuple(t[layer] for t in states), w_hh,
                                          None if self.cell.fold_bias_hh else b_hh, *extra)
            new.append(s)
            x = s[0]
        return x, self._pack_state(tuple(torch.stack(s) for s in zip(*new)))

    # -- forward ---------------------------------------------------------------------------

    def forward(self, input, hx=None, lengths=None):
        packed_in = isinstance(input, PackedSequence)
        if packed_in:
            if lengths is not None:
                raise ValueError("lengths: a PackedSequence carries its own lengths; "
                                 "pass lengths only with a padded tensor")
            data, batch_sizes = input.data, input.batch_sizes
            sorted_idx, unsorted_idx = input.sorted_indices, input.unsorted_indices
            self._check_feature_size(data, "input.data")
            B, unbatched = int(batch_sizes[0]), False
        else:
            x, unbatched = self._time_major(input, lengths)
            T, B = x.shape[0], x.shape[1]
            if lengths is None:
                data, batch_sizes, sorted_idx, unsorted_idx = x, None, None, None
            else:
                lengths = self._check_lengths(lengths, T, B)
                packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
                data, batch_sizes = packed.data, packed.batch_sizes
                sorted_idx, unsorted_idx = packed.sorted_indices, packed.unsorted_indices
        state0 = self._initial_state(hx, B, data, unbatched)
        if sorted_idx is not None:
            state0 = tuple(s.index_select(1, sorted_idx) for s in state0)

        backend = self.resolved_backend(data.device)
        if backend == "native":
            flat = [w for index in range(len(self._param_names))
                    for w in self._params(index, True)[:4] if w is not None]
            out, final = native_stack(self.cell.native_mode, data, batch_sizes, state0, flat,
                                      self.bias, self.num_layers, self.dropout, self.training,
                                      self.bidirectional)
        else:
            sizes = [B] * data.shape[0] if batch_sizes is None else batch_sizes.tolist()
            flat = data.reshape(-1, data.shape[-1]) if batch_sizes is None else data
            out, final = self._stack(_ENGINES[backend], flat, sizes, state0)
            if batch_sizes is None:
                out = out.view(data.shape[0], B, -1)

        if unsorted_idx is not None:
            final = tuple(s.index_select(1, unsorted_idx) for s in final)
        if packed_in:
            output = PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx)
        elif batch_sizes is not None:
            output, _ = pad_packed_sequence(
                PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx),
                batch_first=self.batch_first, total_length=T)
        else:
            output = out.transpose(0, 1) if self.batch_first else out
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            final = tuple(s.squeeze(1) for s in final)
        return output, self._pack_state(final)

    def _stack(self, engine, x: Tensor, batch_sizes: list[int], state0):
        """Layers × directions through ``engine`` on packed data: (N, I) -> (N, D*H)."""
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                w_ih, w_hh, b_ih, b_hh, extra = self._params(index, True)
                cell = self.cell.for_mode(self.training)       # fresh noise masks, if any
                out, final = engine(cell, x, batch_sizes, tuple(s[index] for s in state0),
                                    w_ih, w_hh, b_ih, b_hh, extra, reverse=direction == 1)
                outs.append(out)
                finals.append(final)
            x = outs[0] if len(outs) == 1 else torch.cat(outs, 1)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, tuple(torch.stack([f[k] for f in finals]) for k in range(self.cell.num_states))

    # -- input checks and conversions ------------------------------------------------------

    def _check_feature_size(self, x: Tensor, name: str) -> None:
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{name}: expected last dimension input_size={self.input_size}, "
                             f"got shape {_shape(x)}")

    def _time_major(self, input, lengths) -> tuple[Tensor, bool]:
        if not isinstance(input, Tensor):
            raise ValueError(f"input: expected a Tensor or PackedSequence, got "
                             f"{type(input).__name__}")
        layout = "(B, T, I)" if self.batch_first else "(T, B, I)"
        if input.dim() not in (2, 3) or input.shape[0] == 0:
            raise ValueError(f"input: expected a 3-D tensor {layout} with I={self.input_size} "
                             f"or an unbatched 2-D (T, I), got shape {_shape(input)}")
        self._check_feature_size(input, "input")
        if input.dim() == 2:
            if lengths is not None:
                raise ValueError("lengths: only for a batched 3-D input, got an unbatched "
                                 f"input of shape {_shape(input)}")
            return input.unsqueeze(1), True
        if min(input.shape[:2]) == 0:
            raise ValueError(f"input: expected non-empty T and B, got shape {_shape(input)}")
        return (input.transpose(0, 1) if self.batch_first else input), False

    @staticmethod
    def _check_lengths(lengths, T: int, B: int) -> Tensor:
        if isinstance(lengths, Tensor):
            if lengths.dim() != 1 or lengths.dtype.is_floating_point or lengths.is_complex() \
                    or lengths.dtype == torch.bool:
                raise ValueError(f"lengths: expected a 1-D integer tensor of shape ({B},), got "
                                 f"{lengths.dtype} of shape {_shape(lengths)}")
            lengths = lengths.detach().to("cpu", torch.int64)
        elif isinstance(lengths, Sequence) and all(
                isinstance(n, int) and not isinstance(n, bool) for n in lengths):
            lengths = torch.tensor(list(lengths), dtype=torch.int64)
        else:
            raise ValueError(f"lengths: expected a 1-D integer tensor or a list of ints, got "
                             f"{type(lengths).__name__}")
        if lengths.numel() != B:
            raise ValueError(f"lengths: expected one length per example, shape ({B},), got "
                             f"shape ({lengths.numel()},)")
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > T:
            raise ValueError(f"lengths: expected values in [1, T={T}], got min {low}, max {high}")
        return lengths

    def _initial_state(self, hx, B: int, data: Tensor, unbatched: bool) -> tuple[Tensor, ...]:
        k = self.cell.num_states
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        if hx is None:
            init = self.initial_state(B)
            return tuple(s.to(data.dtype) for s in (init if k > 1 else (init,)))
        states = tuple(hx) if k > 1 and isinstance(hx, (tuple, list)) else (hx,)
        names = [f"{name}_0" for name in self.cell.state_names]
        if len(states) != k or not all(isinstance(s, Tensor) for s in states):
            kind = (f"a tuple ({', '.join(names)}) of tensors" if k > 1 else "a tensor h_0")
            raise ValueError(f"hx: expected {kind}, got {type(hx).__name__}")
        expected = shape[::2] if unbatched else shape
        checked = []
        for name, s in zip(names, states):
            if tuple(s.shape) != expected:
                raise ValueError(f"hx: expected {name} of shape {expected} "
                                 f"(num_layers*num_directions, batch, hidden_size), got "
                                 f"{_shape(s)}")
            checked.append(s.unsqueeze(1) if unbatched else s)
        return tuple(checked)

    def _pack_state(self, final):
        return final if self.cell.num_states > 1 else final[0]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, cell={self.cell!r}"
        if self.cell_options:
            s += f", cell_options={self.cell_options!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for name, default in (("bias", True), ("batch_first", False), ("dropout", 0.0),
                              ("weight_dropout", 0.0),
                              ("bidirectional", False), ("backend", "auto"),
                              ("init", self.cell.default_init), ("forget_bias", None)):
            if getattr(self, name) != default:
                s += f", {name}={getattr(self, name)!r}"
        return s


class RNN(RecurrentStack):
    r"""Elman RNN, a drop-in for ``torch.nn.RNN``: ``h_t = f(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh)``.

    Args:
        input_size, hidden_size, num_layers, nonlinearity, bias, batch_first, dropout,
        bidirectional, device, dtype: as ``torch.nn.RNN`` (same positions);
        nonlinearity: "tanh", "relu" or "sigmoid" (Mikolov's RNNLM; no fused kernel);
        backend, init ("identity" with "relu" gives the IRNN): see the module docstring.

    Shapes: see :class:`RecurrentStack`. Example::

        >>> rnn = rnnkit.RNN(10, 20, 2)
        >>> output, h_n = rnn(torch.randn(5, 3, 10))     # (5, 3, 20), (2, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 *, backend: str = "auto", init: str = "uniform", weight_dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, cell="rnn",
                         cell_options={"nonlinearity": nonlinearity},
                         backend=backend, init=init, weight_dropout=weight_dropout)
        self.nonlinearity = nonlinearity


class LSTM(RecurrentStack):
    r"""LSTM, a drop-in for ``torch.nn.LSTM`` (gate order i, f, g, o); equations in
    :mod:`rnnkit.cells.lstm`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        device, dtype: as ``torch.nn.LSTM``; proj_size: only 0 is supported;
        peephole: add diagonal peephole connections (parameters ``weight_peephole_l{k}``,
            (3H,); no fused kernel, so such a model has no ``torch.nn`` twin);
        forget_bias: set the forget gate's total bias (e.g. 1.0);
        backend, init: see the module docstring.

    Shapes: see :class:`RecurrentStack`. Example::

        >>> lstm = rnnkit.LSTM(10, 20, 2, bidirectional=True)
        >>> output, (h_n, c_n) = lstm(torch.randn(5, 3, 10))  # (5, 3, 40), (4, 3, 20) x2
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, proj_size: int = 0, device=None, dtype=None,
                 *, peephole: bool = False, backend: str = "auto", init: str = "uniform",
                 forget_bias: float | None = None, weight_dropout: float = 0.0):
        if proj_size != 0:
            raise ValueError(f"proj_size: rnnkit.LSTM supports only 0, got {proj_size!r}")
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, cell="lstm",
                         cell_options={"peephole": peephole}, backend=backend,
                         init=init, forget_bias=forget_bias, weight_dropout=weight_dropout)
        self.proj_size = 0
        self.peephole = peephole


class GRU(RecurrentStack):
    r"""GRU, a drop-in for ``torch.nn.GRU`` (gate order r, z, n); equations and the update
    convention (z here = 1 − u of Cho et al.) in :mod:`rnnkit.cells.gru`.

    Args:
        input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
        device, dtype: as ``torch.nn.GRU``;
        reset_after: True applies the reset gate after the recurrent product (PyTorch and
            cuDNN), False before it (Cho et al. 2014; no fused kernel);
        backend, init: see the module docstring.

    Shapes: see :class:`RecurrentStack`. Example::

        >>> gru = rnnkit.GRU(10, 20, batch_first=True)
        >>> output, h_n = gru(torch.randn(3, 5, 10), lengths=[5, 2, 4])  # (3, 5, 20), (1, 3, 20)
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, device=None, dtype=None, *,
                 reset_after: bool = True, backend: str = "auto", init: str = "uniform",
                 weight_dropout: float = 0.0):
        super().__init__(input_size, hidden_size, num_layers, bias, batch_first, dropout,
                         bidirectional, device, dtype, cell="gru",
                         cell_options={"reset_before": not reset_after},
                         backend=backend, init=init, weight_dropout=weight_dropout)
        self.reset_after = reset_after


def _registered_cell(name: str, options: dict) -> Cell:
    """The cell a pickled layer names. Only registered names are rebuilt: loading a layer
    never imports a module named by the file (a user cell is pickled as its object)."""
    if not isinstance(name, str) or ":" in name:
        raise ValueError(f"cell: a pickled layer names the cell {name!r}; only registered "
                         f"cells are rebuilt on load")
    return make_cell(name, **options)


def length_mask(lengths, T: int, device=None) -> Tensor:
    """(B,) lengths -> (T, B) bool, True at the real (unpadded) steps of each example, on
    ``device`` (default: that of ``lengths``)."""
    lengths = torch.as_tensor(lengths)
    device = lengths.device if device is None else device
    return torch.arange(T, device=device)[:, None] < lengths.to(device)[None, :]


def with_hidden(state, h: Tensor):
    """A layer's state (``h`` or a tuple ``(h, c, …)``) with its hidden state ``h``
    replaced: the other states keep their values (e.g. an LSTM's c starts at 0)."""
    return (h, *state[1:]) if isinstance(state, tuple) else h


def detach_state(state):
    """Cut the graph between truncated-BPTT windows: a state tensor, or (nested) tuples of
    them such as ``(h, c)`` or one state per layer -> the same structure, detached."""
    if isinstance(state, (tuple, list)):
        return tuple(detach_state(s) for s in state)
    return state.detach()
