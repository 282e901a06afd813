"""Writes the generated kernel source of every zoo model in every form (Loop, TreeRec, TorchScript styles, the cell
road, the wild exports), for every target, into a folder; with --compare, says which sources differ from an earlier
snapshot. A refactor of the code generator that must not change its output proves it with two snapshots:

    python tools/codegen_snapshot.py --out /tmp/before        # on the old code
    python tools/codegen_snapshot.py --out /tmp/after --compare /tmp/before

No kernel is compiled; the exports need torch (without it only the Loop and TreeRec forms are written).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.benchlib.forms import form_model  # noqa: E402  (the forms of each model, as tools/bench.py --forms)
from tools.benchlib.measure import config_inputs, load_structures  # noqa: E402
from tools.peers import models as _models  # noqa: E402

from cortex.codegen.targets import TARGETS  # noqa: E402
from cortex.frontend import find_regions  # noqa: E402
from cortex.passes import optimize  # noqa: E402
from cortex.treerec.portable import raise_treerec  # noqa: E402


def forms_of(name: str) -> list:
    return ([("loop", None), ("treerec", None)] + _models.export_styles(name) + _models.cell_forms(name)
            + _models.wild_forms(name))


def snapshot(out: Path, hidden: int, seed: int, log=print) -> dict:
    """{file name: source} of every model, form, region and target; each also written into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sources = {}
    tmp = Path(tempfile.mkdtemp(prefix="cortex_snapshot_"))
    for name in _models.names():
        entry = _models.get(name)
        structures, _ = load_structures(entry.structure, None, 4, entry.vocab, seed)
        example = config_inputs(structures, 2, 1, entry.structure)[0]
        params = entry.make_params(hidden, seed)
        for form, module in forms_of(name):
            try:
                model = form_model(entry, form, module, params, example, tmp)[0]
            except Exception as e:  # noqa: BLE001 - an export that fails is listed, not fatal
                log(f"{name} {form}: not built ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})")
                continue
            for k, region in enumerate(find_regions(raise_treerec(model)[0])):  # a portable file: its TreeRec
                if region.program is None:
                    log(f"{name} {form} region {k}: refused ({region.reason})")
                    continue
                program = optimize(region.program)
                for target in TARGETS.values():
                    try:
                        text = target.configure().generator(program).generate(f"{program.name} of model.onnx")
                    except Exception as e:  # noqa: BLE001
                        text = f"// not generated: {type(e).__name__}: {e}\n"
                    file = f"{name}-{form}-{k}.{target.name}.txt"
                    sources[file] = text
                    (out / file).write_text(text)
    return sources


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the sources")
    parser.add_argument("--compare", help="an earlier snapshot folder: list what differs, exit 1 if anything does")
    parser.add_argument("--hidden", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sources = snapshot(Path(args.out), args.hidden, args.seed)
    print(f"{len(sources)} sources written to {args.out}")
    if not args.compare:
        return 0
    before = {p.name: p.read_text() for p in Path(args.compare).glob("*.txt")}
    changed = sorted(f for f in sources if f in before and before[f] != sources[f])
    added, removed = sorted(set(sources) - set(before)), sorted(set(before) - set(sources))
    for label, files in (("differs", changed), ("new", added), ("missing", removed)):
        for f in files:
            print(f"{label}: {f}")
    same = len(sources) - len(changed) - len(added)
    print(f"{same} identical, {len(changed)} differ, {len(added)} new, {len(removed)} missing")
    return 1 if changed or added or removed else 0


if __name__ == "__main__":
    sys.exit(main())
