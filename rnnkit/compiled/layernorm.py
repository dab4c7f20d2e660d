"""The layer-normalised cells' compiled loops (``layernorm.cpp``)."""

from __future__ import annotations

KERNELS: list = []
