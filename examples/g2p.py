"""Words to ARPAbet phonemes with g2p-en's GRU encoder-decoder, run on minipt's GRU.

    python examples/g2p.py activationist hello minipt

The weights come from the g2p-en package (`minipt fetch g2p-en`); g2p_en itself
is never imported (its import downloads NLTK data).
"""

import argparse
import sys

from minipt.errors import MiniptError
from minipt.models.g2p import G2P


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("words", nargs="*", default=["activationist", "hello", "recurrent", "phoneme"])
    parser.add_argument("--weights", default="g2p-en", help="catalogue name or folder holding checkpoint20.npz and g2p.py")
    args = parser.parse_args(argv)
    try:
        model = G2P.from_pretrained(args.weights)
    except MiniptError as err:
        parser.error(f"--weights {args.weights}: {err}")
    status = 0
    for word in args.words:
        try:
            print(f"{word:>16}  {' '.join(model.phonemize(word))}")
        except MiniptError as err:
            print(f"{word:>16}  error: {err}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
