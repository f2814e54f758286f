"""Encode/decode time of the exact entropy path with its three ways of computing
the fixed-point matrix products, on the same images, interleaved image by image
(rotating order), best of 3 per image, median over images:

* ``int8``: ``torch._int_mm`` on oneDNN's int8 kernels (AVX-512 VNNI);
* ``int8-no-onednn``: ``torch._int_mm`` with oneDNN switched off, the plain-loop
  fallback (what a CPU without VNNI ran before ``int8_products_are_fast``; the
  float transforms lose oneDNN too, so this overstates the products' share);
* ``float64``: one float64 matrix product (what such a CPU runs now).

Each way decodes the same bytes to the same latent (checked). Run from the
repository root, training paused: ``sh zoo/sweeps/fixed-point-products.sh``.
"""

import sys
import time
from contextlib import contextmanager
from statistics import median

import torch

from compressai_feds import feds_student, feds_teacher, fixed_point
from compressai_feds.images import find_images, load_rgb

WAYS = {"int8": (True, True), "int8-no-onednn": (True, False), "float64": (False, True)}


@contextmanager
def way(name: str):
    int8, onednn = WAYS[name]
    original = fixed_point.int8_products_are_fast
    fixed_point.int8_products_are_fast = lambda: int8
    torch.backends.mkldnn.enabled = onednn
    try:
        yield
    finally:
        fixed_point.int8_products_are_fast = original
        torch.backends.mkldnn.enabled = True


def main(folder: str, count: int) -> None:
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"avx512_vnni={torch.cpu.get_capabilities().get('avx512_vnni', False)}"
    )
    images = [load_rgb(p)[None].float() / 255 for p in find_images(folder)[:count]]
    names = list(WAYS)
    for factory in (feds_student, feds_teacher):
        net = factory(quality=3, pretrained=True).eval()
        times = {name: ([], []) for name in names}
        for x in images:
            best = {name: [float("inf"), float("inf")] for name in names}
            reference = None
            for repeat in range(3):
                for name in names[repeat:] + names[:repeat]:
                    with way(name), torch.no_grad():
                        start = time.perf_counter()
                        enc = net.compress(x)
                        encoded = time.perf_counter()
                        dec = net.decompress(enc["strings"], enc["shape"])
                        decoded = time.perf_counter()
                    reference = enc["strings"] if reference is None else reference
                    if enc["strings"] != reference or not torch.equal(dec["y_hat"], enc["y_hat"]):
                        raise RuntimeError(f"{name}: other bytes or latent")
                    best[name][0] = min(best[name][0], encoded - start)
                    best[name][1] = min(best[name][1], decoded - encoded)
            for name in names:
                times[name][0].append(best[name][0])
                times[name][1].append(best[name][1])
        print(f"{factory.__name__}, q3, {len(images)} images ({folder}):")
        base = median(times["int8"][1])
        for name in names:
            enc, dec = median(times[name][0]), median(times[name][1])
            print(
                f"  {name:15s} encode {enc * 1000:7.0f} ms  decode {dec * 1000:7.0f} ms  "
                f"(decode {dec / base:5.2f}x int8)"
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
