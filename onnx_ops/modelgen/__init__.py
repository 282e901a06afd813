"""A generator of natural recursive PyTorch models from independent style choices, exported with the real
exporters (TorchScript and dynamo), and the harness that converts each with Cortex and checks it.

- :mod:`.spec`: the choices (:data:`CHOICES`; those of issue 19 in :data:`NEW_VALUES`, drawn only with
  ``new=True``), :class:`Spec`, :func:`draw` / :func:`draw_many`.
- :mod:`.source`: :func:`write_source`, the ``nn.Module`` source of a spec (loop, reads, leaf test, writes, head);
  :mod:`.cells`: its cell math (gates, aggregation, the families).
- :mod:`.inputs`: structures (SST parse trees, synthetic n-ary trees, grids, chains) and feeds.
- :mod:`.harness`: :func:`evaluate` (one spec) and :func:`run_many` (worker processes), the export cache.

``python tools/fuzz_import.py --n 1000`` runs a sample and prints the rates; tests/frontend/test_modelgen.py is the CI
property test.
"""
from .spec import (CHOICES, GENERATOR_VERSION, MEANINGLESS, NEW_CHOICES, NEW_VALUES, UNEXPORTABLE, UNWRITTEN, Spec,
                   draw, draw_many, irrelevant)
from .source import Source, write_source

__all__ = ["CHOICES", "GENERATOR_VERSION", "MEANINGLESS", "NEW_CHOICES", "NEW_VALUES", "UNEXPORTABLE", "UNWRITTEN",
           "Source", "Spec", "draw", "draw_many", "irrelevant", "write_source"]
