"""Peers and models of ``tools/bench.py``: the systems a Cortex run is compared with, the model registry, FLOP
counting, the matrix-product peak and the machine description.

- :mod:`.models`: the benchmark's view of ``onnx_ops.zoo.MODELS`` (the one model registry): per model it adds
  the eager PyTorch module (one natural style), the DyNet builder (TreeLSTM only), the FLOP counter and the list
  of TorchScript export styles.
- :mod:`.systems`: one class per system (Cortex, ONNX Runtime, PyTorch eager, DyNet, and the PyTorch GPU systems); each
  reports itself "not installed" / "not available on this machine" instead of disappearing.
- :mod:`.flops`: the model FLOPs and the measured matmul peak.
- :mod:`.machine`: CPU model, cores and package versions.
"""

from __future__ import annotations


class BenchMismatch(RuntimeError):
    """Systems disagree on the same inputs (max abs error against the numpy reference above tolerance)."""

    def __init__(self, system: str, model: str, config: str, error: float, tol: float, detail: str = ""):
        self.system, self.model, self.config, self.error, self.tol = system, model, config, error, tol
        msg = (
            f"output mismatch: system '{system}' disagrees with the numpy reference (and so with the other systems) "
            f"on model '{model}', config {config}: max abs error {error:.3g} > {tol:g}"
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


__all__ = ["BenchMismatch"]
