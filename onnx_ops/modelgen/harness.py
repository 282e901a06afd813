"""Generate -> build -> export with the real exporter -> ``cortex.convert`` -> run and compare; one outcome per spec.

Outcomes (:data:`OUTCOMES`):

- ``converted-match``: every recursive region converted; the converted model (``cortex.InferenceSession``) matches
  eager PyTorch on every case.
- ``converted-MISMATCH``: a converted region and an output that differs from eager PyTorch (a Cortex bug). Also
  when only some regions converted: the partly converted model must still match.
- ``refused``: a region left to ONNX Runtime, with the report's reason (``<op> '<node>': <reason>``); or no region
  reported at all although the model has a recursion (a Loop or Scan node): then the reason is written by the
  harness, ``unreported: <op> '<node>' is not listed in the report``, and ``unreported`` is True.
- ``export-failed``: the real exporter could not export the spec, or wrote a model ONNX Runtime cannot load (not a
  Cortex failure).
- ``crash``: an exception escaping ``cortex.convert``, a converted session that cannot be created or raises where
  eager PyTorch does not, a worker process that died, or a timeout after export.
- ``gen-error``: eager PyTorch itself failed on the spec's inputs (a generator bug).
- ``merge-MISMATCH`` (with ``merge=True`` only): the model converted and matched, and served as one merged forest
  (:func:`merge_check`) a request got other bits than its own run, or the merge path raised.

Independently of the outcome, ``ort_defects`` lists the cases where ONNX Runtime on the *original* export
disagrees with eager PyTorch (or raises): the export is kept and the converted model is still compared with eager.

Tolerance: max abs error <= ``TOL * max(1, max |eager|)`` (absolute 1e-4 for outputs of magnitude <= 1).

Exports are cached on disk by spec key and torch version under ``$CORTEX_MODELGEN_CACHE`` (default
``~/.cache/cortex/modelgen``): ``<key>/model.py`` (the generated source), ``model.onnx`` or ``export_error.txt``.

Every spec runs in a worker process (:func:`run_many`): a segfault or hang in one model is recorded as that spec's
outcome and the worker is replaced.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

import numpy as np

from .inputs import cases, export_example
from .source import write_source
from .spec import Spec

__all__ = ["OUTCOMES", "TOL", "cache_dir", "evaluate", "export", "merge_check", "normalize_reason", "run_many"]

OUTCOMES = ("converted-match", "converted-MISMATCH", "merge-MISMATCH", "refused", "export-failed", "crash",
            "gen-error")
TOL = 1e-4
OPSET = 17


def cache_dir() -> Path:
    d = os.environ.get("CORTEX_MODELGEN_CACHE")
    return Path(d) if d else Path.home() / ".cache" / "cortex" / "modelgen"


def _torch_tag() -> str:
    import torch

    return re.sub(r"[^0-9A-Za-z.]+", "_", torch.__version__)


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, str(path))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # torch.jit.script reads the class source through inspect
    spec.loader.exec_module(mod)
    return mod


def build(spec: Spec, where: Path):
    """Write the spec's source to ``where/model.py`` and return (module instance in eval mode, Source)."""
    import torch

    src = write_source(spec)
    where.mkdir(parents=True, exist_ok=True)
    path = where / "model.py"
    if not path.exists() or path.read_text() != src.text:
        path.write_text(src.text)
    mod = _load_module(path, f"modelgen_{spec.key()}")
    torch.manual_seed(spec.seed % (2**31))
    model = mod.Model().eval()
    if spec.precision == "float64":
        model = model.double()  # as a user runs a model in double: its parameters, inputs and state in float64
    return model, src


def _dynamic_axes(src) -> dict:
    """TorchScript exporter: every input's and output's dynamic axes by name (``Source.dims``)."""
    return {name: dict(axes) for name, axes in src.dims.items() if axes}


def _dynamic_shapes(src) -> dict:
    """Dynamo exporter: a ``torch.export.Dim`` per dynamic size of the inputs. CSR offsets (N + 1 entries) get a
    dim of their own: a derived ``Dim("N") + 1`` fails in torch 2.13 ('function' + 'int')."""
    import torch

    dims = {k: torch.export.Dim(k) for k in ("N", "L", "R", "B", "E", "N1")}
    return {name: {axis: dims[d] for axis, d in src.dims[name].items()} for name, _ in src.inputs}


