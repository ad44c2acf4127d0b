"""`vaegen evaluate --images`: a user's own images give the numbers of the same images in a split,
in every format; bad images are one-line errors naming the file."""

import json

import numpy as np
import pytest
from PIL import Image

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
    for i, im in enumerate(stored):
        Image.fromarray(im).save(tmp_path / "png" / f"{i:03d}.png")
    common = ["--workdir", str(tiny_run), "--estimators", "elbo,is", "--k", "20", "--no-progress", "--max-examples", "12"]
    assert cli.main(["evaluate", *common, "--out", str(tmp_path / "split.json")]) == 0
    reference = json.loads((tmp_path / "split.json").read_text())["metrics"]
    for source in ("x.npy", "x.npz", "png"):
        assert cli.main(["evaluate", *common, "--images", str(tmp_path / source), "--binarize", "none",
                         "--per-example", str(tmp_path / f"{source}.npz")]) == 0
        result = json.loads((tiny_run / f"eval_{source.split('.')[0]}.json").read_text())
        assert result["images"]["binarize"] == "none" and result["num_examples"] == 12
        for name in ("elbo", "log_px"):
            assert result["metrics"][name]["mean"] == pytest.approx(reference[name]["mean"], rel=1e-6), (source, name)
        with np.load(tmp_path / f"{source}.npz") as f:
            assert f["log_px"].shape == (12,)
    assert "(binarize: none), 12 examples" in capsys.readouterr().out


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
])
def test_bad_images_are_one_line_errors(tmp_path, name, write, kw, message):
    path = _bad(tmp_path, name, write)
    kw = {"support": "binary", "binarize": "none", **kw}
    with pytest.raises(ImagesError, match=message) as info:
        images_lib.load_images(path, event_shape=(8, 8, 1), **kw)
    assert str(path) in str(info.value) or "--binarize" in str(info.value)
    assert "\n" not in str(info.value)
