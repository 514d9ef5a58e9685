"""The ``l2o`` command: run notebooks under a profile, list them, run benchmarks.

    l2o run [NOTEBOOK ...] --profile {ci,quick,paper} [-p KEY VALUE ...] [--jobs N]
    l2o list
    l2o bench [CASE ...] [--quick] [--device auto|cpu|cuda] [--out DIR]

This is the only module that parses arguments or prints. Bad input (an unknown notebook, a
parameter a selected notebook does not declare or refuses, a ``--out`` that is a file) ends the
command with ``error: <message>`` and exit status 2 before any notebook or bench case starts.
"""

from __future__ import annotations

import argparse
import ast
import sys

from .config import PROFILES

__all__ = ["main"]


# A value starting like a number, a container or a quoted string is meant as a Python literal:
# if it does not parse, it is a typo to report, not a string to pass on.
_LITERAL_START = tuple("0123456789-+.([{'\"")


def _parse_value(text: str, name: str = "value"):
    """``-p lr 0.1`` → 0.1, ``-p dims [5,10]`` → [5, 10], ``-p device cuda:0`` → ``"cuda:0"``.

    Text that starts like a literal (a digit, sign, bracket or quote) must be one: a malformed
    ``{'SGD': 0.1`` raises ``ValueError`` naming ``name`` instead of reaching the notebook as a string.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        if text.strip().startswith(_LITERAL_START):
            why = exc.msg if isinstance(exc, SyntaxError) else str(exc)
            raise ValueError(f"{name}={text!r} is not a valid Python literal ({why}); write numbers, lists and "
                             f"dicts as in Python, e.g. -p lrs \"{{'SGD': 0.1, 'Momentum': 0.05, 'Adam': 0.003}}\"") \
                from None
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


def _error(message: object) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _checked_run_inputs(args) -> tuple[list, dict]:
    """The selected notebooks and the parsed ``-p`` parameters, every notebook's checked.

    A ``-p`` name must be declared by every selected notebook (one it does not apply to is refused,
    naming that notebook): pass a parameter only with the notebooks that take it. ``-p profile`` is
    refused too: ``--profile`` chooses both the notebooks' scale and their ``runs/<profile>``.
    Raises ``ValueError``.
    """
    from .runner import check_parameters, find_notebooks

    paths = find_notebooks(args.notebooks)
    if not paths:
        raise ValueError("no notebooks found")
    params = {}
    for key, text in args.param or []:
        if key == "profile":
            raise ValueError(f"-p profile {text} is not allowed: choose the profile with --profile (it also picks "
                             f"the run directory runs/<profile>)")
        if key in params:
            raise ValueError(f"parameter {key!r} is given twice with -p")
        params[key] = _parse_value(text, key)
    for path in paths:
        check_parameters(path, profile=args.profile, parameters=params)
    return paths, params


def _cmd_run(args) -> int:
    import time

    from tqdm import tqdm

    from .claims import claims_frame, collect_claims
    from .runner import REPO_ROOT, collect_summaries, run_notebooks

    try:
        paths, params = _checked_run_inputs(args)
    except ValueError as exc:
        return _error(exc)
    started = time.time()
    bar = tqdm(total=len(paths), desc=f"notebooks ({args.profile})", unit="nb")

    def done(result):
        bar.update(1)
        status = "ok" if result.ok else "FAILED"
        where = result.output if result.output.exists() else "(no executed notebook written)"
        bar.write(f"{result.name:24s} {status:6s} {result.seconds:7.1f} s  -> {where}")

    results = run_notebooks(paths, profile=args.profile, parameters=params, jobs=args.jobs, on_done=done)
    bar.close()
    failed = [r for r in results if not r.ok]
    for r in failed:
        written = f"executed notebook: {r.output}" if r.output.exists() else \
            f"the executed notebook was not written ({r.output} does not exist)"
        print(f"\n=== {r.name} failed ===\n{r.error}\n{written}", file=sys.stderr)
    table = collect_summaries(args.profile, root=REPO_ROOT / "runs", failed=[r.name for r in failed], since=started)
    for status in table["status"] if not table.empty else ():
        if status.startswith("UNREADABLE"):
            print(f"warning: {status}", file=sys.stderr)
    if not table.empty:
        out = REPO_ROOT / "runs" / args.profile / "results.md"
        from .files import atomic_write_text

        found = claims_frame(collect_claims(REPO_ROOT / "runs" / args.profile))
        text = table.to_markdown(index=False) + "\n"
        if not found.empty:  # the papers' claims next to ours, one table for every notebook that wrote one
            text += "\n## Claims\n\n" + found.to_markdown(index=False) + "\n"
        atomic_write_text(out, text)
        print(f"\nresults ({args.profile}):\n{table.to_string(index=False)}\n\nwritten to {out}")
    print(f"figures: {REPO_ROOT / 'figures'}")
    return 1 if failed else 0


def _check_out_dir(out_dir):
    """``out_dir`` if it is, or can become, a directory (its nearest existing ancestor is one);
    ``ValueError`` otherwise, so a bench never runs only to fail writing its records."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} exists and is not a directory; give a directory for the records "
                         f"and table.md (default: runs/bench)")
    parent = next((p for p in out_dir.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"--out {str(out_dir)!r} cannot be created: {str(parent)!r} is not a directory")
    return out_dir


def _cmd_bench(args) -> int:
    from pathlib import Path

    from . import benchmark
    from .config import resolve_device

    try:
        cases = benchmark.find_cases(args.cases, benchmark.BENCH_DIR)
        device = resolve_device(args.device)
        out_dir = _check_out_dir(Path(args.out) if args.out else benchmark.RECORD_DIR)
    except ValueError as exc:
        return _error(exc)

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
                     help="override a notebook parameter (Python literal or string); every selected "
                          "notebook must take it")
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
    """Run the ``l2o`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    if getattr(args, "jobs", 1) < 1:
        return _error("--jobs must be >= 1")
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
