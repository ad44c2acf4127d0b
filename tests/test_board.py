"""TensorBoard event files equal metrics.jsonl, step for step, also across a resume."""

import json
import math
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import vaegen
from vaegen.data import binarization
from vaegen.data import splits as splits_lib
from vaegen.errors import WorkdirError
from vaegen.estimators import diagnostics
from vaegen.train import board as board_lib
from vaegen.train.rng import purpose_key


def _events(workdir):
    ea = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    ea.Reload()
    return ea


def _lines(workdir):
    return [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]


def _assert_board_equals_metrics(workdir):
    ea, lines = _events(workdir), _lines(workdir)
    expected = {}
    for line in lines:
        for name, value in board_lib.scalars_of(line).items():
            expected.setdefault(name, []).append((line["step"], value))
    assert set(ea.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        got = [(e.step, e.value) for e in ea.Scalars(name)]
        assert [s for s, _ in got] == [s for s, _ in points], name           # each step once, in order
        np.testing.assert_allclose([v for _, v in got], [v for _, v in points], rtol=1e-6, atol=1e-6,
                                   err_msg=name)                            # float32 in the event file
    return ea, lines


@pytest.mark.slow
def test_board_has_every_number_of_metrics_and_images(tiny_config, tmp_path):
    c = tiny_config
    c.train.num_epochs = 2
    c.train.tensorboard_images = 6
    c.train.latent_health_examples = 150
    vaegen.train_and_evaluate(c, tmp_path)
    ea, lines = _assert_board_equals_metrics(tmp_path)
    names = set(board_lib.scalars_of(lines[-1]))
    assert {"train/elbo", "validation/elbo", "train/elbo_bits_per_dim", "learning_rate", "train/grad_norm",
            "steps_per_second", "train/skipped_steps"} <= names
    # bits/dim is the bound over the 8x8 = 64 pixels, in base 2
    assert lines[-1]["validation/elbo_bits_per_dim"] == pytest.approx(-lines[-1]["validation/elbo"] / (64 * math.log(2)))
    assert {"latent/active_units", "latent/rate", "latent/mutual_information", "latent/distortion",
            "latent/kl_per_dim/00", "latent/kl_per_dim/03"} <= set(ea.Tags()["scalars"])
    # the latent diagnostics of the last validation are those of the trained run, recomputed
    run = vaegen.load(tmp_path)
    protocol = splits_lib.split_protocol(run.spec.data, "validation")
    stored = splits_lib.stored_split(run.spec.data, run.data().validation[:c.train.latent_health_examples], "validation")
    key = purpose_key(c.seed, "validation")
    again = diagnostics.diagnose(run.model, run.variables, binarization.to_float(key, stored, protocol), key)
    assert lines[-1]["latent/rate"] == pytest.approx(again["rate"]["mean"], rel=1e-5)
    assert lines[-1]["latent/mutual_information"] == pytest.approx(again["mutual_information"], rel=1e-4)
    np.testing.assert_allclose(lines[-1]["latent/kl_per_dim"], again["kl_per_dim"], rtol=1e-5)
    assert set(ea.Tags()["images"]) == {"images/samples", "images/reconstructions"}
    shown = ea.Images("images/samples")
    assert [i.step for i in shown] == [l["step"] for l in lines]            # one grid per validation
    assert (shown[0].width, shown[0].height) == (6 * 9 - 1, 8)              # 6 tiles of 8x8, 1-pixel borders


@pytest.mark.slow
def test_resumed_run_appends_without_duplicating_steps(tiny_config, tmp_path):
    c = tiny_config
    c.train.num_epochs = 3
    c.train.tensorboard_images = 0
    vaegen.train_and_evaluate(c, tmp_path)
    first = _lines(tmp_path)
    # The process "died" after logging epoch 3 but before its checkpoint was kept: resume from epoch 2.
    shutil.rmtree(tmp_path / "checkpoints" / "3")
    vaegen.train_and_evaluate(c, tmp_path)
    assert len(list((tmp_path / "tensorboard").iterdir())) == 2             # the resumed process's own file
    ea, lines = _assert_board_equals_metrics(tmp_path)
    assert [l["step"] for l in lines] == [l["step"] for l in first]
    assert not ea.Tags()["images"]


def test_tensorboard_off_and_unwritable(tiny_config, tmp_path):
    c = tiny_config
    c.train.num_epochs = 1
    c.train.tensorboard = False
    vaegen.train_and_evaluate(c, tmp_path / "off")
    assert (tmp_path / "off" / "metrics.jsonl").exists() and not (tmp_path / "off" / "tensorboard").exists()
    # Turned on when resuming, with a TensorBoard path that cannot be a directory: fails at start,
    # before anything is written.
    c.train.tensorboard = True
    c.train.num_epochs = 2
    (tmp_path / "off" / "tensorboard").write_text("not a directory")
    before = {p: p.read_bytes() for p in (tmp_path / "off").rglob("*") if p.is_file()}
    with pytest.raises(WorkdirError, match="TensorBoard directory .* cannot be written"):
        vaegen.train_and_evaluate(c, tmp_path / "off")
    assert {p: p.read_bytes() for p in (tmp_path / "off").rglob("*") if p.is_file()} == before


def test_image_grid_layout():
    x = np.zeros((5, 2, 3))
    x[1] = 1.0
    grid = board_lib.image_grid(x, columns=4)
    assert grid.shape == (2 * 3 - 1, 4 * 4 - 1, 1) and grid.dtype == np.uint8
    assert (grid[0:2, 4:7] == 255).all() and (grid[0:2, 0:3] == 0).all()   # tile 1 white, tile 0 black
    assert (grid[2, :] == 255).all()                                        # the border between rows
    assert (grid[3:5, 0:3] == 0).all() and (grid[3:5, 4:] == 255).all()     # tile 4; empty slots white
