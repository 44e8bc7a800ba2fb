"""The downsampled ImageNet 64x64 reader: the R, G, B plane layout, 1-based labels, held-out validation,
and clear errors for missing, pickled or misshapen files (tiny synthetic npz files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.datasets.images import (
    IMAGENET64_TEST,
    IMAGENET64_TRAIN,
    load_image_dataset,
    read_imagenet64_batch,
)


def write_imagenet64(root: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict[str, tuple]:
    rng = np.random.default_rng(seed)
    written = {}
    for name in (*IMAGENET64_TRAIN, IMAGENET64_TEST):
        n = n_test if name == IMAGENET64_TEST else per_batch
        data = rng.integers(0, 256, (n, 3 * 64 * 64), dtype=np.uint8)
        labels = rng.integers(1, 1001, n)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        np.savez(root / name, data=data, labels=labels)
        written[name] = (data, labels)
    return written


def test_planes_labels_and_splits(tmp_path: Path) -> None:
    written = write_imagenet64(tmp_path)
    data, labels = written[IMAGENET64_TEST]
    images, read_labels = read_imagenet64_batch(tmp_path / IMAGENET64_TEST)
    # Pixel (c, i, j) is entry c * 4096 + i * 64 + j of its row; labels become 0-based.
    assert images[2, 1, 5, 7] == data[2, 1 * 4096 + 5 * 64 + 7]
    assert images[0, 2, 63, 0] == data[0, 2 * 4096 + 63 * 64]
    assert np.array_equal(read_labels, labels - 1)
    splits = load_image_dataset("imagenet64", tmp_path, seed=0, val_size=5)
    assert splits.shape == (3, 64, 64) and splits.num_levels == 256 and splits.num_classes == 1000
    assert splits.train.shape[0] == 25 and splits.val.shape[0] == 5 and splits.test.shape[0] == 4
    assert np.array_equal(splits.test, images)
    everything = np.concatenate([splits.train, splits.val])
    originals = np.concatenate([written[name][0] for name in IMAGENET64_TRAIN]).reshape(-1, 3, 64, 64)
    assert sorted(map(bytes, everything)) == sorted(map(bytes, originals))


def test_bad_files_get_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Imagenet64_train_npz"):
        load_image_dataset("imagenet64", tmp_path)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, data=np.array([{"a": 1}], dtype=object), labels=np.array([1]))
    with pytest.raises(ValueError, match="not a downsampled-ImageNet npz"):
        read_imagenet64_batch(pickled)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, data=np.zeros((2, 100), dtype=np.uint8), labels=np.array([1, 2]))
    with pytest.raises(ValueError, match=r"expected data \(N, 12288\)"):
        read_imagenet64_batch(wrong)
    zero_based = tmp_path / "zero.npz"
    np.savez(zero_based, data=np.zeros((1, 12288), dtype=np.uint8), labels=np.array([0]))
    with pytest.raises(ValueError, match="1..1000"):
        read_imagenet64_batch(zero_based)
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a downsampled-ImageNet npz"):
        read_imagenet64_batch(tmp_path / "text.npz")