def _tensors(feeds: dict) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in feeds.values())


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in traceback.format_exception_only(type(e), e)[-1].splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:400]


def _export_reason(e: BaseException) -> str:
    """The exporter's error: the innermost meaningful exception line."""
    chain, seen = [], set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        chain.append(e)
        e = e.__cause__ or e.__context__
    inner = chain[-1]
    return f"{type(chain[0]).__name__}: {_first_line(inner)}"


def export(spec: Spec, cache: Path | None = None) -> dict:
    """Export the spec with its real exporter, cached. Returns {"path": str} or {"error": str}, plus "source"."""
    import torch

    cache = cache or cache_dir()
    where = cache / f"{spec.key()}-{_torch_tag()}"
    onnx_path, err_path = where / "model.onnx", where / "export_error.txt"
    if onnx_path.exists():
        return {"path": str(onnx_path), "source": str(where / "model.py"), "cached": True}
    if err_path.exists():
        return {"error": err_path.read_text(), "source": str(where / "model.py"), "cached": True}
    model, src = build(spec, where)
    feeds = export_example(spec)
    args = _tensors(feeds)
    tmp = where / f"model.{os.getpid()}.tmp.onnx"
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            if spec.exporter == "torchscript":
                scripted = torch.jit.script(model)
                torch.onnx.export(scripted, args, str(tmp), dynamo=False, opset_version=OPSET,
                                  input_names=[n for n, _ in src.inputs], output_names=[n for n, _ in src.outputs],
                                  dynamic_axes=_dynamic_axes(src))
            else:
                with torch.no_grad():
                    torch.onnx.export(model, args, str(tmp), dynamo=True, input_names=[n for n, _ in src.inputs],
                                      output_names=[n for n, _ in src.outputs], dynamic_shapes=_dynamic_shapes(src),
                                      verbose=False)
    except Exception as e:  # noqa: BLE001 - any exporter failure is this spec's outcome
        err_path.write_text(_export_reason(e))
        tmp.unlink(missing_ok=True)
        return {"error": err_path.read_text(), "source": str(where / "model.py"), "cached": False}
    os.replace(tmp, onnx_path)
    return {"path": str(onnx_path), "source": str(where / "model.py"), "cached": False}


# -------------------------------------------------------------------------------------------------------- reasons
_NORMALIZERS = [
    (re.compile(r"'[^']*'"), "'…'"),
    (re.compile(r'"[^"]*"'), '"…"'),
    (re.compile(r"(?<![\w)])/[\w/.\[\]-]*"), "/…"),  # ONNX value and node names of the TorchScript exporter
    (re.compile(r"\b(node|val|_val|state|row|tmp)_?[\w\[\]]*\d[\w\[\]]*"), r"\1…"),  # node_scan__1, val_20, row[14]
    (re.compile(r"\b0x[0-9a-f]+\b"), "0x…"),
    (re.compile(r"\d+"), "N"),
    (re.compile(r"\s+"), " "),
]


def normalize_reason(reason: str) -> str:
    """A refusal/failure reason with names and numbers blanked, so that counts are not split by them."""
    r = reason or ""
    for pat, rep in _NORMALIZERS:
        r = pat.sub(rep, r)
    return r.strip()[:300]


def _recursion_nodes(path: str) -> list:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return [(n.op_type, n.name) for n in m.graph.node if n.op_type in ("Loop", "Scan")]


# -------------------------------------------------------------------------------------------------------- compare
def _as_list(x):
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _err(got, want) -> float:
    """Max abs error scaled: |got - want| / max(1, max |want|); NaN where they disagree on NaN; inf on shape."""
    worst = 0.0
    for g, w in zip(got, want):
        g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)
        if g.shape != w.shape:
            return float("inf")
        if g.size == 0:
            continue
        nan_g, nan_w = np.isnan(g), np.isnan(w)
        if (nan_g != nan_w).any():
            return float("nan")
        ok = ~nan_w
        if not ok.any():
            continue
        scale = max(1.0, float(np.abs(w[ok]).max()))
        worst = max(worst, float(np.abs(g[ok] - w[ok]).max()) / scale)
    return worst


def _bad(e: float) -> bool:
    return not (e <= TOL)  # NaN and inf are bad


def _ort_session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _cortex_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def _cortex_session(path: str, target: str = "cpu"):
    import cortex

    return cortex.InferenceSession(path, sess_options=_cortex_options(), device=target)


