"""Keep only the model weights of an mmengine Runner checkpoint.

A Runner checkpoint also holds the optimizer, the message hub and other
training state. A teacher for distillation needs only the weights; this
writes ``{'meta': {...}, 'state_dict': ...}`` so that a KD config's
``teacher_ckpt`` loads it with ``torch.load(weights_only=True)``.

Usage::

    python tools/model_converters/extract_state_dict.py SRC DST [--prefix P]

``--prefix`` keeps only the keys under ``P.`` and strips it, e.g.
``--prefix architecture`` takes the student out of a distillation
checkpoint so that it can serve as a plain classifier.
"""
import argparse

import kcd_mm.compat  # noqa: F401  (the stack's import fixes)
from kcd_mm.export import extract


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='Runner checkpoint (.pth)')
    parser.add_argument('dst', help='output file with weights only')
    parser.add_argument('--prefix', default='',
                        help='keep only keys under this prefix, stripped')
    args = parser.parse_args()
    n = extract(args.src, args.dst, args.prefix)
    print(f'{n} tensors from {args.src} -> {args.dst}')


if __name__ == '__main__':
    main()
