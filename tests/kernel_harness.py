"""Runs a compiled Cortex kernel library directly through its C ABI (kernel_abi.h), without ONNX Runtime: the
kernel alone, for tests and for timing the kernel apart from the session. CPU kernels take numpy arrays; CUDA
kernels take the structure arrays from the host and everything else on the device (torch tensors), on torch's
current stream."""
from __future__ import annotations

import ctypes

import numpy as np

DTYPES = {np.dtype(np.float32): 1, np.dtype(np.int32): 6, np.dtype(np.int64): 7, np.dtype(np.bool_): 9}
CPU, CUDA = 0, 1


class Tensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("shape", ctypes.POINTER(ctypes.c_int64)), ("rank", ctypes.c_int32),
                ("dtype", ctypes.c_int32), ("device", ctypes.c_int32), ("reserved", ctypes.c_int32)]


class Execution(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32), ("stream", ctypes.c_void_p)]


ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.POINTER(ctypes.c_int64),
                         ctypes.c_int32)


class Kernel:
    def __init__(self, path, reuse_outputs: bool = False):
        """reuse_outputs: a CPU kernel's outputs of a shape are the same arrays on every run (as an arena gives
        ONNX Runtime's kernels; fresh large arrays would cost page faults inside the kernel), so a run overwrites
        the last run's outputs (for timing)."""
        self.lib = ctypes.CDLL(str(path))
        self.reused: dict | None = {} if reuse_outputs else None
        self.lib.cortex_kernel_run.restype = ctypes.c_int32
        self.lib.cortex_kernel_run.argtypes = [ctypes.POINTER(Tensor), ctypes.c_int32, ALLOC, ctypes.c_void_p,
                                               ctypes.POINTER(Execution), ctypes.c_char_p, ctypes.c_size_t]
        self.device = self.lib.cortex_kernel_device()

    def run(self, inputs, num_outputs):
        """inputs: numpy arrays (host) or torch tensors (device). Returns the outputs (numpy for a CPU kernel,
        torch tensors for a CUDA one)."""
        keep, tensors = [], []
        for x in inputs:
            if isinstance(x, np.ndarray):
                x = np.ascontiguousarray(x)
                shape = (ctypes.c_int64 * max(x.ndim, 1))(*x.shape)
                keep += [x, shape]
                tensors.append(Tensor(x.ctypes.data, shape, x.ndim, DTYPES[x.dtype], CPU, 0))
            else:  # a torch tensor on the device
                import torch
                x = x.contiguous()
                shape = (ctypes.c_int64 * max(x.dim(), 1))(*x.shape)
                keep += [x, shape]
                dtype = {torch.float32: 1, torch.int32: 6, torch.int64: 7, torch.bool: 9}[x.dtype]
                tensors.append(Tensor(x.data_ptr(), shape, x.dim(), dtype, CUDA if x.is_cuda else CPU, 0))
        outputs = [None] * num_outputs

        def alloc(_ctx, index, shape, rank):
            dims = tuple(shape[i] for i in range(rank))
            if self.device == CUDA:
                import torch
                out = torch.empty(dims, dtype=torch.float32, device="cuda")
                outputs[index] = out
                return out.data_ptr() or 1
            if self.reused is not None:
                out = self.reused.setdefault((index, dims), np.empty(dims, dtype=np.float32))
            else:
                out = np.empty(dims, dtype=np.float32)
            outputs[index] = out
            return out.ctypes.data or 1

        callback = ALLOC(alloc)
        if self.device == CUDA:
            import torch
            execution = Execution(CUDA, torch.cuda.current_device(), torch.cuda.current_stream().cuda_stream)
        else:
            execution = Execution(CPU, 0, None)
        array = (Tensor * len(tensors))(*tensors)
        error = ctypes.create_string_buffer(4096)
        rc = self.lib.cortex_kernel_run(array, len(tensors), callback, None, ctypes.byref(execution), error, 4096)
        if rc != 0:
            raise RuntimeError(error.value.decode())
        return outputs

    #: cortex_kernel_profile's slots: cumulative microseconds since the run's start (kernel_support.h, cuda.py); the
    #: CUDA kernel's last slot is the device time between events around the kernel, not a point in time
    PROFILE_SLOTS = {
        CPU: ("inputs checked", "prepared", "hoisted products", "linearized", "leaves done", "levels done"),
        CUDA: ("inputs checked", "prepared+linearized", "schedule sent", "launched", "finished", "kernel alone"),
    }
    #: the steps between those slots, in order
    STEPS = {
        CPU: ("input checks", "prepare", "hoisted products", "linearize", "leaves", "levels"),
        CUDA: ("input checks", "prepare+linearize", "schedule upload", "launch call", "until finished",
               "GPU kernel (events)"),
    }

    def steps(self) -> tuple[dict, float] | None:
        """This thread's last run: microseconds per step and in all (the kernel's own clocks, from its entry to
        its end), or None when the library was loaded without CORTEX_PROFILE set (the kernel records nothing)."""
        fn = getattr(self.lib, "cortex_kernel_profile", None)
        slots = self.PROFILE_SLOTS[self.device]
        if fn is None:
            return None
        out = (ctypes.c_double * len(slots))()
        fn.argtypes = [ctypes.POINTER(ctypes.c_double), ctypes.c_int32]
        if fn(out, len(slots)) <= 0 or not any(out):
            return None
        points = list(out)
        cumulative = points[:-1] if self.device == CUDA else points
        steps = [b - a for a, b in zip([0.0] + cumulative[:-1], cumulative)]
        if self.device == CUDA:
            steps.append(points[-1])
        return dict(zip(self.STEPS[self.device], steps)), cumulative[-1]
