"""cortex-convert IN.onnx -o OUT.onnx [--target cpu] [--strict] [--dump-ir]"""
from __future__ import annotations

import argparse
import sys

from .convert import ConvertError, convert


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="cortex-convert",
        description="Compile the recursive regions of an ONNX model into Cortex kernels. The output model has "
                    "the same inputs and outputs; run it with cortex.session_options().")
    parser.add_argument("model", help="input ONNX model")
    parser.add_argument("-o", "--output", required=True, help="converted model path (kernels go beside it)")
    parser.add_argument("--target", default="cpu", choices=["cpu"], help="code generation target")
    parser.add_argument("--strict", action="store_true", help="fail if any recursive region is left to ONNX Runtime")
    parser.add_argument("--dump-ir", action="store_true", help="print each region's IR before and after the passes")
    args = parser.parse_args(argv)
    try:
        report = convert(args.model, args.output, target=args.target, strict=args.strict)
    except ConvertError as e:
        print(f"cortex-convert: error: {e}", file=sys.stderr)
        return 1
    if args.dump_ir:
        for region in report.regions:
            if region.ir_before:
                print(f"# {region.kind} '{region.node_name}': IR as imported\n{region.ir_before}")
            if region.ir_after:
                print(f"# {region.kind} '{region.node_name}': IR after passes\n{region.ir_after}")
    print(report.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
