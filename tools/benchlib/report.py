"""The report of a comparison run: its Markdown (header, latency and throughput tables, where Cortex's time goes)
and the generated section of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

from tools.peers import machine as _machine
from tools.peers import systems as S

DOCS_BEGIN = "<!-- BEGIN GENERATED: tools/bench.py --write-docs -->"
DOCS_END = "<!-- END GENERATED: tools/bench.py --write-docs -->"


def _ms(r) -> str:
    if r.get("status") != "ok":
        return r.get("status", "-").split(" (")[0]
    m = r["ms_median"]
    f = (lambda x: f"{x:.3g}") if m < 10 else (lambda x: f"{x:.0f}")
    return f"{f(m)} ({f(r['ms_p10'])}–{f(r['ms_p90'])})"


def table_systems(res: dict) -> list[str]:
    """Columns of the tables: the CPU systems, plus the GPU systems on a --target cuda run."""
    return list(S.CPU_SYSTEMS) + (list(S.GPU_SYSTEMS) if res.get("target") == "cuda" else [])


def system_label(res: dict, name: str) -> str:
    """A system's name, with its device on a --target cuda run (the CPU systems still run on the CPU there)."""
    if res.get("target") != "cuda":
        return name
    dev = S.DEVICE.get(name, "?")
    return name if name.endswith(f"({dev})") else f"{name} ({dev})"

