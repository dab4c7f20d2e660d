"""Diagnostics that show why LSTM and GRU exist: gradient flow through time and
long-range memory tasks (see the modules)."""

from rnnkit.diagnostics.gradient_flow import (LayerFlow, gradient_flow, hand_bptt,
                                              plot_gradient_flow, recording_state_gradients)
from rnnkit.diagnostics.gates import (GateStats, MatrixStats, gate_statistics,
                                      plot_gate_statistics, recurrent_matrix_statistics)
from rnnkit.diagnostics.memory import (TASKS, MemoryResult, adding_batch, copy_batch,
                                       reber_batch, train_memory_task)

__all__ = ["GateStats", "MatrixStats", "gate_statistics", "plot_gate_statistics",
           "recurrent_matrix_statistics", "LayerFlow", "gradient_flow", "hand_bptt", "plot_gradient_flow",
           "recording_state_gradients", "TASKS", "MemoryResult", "adding_batch",
           "copy_batch", "reber_batch", "train_memory_task"]
