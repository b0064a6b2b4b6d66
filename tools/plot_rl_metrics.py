"""Acceptance length, K and draft version over RL steps, spec vs plain, from veRL's metrics logs.

    python tools/plot_rl_metrics.py --spec RUN_DIR_OR_JSONL [--plain RUN_DIR_OR_JSONL] --out rl.png

Each input is a veRL run's file-logger output (``metrics.jsonl``: ``trainer.logger=[console,file]``,
``VERL_FILE_LOGGER_PATH``) or the directory holding it (the quickstart's ``<out>/spec`` and
``<out>/plain``). The quickstart draws this figure itself at the end of its veRL part.
"""

from __future__ import annotations

import argparse
import sys

from verl_specrollout.testing.rl_plot import plot, read_steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True, help="the speculative run: metrics.jsonl or its directory")
    ap.add_argument("--plain", default=None, help="the plain run to compare against (optional)")
    ap.add_argument("--out", required=True, help="PNG to write")
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    try:
        spec = read_steps(args.spec)
        plain = read_steps(args.plain) if args.plain else None
        print(plot(spec, plain, args.out, args.title))
    except (FileNotFoundError, ValueError) as exc:
        print(f"plot_rl_metrics: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