def gpu_usable() -> bool:
    """A CUDA GPU the Cortex EP offers: converted CUDA models run and are compared; else they are only compiled."""
    try:
        import torch

        if not torch.cuda.is_available():
            return False
        import cortex
        import onnxruntime as ort

        cortex.session._ep_devices()
        return any(d.ep_name == cortex.get_ep_name() and d.device.type == ort.OrtHardwareDeviceType.GPU
                   for d in ort.get_ep_devices())
    except Exception:  # noqa: BLE001 - no GPU to run on
        return False


def evaluate(spec: Spec, cache: Path | None = None, workdir: Path | None = None, progress=lambda stage: None,
             keep: bool = False, target: str = "cpu", merge: bool = False) -> dict:
    """One spec, end to end; never raises (every failure is an outcome). target "cuda": converted for the GPU (the
    kernel compiled with nvcc at conversion); run and compared where a GPU is usable, else ``converted-unrun``.
    merge: a model that converts whole is also run with its cases merged into one forest (`merge_check`)."""
    t0 = time.time()
    res = {"spec": spec.to_json(), "key": spec.key(), "short": spec.short(), "outcome": None, "reason": None,
           "regions": [], "cases": {}, "ort_defects": [], "unreported": False}

    def done(outcome, reason=None, **kw):
        res.update(outcome=outcome, reason=reason, seconds=round(time.time() - t0, 2), **kw)
        return res

    progress("export")
    import torch

    if spec.dynamo:
        torch._dynamo.reset()  # eager while_loop/scan compile their bodies: no state from an earlier spec
    try:
        ex = export(spec, cache)
    except Exception as e:  # noqa: BLE001 - building the module failed: a generator bug
        return done("gen-error", f"build: {_first_line(e)}", traceback=traceback.format_exc()[-3000:])
    res["source"] = ex.get("source")
    if "error" in ex:
        return done("export-failed", ex["error"])
    src_path = ex["path"]

    progress("eager")
    if spec.dynamo:
        torch._dynamo.reset()
    try:
        model, _ = build(spec, Path(ex["source"]).parent)
    except Exception as e:  # noqa: BLE001
        return done("gen-error", f"build: {_first_line(e)}", traceback=traceback.format_exc()[-3000:])
    feeds = cases(spec)
    eager = {}
    for name, f in feeds.items():
        try:
            with torch.no_grad():
                eager[name] = [t.detach().numpy() for t in _as_list(model(*_tensors(f)))]
        except Exception as e:  # noqa: BLE001
            return done("gen-error", f"eager forward on {name}: {_first_line(e)}",
                        traceback=traceback.format_exc()[-3000:])

    progress("ort")
    try:
        original = _ort_session(src_path)
    except Exception as e:  # noqa: BLE001 - the exporter wrote a model ORT cannot load
        return done("export-failed", f"invalid model (ONNX Runtime cannot load it): {_first_line(e)}")
    for name, f in feeds.items():
        try:
            got = original.run(None, f)
            e = _err(got, eager[name])
            res["cases"].setdefault(name, {})["ort_vs_eager"] = e
            if _bad(e):
                res["ort_defects"].append(f"{name}: ONNX Runtime on the original differs from eager PyTorch "
                                          f"(scaled max abs error {e})")
        except Exception as ex_:  # noqa: BLE001
            res["ort_defects"].append(f"{name}: ONNX Runtime on the original raises: {_first_line(ex_)}")

    progress("convert")
    import cortex

    tmpdir = Path(tempfile.mkdtemp(prefix="modelgen-", dir=workdir))
    try:
        out = tmpdir / "model.cortex.onnx"
        try:
            report = cortex.convert(src_path, str(out), strict=False, target=target)
        except Exception as e:  # noqa: BLE001 - anything escaping convert is a crash
            return done("crash", f"cortex.convert raised {type(e).__name__}: {_first_line(e)}",
                        traceback=traceback.format_exc()[-4000:], stage="convert")
        res["regions"] = [{"kind": r.kind, "node": r.node_name, "converted": bool(r.converted), "reason": r.reason}
                          for r in report.regions]
        refused = [f"{r.kind} '{r.node_name}': {r.reason or ''}" for r in report.regions if not r.converted]
        converted = [r for r in report.regions if r.converted]
        if not report.regions:
            rec = _recursion_nodes(src_path)
            res["unreported"] = True
            what = ", ".join(f"{op} '{nm}'" for op, nm in rec) or "no Loop or Scan node either"
            refused = [f"unreported: {what} is not listed in the report (no recursive region found)"]
        if converted and target == "cuda" and not gpu_usable():
            if refused:
                return done("refused", "; ".join(refused), partial=True)
            return done("converted-unrun", "converted and compiled for CUDA; no GPU here to run it")
        if converted:
            progress("run")
            try:
                sess = _cortex_session(str(out), target)
            except Exception as e:  # noqa: BLE001
                return done("crash", f"cortex.InferenceSession raised {type(e).__name__}: {_first_line(e)}",
                            traceback=traceback.format_exc()[-4000:], stage="session")
            worst = 0.0
            for name, f in feeds.items():
                try:
                    got = sess.run(None, f)
                except Exception as e:  # noqa: BLE001
                    return done("crash", f"converted session raised on {name} ({type(e).__name__}): "
                                         f"{_first_line(e)}", traceback=traceback.format_exc()[-4000:], stage="run")
                e = _err(got, eager[name])
                res["cases"].setdefault(name, {})["converted_vs_eager"] = e
                worst = e if _bad(e) else max(worst, e)
                if _bad(e):
                    ort_e = res["cases"][name].get("ort_vs_eager")
                    return done("converted-MISMATCH",
                                f"case {name}: converted vs eager scaled max abs error {e} (ORT original vs eager: "
                                f"{ort_e})" + (f"; still refused: {'; '.join(refused)}" if refused else ""))
            if refused:
                return done("refused", "; ".join(refused), partial=True)
            if merge:
                progress("merge")
                res["merge"] = merge_check(str(out), sess, feeds, target)
                if res["merge"]["outcome"] in ("MISMATCH", "crash"):
                    return done("merge-MISMATCH", res["merge"]["reason"], max_error=worst)
            return done("converted-match", None, max_error=worst)
        return done("refused", "; ".join(refused))
    finally:
        if not keep:
            shutil.rmtree(tmpdir, ignore_errors=True)
        else:
            res["workdir"] = str(tmpdir)


