"""Cortex: compiles recursive deep-learning models (TreeLSTM, TreeGRU, ...) from ONNX into kernels that run
inside ONNX Runtime through the Cortex execution provider."""
from .convert import ConvertError, Report, convert
from .session import InferenceSession, get_ep_name, get_library_path, session_options
from .serving.batching import BatchingSession

__all__ = ["convert", "ConvertError", "Report", "session_options", "InferenceSession", "get_library_path",
           "get_ep_name", "BatchingSession"]
