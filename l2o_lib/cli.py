"""The ``l2o`` command: run notebooks under a profile, list them, run benchmarks.

    l2o run [NOTEBOOK ...] --profile {ci,quick,paper} [-p KEY VALUE ...] [--jobs N]
    l2o list
    l2o bench [CASE ...] [--quick] [--device auto|cpu|cuda] [--out DIR]

This is the only module that parses arguments or prints.
"""

from __future__ import annotations

import argparse
import ast
import sys

from .config import PROFILES

__all__ = ["main"]


def _parse_value(text: str):
    """``-p lr 0.1`` → 0.1, ``-p dims [5,10]`` → [5, 10], anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _cmd_list(args) -> int:
    from .benchmark import find_cases
    from .runner import find_notebooks

    print("notebooks:")
    for p in find_notebooks():
        print(f"  {p.stem}")
    print("profiles:")
    for name, prof in PROFILES.items():
        print(f"  {name:6s} device={prof.device} dataset={prof.dataset} model={prof.model} "
              f"steps={prof.train_steps} seeds={prof.seeds}")
    print("bench cases:")
    for name in find_cases():
        print(f"  {name}")
    return 0


def _cmd_run(args) -> int:
    from tqdm import tqdm

    from .runner import REPO_ROOT, collect_summaries, find_notebooks, run_notebooks

    try:
        paths = find_notebooks(args.notebooks)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not paths:
        print("error: no notebooks found", file=sys.stderr)
        return 2
    params = {k: _parse_value(v) for k, v in (args.param or [])}
    bar = tqdm(total=len(paths), desc=f"notebooks ({args.profile})", unit="nb")

    def done(result):
        bar.update(1)
        status = "ok" if result.ok else "FAILED"
        bar.write(f"{result.name:24s} {status:6s} {result.seconds:7.1f} s  -> {result.output}")

    results = run_notebooks(paths, profile=args.profile, parameters=params, jobs=args.jobs, on_done=done)
    bar.close()
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\n=== {r.name} failed ===\n{r.error}\nexecuted notebook: {r.output}", file=sys.stderr)
    table = collect_summaries(args.profile)
    if not table.empty:
        out = REPO_ROOT / "runs" / args.profile / "results.md"
        from .results import atomic_write_text

        atomic_write_text(out, table.to_markdown(index=False) + "\n")
        print(f"\nresults ({args.profile}):\n{table.to_string(index=False)}\n\nwritten to {out}")
    print(f"figures: {REPO_ROOT / 'figures'}")
    return 1 if failed else 0


def _cmd_bench(args) -> int:
    from pathlib import Path

    from . import benchmark
    from .config import resolve_device

    try:
        cases = benchmark.find_cases(args.cases, benchmark.BENCH_DIR)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.out) if args.out else benchmark.RECORD_DIR

    def done(rec):
        if "error" in rec:
            print(f"{rec['case']:24s} {rec['device']:6s} FAILED  {rec['error']}", flush=True)
        else:
            print(f"{rec['case']:24s} {rec['device']:6s} ours {rec['ours_s']:.4g} s, reference {rec['reference_s']:.4g} s, "
                  f"ratio {rec['ratio']:.3g}x", flush=True)

    records = benchmark.run_cases(cases, quick=args.quick, device=device, out_dir=out_dir, on_done=done)
    text, path = benchmark.write_table(records, out_dir, benchmark.BENCH_DIR)
    print(f"\n{text}\nwritten to {path}")
    failed = [r for r in records if "error" in r]
    for r in failed:
        print(f"\n=== bench case {r['case']} failed ===\n{r['traceback']}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2o", description="l2o-lab: learning to optimize, notebooks and benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run notebooks headlessly with papermill")
    run.add_argument("notebooks", nargs="*", help="names or number prefixes (default: all)")
    run.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                     help="override a notebook parameter (Python literal or string)")
    run.add_argument("--jobs", type=int, default=1, help="notebooks run in parallel")
    run.set_defaults(fn=_cmd_run)

    lst = sub.add_parser("list", help="list notebooks, profiles and bench cases")
    lst.set_defaults(fn=_cmd_list)

    bench = sub.add_parser("bench", help="run benchmark cases from bench/")
    bench.add_argument("cases", nargs="*", help="case names (default: all)")
    bench.add_argument("--quick", action="store_true", help="CI-sized: fewer repetitions, smaller data")
    bench.add_argument("--device", default="auto", help="auto, cpu or cuda")
    bench.add_argument("--out", default=None, help="directory of the records and table.md (default: runs/bench)")
    bench.set_defaults(fn=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        print("error: --jobs must be >= 1", file=sys.stderr)
        return 2
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
