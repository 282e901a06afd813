"""tools/serve_bench.py: a tiny closed-loop run (hidden 8, two client counts, a fraction of a second a point) writes
its table with every mode, the bound and the targets; the plot where matplotlib is installed."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tools import serve_bench  # noqa: E402

TINY = ["--hidden", "8", "--clients", "2,32", "--seconds", "0.2", "--max-requests", "300", "--trees", "40",
        "--modes", "run,batching"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_bench")
    assert serve_bench.main(TINY + ["--out", str(out), "--no-plot"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_points_for_every_mode_and_client_count(results):
    _, data = results
    seen = {(p["mode"], p["clients"]) for p in data["points"]}
    assert seen == {(m, c) for m in ("run", "batching", "bound", "merge") for c in (1, 2, 32)}  # 1: single latency
    for p in data["points"]:
        assert p["throughput"] > 0
        if p["mode"] not in ("bound", "merge"):
            assert 0 < p["requests"] <= 300 and p["p50_ms"] <= p["p99_ms"]
    batching = next(p for p in data["points"] if p["mode"] == "batching" and p["clients"] == 32)
    assert batching["mean_batch"] > 1  # 32 clients share forests
    steps = batching["steps_us"]  # the worker's clocks per kernel call, within the call's cycle
    assert steps["running"] > 0 and steps["merging"] > 0 and steps["splitting"] > 0
    assert sum(steps[s] for s in serve_bench.STEPS) <= steps["cycle"] * 1.05


def test_table_and_targets(results):
    out, data = results
    text = (out / "results.md").read_text()
    assert "python tools/serve_bench.py --hidden 8" in text and "load average" in text
    assert "| 8 | 32 | batching |" in text and "batching / bound" in text
    assert "Where a batching call's time goes" in text and "| merging | running | splitting |" in text
    (row,) = serve_bench.targets(data)
    assert row["clients"] == 32 and row["speedup_over_run"] > 0 and row["of_bound"] > 0


def test_plot(results):
    pytest.importorskip("matplotlib")
    out, data = results
    serve_bench.plot(data, out / "throughput.png")
    assert (out / "throughput.png").stat().st_size > 1000


def test_unknown_mode_is_refused():
    with pytest.raises(SystemExit):
        serve_bench.parse_args(["--modes", "run,http"])


def test_asyncio_clients_the_ceiling_and_the_floor(tmp_path):
    """--clients-as asyncio: the same points from coroutines on one event loop; 32 of them still share forests.
    The ceiling mode (a BatchingSession that runs nothing) and the floor (the clients against a queue that checks
    nothing) are measured the same way and reported against run."""
    args = TINY[:-1] + ["run,batching,ceiling,floor", "--clients-as", "asyncio", "--out", str(tmp_path), "--no-plot"]
    assert serve_bench.main(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["clients_as"] == "asyncio"
    for p in data["points"]:
        if p["mode"] in ("run", "batching", "ceiling", "floor"):
            assert 0 < p["requests"] <= 300 and p["p50_ms"] <= p["p99_ms"]
    batching = next(p for p in data["points"] if p["mode"] == "batching" and p["clients"] == 32)
    assert batching["mean_batch"] > 1
    ceiling = next(p for p in data["points"] if p["mode"] == "ceiling" and p["clients"] == 32)
    assert ceiling["mean_batch"] > 1 and ceiling["steps_us"]["running"] == 0  # queued and answered, never run
    (row,) = serve_bench.targets(data)
    assert row["ceiling_over_run"] > 0 and row["floor_over_run"] > 0
    assert "| ceiling / run | floor / run |" in (tmp_path / "results.md").read_text()


def test_the_floor_with_threaded_clients():
    """The floor answers blocking callers (threads) and asyncio callers with no outputs, in batches that grow with
    the callers, and takes a lone caller's request without waiting for others (after its first batch)."""
    import asyncio
    import threading
    import time

    floor = serve_bench.FloorServer(max_trees=8, max_delay_ms=50.0)
    try:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(floor.run({}, timeout=10))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert answers == [[]] * 8

        async def callers():
            return await asyncio.gather(*(floor.run_async({}) for _ in range(20)))
        assert asyncio.run(callers()) == [[]] * 20
        floor.run({}, timeout=10)  # a batch of one: a lone caller then waits for nobody
        started = time.perf_counter()
        for _ in range(5):
            floor.run({}, timeout=10)
        assert time.perf_counter() - started < 5 * 0.05
    finally:
        floor.close()


