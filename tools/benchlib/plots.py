"""The plots of a comparison run: per model, Cortex's speedup over each peer and the latency against hidden size."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .report import system_label, table_systems


def make_plots(res: dict, out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        res["notes"].append(f"plots skipped: matplotlib not installed ({e})")
        return []
    paths = []
    for model in sorted({r["model"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["model"] == model]
        # speedup of Cortex over each peer, per configuration
        labels = [f"h={r['hidden']}\nb={r['batch']}" for r in rows]
        peers = [n for n in table_systems(res)[1:] if any(n in r.get("speedup", {}) for r in rows)]
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows) + 2), 4))
        w = 0.8 / max(len(peers), 1)
        x = np.arange(len(rows))
        for j, n in enumerate(peers):
            vals = [r.get("speedup", {}).get(n, np.nan) for r in rows]
            ax.bar(x + (j - (len(peers) - 1) / 2) * w, vals, w, label=f"over {n}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_ylabel("speedup of Cortex (×, log)")
        ax.set_title(f"{model}: Cortex speedup (median ms ratio), {res['machine']['usable_cores']} CPU cores")
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / f"speedup_{model}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
        # latency against hidden size, one panel per batch size
        batches = sorted({r["batch"] for r in rows})
        fig, axes = plt.subplots(1, len(batches), figsize=(4.2 * len(batches), 3.8), squeeze=False)
        for ax, b in zip(axes[0], batches):
            rb = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["hidden"])
            for n in table_systems(res):
                pts = [(r["hidden"], r["results"][n]["ms_median"], r["results"][n]["ms_p10"],
                        r["results"][n]["ms_p90"]) for r in rb if r["results"].get(n, {}).get("status") == "ok"]
                if not pts:
                    continue
                hs, ms, lo, hi = map(np.array, zip(*pts))
                ax.errorbar(hs, ms, yerr=[ms - lo, hi - ms], marker="o", capsize=3, label=system_label(res, n))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("hidden size")
            ax.set_ylabel("ms per forest")
            ax.set_title(f"batch {b}")
            ax.legend(fontsize=7)
        fig.suptitle(f"{model}: latency against hidden size")
        fig.tight_layout()
        p = out / f"latency_{model}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(str(p))
    return paths
