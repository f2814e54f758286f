from itertools import islice

import numpy as np
import pytest
from PIL import Image

from compressai_feds.data import ImageCrops, StreamSampler, find_images, load_rgb


def take(sampler: StreamSampler, n: int) -> list:
    return list(islice(iter(sampler), n))


def test_process_shares_make_up_the_single_process_batches():
    single = take(StreamSampler(10, global_batch=4, seed=3), 12)
    rank0 = take(StreamSampler(10, global_batch=4, seed=3, rank=0, world_size=2), 6)
    rank1 = take(StreamSampler(10, global_batch=4, seed=3, rank=1, world_size=2), 6)
    for k in range(3):
        assert rank0[2 * k : 2 * k + 2] + rank1[2 * k : 2 * k + 2] == single[4 * k : 4 * k + 4]


def test_stream_resumes_at_any_batch_and_covers_every_image_each_epoch():
    full = take(StreamSampler(5, global_batch=2, seed=0), 20)
    assert take(StreamSampler(5, global_batch=2, seed=0, start_batch=3), 14) == full[6:]
    for epoch in range(4):
        assert sorted(index for index, _ in full[5 * epoch : 5 * epoch + 5]) == list(range(5))
    assert len({seed for _, seed in full}) == 20  # a fresh crop every time


def test_uneven_split_is_refused():
    with pytest.raises(ValueError, match="not divisible by 3 processes"):
        StreamSampler(5, global_batch=4, seed=0, world_size=3)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "CMYK"])
def test_any_image_mode_loads_as_8_bit_rgb(tmp_path, mode):
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(gray).convert(mode)
    path = tmp_path / ("x.png" if mode != "CMYK" else "x.jpg")
    image.save(path)
    rgb = load_rgb(path)
    assert rgb.shape == (3, 6, 8) and rgb.dtype.is_floating_point is False
    if mode in ("L", "I;16", "RGBA"):
        assert np.array_equal(rgb[0].numpy(), gray)


def test_crops_are_deterministic_and_pad_small_images(tmp_path):
    Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    dataset = ImageCrops(tmp_path, crop_size=32)
    assert dataset[(0, 7)].shape == (3, 32, 32)
    assert (dataset[(0, 7)] == dataset[(0, 7)]).all()


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        find_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_images(tmp_path / "missing")
