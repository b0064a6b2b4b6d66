"""Write an UNTRAINED EAGLE-3 head for a target, in vLLM's checkpoint format, to bootstrap the
online learner when no pre-trained head exists.

    python3 recipes/make_scratch_eagle3.py --target Qwen/Qwen2.5-7B-Instruct --out /ckpt/qwen2.5-7b-eagle3-scratch

Expect an acceptance length of ~1.0 at first (nothing accepted): the adaptive planner then drafts
little or nothing, and acceptance grows as the learner trains the head on the rollouts' hidden states.
A pre-trained head (e.g. trained or converted with the `speculators` library) starts far higher.
Auxiliary layers default to EAGLE-3's convention: (2, L // 2, L - 3) for a target with L layers.
Light: builds one decoder layer on CPU; the target's weights are not loaded.
"""

import argparse

import torch
from transformers import AutoConfig

from verl_specrollout.draft.eagle3 import Eagle3Config, Eagle3Draft, save_vllm_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="target model dir or hub id (its config.json is read)")
    ap.add_argument("--out", required=True, help="checkpoint directory to write")
    ap.add_argument("--aux-layers", default=None, help="comma-separated target layer ids, e.g. 2,14,25")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    tcfg = AutoConfig.from_pretrained(args.target)
    n = tcfg.num_hidden_layers
    aux = [int(x) for x in args.aux_layers.split(",")] if args.aux_layers else [2, n // 2, n - 3]
    draft = Eagle3Draft(Eagle3Config.from_target_config(tcfg, aux))
    save_vllm_checkpoint(draft, args.out, tcfg, dtype=getattr(torch, args.dtype))
    print(f"wrote untrained EAGLE-3 head to {args.out} (aux layers {aux})")


if __name__ == "__main__":
    main()
