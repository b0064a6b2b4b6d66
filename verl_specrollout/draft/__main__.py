"""``python -m verl_specrollout.draft``: draft checkpoint tools that need no model load.

    check      --draft DIR_OR_HUB_ID --target DIR_OR_HUB_ID   does the EAGLE-3 head fit the target?
    aux-layers --draft DIR_OR_HUB_ID --target DIR_OR_HUB_ID   the target layers vLLM feeds the head, e.g. [2,14,25]
    resolve    PATH_OR_HUB_ID                                 print the local directory (hub id -> snapshot)
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m verl_specrollout.draft", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="check an EAGLE-3 head against a target model (configs and weight headers only)")
    c.add_argument("--draft", required=True, help="EAGLE-3 head: local directory or Hugging Face hub id")
    c.add_argument("--target", required=True, help="target model: local directory or Hugging Face hub id")
    a = sub.add_parser("aux-layers", help="print the target layers vLLM feeds the head (its "
                                          "eagle_aux_hidden_state_layer_ids, else vLLM's default) as [i,j,k]")
    a.add_argument("--draft", required=True, help="EAGLE-3 head: local directory or Hugging Face hub id")
    a.add_argument("--target", required=True, help="target model: local directory or Hugging Face hub id")
    r = sub.add_parser("resolve", help="print a model path's local directory (a hub id: its cached snapshot, "
                                       "downloaded unless HF_HUB_OFFLINE is set)")
    r.add_argument("path", help="local directory, hdfs:// path or Hugging Face hub id")
    r.add_argument("--what", default="model", help="name used in the error message")
    args = ap.parse_args(argv)

    if args.cmd == "check":
        from verl_specrollout.draft.check import run_check

        return run_check(args.draft, args.target)
    if args.cmd == "aux-layers":
        from verl_specrollout.draft.check import run_aux_layers

        return run_aux_layers(args.draft, args.target)
    from verl_specrollout.draft.resolve import ModelPathError, resolve_model_dir

    try:
        print(resolve_model_dir(args.path, args.what), flush=True)
    except ModelPathError as exc:
        print(f"FAIL: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
