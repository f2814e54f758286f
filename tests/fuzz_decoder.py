"""Fuzzes the decoder and prints the outcomes (run by tests/test_fuzz.py, -m slow).

    python tests/fuzz_decoder.py CONTAINER_CASES PAYLOAD_CASES

Container cases corrupt a valid file anywhere (the checksum must refuse them).
Payload cases corrupt only the bitstreams and then repair the checksum, as a
deliberate forger would, so that the bytes reach CompressAI's rANS decoder: it
must not crash or hang, and streams that do not decode consistently are refused
(BitstreamError).
"""

import random
import sys
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image

from compressai_feds import FEDSStudent
from compressai_feds.codec import Codec, compress_image, decompress_image
from compressai_feds.container import ContainerError, pack, unpack
from compressai_feds.entropy_coding import BitstreamError


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    kind = rng.choice(["truncate", "flip", "edit", "random", "extend"])
    if kind == "truncate":
        return bytes(data[: rng.randrange(len(data))])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == "edit":
        position = rng.randrange(len(data))
        data[position : position + 4] = rng.randbytes(rng.randint(1, 8))
    elif kind == "random":
        return rng.randbytes(rng.randrange(400))
    else:
        data += rng.randbytes(rng.randint(1, 50))
    return bytes(data)


def main(container_cases: int, payload_cases: int) -> None:
    torch.manual_seed(0)
    net = FEDSStudent(N=16, M=32, groups=(8, 24))
    path = "/tmp/compressai-feds-fuzz.pth.tar"
    torch.save({"state_dict": net.state_dict()}, path)
    codec = Codec.from_checkpoint(path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    valid, reconstruction = compress_image(codec, image)
    header, streams = unpack(valid)
    rng = random.Random(0)
    outcomes: Counter = Counter()
    slowest = 0.0

    def decode(data: bytes, label: str) -> None:
        nonlocal slowest
        start = time.perf_counter()
        try:
            decoded = decompress_image(codec, data)
            same = np.array_equal(np.asarray(decoded), np.asarray(reconstruction))
            outcomes[f"{label}: decoded, {'same' if same else 'different'} image"] += 1
        except (ContainerError, BitstreamError) as exc:
            outcomes[f"{label}: refused ({type(exc).__name__})"] += 1
        slowest = max(slowest, time.perf_counter() - start)

    for _ in range(container_cases):
        data = mutate(valid, rng)
        if data != valid:
            decode(data, "container")
    for _ in range(payload_cases):
        forged = list(streams)
        k = rng.randrange(len(forged))
        forged[k] = mutate(forged[k], rng) if forged[k] else rng.randbytes(8)
        decode(pack(header, forged), "payload, checksum repaired")
    for outcome, count in sorted(outcomes.items()):
        print(f"{count:6d}  {outcome}")
    print(f"slowest input: {slowest * 1000:.1f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
