"""minipt's GPT-2 against transformers' (sdpa attention) at GPT-2-small shape, random weights, in one run.

    python bench/gpt2.py [--repeats N] [--new-tokens N] [--threads N]

Measured side by side, interleaved (each repeat runs every system once, in an
order rotated from repeat to repeat; bench/timing.py):

- prefill: a forward pass over 8 x 512 tokens (all logits), median seconds;
- decode: greedy generation of ``--new-tokens`` tokens after a 16-token prompt
  at batch 1 and 8, in generated tokens per second (both libraries prefill
  once and then feed one token per step from their cache);
- the memory-bandwidth limit of batch-1 decoding: every step reads every
  weight once (the tied embedding matrix as the output layer), so tokens/s
  cannot exceed copy bandwidth / weight bytes. Bandwidth is measured in the
  same interleaved loop as the batch-1 decoding (a VM's memory bandwidth
  drifts with its neighbours' load), with torch copying a 512 MiB tensor and
  counting bytes read + written (as STREAM's copy does).

Systems: minipt (eager), minipt's ``fuse()`` copy (prepacked oneDNN weights),
transformers (eager), and, unless ``--no-compile``, each library's model under
``torch.compile`` (inductor, default settings): minipt compiles its decoder
stack (the cache is a preallocated ``KVCache``; its length becomes a dynamic
size after the first recompilations), transformers its ``forward`` with its
static cache (``cache_implementation="static"``, as its documentation
recommends for compiling). Compilation happens in warm-up runs, not timed.

Targets: prefill time <= 0.9 x transformers'; batch-1 decode >= 1.5 x
transformers' tokens/s and >= 60 % of the bandwidth limit.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt.models.gpt2 import GPT2Config, GPT2LMHeadModel  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from timing import Table, medians, print_header, round_robin  # noqa: E402

SMALL = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile columns")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("the comparison needs transformers")

    torch.manual_seed(0)
    reference = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SMALL, attn_implementation="sdpa")).eval()
    reference.generation_config.eos_token_id = None  # every row runs the full length, as minipt's eos_token_id=None
    ours = GPT2LMHeadModel(GPT2Config(**SMALL)).eval()
    ours.load_state_dict(_minipt_state(reference, ours), strict=False)  # the same weights in both (lm_head is tied)
    weight_bytes = sum(p.numel() * p.element_size() for p in ours.parameters())  # the tied matrix counted once
    systems = {"minipt": ours, "fuse()": ours.fuse(), "transformers": reference}  # fuse(): packed oneDNN matmuls, GELU as a post-op
    if not args.no_compile:
        compiled = copy.deepcopy(ours)
        compiled.transformer = torch.compile(compiled.transformer)
        reference_compiled = copy.deepcopy(reference)
        reference_compiled.forward = torch.compile(reference_compiled.forward)
        systems.update({"minipt compiled": compiled, "transformers compiled": reference_compiled})
    print_header(f"transformers {transformers.__version__}")
    print(f"GPT-2 small shape, random weights, fp32; {weight_bytes / 2**20:.0f} MiB of weights")

    names = list(systems)
    ratios = [("minipt", "transformers"), ("fuse()", "transformers")]
    if not args.no_compile:
        ratios.append(("minipt compiled", "transformers compiled"))
    short = {"minipt": "minipt", "fuse()": "fuse()", "transformers": "tf", "minipt compiled": "mp comp", "transformers compiled": "tf comp"}
    print("(tf: transformers; mp comp / tf comp: under torch.compile; medians of interleaved repeats)\n")
    table = Table(["case", *(short[name] for name in names), *(f"{short[a]}/{short[b]}" for a, b in ratios)],
                  right=range(1, 1 + len(names) + len(ratios)))

    def show(label, values):
        table.row(label, *(f"{values[n]:.3f}" for n in names), *(f"{values[a] / values[b]:.2f}" for a, b in ratios))

    notes = []

    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        prefill_ids = torch.randint(0, SMALL["vocab_size"], (8, 512), generator=generator)
        prefill = {name: (lambda m=model: m(prefill_ids)) for name, model in systems.items()}
        show("prefill 8x512 (s)", medians(round_robin(prefill, args.repeats, warmup=2)))
        for batch in (1, 8):
            prompt = torch.randint(0, SMALL["vocab_size"], (batch, 16), generator=generator)
            n = args.new_tokens
            outputs = {}
            fns = {name: _generate(model, name, prompt, n, outputs) for name, model in systems.items()}
            if batch == 1:  # the copy runs in the same loop: bandwidth and decoding see the same machine
                source = torch.ones(512 * 2**20 // 4)
                target = torch.empty_like(source)
                fns["copy"] = lambda: target.copy_(source)
            t = medians(round_robin(fns, args.repeats, warmup=2 if not args.no_compile else 1))
            for name in outputs:
                assert torch.equal(outputs[name], outputs["transformers"]), f"greedy outputs of {name} differ from transformers'"
            rates = {name: batch * n / t[name] for name in systems}
            show(f"decode batch {batch} (tokens/s)", rates)
            if batch == 1:
                bandwidth = 2 * source.numel() * 4 / t["copy"]
                limit = bandwidth / weight_bytes
                fractions = ", ".join(f"{name} {rates[name] / limit:.0%}" for name in systems)
                notes.append(f"batch 1: copy bandwidth {bandwidth / 1e9:.1f} GB/s (median, same loop) -> limit {limit:.1f} tokens/s; "
                             f"reached: {fractions} (target >= 60%)")
    print("\n" + "\n".join(notes))
    print("targets: prefill minipt / transformers <= 0.9; batch-1 decode >= 1.5 x transformers and >= 60% of the limit")
    return 0


def _generate(model, name: str, prompt, n: int, outputs: dict):
    if name.startswith("transformers"):
        extra = {"cache_implementation": "static"} if name.endswith("compiled") else {}
        return lambda: outputs.update({name: model.generate(prompt, max_new_tokens=n, do_sample=False, pad_token_id=0, **extra)})
    return lambda: outputs.update({name: model.generate(prompt, max_new_tokens=n, eos_token_id=None)})  # n tokens on both sides: no stop token


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
