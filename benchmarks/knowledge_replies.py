"""What a pretrained LM answers to chat follow-ups, asked as ``medisee chat`` asks it.

    python benchmarks/knowledge_replies.py [--model lite-smollm2 | --checkpoint DIR] \
        [--json benchmarks/results/knowledge_replies_smollm2.json]

For each (follow-up, structure) pair below, ``medisee.inference.knowledge.knowledge_reply``
resolves the follow-up's pronouns to the structure and asks the base LM (adapters off),
greedily; the reply and its wall seconds are printed and written to ``--json``. With
``--model`` the preset is built untrained (its LoRA adds nothing yet, so this is the
pretrained LM as shipped); with ``--checkpoint`` a trained model is loaded, and the
replies should be the same, since the adapters are off for these turns.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

FOLLOW_UPS = (
    ("What does it do?", "left kidney"),
    ("What lies next to it?", "liver"),
    ("What is its role?", "white matter"),
    ("What disease can damage it?", "lungs"),
    ("What does it do?", "lateral ventricle"),
    ("What is that structure for?", "urinary bladder"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", default="lite-smollm2", help="preset, built untrained")
    source.add_argument("--checkpoint", help="a saved model directory instead")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write the replies here")
    args = parser.parse_args()

    import torch

    from medisee.inference.knowledge import knowledge_reply
    from medisee.model.medisee import MediSee, build_model
    from medisee.model.presets import get_preset

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    if args.checkpoint:
        model = MediSee.from_pretrained(args.checkpoint).eval()
    else:
        model = build_model(get_preset(args.model)).eval()
    load_seconds = time.perf_counter() - started
    print(f"model ready in {load_seconds:.1f} s")
    rows = []
    for question, subject in FOLLOW_UPS:
        started = time.perf_counter()
        reply = knowledge_reply(model, question, subject, max_new_tokens=args.max_new_tokens)
        seconds = time.perf_counter() - started
        print(f"[{seconds:.1f} s] {subject} | {question}\n    {reply}")
        rows.append({"question": question, "subject": subject, "reply": reply, "seconds": seconds})
    if args.json:
        result = {
            "command": "python benchmarks/knowledge_replies.py "
            + (f"--checkpoint {args.checkpoint}" if args.checkpoint else f"--model {args.model}"),
            "model": args.checkpoint or args.model,
            "max_new_tokens": args.max_new_tokens,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "load_seconds": load_seconds,
            "replies": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
