"""minipt's T5 against transformers' at t5-small shape, random weights, in one run.

    python bench/t5.py [--repeats N] [--new-tokens 64] [--threads N] [--quick]

transformers builds T5 at t5-small's shape (d_model 512, 6 + 6 layers, 8 heads
of 64, feed-forward 2048, vocabulary 32128, ReLU, tied head) with random
weights and saves it; minipt loads the same folder. Measured side by side,
interleaved (each repeat runs every system once, in an order rotated from
repeat to repeat; bench/timing.py), medians:

- encoder: the encoder stack over 8 x 512 tokens;
- greedy decoding of ``--new-tokens`` tokens after a 64-token input, at batch 1
  and 8, in generated tokens per second (no stop token: every row runs the
  full length; both libraries run the encoder once and feed the decoder one
  token per step from their caches); the tokens must be the same;
- beam search, 4 beams, batch 1, the same length: generated tokens per second
  of the returned sequence (the same sequence on both sides).

Systems: minipt (eager), minipt's ``fuse()`` copy (prepacked oneDNN weights),
transformers (its default attention for T5). Ratios are minipt / transformers
in time (encoder; below 1: minipt is faster) or in tokens per second (decoding;
above 1: minipt is faster). ``--quick``: one repeat, an 8 x 64 encoder input, a
16-token input and 6 new tokens: a smoke run, not numbers to report.

The encoder is also read against this CPU's GEMM limit (timing.gemm_limit: the
fastest matmul at the encoder's Linear shapes and rows): its FLOPs (the Linears,
and attention's scores and weighted sum) per second over that limit. Each row
ends with its targets' verdicts: the encoder's ``fuse()`` at >= 0.85 of the GEMM
limit on every CPU and <= 0.6 of transformers' time where the CPU has AVX-512;
greedy decoding >= 1.5x transformers' tokens per second; beam search >= 1.3x.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt.models.t5 import T5ForConditionalGeneration  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from minipt.ops import cpu_report  # noqa: E402
from timing import Table, gemm_limit, medians, print_header, round_robin  # noqa: E402

SMALL = dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8, feed_forward_proj="relu",
             tie_word_embeddings=True, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
GEMM_FRACTION, AVX512_ENCODER_RATIO, GREEDY_SPEEDUP, BEAM_SPEEDUP = 0.85, 0.6, 1.5, 1.3  # the targets


def encoder_shapes() -> list[tuple[int, int]]:
    """(in, out) of each Linear in one encoder layer: q, k, v, o, then wi and wo (ReLU, not gated)."""
    inner = SMALL["num_heads"] * SMALL["d_kv"]
    return [(SMALL["d_model"], inner)] * 3 + [(inner, SMALL["d_model"]), (SMALL["d_model"], SMALL["d_ff"]), (SMALL["d_ff"], SMALL["d_model"])]


def encoder_flops(batch: int, length: int) -> float:
    """Multiply-adds x 2 of the encoder stack: every layer's Linears, and attention's scores and weighted sum."""
    linears = sum(2 * batch * length * n_in * n_out for n_in, n_out in encoder_shapes())
    attention = 2 * 2 * batch * length * length * SMALL["num_heads"] * SMALL["d_kv"]
    return SMALL["num_layers"] * (linears + attention)


def _avx512() -> bool:
    with open("/proc/cpuinfo") as f:
        return any(line.startswith("flags") and "avx512f" in line.split() for line in f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's choice")
    parser.add_argument("--quick", action="store_true", help="one repeat, short inputs: a smoke run, not numbers to report")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("bench/t5.py compares with transformers: pip install transformers")
    repeats, new = (1, 6) if args.quick else (args.repeats, args.new_tokens)
    encoder_length, input_length = (64, 16) if args.quick else (512, 64)
    print_header(f"transformers {transformers.__version__}")

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        transformers.T5ForConditionalGeneration(transformers.T5Config(**SMALL)).save_pretrained(folder)
        theirs = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
        ours = T5ForConditionalGeneration.from_pretrained(folder).eval()
    theirs.generation_config.eos_token_id = None  # every row runs the full length
    systems = {"transformers": theirs, "minipt": ours, "fuse()": ours.fuse()}
    implementation = getattr(theirs.config, "_attn_implementation", "?")
    print(f"T5 at t5-small's shape, random weights, float32; transformers' attention: {implementation}; medians of {repeats} interleaved repeats\n")
    names = list(systems)
    table = Table(["case", "transformers", "minipt", "fuse()", "minipt / transformers", "fuse() / transformers", "same tokens", "targets"],
                  right=range(1, 6))

    def show(label, values, unit, same="-", verdict=""):
        cells = [f"{values[n] * (1e3 if unit == 'ms' else 1):.1f} {unit}" for n in names]
        table.row(label, *cells, f"{values['minipt'] / values['transformers']:.2f}", f"{values['fuse()'] / values['transformers']:.2f}", same, verdict)

    def met(ok: bool) -> str:
        return "met" if ok else "missed"

    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        ids = torch.randint(2, SMALL["vocab_size"], (8, encoder_length), generator=generator)
        encoders = {"transformers": lambda: theirs.encoder(input_ids=ids), "minipt": lambda: ours.encode(ids),
                    "fuse()": lambda: systems["fuse()"].encode(ids)}
        seconds = medians(round_robin(encoders, repeats, warmup=1))
        limit = gemm_limit(encoder_shapes(), 8 * encoder_length, torch.float32, 3 if args.quick else 5)
        fraction = {name: encoder_flops(8, encoder_length) / seconds[name] / limit for name in names}
        ratio = seconds["fuse()"] / seconds["transformers"]
        verdict = (f"fuse() at {fraction['fuse()']:.2f} of the GEMM limit (>= {GEMM_FRACTION}: {met(fraction['fuse()'] >= GEMM_FRACTION)}); "
                   + (f"<= {AVX512_ENCODER_RATIO} of transformers: {met(ratio <= AVX512_ENCODER_RATIO)}" if _avx512()
                      else f"<= {AVX512_ENCODER_RATIO} of transformers: not asked without AVX-512"))
        show(f"encoder 8x{encoder_length}", seconds, "ms", verdict=verdict)
        for label, batch, beams in ((f"greedy, batch 1, {new} tokens", 1, 1), (f"greedy, batch 8, {new} tokens", 8, 1),
                                    (f"beam search (4 beams), batch 1, {new} tokens", 1, 4)):
            prompt = torch.randint(2, SMALL["vocab_size"], (batch, input_length), generator=generator)
            outputs = {}
            cases = {name: _generate(model, name, prompt, new, beams, outputs) for name, model in systems.items()}
            seconds = medians(round_robin(cases, repeats, warmup=1))
            same = all(torch.equal(outputs[n], outputs["transformers"]) for n in ("minipt", "fuse()"))
            rates = {name: batch * (outputs[name].shape[1] - 1) / seconds[name] for name in names}
            target = BEAM_SPEEDUP if beams > 1 else GREEDY_SPEEDUP
            verdict = f">= {target}x: " + ", ".join(f"{n} {met(rates[n] / rates['transformers'] >= target)}" for n in ("minipt", "fuse()"))
            show(label, rates, "tokens/s", "yes" if same else "no", verdict)
    print(f"\nthe encoder's FLOPs per second over the GEMM limit ({limit / 1e9:.0f} GFLOP/s float32 at {8 * encoder_length} rows, "
          f"the fastest of aten and oneDNN at its Linear shapes): " + ", ".join(f"{n} {fraction[n]:.2f}" for n in names))
    print("\n" + "\n".join("    " + line for line in cpu_report().splitlines()))
    return 0


def _generate(model, name: str, prompt: torch.Tensor, new: int, beams: int, outputs: dict):
    if name == "transformers":
        return lambda: outputs.update({name: model.generate(input_ids=prompt, max_new_tokens=new, do_sample=False, num_beams=beams, pad_token_id=0)})
    return lambda: outputs.update({name: model.generate(prompt, max_new_tokens=new, eos_token_id=None, num_beams=beams)})


if __name__ == "__main__":
    sys.exit(main())
