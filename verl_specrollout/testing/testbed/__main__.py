import argparse
import contextlib
import json
import os
import shlex
import sys

from .build import SIZES

# --print-paths: one `TESTBED_<NAME>=<path>` line per directory / file, shell-quoted, for `eval`.
PATH_FIELDS = ("root", "target_dir", "eagle3_dir", "draft_lm_dir", "tokenizer_dir", "data_dir",
               "train_parquet", "test_parquet")


@contextlib.contextmanager
def _stdout_to_stderr():
    """Everything written to stdout in the block -- Python's prints, C code and child processes writing
    to file descriptor 1 -- goes to stderr instead, so stdout carries only what is printed after it."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 1)
        os.close(saved)


def shell_assignments(tb) -> str:
    return "\n".join(f"TESTBED_{name.upper()}={shlex.quote(str(getattr(tb, name)))}" for name in PATH_FIELDS)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m verl_specrollout.testing.testbed")
    ap.add_argument("--size", default="tiny", choices=SIZES)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--measure", action="store_true",
                    help="also measure T=0 acceptance length of both drafts with vLLM")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-prompts", type=int, default=32)
    ap.add_argument("--print-paths", action="store_true",
                    help="print only shell assignments TESTBED_TARGET_DIR=..., TESTBED_DATA_DIR=..., ... on stdout "
                         "(build progress goes to stderr), for `eval` in scripts")
    args = ap.parse_args(argv)

    from . import build_testbed

    if args.print_paths:
        with _stdout_to_stderr():
            tb = build_testbed(args.size, force=args.force)
        print(shell_assignments(tb), flush=True)
        return 0
    tb = build_testbed(args.size, force=args.force)
    out = tb.to_dict()
    st = out.pop("stats")
    out["target_params"] = st.get("target_params")
    out["eagle3_params"] = st.get("eagle3_params")
    out["draft_lm_params"] = st.get("draft_lm_params")
    out["target_response_stats"] = st.get("target_response_stats")
    out["target_greedy_accuracy"] = st.get("target_greedy_accuracy")
    if args.measure:
        from .measure import measure_acceptance

        out["acceptance"] = {}
        for method in ("eagle3", "draft_model"):
            r = measure_acceptance(tb, method, k=args.k, temperature=0.0,
                                   n_prompts=args.n_prompts)
            out["acceptance"][method] = {k: r[k] for k in
                                         ("mean_acceptance_length", "per_position_acceptance",
                                          "accuracy", "num_drafts")}
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
