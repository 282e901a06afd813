"""The repository's development models (not installed with Cortex): the model zoo (``onnx_ops.zoo``), image grids
and chains (``onnx_ops.grids``), and the generator of natural PyTorch recursive models (``onnx_ops.modelgen``).

The ``cortex`` ONNX domain (the TreeRec op) is part of the product: ``cortex.treerec``; trees and the TreeLSTM
example are ``cortex.examples``.
"""
