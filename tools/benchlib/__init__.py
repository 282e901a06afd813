"""The pieces of ``tools/bench.py``, one concern a module:

- ``measure``: the inputs (zoo structures, batches), the output check against the reference, the timing loop, the
  progress bar and results files;
- ``compare``: the comparison run (which systems run, the matrix-product peak, every system on every config);
- ``forms``: ``--forms``, every form of every model converted and timed against ORT, and docs/models.md;
- ``report``: the Markdown of a comparison run and the generated section of docs/performance.md;
- ``plots``: its PNGs.

The peers themselves (systems, models, FLOP counts, the machine) live in ``tools/peers``.
"""
