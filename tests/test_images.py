"""`vaegen evaluate --images`: a user's own images give the numbers of the same images in a split,
in every format; bad images are one-line errors naming the file."""

import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)

import vaegen
from vaegen import cli
from vaegen.data import images as images_lib
from vaegen.data import splits as splits_lib
from vaegen.errors import ImagesError


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    c = vaegen.load_config("tiny")
    c.train.num_epochs = 1
    c.train.tensorboard = False
    c.train.latent_health_examples = 0
    vaegen.train_and_evaluate(c, workdir)
    return workdir


def test_own_images_score_as_the_split_they_came_from(tiny_run, tmp_path, capsys):
    run = vaegen.load(tiny_run)
    # The test split as the run stores it (binarized once, {0, 255}), in four formats.
    stored = np.asarray(splits_lib.stored_split(run.spec.data, run.data().test[:12], "test"))[..., 0]   # [12, 8, 8]
    np.save(tmp_path / "x.npy", stored)
    np.savez(tmp_path / "x.npz", images=(stored > 0).astype(np.float32), labels=np.arange(12))
    (tmp_path / "png").mkdir()
    (tmp_path / "png16").mkdir()
    (tmp_path / "rgba").mkdir()
    for i, im in enumerate(stored):
        Image.fromarray(im).save(tmp_path / "png" / f"{i:03d}.png")
        Image.fromarray(im.astype(np.uint16) * 257).save(tmp_path / "png16" / f"{i:03d}.png")   # 16-bit grey
        plt.imsave(tmp_path / "rgba" / f"{i:03d}.png", im / 255.0, cmap="gray", vmin=0, vmax=1)  # RGBA, R = G = B
    assert Image.open(tmp_path / "png16" / "000.png").mode == "I;16"
    assert Image.open(tmp_path / "rgba" / "000.png").mode == "RGBA"
    common = ["--workdir", str(tiny_run), "--estimators", "elbo,is", "--k", "20", "--no-progress", "--max-examples", "12"]
    assert cli.main(["evaluate", *common, "--out", str(tmp_path / "split.json")]) == 0
    reference = json.loads((tmp_path / "split.json").read_text())["metrics"]
    for source in ("x.npy", "x.npz", "png", "png16", "rgba"):
        assert cli.main(["evaluate", *common, "--images", str(tmp_path / source), "--binarize", "none",
                         "--per-example", str(tmp_path / f"{source}.npz")]) == 0
        result = json.loads((tiny_run / f"eval_{source.split('.')[0]}.json").read_text())
        assert result["images"]["binarize"] == "none" and result["num_examples"] == 12
        for name in ("elbo", "log_px"):
            assert result["metrics"][name]["mean"] == pytest.approx(reference[name]["mean"], rel=1e-6), (source, name)
        with np.load(tmp_path / f"{source}.npz") as f:
            assert f["log_px"].shape == (12,)
    out = capsys.readouterr().out
    assert "(binarize: none), 12 examples" in out
    # The conversions are recorded with the result, and printed.
    png16 = json.loads((tiny_run / "eval_png16.json").read_text())["images"]
    assert png16["png_bit_depth"] == 16 and png16["png_max_rounding"] == 0.0
    assert "16-bit grey levels v -> 8-bit round(255 v / 65535)" in png16["png_conversion"]
    rgba = json.loads((tiny_run / "eval_rgba.json").read_text())["images"]
    assert rgba["colour"].startswith("RGBA with R = G = B and opaque alpha -> grey")
    assert "images converted: RGBA with R = G = B" in out and "images converted: 16-bit grey levels" in out


def test_16_bit_grey_levels_are_scaled_by_the_bit_depth_not_clipped(tmp_path):
    levels = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4                     # 0 .. 252
    Image.fromarray(levels.astype(np.uint16) * 257).save(tmp_path / "exact.png")     # 257 k: exactly level k
    sixteen = np.round(levels.astype(np.float64) * 65535 / 255 + 100).astype(np.uint16)   # off the 8-bit grid
    Image.fromarray(sixteen).save(tmp_path / "off.png")
    for name in ("exact.png", "off.png"):
        im = images_lib.load_images(tmp_path / name, event_shape=(8, 8, 1), support="real")
        np.testing.assert_array_equal(im.stored[0, ..., 0], levels)                 # not clipped to white at 256
        assert im.info["png_bit_depth"] == 16
    assert im.info["png_max_rounding"] == pytest.approx(100 / 65535, rel=1e-6)


