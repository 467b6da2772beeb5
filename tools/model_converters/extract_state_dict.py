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
import os
import os.path as osp
from collections import OrderedDict

import kcd_mm.compat  # noqa: F401  (stack shims, incl. safe-load globals)
import torch


def extract(src: str, dst: str, prefix: str = '') -> int:
    """Write the weights of checkpoint ``src`` to ``dst``.

    Returns:
        int: the number of tensors written.
    """
    ckpt = torch.load(src, map_location='cpu', weights_only=True)
    state = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f'{src} holds no state dict')
    if prefix:
        head = prefix.rstrip('.') + '.'
        state = OrderedDict((k[len(head):], v) for k, v in state.items()
                            if k.startswith(head))
        if not state:
            raise ValueError(f'no key of {src} starts with {head!r}')
    out = {'state_dict': OrderedDict((k, v.detach().clone().cpu())
                                     for k, v in state.items())}
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if isinstance(meta, dict):
        # Keep the plain, informative parts only.
        keep = {k: meta[k] for k in ('epoch', 'iter', 'seed', 'dataset_meta',
                                     'mmengine_version', 'time')
                if k in meta}
        keep['source'] = osp.basename(src)
        out['meta'] = keep
    os.makedirs(osp.dirname(osp.abspath(dst)), exist_ok=True)
    tmp = dst + '.part'
    torch.save(out, tmp)
    # Check the result loads with the safe loader before publishing it.
    torch.load(tmp, map_location='cpu', weights_only=True)
    os.replace(tmp, dst)
    return len(out['state_dict'])


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
