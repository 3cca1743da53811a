"""minipt's encoder families against transformers' (sdpa attention), each on the same random base-size weights.

    python bench/encoders.py [--families roberta,distilbert,albert,bert] [--repeats N] [--threads N] [--quick]

For each family, transformers builds its base-size model with random weights
(the shapes of roberta-base, distilbert-base-uncased, albert-base-v2 and
bert-base-uncased) and saves it; minipt and transformers then load that same
folder. Everything is measured in this one run, the systems of a case timed in
turns (bench/timing.py), medians; the ratio is minipt / transformers (sdpa,
float32), below 1 meaning minipt is faster:

- ``minipt``: the model ``from_pretrained`` gives, unfused (inference and the
  training step);
- ``fused``: inference with the ``fuse()`` copy (prepacked oneDNN weights,
  float32) at batch x length 32x128 and 8x512;
- ``fused bf16``: ``fuse(torch.bfloat16)`` at 32x128, with the lowest cosine,
  over the batch, between its mean-pooled embeddings and float32's; timed in
  its own round with transformers (its ratio there, times transformers' ms in
  the main round: emulated, its slow calls disturbed the others');
- ``train 16x128``: a training step (forward, backward, SGD update, dropout
  on) of the model on the ``"fused"`` backend against transformers' in train
  mode.

No pretrained RoBERTa, DistilBERT or ALBERT weights install here; the speed of a
forward pass does not depend on the values of the weights. bench/bert.py
measures BERT on the real all-MiniLM-L6-v2 weights, with more cases.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt import registry  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from timing import medians, medians_apart, print_header, ratio_table, round_robin  # noqa: E402

BASE = {  # family -> (transformers' config class, base-size fields)
    "roberta": ("RobertaConfig", dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1)),
    "distilbert": ("DistilBertConfig", dict(vocab_size=30522, n_layers=6, dim=768, n_heads=12, hidden_dim=3072)),
    "albert": ("AlbertConfig", dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                                    num_attention_heads=12, intermediate_size=3072, hidden_act="gelu_new")),
    "bert": ("BertConfig", dict(vocab_size=30522)),
}
TARGETS = {"fused": {"32x128": 0.6, "8x512": 0.6, "train 16x128": 0.9}, "fused bf16": {"32x128": 0.45}}
MIN_COSINE = 0.999  # of fuse(torch.bfloat16)'s embeddings to float32's


def batch(vocab: int, size: int, length: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, vocab, (size, length), generator=generator)  # no pad or special id
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def base_model_class(model_type: str):
    """minipt's base (headless) model class of a family: the first its registry declaration names."""
    return next(family for family in registry.families() if family.model_type == model_type).classes[0]


def save_random(transformers, model_type: str, folder: str) -> int:
    """transformers' base-size model with random weights, saved in ``folder``; returns its vocabulary size."""
    config_class, fields = BASE[model_type]
    config = getattr(transformers, config_class)(**fields)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    return config.vocab_size


def mean_pooled(hidden: torch.Tensor) -> torch.Tensor:
    return hidden.float().mean(1)  # (B, H): every token is real in these batches


def measure(transformers, model_type: str, repeats: int, quick: bool) -> list[tuple[str, dict, float | None]]:
    """(case, seconds per system, bf16 cosine or None) for one family."""
    ours_class = base_model_class(model_type)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        vocab = save_random(transformers, model_type, folder)
        ours = ours_class.from_pretrained(folder).eval()
        theirs = transformers.AutoModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        models = {"transformers": theirs, "minipt": ours, "fused": ours.fuse(), "fused bf16": ours.fuse(torch.bfloat16)}
        for size, length in ((32, 128), (8, 512)):
            inputs = batch(vocab, size, length)
            cases = {name: (lambda m=model: m(**inputs)) for name, model in models.items() if name != "fused bf16" or length == 128}
            with torch.inference_mode():
                seconds = medians_apart(cases, [name for name in cases if name == "fused bf16"], "transformers", 2 if quick else repeats)
                cosine = None
                if "fused bf16" in cases:
                    cosine = float(torch.nn.functional.cosine_similarity(
                        mean_pooled(models["fused bf16"](**inputs).last_hidden_state),
                        mean_pooled(ours(**inputs).last_hidden_state), dim=-1).min())
            rows.append((f"{size}x{length}", seconds, cosine))
        del ours, theirs, models
        gc.collect()

        training = {"transformers": transformers.AutoModel.from_pretrained(folder, attn_implementation="sdpa").train(),
                    "minipt": ours_class.from_pretrained(folder).train(),
                    "fused": ours_class.from_pretrained(folder, backend="fused").train()}
        inputs = batch(vocab, 16, 128)
        optimizers = {name: torch.optim.SGD(model.parameters(), lr=1e-4) for name, model in training.items()}

        def step(name):
            def run():
                optimizers[name].zero_grad(set_to_none=True)
                training[name](**inputs).last_hidden_state.pow(2).mean().backward()
                optimizers[name].step()

            return run

        seconds = medians(round_robin({name: step(name) for name in training}, 2 if quick else repeats, warmup=1))
        rows.append(("train 16x128", seconds, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default=",".join(BASE), help="comma-separated subset of: " + ", ".join(BASE))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's choice")
    parser.add_argument("--quick", action="store_true", help="two repetitions: a smoke run, not numbers to report")
    args = parser.parse_args()
    families = [name.strip() for name in args.families.split(",") if name.strip()]
    unknown = [name for name in families if name not in BASE]
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}; choose from {', '.join(BASE)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("bench/encoders.py compares with transformers: pip install transformers")
    print_header(f"transformers {transformers.__version__}")
    print("base-size random weights; ms, and in brackets the ratio to transformers (sdpa, float32); targets: "
          + "; ".join(f"{system} {case} <= {limit}" for system, cases in TARGETS.items() for case, limit in cases.items())
          + f", bf16 cosine >= {MIN_COSINE}\n")
    row = ratio_table("family, case", "transformers", ["minipt", "fused", "fused bf16"], ["bf16 cosine (min)", "targets"])
    for model_type in families:
        for case, seconds, cosine in measure(transformers, model_type, args.repeats, args.quick):
            verdicts = [f"{system} {'met' if seconds[system] / seconds['transformers'] <= cases[case] else 'missed'}"
                        for system, cases in TARGETS.items() if case in cases and system in seconds]
            if cosine is not None and cosine < MIN_COSINE:
                verdicts.append("bf16 cosine missed")
            row(f"{model_type} {case}", seconds, "-" if cosine is None else f"{cosine:.5f}", ", ".join(verdicts))


if __name__ == "__main__":
    main()
