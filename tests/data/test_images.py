"""One image pipeline: every stage turns a file into the same RGB pixels, and image paths stay under their root."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import lavit.analysis.collect
import lavit.analysis.figures
import lavit.data.sft_dataset
import lavit.demo
import lavit.eval.items
import lavit.teacher.filter
import lavit.toyworld.models
from lavit.data import samples
from lavit.data.samples import ImageLimits, Rejection, load_image, open_rgb, resolve_image, to_rgb
from lavit.data.sft_dataset import LavitSftDataset
from lavit.eval.items import ImageRef
from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer

H, W = 56, 84


def write_images(root):
    """The awkward kinds of file a real dataset holds, each with the pixels every stage must produce."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    expected = {}
    alpha = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / "rgba.png")
    a = alpha[..., None] / 255.0
    expected["rgba.png"] = np.round(rgb * a + 255 * (1 - a))  # composited on white
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(root / "palette.png")
    expected["palette.png"] = np.asarray(Image.open(root / "palette.png").convert("RGB"))
    wide = rng.integers(0, 65536, (H, W), dtype=np.uint16)
    Image.fromarray(wide).save(root / "gray16.png")
    expected["gray16.png"] = np.repeat(np.round(wide / 65535 * 255)[..., None], 3, axis=2)  # scaled, not clipped
    gray = rng.integers(0, 256, (H, W), dtype=np.uint8)
    Image.fromarray(gray, "L").save(root / "gray.png")
    expected["gray.png"] = np.repeat(gray[..., None], 3, axis=2)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": not applied, boxes refer to the stored pixels
    Image.fromarray(rgb).save(root / "exif.png", exif=exif)
    expected["exif.png"] = rgb
    return expected


def test_every_stage_sees_the_same_pixels(tmp_path):
    expected = write_images(tmp_path)
    names = sorted(expected)
    table = pa.Table.from_pylist([{"id": n, "image": n, "question": "q ?", "answer": "red"} for n in names])
    dataset = LavitSftDataset(table, str(tmp_path), build_tiny_processor(build_tiny_tokenizer()), [],
                              system_prompt=None, with_signals=False)
    for i, name in enumerate(names):
        path = tmp_path / name
        stages = {
            "extraction": load_image(path, ImageLimits()),
            "training": dataset.sample(i).image,
            "evaluation (file)": ImageRef(path=path).open(),
            "evaluation (parquet bytes)": ImageRef(data=path.read_bytes()).open(),
            "inference (in-memory image, lmms-eval)": to_rgb(Image.open(path)),
        }
        for stage, image in stages.items():
            assert image.mode == "RGB" and image.size == (W, H), (name, stage)
            assert np.array_equal(np.asarray(image), expected[name]), (name, stage)
    # analysis, the filter's text-only image, the toy world and the demo decode through the same function
    for module in (lavit.analysis.collect, lavit.analysis.figures, lavit.teacher.filter, lavit.toyworld.models,
                   lavit.demo, lavit.data.sft_dataset, lavit.eval.items):
        assert module.open_rgb is samples.open_rgb, module.__name__


def test_unreadable_bytes_are_a_rejection_named_without_an_object_repr():
    with pytest.raises(Rejection, match="image_corrupt: embedded bytes"):
        open_rgb(io.BytesIO(b"not an image"))
    assert ImageRef(data=b"not an image").problem().startswith("image_corrupt: embedded bytes")


@pytest.mark.parametrize("relative", ["../outside.png", "sub/../../outside.png", "/etc/hosts"])
def test_paths_must_stay_under_their_root(tmp_path, relative):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside.png").write_bytes(b"x")
    with pytest.raises(Rejection, match="path_outside_root"):
        resolve_image(root, relative)
    assert resolve_image(root, "sub/../a.png") == (root / "a.png").resolve()