def merge_check(path: str, session, feeds: dict, device: str = "cpu") -> dict:
    """The cases of a converted model served as one forest (cortex.serving: the plan, then `run_forest`), each twice,
    against their separate runs: the same bits, or an error where the separate run fails. -> {"outcome": "merged"
    (all merged) | "partly" (some ran alone) | "alone" (mergeable on paper, but every request ran alone: what the
    plan's warnings say sends a request alone reached them all) | "refused" (not mergeable) | "MISMATCH" | "crash",
    "reason", counts, "tail": whether some outputs were computed per request after the forest, "warnings": the
    plan's}."""
    from cortex.serving import plan_for
    from cortex.serving.forest import ForestStats, merge_session, run_forest, tail_sessions

    plan = plan_for(path)
    if not plan.mergeable:
        return {"outcome": "refused", "reason": plan.reason}
    names = [i.name for i in session.get_inputs()]
    requests = [{n: f[n] for n in names} for f in list(feeds.values()) + list(feeds.values())[::-1]]
    stats = ForestStats()
    try:
        tail = tail_sessions(plan, path, _cortex_options(), device=device)  # as _cortex_session's
        server = merge_session(plan, path, _cortex_options(), device=device)  # as a BatchingSession's
        merged = run_forest(plan, server, requests, stats=stats, tail=tail)
    except Exception as e:  # noqa: BLE001 - the merge path must answer every request, never raise
        return {"outcome": "crash", "reason": f"run_forest raised {type(e).__name__}: {_first_line(e)}"}
    for k, (request, got) in enumerate(zip(requests, merged)):
        try:
            want = session.run(None, request)
        except Exception as e:  # noqa: BLE001
            if not isinstance(got, Exception):
                return {"outcome": "MISMATCH", "reason": f"request {k}: its own run fails ({_first_line(e)}), "
                                                         "merged it did not"}
            continue
        if isinstance(got, Exception):
            return {"outcome": "MISMATCH", "reason": f"request {k}: merged it failed ({_first_line(got)}), its own "
                                                     "run did not"}
        for name, a, b in zip([o.name for o in session.get_outputs()], got, want):
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=True):
                return {"outcome": "MISMATCH", "reason": f"request {k}: output '{name}' merged differs from its own "
                                                         "run"}
    outcome = "merged" if stats.alone == 0 and stats.fallbacks == 0 else "partly" if stats.merged_requests else "alone"
    return {"outcome": outcome, "reason": None, "merged": stats.merged_requests, "alone": stats.alone,
            "fallbacks": stats.fallbacks, "tail": plan.tail is not None, "warnings": list(plan.warnings)}