def test_grey_levels_are_binarized_only_when_asked(tiny_run, tmp_path, capsys):
    grey = np.linspace(0, 255, 2 * 64).reshape(2, 8, 8).astype(np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    code = cli.main(["evaluate", "--workdir", str(tiny_run), "--images", str(tmp_path / "grey.npy"), "--estimators", "elbo"])
    err = capsys.readouterr().err
    assert code == 2 and "has grey levels but this run's Bernoulli likelihood" in err and len(err.splitlines()) == 1
    assert not (tiny_run / "eval_grey.json").exists()
    t = images_lib.load_images(tmp_path / "grey.npy", event_shape=(8, 8, 1), support="binary", binarize="threshold")
    np.testing.assert_array_equal(t.stored[..., 0], np.where(grey > 127, 255, 0))
    s1 = images_lib.load_images(tmp_path / "grey.npy", event_shape=(8, 8, 1), support="binary", binarize="sample", seed=1)
    s2 = images_lib.load_images(tmp_path / "grey.npy", event_shape=(8, 8, 1), support="binary", binarize="sample", seed=1)
    np.testing.assert_array_equal(s1.stored, s2.stored)
    assert set(np.unique(s1.stored)) <= {0, 255} and "seed 1" in s1.info["binarize"]


def _bad(tmp_path, name, write):
    path = tmp_path / name
    write(path)
    return path


@pytest.mark.parametrize("name, write, kw, message", [
    ("shape.npy", lambda p: np.save(p, np.zeros((3, 7, 8), np.uint8)), {}, r"has shape \(3, 7, 8\); this run's model"),
    ("range.npy", lambda p: np.save(p, np.full((2, 8, 8), 1.5, np.float32)), {}, r"float values in \[1.5, 1.5\]"),
    ("nan.npy", lambda p: np.save(p, np.full((2, 8, 8), np.nan, np.float32)), {}, "NaN or infinite"),
    ("int.npy", lambda p: np.save(p, np.full((2, 8, 8), 300, np.int32)), {}, "integer values in"),
    ("empty", lambda p: p.mkdir(), {}, "a folder with no .png files"),
    ("broken", lambda p: (p.mkdir(), (p / "a.png").write_bytes(b"not a png")), {}, "is not a readable PNG"),
    ("many.npz", lambda p: np.savez(p, a=np.zeros(1), b=np.zeros(1)), {}, r"holds arrays \['a', 'b'\]"),
    ("none.npy", lambda p: None, {}, "no such file or folder"),
    ("gauss.npy", lambda p: np.save(p, np.zeros((2, 8, 8), np.uint8)), {"support": "real", "binarize": "threshold"},
     "--binarize threshold is for a Bernoulli likelihood"),
    ("zero.npy", lambda p: np.save(p, np.zeros((0, 8, 8), np.uint8)), {}, "holds no images"),
    ("cut.npz", lambda p: (np.savez(p, images=np.zeros((9, 8, 8), np.uint8)), p.write_bytes(p.read_bytes()[:200])),
     {}, r"is not a readable .npz archive of images \(truncated or damaged"),
    ("cut.npy", lambda p: (np.save(p, np.zeros((9, 8, 8), np.uint8)), p.write_bytes(p.read_bytes()[:200])),
     {}, r"is not a readable .npy array of images"),
    ("uint16.npy", lambda p: np.save(p, np.full((2, 8, 8), 60000, np.uint16)), {},
     r"16-bit levels v: np.round\(v \* 255 / 65535\)"),
    ("colour", lambda p: (p.mkdir(), plt.imsave(p / "a.png", np.eye(8))), {},
     r"holds colour \(RGBA\) images whose channels differ.*Image.open\(path\).convert\('L'\)"),
    ("rgb.npy", lambda p: np.save(p, np.stack([np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8) * 9,
                                               np.zeros((2, 8, 8), np.uint8)], -1)), {}, r"holds colour \(RGB\) images"),
    ("mixed", lambda p: (p.mkdir(), Image.fromarray(np.zeros((8, 8), np.uint8)).save(p / "a.png"),
                         Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(p / "b.png")), {},
     r"holds RGBA images with transparent pixels \(alpha < 255 in 1 of 2 images\)"),
])
def test_bad_images_are_one_line_errors(tmp_path, name, write, kw, message):
    path = _bad(tmp_path, name, write)
    kw = {"support": "binary", "binarize": "none", **kw}
    with pytest.raises(ImagesError, match=message) as info:
        images_lib.load_images(path, event_shape=(8, 8, 1), **kw)
    assert str(path) in str(info.value) or "--binarize" in str(info.value)
    assert "\n" not in str(info.value)
