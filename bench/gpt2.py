"""minipt's GPT-2 against transformers' (sdpa attention) at GPT-2-small shape, random weights, in one run.

    python bench/gpt2.py [--repeats N] [--new-tokens N] [--threads N]

Measured side by side, interleaved (each repeat alternates who goes first):

- prefill: a forward pass over 8 x 512 tokens (all logits), median seconds;
- decode: greedy generation of ``--new-tokens`` tokens after a 16-token prompt
  at batch 1 and 8, in generated tokens per second (both libraries prefill
  once and then feed one token per step from their cache);
- the memory-bandwidth limit of batch-1 decoding: every step reads every
  weight once (the tied embedding matrix as the output layer), so tokens/s
  cannot exceed copy bandwidth / weight bytes. Bandwidth is measured here,
  with torch copying a 512 MiB tensor and counting bytes read + written
  (as STREAM's copy does).

Targets: prefill time <= 0.9 x transformers'; batch-1 decode >= 1.5 x
transformers' tokens/s and >= 60 % of the bandwidth limit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402

SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def interleaved(fns: dict, repeats: int, warmup: int = 1) -> dict:
    """Median seconds of each function, measured in alternation so drifts in machine speed hit both alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    order = list(fns)
    for _ in range(repeats):
        order.reverse()
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large tensor copy (read + write)."""
    source = torch.ones(mib * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    best = min(_timed(lambda: target.copy_(source)) for _ in range(repeats))
    return 2 * source.numel() * 4 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("the comparison needs transformers")

    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, attn_implementation="sdpa")).eval()
    ours = GPT2LMHeadModel(GPT2Config(**SMALL)).eval()
    ours.load_state_dict(_minipt_state(reference, ours), strict=False)  # the same weights in both (lm_head is tied)
    fused = ours.fuse()  # packed oneDNN matmuls (minipt.ops.onednn), GELU as a post-op
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())  # the tied matrix counted once
    print(f"GPT-2 small shape, random weights, fp32, {args.threads} threads; {weight_bytes / 2**20:.0f} MiB of weights")

    generator = torch.Generator().manual_seed(0)
    rows = []
    print(f"\n{'':<28} {'minipt':>10} {'fuse()':>10} {'transformers':>13} {'ratio':>7} {'fused':>7}  target", flush=True)
    show = lambda row: print(f"{row[0]:<28} {row[1]:>10.3f} {row[2]:>10.3f} {row[3]:>13.3f} {row[4]:>7.2f} {row[5]:>7.2f}  {row[6]}", flush=True)  # noqa: E731
    with torch.inference_mode():
        prefill_ids = torch.randint(0, 50257, (8, 512), generator=generator)
        t = interleaved({"minipt": lambda: ours(prefill_ids), "fused": lambda: fused(prefill_ids), "transformers": lambda: reference(prefill_ids)}, args.repeats)
        rows.append(("prefill 8x512 (s)", t["minipt"], t["fused"], t["transformers"], t["minipt"] / t["transformers"], t["fused"] / t["transformers"], "<= 0.9"))
        show(rows[-1])
        for batch in (1, 8):
            prompt = torch.randint(0, 50257, (batch, 16), generator=generator)
            n = args.new_tokens
            outputs = {}
            fns = {
                "minipt": lambda: outputs.update(minipt=ours.generate(prompt, n)),
                "fused": lambda: outputs.update(fused=fused.generate(prompt, n)),
                "transformers": lambda: outputs.update(transformers=reference.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)),
            }
            t = interleaved(fns, args.repeats, warmup=0)
            assert torch.equal(outputs["minipt"], outputs["transformers"]), "greedy outputs differ"
            assert torch.equal(outputs["fused"], outputs["transformers"]), "greedy outputs of the fused model differ"
            ours_rate, fused_rate, their_rate = (batch * n / t[k] for k in ("minipt", "fused", "transformers"))
            rows.append((f"decode batch {batch} (tokens/s)", ours_rate, fused_rate, their_rate, ours_rate / their_rate, fused_rate / their_rate, ">= 1.5" if batch == 1 else ""))
            show(rows[-1])
            if batch == 1:
                batch1, fused1 = ours_rate, fused_rate
    bandwidth = copy_bandwidth()
    limit = bandwidth / weight_bytes
    print(f"\ncopy bandwidth {bandwidth / 1e9:.1f} GB/s -> batch-1 limit {limit:.1f} tokens/s; "
          f"minipt reaches {batch1 / limit:.0%} of it, fuse() {fused1 / limit:.0%} (target >= 60%)")
    return 0


def _minipt_state(reference, ours) -> dict:
    """transformers' weights under minipt's names, through minipt's own key map."""
    from minipt.checkpoint import model_keys

    keymap = type(ours).keymap(ours.config)
    official = reference.state_dict()
    state = {}
    for key in model_keys(ours):
        name, transform = keymap.to_official(key)
        state[key] = transform.to_minipt(official[name]) if transform is not None else official[name]
    return state


if __name__ == "__main__":
    sys.exit(main())
