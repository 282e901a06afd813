"""Grids (issue: generality, part two): 2-D grid RNNs and MD-LSTMs with an [R, C, H] state table, written as papers
and public code write them (one loop over k in range(R * C) with i = k // C, j = k % C; nested loops over rows and
cells; a given order of cells; borders by `if` or by torch.where), exported with both real exporters, converted and
matched against eager PyTorch on grids of several shapes and on odd visit orders. Each cell's index is checked in its
own dimension as ONNX Gather does; inputs the original rejects are errors here too; the forms Cortex refuses say why,
with the rewrite that converts."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import cortex  # noqa: E402

F, H = 6, 8
SHAPES = [(3, 4), (1, 1), (1, 5), (5, 1), (6, 3)]


class GridIf(nn.Module):
    """A 2-D grid RNN: cell (i, j) reads (i - 1, j) and (i, j - 1), zeros outside the grid."""

    def __init__(self):
        super().__init__()
        self.inp, self.U, self.L = nn.Linear(F, H), nn.Linear(H, H, bias=False), nn.Linear(H, H, bias=False)

    def forward(self, x):
        R, C = x.size(0), x.size(1)
        h = torch.zeros(R, C, 8)
        for k in range(R * C):
            i = k // C
            j = k % C
            up = h[i - 1, j] if i > 0 else torch.zeros(8)
            lf = h[i, j - 1] if j > 0 else torch.zeros(8)
            h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf))
        return h


class GridWhere(GridIf):
    """Branch-free borders (torch.where reads h[-1, j] at the top row and discards it); the width read inside the
    loop with h.size(1)."""

    def forward(self, x):
        h = torch.zeros(x.size(0), x.size(1), 8)
        for k in range(x.size(0) * x.size(1)):
            W = h.size(1)
            i, j = k // W, k % W
            up = torch.where(torch.tensor(i > 0), h[i - 1, j], torch.zeros(8))
            lf = torch.where(torch.tensor(j > 0), h[i, j - 1], torch.zeros(8))
            h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf))
        return h


class GridNested(GridIf):
    """The plain form: for i in range(R): for j in range(C)."""

    def forward(self, x):
        R, C = x.size(0), x.size(1)
        h = torch.zeros(R, C, 8)
        for i in range(R):
            for j in range(C):
                up = h[i - 1, j] if i > 0 else torch.zeros(8)
                lf = h[i, j - 1] if j > 0 else torch.zeros(8)
                h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf))
        return h


class MDLSTM(nn.Module):
    """A 2-D LSTM (Graves et al. 2007): h and c tables [R, C, H], a forget gate per direction."""

    def __init__(self):
        super().__init__()
        self.W, self.U, self.V = nn.Linear(F, 5 * H), nn.Linear(H, 5 * H, bias=False), nn.Linear(H, 5 * H, bias=False)

    def forward(self, x):
        R, C = x.shape[0], x.shape[1]
        h = torch.zeros(R, C, 8)
        c = torch.zeros(R, C, 8)
        for k in range(R * C):
            i = k // C
            j = k % C
            h_up = torch.zeros(8)
            c_up = torch.zeros(8)
            h_lf = torch.zeros(8)
            c_lf = torch.zeros(8)
            if i > 0:
                h_up = h[i - 1, j]
                c_up = c[i - 1, j]
            if j > 0:
                h_lf = h[i, j - 1]
                c_lf = c[i, j - 1]
            g = self.W(x[i, j]) + self.U(h_up) + self.V(h_lf)
            ig, f1, f2, o, u = g.chunk(5)
            cn = torch.sigmoid(ig) * torch.tanh(u) + torch.sigmoid(f1) * c_up + torch.sigmoid(f2) * c_lf
            c[i, j] = cn
            h[i, j] = torch.sigmoid(o) * torch.tanh(cn)
        return h, c


class GridOrder(nn.Module):
    """A grid visited in a given order of cells (row-major, a wavefront, ...): cell = order[t], i = cell // C; a
    diagonal neighbour too. TorchScript exports h[i - 1, j] with tensor indices as a read of the flattened grid."""

    def __init__(self):
        super().__init__()
        self.inp, self.U, self.L = nn.Linear(F, H), nn.Linear(H, H, bias=False), nn.Linear(H, H, bias=False)
        self.D = nn.Linear(H, H, bias=False)

    def forward(self, x, order):
        C = x.shape[1]
        h = torch.zeros(x.shape[0], C, 8)
        for t in range(order.shape[0]):
            cell = order[t]
            i = cell // C
            j = cell % C
            up = h[i - 1, j] if i > 0 else torch.zeros(8)
            lf = h[i, j - 1] if j > 0 else torch.zeros(8)
            dg = h[i - 1, j - 1] if bool(i > 0) and bool(j > 0) else torch.zeros(8)
            h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf) + self.D(dg))
        return h


# ---- the dynamo forms: torch.while_loop, index tensors, torch.where at the borders ----------------------------------
# The exporter cannot translate a remainder by a SymInt (aten.remainder.Scalar): k % C is written k - (k // C) * C.


class GridWhile(GridIf):
    def forward(self, x):
        R, C = x.shape[0], x.shape[1]

        def cond_fn(k, h):
            return k < R * C

        def body_fn(k, h):
            i = (k // C).unsqueeze(0)
            j = (k - (k // C) * C).unsqueeze(0)
            up = torch.where(i > 0, h[i - 1, j], torch.zeros(1, H))
            lf = torch.where(j > 0, h[i, j - 1], torch.zeros(1, H))
            h = h.clone()
            h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf))
            return k + 1, h

        return torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(R, C, H)))[1]


class GridNestedWhile(GridIf):
    """Nested torch.while_loop: the rows, then the cells of a row."""

    def forward(self, x):
        R, C = x.shape[0], x.shape[1]

        def row_cond(i, h):
            return i < R

        def row_body(i, h):
            def cell_cond(j, h):
                return j < C

            def cell_body(j, h):
                ii, jj = i.unsqueeze(0), j.unsqueeze(0)
                up = torch.where((ii > 0).unsqueeze(1), h[ii - 1, jj], torch.zeros(1, H))
                lf = torch.where((jj > 0).unsqueeze(1), h[ii, jj - 1], torch.zeros(1, H))
                h = h.clone()
                h[ii, jj] = torch.tanh(self.inp(x[ii, jj]) + self.U(up) + self.L(lf))
                return j + 1, h

            return i + 1, torch.while_loop(cell_cond, cell_body, (torch.zeros((), dtype=torch.int64), h))[1]

        return torch.while_loop(row_cond, row_body, (torch.zeros((), dtype=torch.int64), torch.zeros(R, C, H)))[1]


class MDLSTMWhile(MDLSTM):
    def forward(self, x):
        R, C = x.shape[0], x.shape[1]

        def cond_fn(k, h, c):
            return k < R * C

        def body_fn(k, h, c):
            i = (k // C).unsqueeze(0)
            j = (k - (k // C) * C).unsqueeze(0)
            up, lf, zero = (i > 0).unsqueeze(1), (j > 0).unsqueeze(1), torch.zeros(1, H)
            h_up, c_up = torch.where(up, h[i - 1, j], zero), torch.where(up, c[i - 1, j], zero)
            h_lf, c_lf = torch.where(lf, h[i, j - 1], zero), torch.where(lf, c[i, j - 1], zero)
            g = self.W(x[i, j]) + self.U(h_up) + self.V(h_lf)
            ig, f1, f2, o, u = g.chunk(5, dim=1)
            cn = torch.sigmoid(ig) * torch.tanh(u) + torch.sigmoid(f1) * c_up + torch.sigmoid(f2) * c_lf
            h, c = h.clone(), c.clone()
            h[i, j] = torch.sigmoid(o) * torch.tanh(cn)
            c[i, j] = cn
            return k + 1, h, c

        zeros = torch.zeros(R, C, H)
        return torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), zeros, zeros.clone()))[1:]


class GridOrderWhile(GridOrder):
    def forward(self, x, order):
        C = x.shape[1]

        def cond_fn(t, h):
            return t < order.shape[0]

        def body_fn(t, h):
            cell = order[t.unsqueeze(0)]
            i = cell // C
            j = cell - i * C
            zero = torch.zeros(1, H)
            up = torch.where((i > 0).unsqueeze(1), h[i - 1, j], zero)
            lf = torch.where((j > 0).unsqueeze(1), h[i, j - 1], zero)
            dg = torch.where(((i > 0) & (j > 0)).unsqueeze(1), h[i - 1, j - 1], zero)
            h = h.clone()
            h[i, j] = torch.tanh(self.inp(x[i, j]) + self.U(up) + self.L(lf) + self.D(dg))
            return t + 1, h

        return torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(x.shape[0], C, H)))[1]


# ---- export, convert, compare -------------------------------------------------------------------------------------


def _export(module: nn.Module, dynamo: bool, path, with_order: bool):
    x = torch.randn(3, 4, F)
    args, names = ((x, torch.arange(12)), ["x", "order"]) if with_order else ((x,), ["x"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch._dynamo.reset()
            dims = {"x": {0: "R", 1: "C"}, "order": {0: "L"}}
            torch.onnx.export(module, args, str(path), input_names=names, dynamo=True,
                              dynamic_shapes={n: dims[n] for n in names})
        else:  # every dimension dynamic, as a user marks them: a product by a weight proves the feature size
            torch.onnx.export(torch.jit.script(module), args, str(path), input_names=names, dynamo=False,
                              dynamic_axes={"x": [0, 1, 2], "order": [0]})


def _converted(tmp_path, cls, dynamo: bool):
    torch.manual_seed(0)
    module = cls().eval()
    src = tmp_path / f"{cls.__name__}.onnx"
    _export(module, dynamo, src, issubclass(cls, GridOrder))
    report = cortex.convert(src, tmp_path / f"{cls.__name__}.cortex.onnx")
    assert [r.converted for r in report.regions] == [True], report.regions[0].reason
    return module, src, cortex.InferenceSession(str(tmp_path / f"{cls.__name__}.cortex.onnx")), report


def _outputs(value):
    return [v.detach().numpy() for v in ((value,) if isinstance(value, torch.Tensor) else value)]


FORMS = [(GridIf, False), (GridWhere, False), (GridNested, False), (MDLSTM, False),
         (GridWhile, True), (GridNestedWhile, True), (MDLSTMWhile, True)]


@pytest.mark.parametrize("cls,dynamo", FORMS, ids=[f"{c.__name__}-{'dynamo' if d else 'script'}" for c, d in FORMS])
def test_grid_converts_and_matches_eager(tmp_path, cls, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    module, src, session, report = _converted(tmp_path, cls, dynamo)
    rng = np.random.default_rng(1)
    for shape in SHAPES:
        x = rng.standard_normal(shape + (F,)).astype(np.float32)
        with torch.no_grad():
            expected = _outputs(module(torch.from_numpy(x)))
        got = session.run(None, {"x": x})
        for e, g in zip(expected, got):
            assert g.shape == e.shape
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=f"grid {shape}")
    empty = session.run(None, {"x": np.zeros((0, 3, F), np.float32)})[0]
    assert empty.shape == (0, 3, H)
    if not dynamo:  # the feature size is dynamic in the export: a row of another size is the original's error
        with pytest.raises(Exception, match="dimension 2 must be 6"):
            session.run(None, {"x": np.zeros((2, 2, F + 1), np.float32)})
        with pytest.raises(Exception):
            ort.InferenceSession(str(src)).run(None, {"x": np.zeros((2, 2, F + 1), np.float32)})


def test_mdlstm_script_export_is_one_ort_gets_wrong(tmp_path):
    """The TorchScript export of MDLSTM returns the zeros of both `if` branches as one hoisted constant, which ONNX
    Runtime computes wrongly (cortex/frontend/ort_hazards.py); the report says so and Cortex matches PyTorch (the
    test above)."""
    _, _, _, report = _converted(tmp_path, MDLSTM, False)
    assert any("ONNX Runtime" in w for r in report.regions for w in r.warnings)


def _orders(R, C, rng) -> dict:
    row_major = np.arange(R * C)
    return {"row-major": row_major,
            "column-major": np.array([i * C + j for j in range(C) for i in range(R)]),
            "wavefront": np.array([i * C + j for d in range(R + C - 1) for i in range(R) for j in range(C)
                                   if i + j == d]),
            "reversed": row_major[::-1], "shuffled": rng.permutation(R * C),
            "twice": np.concatenate([row_major, row_major]), "subset": row_major[::2], "empty": row_major[:0]}


@pytest.mark.parametrize("cls,dynamo", [(GridOrder, False), (GridOrderWhile, True)], ids=["script", "dynamo"])
def test_grid_in_any_order_of_cells_matches_eager(tmp_path, cls, dynamo):
    if dynamo:
        pytest.importorskip("onnxscript")
    module, src, session, _ = _converted(tmp_path, cls, dynamo)
    rng = np.random.default_rng(2)
    for R, C in SHAPES:
        x = rng.standard_normal((R, C, F)).astype(np.float32)
        for name, order in _orders(R, C, rng).items():
            order = np.array(order, dtype=np.int64, copy=True)  # a fresh array (a reversed one-cell view keeps its negative stride)
            with torch.no_grad():
                expected = module(torch.from_numpy(x), torch.from_numpy(order)).numpy()
            got = session.run(None, {"x": x, "order": order})[0]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=f"grid {(R, C)}, {name}")
    original = ort.InferenceSession(str(src))
    x = rng.standard_normal((3, 4, F)).astype(np.float32)
    for bad in ([0, 12], [-49]):  # a cell outside the grid: the original fails, so does the converted model
        with pytest.raises(Exception):
            original.run(None, {"x": x, "order": np.array(bad, np.int64)})
        with pytest.raises(Exception, match="index out of range"):
            session.run(None, {"x": x, "order": np.array(bad, np.int64)})
    # negative cells: the TorchScript exporter writes cell // C as ONNX Div, which truncates (PyTorch floors); the
    # converted model computes what the ONNX graph says, and fails where it fails
    for cells in ([-1, -4, 0, 5], [-13], [-5, 2]):
        order = np.array(cells, np.int64)
        try:
            want = original.run(None, {"x": x, "order": order})[0]
        except Exception:
            with pytest.raises(Exception, match="index out of range"):
                session.run(None, {"x": x, "order": order})
            continue
        np.testing.assert_allclose(session.run(None, {"x": x, "order": order})[0], want, rtol=1e-4, atol=1e-5,
                                   err_msg=f"cells {cells}")


# ---- what stays refused, and says how to rewrite it ---------------------------------------------------------------


class GridTriangle(GridIf):
    """An inner loop whose count changes with the outer iteration (for j in range(i + 1))."""

    def forward(self, x):
        R = x.size(0)
        h = torch.zeros(R, R, 8)
        for i in range(R):
            for j in range(i + 1):
                lf = h[i, j - 1] if j > 0 else torch.zeros(8)
                h[i, j] = torch.tanh(self.inp(x[i, j]) + self.L(lf))
        return h


class GridFloatDiv(GridIf):
    """torch.div(k, C, rounding_mode="floor") by a SymInt: the dynamo exporter computes it in float32."""

    def forward(self, x):
        R, C = x.shape[0], x.shape[1]

        def cond_fn(k, h):
            return k < R * C

        def body_fn(k, h):
            i = torch.div(k, C, rounding_mode="floor").unsqueeze(0)
            j = (k - i * C).reshape(1)
            h = h.clone()
            h[i, j] = torch.tanh(self.inp(x[i, j]))
            return k + 1, h

        return torch.while_loop(cond_fn, body_fn, (torch.zeros((), dtype=torch.int64), torch.zeros(R, C, H)))[1]


@pytest.mark.parametrize("cls,dynamo,reason,hint", [
    (GridTriangle, False, "count changes with the outer iteration", "range(R * C)"),
    (GridFloatDiv, True, "float arithmetic", "k // C"),
], ids=["triangle", "float-floor-division"])
def test_refused_forms_name_the_node_and_the_rewrite(tmp_path, cls, dynamo, reason, hint):
    if dynamo:
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = cls().eval()
    src = tmp_path / "m.onnx"
    _export(module, dynamo, src, False)
    report = cortex.convert(src, tmp_path / "m.cortex.onnx")
    [region] = report.regions
    assert not region.converted
    assert reason in region.reason and "node " in region.reason
    assert hint in (region.hint or "")
    x = np.random.default_rng(0).standard_normal((3, 3, F)).astype(np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = cortex.InferenceSession(str(tmp_path / "m.cortex.onnx")).run(None, {"x": x})[0]  # left to ONNX Runtime
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
