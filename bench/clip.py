"""minipt's CLIP against transformers' CLIPModel (sdpa attention) on the same weights: image and text features together.

    python bench/clip.py [--repeats N] [--threads N] [--images 8] [--quick]

transformers builds CLIP ViT-B/32 (its default CLIPConfig: a 224 px, 12-layer,
768-wide image tower on 32x32 patches; a 12-layer, 512-wide text tower with a
context of 77) with random weights and saves it; minipt loads the same folder.
One call is what zero-shot classification runs: ``model(input_ids, pixel_values,
attention_mask)``, the features of 8 images and of 8 prompts ("a photo of a
{label}.", tokenized by the fetched ``clip-tokenizer``, padded to the longest;
without it, random ids of the same lengths) and their similarities. Everything
is measured in this one run, the systems timed in turns (bench/timing.py),
medians; ratios are minipt / transformers (below 1: minipt is faster).
``fused`` is the ``fuse()`` copy (float32), ``fused bf16``
``fuse(torch.bfloat16)`` (with the lowest cosine of its image and text
embeddings to float32's). No pretrained CLIP installs here; a forward pass's
speed does not depend on the weights' values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from minipt.errors import MiniptError  # noqa: E402
from minipt.models.clip import CLIPModel  # noqa: E402
from minipt.ops import cpu_report  # noqa: E402
from minipt.reference import import_transformers  # noqa: E402
from timing import medians_apart, print_header, ratio_table  # noqa: E402

TARGETS = {"fused": 0.6}  # fuse() against transformers, image + text features of 8 images and 8 prompts
LABELS = ["cat", "dog", "boat", "traffic light", "aeroplane", "bowl of soup", "red bicycle", "mountain lake at dawn"]


def prompts(count: int, vocab_size: int, eos: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(input_ids, attention_mask, where they came from) for ``count`` prompts "a photo of a {label}."."""
    texts = [f"a photo of a {LABELS[i % len(LABELS)]}." for i in range(count)]
    try:
        from minipt import Tokenizer

        batch = Tokenizer.from_pretrained("clip-tokenizer")(texts)
        return batch["input_ids"], batch["attention_mask"], "clip-tokenizer"
    except MiniptError:  # not fetched: random ids of CLIP's lengths for these prompts, ending in the end-of-text token
        generator = torch.Generator().manual_seed(0)
        lengths = [len(text.split()) + 3 for text in texts]  # <|startoftext|>, words, ".", <|endoftext|>
        ids = torch.ones(count, max(lengths), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(lengths):
            ids[row, : n - 1] = torch.randint(2, vocab_size - 2, (n - 1,), generator=generator)
            ids[row, n - 1] = eos
            mask[row, :n] = 1
        return ids, mask, "random ids (minipt fetch clip-tokenizer for real prompts)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads; default: torch's choice")
    parser.add_argument("--images", type=int, default=8, help="images, and as many prompts")
    parser.add_argument("--quick", action="store_true", help="two repetitions: a smoke run, not numbers to report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers = import_transformers()
    if transformers is None:
        sys.exit("bench/clip.py compares with transformers: pip install transformers")
    print_header(f"transformers {transformers.__version__}")
    config = transformers.CLIPConfig()  # ViT-B/32
    ids, mask, source = prompts(args.images, config.text_config.vocab_size, config.text_config.eos_token_id)
    pixels = torch.randn(args.images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        transformers.CLIPModel(config).save_pretrained(folder)
        theirs = transformers.CLIPModel.from_pretrained(folder, attn_implementation="sdpa").eval()
        ours = CLIPModel.from_pretrained(folder).eval()
        models = {"minipt": ours, "fused": ours.fuse(), "fused bf16": ours.fuse(torch.bfloat16)}
        cases = {"transformers": lambda: theirs(input_ids=ids, pixel_values=pixels, attention_mask=mask)}
        cases.update({name: (lambda m=model: m(ids, pixels, mask)) for name, model in models.items()})
        with torch.inference_mode():
            seconds = medians_apart(cases, ["fused bf16"], "transformers", 2 if args.quick else args.repeats)  # bf16 in its own round
            exact, reference = models["minipt"](ids, pixels, mask), theirs(input_ids=ids, pixel_values=pixels, attention_mask=mask)
            low = models["fused bf16"](ids, pixels, mask)
    same = max(float((exact.image_embeds - reference.image_embeds).abs().max()), float((exact.text_embeds - reference.text_embeds).abs().max()))
    cosine = min(float(torch.nn.functional.cosine_similarity(getattr(low, name).float(), getattr(exact, name), dim=-1).min())
                 for name in ("image_embeds", "text_embeds"))
    print(f"CLIP ViT-B/32, {args.images} images (224 px) and {args.images} prompts of up to {ids.shape[1]} tokens ({source}), "
          f"random weights; minipt's embeddings within {same:.1e} of transformers'; ms, and in brackets the ratio to transformers "
          f"(sdpa, float32); target: fused <= {TARGETS['fused']}\n")
    row = ratio_table("case", "transformers", ["minipt", "fused", "fused bf16"], ["bf16 cosine (min)", "target"])
    verdict = f"fused {'met' if seconds['fused'] / seconds['transformers'] <= TARGETS['fused'] else 'missed'}"
    row(f"{args.images} images + {args.images} prompts", seconds, f"{cosine:.5f}", verdict)
    print("\n" + "\n".join("    " + line for line in cpu_report().splitlines()))


if __name__ == "__main__":
    main()
