"""GPU systems of the benchmark that run through ONNX Runtime: Cortex CUDA and ONNX Runtime's CUDA EP.

- :class:`CortexCudaRunner`: the model converted with ``target="cuda"``, run by ``cortex.InferenceSession(device=
  "cuda")``. Timed end to end through the session (:meth:`timed_call`): inputs bound from host memory (ORT copies
  them to the device; the kernel copies the structure arrays back to linearize them on the host), outputs left in
  the GPU memory of the Cortex device through IO binding (:class:`DeviceOutputs`; where this onnxruntime cannot bind
  outputs to that memory, outputs come back to the host and the note says so). And the kernel alone
  (:meth:`kernel_call`): the kernel library called through its C ABI (tests/kernel_harness.py), structure arrays on
  the host and everything else already on the device, timed until the kernel returns (it synchronizes its stream).
- :class:`OrtCudaRunner`: ONNX Runtime's CUDA EP on the original Loop model, outputs on the device the same way;
  "not available" where this onnxruntime package has no CUDAExecutionProvider (a CPU build).

Both work for every zoo model (the PyTorch GPU peers implement the TreeLSTM only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .kernel_alone import KernelAlone, KernelCalls

ORT_CUDA_EP = "CUDAExecutionProvider"


# ----------------------------------------------------------------------------------------------------------------
# status


def cortex_cuda_status() -> str | None:
    """None when the Cortex EP offers an NVIDIA GPU here and nvcc can compile for it, else why not."""
    try:
        import onnxruntime as ort

        import cortex
        from cortex.codegen import toolchain
    except ImportError as e:
        return f"not installed ({e})"
    if not Path(cortex.get_library_path()).is_file():
        return "not installed (Cortex EP library not built)"
    try:
        toolchain.nvcc()
    except toolchain.ToolchainError as e:
        return f"not available on this machine ({e})"
    try:
        cortex.session._select("cuda:0", cortex.session._ep_devices())
    except RuntimeError as e:
        return f"not available on this machine ({e})"
    del ort
    return None


def ort_cuda_status() -> str | None:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"not installed ({e})"
    if ORT_CUDA_EP not in ort.get_available_providers():
        return (f"not available (onnxruntime {ort.__version__} here is a CPU build: no {ORT_CUDA_EP}; "
                "install onnxruntime-gpu)")
    return None


NOTES = {
    "cortex_cuda": "the model converted with --target cuda in cortex.InferenceSession(device='cuda'): end to end "
                   "through the ORT session per call (inputs bound from the host, the structure linearized on the "
                   "host by the kernel, one persistent cooperative kernel); the kernel alone is in the GPU table",
    "ort_cuda": "the original Loop/If model in ONNX Runtime with its CUDAExecutionProvider",
}


# ----------------------------------------------------------------------------------------------------------------
# outputs left on the device


class DeviceOutputs:
    """Runs an ORT session with its inputs bound from host memory and its outputs left in GPU memory (IO binding).

    ONNX Runtime versions differ in how Python names a plugin EP's GPU memory, so :meth:`prepare` tries, in order:
    ``bind_output(name, "cuda", id)`` (ORT >= 1.31 maps it to the NVIDIA GPU memory a plugin EP registers), an
    explicit OrtDevice (GPU, default memory, NVIDIA vendor id, id), and keeps the first that runs, leaves every
    output in GPU memory and matches ``session.run``. ``how`` says which, or why none did."""

    NVIDIA = 0x10DE

    def __init__(self, session, device_id: int = 0):
        self.session, self.device_id = session, device_id
        self.output_names = [o.name for o in session.get_outputs()]
        self.binding = None
        self.bind = None
        self.how = "not prepared"

    def _variants(self):
        import onnxruntime as ort
        from onnxruntime.capi import _pybind_state as C

        yield "bind_output(name, 'cuda', id)", lambda b, name: b.bind_output(name, "cuda", self.device_id)

        def explicit(b, name):
            device = C.OrtDevice(C.OrtDevice.gpu() if hasattr(C.OrtDevice, "gpu") else C.OrtDevice.cuda(),
                                 C.OrtDevice.default_memory(), self.NVIDIA, self.device_id)
            b._iobinding.bind_output(name, device)

        yield "bind_output to OrtDevice(GPU, default memory, NVIDIA, id)", explicit
        del ort

    def prepare(self, feeds: dict) -> bool:
        expected = self.session.run(None, feeds)
        failures = []
        for label, bind in self._variants():
            try:
                binding = self.session.io_binding()
                for name in self.output_names:
                    bind(binding, name)
                self._bind_inputs(binding, feeds)
                self.session.run_with_iobinding(binding)
                where = {o.device_name().lower() for o in binding.get_outputs()}
                if "cpu" in where:
                    failures.append(f"{label}: outputs in {sorted(where)}")
                    continue
                got = binding.copy_outputs_to_cpu()
                if len(got) != len(expected) or any(not np.array_equal(g, e) for g, e in zip(got, expected)):
                    failures.append(f"{label}: outputs differ from session.run")
                    continue
            except Exception as e:  # noqa: BLE001 - the next variant may work on this ORT version
                failures.append(f"{label}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                continue
            self.binding, self.how, self.bind = binding, f"outputs left in GPU memory ({label})", bind
            return True
        self.binding = None
        self.how = "outputs copied to the host (IO binding to GPU memory failed here: " + "; ".join(failures) + ")"
        return False

    @staticmethod
    def _bind_inputs(binding, feeds):
        binding.clear_binding_inputs()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))

    def run(self, feeds: dict):
        """One run; returns the bound outputs (OrtValues in GPU memory), or host arrays without a binding."""
        if self.binding is None:
            return self.session.run(None, feeds)
        self._bind_inputs(self.binding, feeds)
        # outputs bound afresh every run: ORT allocates them for this run's shapes (a bound OrtValue keeps its shape)
        self.binding.clear_binding_outputs()
        for name in self.output_names:
            self.bind(self.binding, name)
        self.session.run_with_iobinding(self.binding)
        return self.binding.get_outputs()


def bind_outputs_on_device(session, feeds: dict, device_id: int = 0):
    """(an IOBinding with `feeds` bound and every output bound to GPU memory, how) or (None, why not)."""
    outputs = DeviceOutputs(session, device_id)
    if not outputs.prepare(feeds):
        return None, outputs.how
    DeviceOutputs._bind_inputs(outputs.binding, feeds)
    outputs.binding.clear_binding_outputs()
    for name in outputs.output_names:
        outputs.bind(outputs.binding, name)
    return outputs.binding, outputs.how


# ----------------------------------------------------------------------------------------------------------------
# runners


class CortexCudaRunner(KernelCalls):
    """Cortex on the GPU (see the module doc). ``__call__`` returns host outputs (the benchmark's check);
    ``timed_call`` is the end-to-end run with outputs left on the device; ``kernel_call`` the kernel alone on the
    arguments :meth:`prepare` made for each input."""

    def __init__(self, converted_path, feeds_fn, device_id: int = 0):
        import onnxruntime as ort

        import cortex

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = cortex.InferenceSession(str(converted_path), sess_options=options, device=f"cuda:{device_id}")
        self.feeds_fn = feeds_fn
        self.names = {i.name for i in self.session.get_inputs()}
        self.outputs = DeviceOutputs(self.session, device_id)
        self.kernel = KernelAlone(converted_path)
        self.arguments: dict = {}
        self.convert_info = None  # how the model was converted (set by tools/peers/systems.py)

    def feeds(self, structure) -> dict:
        return {k: v for k, v in self.feeds_fn(structure).items() if k in self.names}

    def prepare(self, inputs) -> dict:
        """IO binding (once) and the kernel's arguments for each input (untimed)."""
        if self.outputs.how == "not prepared" and inputs:
            self.outputs.prepare(self.feeds(inputs[0]))
        self.prepare_kernel(inputs)
        return {"outputs": self.outputs.how, "convert": self.convert_info}

    def __call__(self, structure):
        return tuple(self.session.run(None, self.feeds(structure)))

    def timed_call(self, structure):
        return self.outputs.run(self.feeds(structure))



class OrtCudaRunner:
    """ONNX Runtime's CUDA EP (then its CPU EP) on the original model; outputs on the device like Cortex CUDA's."""

    def __init__(self, loop_path, feeds_fn, device_id: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(loop_path), sess_options=options,
                                            providers=[(ORT_CUDA_EP, {"device_id": device_id}),
                                                       "CPUExecutionProvider"])
        self.feeds_fn = feeds_fn
        self.names = {i.name for i in self.session.get_inputs()}
        self.outputs = DeviceOutputs(self.session, device_id)

    def feeds(self, structure) -> dict:
        return {k: v for k, v in self.feeds_fn(structure).items() if k in self.names}

    def prepare(self, inputs) -> dict:
        if self.outputs.how == "not prepared" and inputs:
            self.outputs.prepare(self.feeds(inputs[0]))
        return {"outputs": self.outputs.how}

    def __call__(self, structure):
        return tuple(self.session.run(None, self.feeds(structure)))

    def timed_call(self, structure):
        return self.outputs.run(self.feeds(structure))