@pytest.mark.parametrize("form", ["treerec", "loop"])
def test_a_client_sending_malformed_trees(tmp_path, form):
    """--bad-every 8: every eighth request fails (a TreeRec's cycle fails its merged forest, which is rerun in halves;
    a Loop's order past the tree runs alone), each failure an answer counted under "errors"; the others merge."""
    args = TINY[:-1] + ["run,batching", "--clients", "32", "--bad-every", "8", "--form", form, "--out", str(tmp_path),
                        "--no-plot"]
    assert serve_bench.main(args) == 0
    points = json.loads((tmp_path / "results.json").read_text())["points"]
    for p in points:
        if p["mode"] in ("run", "batching"):
            assert 0 < p["errors"] < p["requests"] / 4, p  # about an eighth of the answers are errors
    batching = next(p for p in points if p["mode"] == "batching" and p["clients"] == 32)
    assert batching["mean_batch"] > 1  # the well-formed requests still share forests


def test_the_bound_with_several_callers(tmp_path):
    """--bound-callers 2: the bound's forests also run by two threads at once on the one session, a point of its
    own beside the bound, at the batch size the batching session reached. One repeat: with several, each mode's
    point is its own median repeat, and the batch reached differs between repeats."""
    args = TINY[:-1] + ["batching", "--clients", "32", "--bound-callers", "2", "--repeats", "1", "--out",
                        str(tmp_path), "--no-plot"]
    assert serve_bench.main(args) == 0
    points = json.loads((tmp_path / "results.json").read_text())["points"]
    (together,) = [p for p in points if p["mode"] == "bound_callers" and p["clients"] == 32]
    (bound,) = [p for p in points if p["mode"] == "bound" and p["clients"] == 32]
    assert together["callers"] == 2 and together["batch"] == bound["batch"] and together["throughput"] > 0
    assert "2 callers at once" in serve_bench._line(together)


def test_a_wrong_merge_is_caught_before_measuring(tmp_path, monkeypatch):
    """The answers are checked on merged forests too: a split that gives a merged request its neighbour's rows
    (single requests, run alone, stay right) stops the run before any point is measured."""
    import cortex.serving.forest as forest

    split = forest.split

    def shifted(plan, outputs, merged):
        parts = split(plan, outputs, merged)
        return parts[1:] + parts[:1] if len(parts) > 1 else parts

    monkeypatch.setattr(forest, "split", shifted)
    with pytest.raises(SystemExit, match="mode batching answers differently"):
        serve_bench.main(TINY + ["--out", str(tmp_path), "--no-plot"])
    assert not (tmp_path / "results.json").exists()


def test_uvloop_clients(tmp_path):
    """--clients-as uvloop: the coroutines on uvloop's event loop (Ray's actors and uvicorn run on it; the serve and
    test extras bring it through ray[serve]); batching still merges their requests."""
    pytest.importorskip("uvloop")
    args = TINY[:-1] + ["batching", "--clients-as", "uvloop", "--out", str(tmp_path), "--no-plot"]
    assert serve_bench.main(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["settings"]["clients_as"] == "uvloop"
    batching = next(p for p in data["points"] if p["mode"] == "batching" and p["clients"] == 32)
    assert 0 < batching["requests"] <= 300 and batching["mean_batch"] > 1


def test_replicas(tmp_path):
    """--replicas 2: two server processes, each with its own sessions and half the clients, checked before they are
    measured; a point's rate is the replicas' added, its latencies pooled, and 16 clients a replica still share
    forests."""
    args = TINY[:-1] + ["run,batching", "--clients-as", "asyncio", "--replicas", "2", "--out", str(tmp_path),
                        "--no-plot"]
    assert serve_bench.main(args) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    points = {(p["mode"], p["clients"]): p for p in data["points"]}
    assert set(points) == {(m, c) for m in ("run", "batching", "bound", "merge") for c in (1, 2, 32)}
    batching = points[("batching", 32)]
    assert [r["clients"] for r in batching["replicas"]] == [16, 16]
    assert batching["throughput"] == pytest.approx(sum(r["throughput"] for r in batching["replicas"]), abs=2)
    assert 0 < batching["requests"] <= 300 and batching["mean_batch"] > 1
    assert "replicas" not in points[("run", 1)]  # one client: one replica serves it
    assert "2 replicas (processes)" in (tmp_path / "results.md").read_text()


def test_replicas_and_ray():
    """Ray Serve has replicas of its own: named with --replicas it is refused; the default modes drop it."""
    with pytest.raises(SystemExit):
        serve_bench.parse_args(["--replicas", "2", "--modes", "run,ray"])
    assert serve_bench.parse_args(["--replicas", "2"]).modes == ["run", "batching"]
    with pytest.raises(SystemExit):
        serve_bench.parse_args(["--replicas", "0"])


def test_a_replica_that_cannot_start_stops_the_run(tmp_path):
    """A replica that dies (here: no model where it was told) is reported, not waited for."""
    args = serve_bench.parse_args(TINY + ["--replicas", "2", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="a replica exited"):
        serve_bench.Replicas(str(tmp_path / "missing.cortex.onnx"), args)
