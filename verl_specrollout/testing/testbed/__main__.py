import argparse
import json
import sys

from .build import SIZES


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m verl_specrollout.testing.testbed")
    ap.add_argument("--size", default="tiny", choices=SIZES)
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument("--measure", action="store_true",
                    help="also measure T=0 acceptance length of both drafts with vLLM")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--n-prompts", type=int, default=32)
    args = ap.parse_args(argv)

    from . import build_testbed

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
