"""The compiled loops of the cells without a recurrent matrix (``diagonal.cpp``)."""

from __future__ import annotations

KERNELS: list = []