def render_table(res: dict) -> str:
    """The main table: ms per forest (median, p10–p90 over repeats) per system, Cortex's speedups, GFLOP/s."""
    sysn = table_systems(res)
    peers = sysn[1:]
    short = {S.ORT: "ORT"}
    lines = []
    hdr = (["model", "hidden", "batch"] + [f"{system_label(res, n)} ms" for n in sysn]
           + [f"Cortex vs {short.get(peers[0], peers[0])}"] + [f"vs {n}" for n in peers[1:]]
           + ["GFLOP/s " + " / ".join(short.get(n, n) for n in sysn), "Cortex % of peak", "Cortex trees/s"])
    lines.append("| " + " | ".join(hdr) + " |")
    lines.append("|" + "|".join(["---"] * 3 + ["---:"] * (len(hdr) - 3)) + "|")
    for row in res["rows"]:
        R = row["results"]
        sp = row.get("speedup", {})
        gf = " / ".join(f"{R[n]['gflops']:.2f}" if R.get(n, {}).get("status") == "ok" else "–" for n in sysn)
        cx = R.get(S.CORTEX, {})
        cells = [row["model"], str(row["hidden"]), f"{row['batch']}" + (" (throughput)" if row["kind"] == "throughput"
                                                                        else "")]
        cells += [_ms(R.get(n, {})) for n in sysn]
        cells += [f"{sp[n]:.1f}×" if n in sp else "–" for n in peers]
        cells += [gf, f"{100 * cx['peak_frac']:.1f}%" if cx.get("peak_frac") else "–",
                  f"{cx['trees_per_s']:.0f}" if cx.get("trees_per_s") else "–"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_throughput(res: dict) -> str:
    sysn = table_systems(res)
    lines = ["| model | hidden | batch | " + " | ".join(f"{system_label(res, n)} trees/s" for n in sysn) + " |",
             "|---|---|---|" + "---:|" * len(sysn)]
    for row in res["rows"]:
        R = row["results"]
        cells = [row["model"], str(row["hidden"]), str(row["batch"])]
        cells += [f"{R[n]['trees_per_s']:.0f}" if R.get(n, {}).get("status") == "ok" else R.get(n, {}).get(
            "status", "–").split(" (")[0] for n in sysn]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_steps(res: dict, system: str) -> str | None:
    """Where ``system``'s time goes per config (--phases): end to end, in the kernel, outside it, and the kernel's
    steps; None without --phases."""
    rows = [r for r in res["rows"] if r["results"].get(system, {}).get("phases")]
    if not rows:
        return None
    steps = list(rows[0]["results"][system]["phases"]["steps_us"])
    hdr = ["model", "hidden", "batch", "end to end µs", "outside the kernel µs", "kernel µs"] + [f"{k} µs"
                                                                                               for k in steps]
    lines = ["| " + " | ".join(hdr) + " |", "|---|---|---|" + "---:|" * (len(hdr) - 3)]
    for row in rows:
        r = row["results"][system]
        ph = r["phases"]
        cells = [row["model"], str(row["hidden"]), str(row["batch"]), f"{1e3 * r['ms_median']:.1f}",
                 f"{ph['outside_us']:.1f}", f"{ph['kernel_us']:.1f}"]
        cells += [f"{ph['steps_us'][k]:.1f}" if k in ph["steps_us"] else "–" for k in steps]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


STEPS_NOTE = ("End to end: the median of the timed repeats above, through the ORT session. The rest comes from 3 "
              "untimed passes over the same inputs through the same session (--phases sets CORTEX_PROFILE=1, which "
              "turns on the kernel's own clocks), medians over the runs: kernel = its clocks from its entry to its "
              "end; outside the kernel = that run's end to end less its kernel time (ORT's run, input and output "
              "handling, the EP's call, Python); then the kernel's steps, which add up to about the kernel's time "
              "(on the GPU 'until finished' holds the GPU kernel (events) and the wait for it).")


def render_header(res: dict) -> str:
    m, pk = res["machine"], res["peak"]
    st_ = res["structures"]
    s = res["settings"]
    lines = [
        f"- Command: `{res['command']}` ({res['started']}, {res.get('elapsed_s', 0) / 60:.1f} min)",
        f"- Machine: {_machine.one_line(m)}" + (f"; GPU: {m['gpu']}" if m.get("gpu") else ""),
        f"- Matrix-product peak (measured in this run): {pk['peak_gflops']:.1f} GFLOP/s ({pk['peak_source']}; numpy "
        f"{pk['numpy_matmul_gflops']:.1f}" + (f", cortex._C.gemm_packed {pk['cortex_gemm_packed_gflops']:.1f}"
                                                if pk.get("cortex_gemm_packed_gflops") else "")
        + (f"; register-only FMA ceiling {pk['fma_peak_gflops']:.0f}" if pk.get("fma_peak_gflops") else "") + ")",
        f"- Load average (1, 5, 15 min) at start / end: {m.get('load_average_start')} / "
        f"{m.get('load_average_end')} (the machine is shared; other load inflates times and spreads)",
    ]
    for key, d in st_.items():
        lines.append(f"- Structures ({key}): {d['source']}; mean {d['mean_nodes']:.1f} nodes"
                     + (f", mean height {d['mean_height']:.1f}, max height {d['max_height']}" if "mean_height" in d
                        else ""))
    lines += [
        f"- Timing: per config and system, the outputs are first checked against the numpy reference (every "
        f"output table, every node, max abs error <= {res['tolerance']:g}); then {s['warmup_passes']} warm-up pass(es) and "
        f"{s['repeats_min_max'][0]}–{s['repeats_min_max'][1]} timed repeats (as many as fit in {s['budget_s']:g} s); "
        "a repeat runs every input of the config once. ms = time per forest: median over repeats of the mean "
        "over inputs (p10–p90 over repeats in brackets). Batch 1 = "
        f"{s['trees_batch1']} different single trees; batch B = up to {s['max_forests']} different forests of B trees.",
        "- FLOPs: the model's matrix products (2·M·K·N per node visit as the model defines them; per model below), "
        "the same for every system; GFLOP/s = FLOPs / median time; % of peak = Cortex GFLOP/s / the peak above (can exceed 100%: Cortex "
        "folds the leaf projection into the embedding at conversion, so it does fewer FLOPs than the model's count, "
        "and a loaded machine depresses the measured peak).",
    ]
    for name, info in res["systems"].items():
        extra = ""
        if info.get("autobatch") is not None:
            extra = f", autobatch={info['autobatch']}"
        if info.get("threads"):
            extra += f", {info['threads']} threads"
        tail = f" ({info['note']}{extra})" if info.get("note") else (f" ({extra.lstrip(', ')})" if extra else "")
        lines.append(f"- {system_label(res, name)}: {info['status']}" + tail)
    for name, mi in res.get("models", {}).items():
        lines.append(f"- Model {name} ({mi['structure']}): {mi['description']}; PyTorch style {mi['pytorch_style']}; "
                     f"DyNet: {mi['dynet']}; FLOPs {mi['flops']} (D = 300 unless noted)")
    for n in res.get("notes", []):
        lines.append(f"- Note: {n}")
    return "\n".join(lines)


def render_markdown(res: dict) -> str:
    parts = ["# Cortex benchmark results", "", render_header(res), "", "## Latency per forest (ms) and speedup of "
             "Cortex", "", render_table(res), "", "## Throughput (trees/s)", "", render_throughput(res), ""]
    if render_steps(res, S.CORTEX):
        parts += ["## Where Cortex's time goes (µs per forest)", "", STEPS_NOTE, "", render_steps(res, S.CORTEX), ""]
    if res.get("target") == "cuda":  # Cortex (CUDA): kernel alone and end to end against the GPU peers
        from tools.peers import gpu_report

        parts += [gpu_report.render_section(res), ""]
    if res.get("plots"):
        parts += ["## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in res["plots"]] + [""]
    return "\n".join(parts)

def write_docs(res: dict, path: Path) -> None:
    """Regenerates the section between the generated-section markers of docs/performance.md (created if
    missing; text outside the markers is kept)."""
    body = "\n".join([
        DOCS_BEGIN,
        "## Benchmark: Cortex against ONNX Runtime, PyTorch and DyNet",
        "",
        "Generated by `tools/bench.py --write-docs` from one run; regenerate with the command below (add "
        "`--write-docs`). Every number here comes from that run.",
        "",
        render_header(res),
        "",
        "### Latency per forest (ms) and speedup of Cortex",
        "",
        render_table(res),
        "",
        "### Throughput (trees/s)",
        "",
        render_throughput(res),
        "",
    ] + ([
        "### Where Cortex's time goes (µs per forest)",
        "",
        STEPS_NOTE,
        "",
        render_steps(res, S.CORTEX),
        "",
    ] if render_steps(res, S.CORTEX) else []) + [
        f"Plots (`speedup_<model>.png`, `latency_<model>.png`) and all raw numbers (`results.json`) are written to "
        f"the run's `--out` directory. Every form of every zoo model (converted or not, error, ORT vs Cortex at "
        "hidden 256, batch 10): [models.md](models.md), generated by `tools/bench.py --forms --write-models-doc`.",
        DOCS_END,
    ])
    replace_generated(path, body, "# Performance\n\n")


def replace_generated(path: Path, body: str, new_page: str) -> None:
    """Writes body (which starts with DOCS_BEGIN and ends with DOCS_END) over the generated section of path, keeping
    the hand-written text around it; a page without the markers gets the section appended."""
    text = path.read_text() if path.exists() else new_page
    if DOCS_BEGIN in text and DOCS_END in text:
        pre, rest = text.split(DOCS_BEGIN, 1)
        post = rest.split(DOCS_END, 1)[1]
        text = pre + body + post
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
