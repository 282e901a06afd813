"""Command lines.

cortex-convert IN.onnx -o OUT.onnx [--target cpu|cuda] [--cuda-arch sm_90] [--cpu LEVEL]
               [--precision float32|bf16 --example-inputs NPZ] [--strict] [--dump-ir]
cortex convert ...            (the same)
cortex trust MODEL...         trust the kernel files a converted model ships (you trust its author)
cortex trust --remove MODEL   take that trust back
cortex rebuild MODEL [-o OUT] [--cpu LEVEL]
                              compile the model's kernels here from the IR it carries (trusted, fit for this CPU)
cortex demo [--hidden H] [--trees T] [--sst DIR] [--out DIR]
                              the main job on a bundled TreeLSTM: convert, check against ONNX Runtime, time
"""
from __future__ import annotations

import argparse
import os
import sys

from .codegen.toolchain import CPU_LEVELS
from .convert import ConvertError, convert

_CPU_HELP = ("CPU level the kernels are compiled for; it picks the matrix-product micro-kernel (default: the best "
             "level this host runs: x86-64-v4 with AVX-512, else x86-64-v3 with AVX2/FMA, else x86-64-v2; a lower "
             "level is portable to more CPUs; 'native' uses everything this host has, so the model runs only on CPUs "
             "like it)")


def _convert_parser(prog: str, parser=None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog=prog)
    parser.description = ("Compile the recursive regions of an ONNX model into Cortex kernels. The output model has "
                          "the same inputs and outputs; run it with cortex.session_options().")
    parser.add_argument("model", help="input ONNX model")
    parser.add_argument("-o", "--output", required=True, help="converted model path (kernels go beside it)")
    from .codegen.targets import TARGETS
    parser.add_argument("--target", default="cpu", choices=list(TARGETS),
                        help="code generation target: " + "; ".join(f"{t.name}: {t.description}" for t in TARGETS.values()))
    parser.add_argument("--cuda-arch", default="sm_90", help="GPU architecture of CUDA kernels (default sm_90)")
    parser.add_argument("--cpu", choices=CPU_LEVELS, default=None, help=_CPU_HELP)
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32",
                        help="element type of the CPU kernels' matrix products: float32 (default, exact) or bf16 "
                             "(opt-in: AMX tiles or AVX512-BF16, float32 sums and gates; needs --example-inputs, on "
                             "which the report states the error against float32)")
    parser.add_argument("--example-inputs", default=None, metavar="NPZ",
                        help="the model's inputs by name (numpy .npz) on which --precision bf16 measures its error")
    parser.add_argument("--strict", action="store_true", help="fail if any recursive region is left to ONNX Runtime")
    parser.add_argument("--dump-ir", action="store_true", help="print each region's IR before and after the passes")
    return parser


def _run_convert(args, prog: str) -> int:
    try:
        report = convert(args.model, args.output, target=args.target, strict=args.strict, cpu=args.cpu,
                         cuda_arch=args.cuda_arch, precision=args.precision, example_inputs=args.example_inputs)
    except ConvertError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    if args.dump_ir:
        for region in report.regions:
            if region.ir_before:
                print(f"# {region.kind} '{region.node_name}': IR as imported\n{region.ir_before}")
            if region.ir_after:
                print(f"# {region.kind} '{region.node_name}': IR after passes\n{region.ir_after}")
    print(report.format())
    return 0


def _one_line(prog: str, command):
    """Runs a command; whatever escapes it is one line on stderr (exit 1), never a traceback (CORTEX_DEBUG=1 shows
    the traceback of an unexpected error)."""
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's promise: one clear line
        if os.environ.get("CORTEX_DEBUG"):
            raise
        text = " ".join(str(e).split())[:500]
        print(f"{prog}: error: {text or type(e).__name__}", file=sys.stderr)
        return 1


def main(argv=None) -> int:
    """cortex-convert"""
    args = _convert_parser("cortex-convert").parse_args(argv)
    return _one_line("cortex-convert", lambda: _run_convert(args, "cortex-convert"))