# -------------------------------------------------------------------------------------------------------- workers
def _worker_main():
    """Reads one JSON task per line on stdin, writes JSON lines ({"stage"} then {"result"}) to the protocol fd."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # everything else printed to stdout (C++ or Python) goes to stderr
    sys.stdout = sys.stderr
    import torch

    torch.set_num_threads(1)
    for line in sys.stdin:
        if not line.strip():
            continue
        task = json.loads(line)
        spec = Spec.from_json(task["spec"])

        def progress(stage):
            proto.write(json.dumps({"stage": stage}) + "\n")

        res = evaluate(spec, Path(task["cache"]), Path(task["workdir"]) if task.get("workdir") else None,
                       progress=progress, keep=task.get("keep", False), target=task.get("target", "cpu"),
                       merge=task.get("merge", False))
        proto.write(json.dumps({"result": res}, default=float) + "\n")


class _Worker:
    def __init__(self, log_dir: Path, env: dict):
        self.log = open(log_dir / f"worker-{id(self)}.stderr", "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "onnx_ops.modelgen.harness", "--worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1, env=env)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except json.JSONDecodeError:
                pass
        self.q.put(None)  # EOF: the process ended

    def stderr_tail(self, n=3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-n:]

    def kill(self):
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=10)
        with contextlib.suppress(Exception):
            self.log.close()


def _died_result(spec: Spec, stage: str, why: str, tail: str) -> dict:
    outcome = "export-failed" if stage == "export" else "crash"
    return {"spec": spec.to_json(), "key": spec.key(), "short": spec.short(), "outcome": outcome,
            "reason": f"{why} during {stage}", "regions": [], "cases": {}, "ort_defects": [], "unreported": False,
            "stage": stage, "traceback": tail}


def run_many(specs: list, jobs: int = 2, cache: Path | None = None, timeout: float = 600.0, on_result=None,
             keep: bool = False, target: str = "cpu", merge: bool = False) -> list:
    """Evaluate every spec in ``jobs`` worker processes; results in spec order. ``on_result(i, result)`` is called
    as each finishes. A worker that dies or exceeds ``timeout`` seconds on a spec gives that spec a ``crash``
    (``export-failed`` when it was exporting) outcome and is replaced."""
    cache = Path(cache or cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    log_dir = Path(tempfile.mkdtemp(prefix="modelgen-logs-"))
    results: list = [None] * len(specs)
    todo: queue.Queue = queue.Queue()
    for i, s in enumerate(specs):
        todo.put(i)
    lock = threading.Lock()

    def slot():
        w = None
        try:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                spec = specs[i]
                if w is None:
                    w = _Worker(log_dir, env)
                task = {"spec": spec.to_json(), "cache": str(cache), "keep": keep, "target": target, "merge": merge}
                try:
                    w.proc.stdin.write(json.dumps(task) + "\n")
                    w.proc.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
                stage, res, deadline = "start", None, time.time() + timeout
                while res is None:
                    try:
                        msg = w.q.get(timeout=max(0.1, deadline - time.time()))
                    except queue.Empty:
                        res = _died_result(spec, stage, f"timeout after {timeout:.0f} s", w.stderr_tail())
                        w.kill()
                        w = None
                        break
                    if msg is None:
                        w.proc.wait()
                        res = _died_result(spec, stage, f"worker process died (exit code {w.proc.returncode})",
                                           w.stderr_tail())
                        w.kill()
                        w = None
                        break
                    if "stage" in msg:
                        stage = msg["stage"]
                    elif "result" in msg:
                        res = msg["result"]
                results[i] = res
                if on_result is not None:
                    with lock:
                        on_result(i, res)
        finally:
            if w is not None:
                with contextlib.suppress(Exception):
                    w.proc.stdin.close()
                    w.proc.wait(timeout=30)
                w.kill()

    threads = [threading.Thread(target=slot, daemon=True) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shutil.rmtree(log_dir, ignore_errors=True)
    return results


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