def _run_trust(args) -> int:
    from . import trust
    from .artifacts import MAX_KERNEL_BYTES, ArtifactError, cortex_nodes, resolve_kernel, sha256_file
    from .convert import load_model

    status = 0
    for model_path in args.models:
        try:
            nodes = cortex_nodes(load_model(model_path))
            if not nodes:
                raise ArtifactError(f"{model_path} has no Cortex node")
            for node in nodes:
                kernel = resolve_kernel(model_path, node.cache_context)
                if not kernel.exists():
                    raise ArtifactError(f"kernel {kernel} is missing")
                sha = sha256_file(kernel, MAX_KERNEL_BYTES)
                if sha != node.sha256:
                    raise ArtifactError(f"kernel {kernel} does not match its node (sha256 {sha}, the node says "
                                        f"{node.sha256}); it is corrupted or was swapped")
                if args.remove:
                    trust.remove(sha)
                    print(f"cortex trust: no longer trusted: {kernel} (sha256 {sha})")
                else:
                    trust.add(sha, f"trusted by the user with `cortex trust {model_path}`")
                    print(f"cortex trust: trusted {kernel} (sha256 {sha}) in {trust.store_dir()}")
        except (ConvertError, ArtifactError, trust.TrustError, OSError) as e:
            print(f"cortex trust: error: {e}", file=sys.stderr)
            status = 1
    return status


def _run_rebuild(args) -> int:
    from .rebuild import RebuildError, rebuild

    try:
        report = rebuild(args.model, args.output, cpu=args.cpu)
    except RebuildError as e:
        print(f"cortex rebuild: error: {e}", file=sys.stderr)
        return 1
    print(report.format())
    return 0


def cortex_main(argv=None) -> int:
    """cortex {convert,trust,rebuild,demo}"""
    parser = argparse.ArgumentParser(prog="cortex", description="Cortex: compile recursive models, manage kernels.")
    commands = parser.add_subparsers(dest="command", required=True)
    _convert_parser("cortex convert", commands.add_parser("convert", help="the same as cortex-convert"))
    trust_parser = commands.add_parser(
        "trust", help="trust the kernels a converted model ships",
        description="Record the kernel files of converted models in this machine's trust store, so the Cortex EP "
                    "loads them. Kernels are native code: trust only models whose author you trust; otherwise run "
                    "`cortex rebuild MODEL`.")
    trust_parser.add_argument("models", nargs="+", metavar="MODEL", help="converted model (.onnx)")
    trust_parser.add_argument("--remove", action="store_true", help="take the trust back")
    rebuild_parser = commands.add_parser(
        "rebuild", help="compile a converted model's kernels here, from the IR it carries",
        description="Regenerate and compile every Cortex kernel of a converted model on this machine from the IR the "
                    "model carries (data, not code), for this CPU; the kernels are written into the model's artifact "
                    "folder and trusted here. The model's old kernel files are never loaded.")
    rebuild_parser.add_argument("model", help="converted model (.onnx)")
    rebuild_parser.add_argument("-o", "--output", default=None, help="write the rebuilt model here (default: in place)")
    rebuild_parser.add_argument("--cpu", choices=CPU_LEVELS, default=None, help=_CPU_HELP)
    commands.add_parser("demo", help="convert and run a bundled TreeLSTM, against ONNX Runtime", add_help=False)
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["demo"]:  # its own options (cortex demo --help)
        from .demo import main as demo
        return _one_line("cortex demo", lambda: demo(argv[1:]))
    args = parser.parse_args(argv)
    if args.command == "convert":
        return _one_line("cortex convert", lambda: _run_convert(args, "cortex convert"))
    if args.command == "trust":
        return _one_line("cortex trust", lambda: _run_trust(args))
    return _one_line("cortex rebuild", lambda: _run_rebuild(args))


if __name__ == "__main__":
    sys.exit(main())
