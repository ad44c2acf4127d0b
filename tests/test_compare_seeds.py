"""The comparison study with several training seeds: every row paired with the reference row on the same
images and draws, extra seeds that cost training time only, and a study killed mid-run that resumes to
the very table an uninterrupted one writes."""

import re

import numpy as np
import pytest

from vaegen import compilation
from vaegen.studies import compare, compare_study

pytestmark = pytest.mark.slow  # the tiny study, twice, and once killed and resumed

SETTINGS = ["seeds=2"]
ONLY = ["vae", "ae"]


def _study(workdir, settings=SETTINGS):
    return compare_study.run_study(workdir, preset="tiny", settings=settings, only=ONLY, progress=False,
                                   log=lambda s: None)


@pytest.fixture(scope="module")
def one_then_two_seeds(tmp_path_factory):
    """The study with one seed, then the same study with two (in the same workdir), the second counted."""
    workdir = tmp_path_factory.mktemp("seeds")
    compilation.forget_shared()
    first = _study(workdir, [])
    with compilation.count_compilations() as counted:
        second = _study(workdir)
    return workdir, first, second, counted


def test_another_seed_costs_training_time_only(one_then_two_seeds):
    workdir, first, second, counted = one_then_two_seeds
    assert (workdir / "vae.seed1" / "checkpoints").is_dir() and (workdir / "ae.seed1" / "checkpoints").is_dir()
    assert second["seeds"] == [0, 1] and set(second["rows_by_seed"]) == {"0", "1"}
    # The first seed's runs and rows are reused as they are; the second seed's programs are the first's.
    assert second["rows_by_seed"]["0"]["vae"]["log_px"] == first["rows"]["vae"]["log_px"]
    assert not [n for n in counted["names"] if "train_steps" in n], counted["names"]


def test_every_row_is_paired_with_the_reference_over_the_seeds(one_then_two_seeds):
    workdir, _, second, _ = one_then_two_seeds
    paired = second["paired"]
    assert second["reference"] == "vae" and "vae" not in paired
    for row in ("ae+n01", "ae+gmm", "vae+gmm"):
        p = paired[row]["log_px"]
        assert len(p["per_seed"]) == 2 and p["seed_spread"] is not None and p["stderr"] > 0, row
        assert p["verdict"] in ("better", "worse", "not distinguishable at this budget")
    # The AE as trained has no log p(x), but its reconstruction pairs with the VAE's.
    assert "log_px" not in paired["ae"] and "reconstruction" in paired["ae"]
    # A paired difference is the per-image difference of the two rows' values, seed by seed.
    for seed, stem in ((0, "ae+gmm"), (1, "ae+gmm.seed1")):
        with np.load(workdir / "rows" / f"{stem}.values.npz") as a, \
                np.load(workdir / "rows" / f"{'vae' if seed == 0 else 'vae.seed1'}.values.npz") as b:
            d = a["log_px"] - b["log_px"]
        assert paired["ae+gmm"]["log_px"]["per_seed"][seed]["mean"] == pytest.approx(d.mean())
        assert paired["ae+gmm"]["log_px"]["per_seed"][seed]["stderr"] == pytest.approx(d.std(ddof=1) / np.sqrt(d.size))
    report = (workdir / "report" / "report.md").read_text()
    assert "## Paired differences" in report and "## How far each model was from converging" in report
    assert "[seeds ±" in report and "over 2 training seeds" in report


def _tables(workdir):
    """The report's metric table (without the fit-seconds column, a timing) and its paired table."""
    text = (workdir / "report" / "report.md").read_text()
    metric = [l.rsplit("|", 2)[0] for l in text.split("## Metrics")[1].split("\n\n")[1].splitlines()]
    paired = text.split("## Paired differences")[1].split("\n\n")[2]
    return metric, paired


def test_a_study_killed_mid_run_resumes_to_the_uninterrupted_table(one_then_two_seeds, tmp_path, monkeypatch):
    workdir, _, _, _ = one_then_two_seeds
    real, calls = compare.evaluate_row, []

    def killed_on_the_fifth_row(ctx, row):
        calls.append(row.name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(ctx, row)

    monkeypatch.setattr(compare, "evaluate_row", killed_on_the_fifth_row)
    with pytest.raises(KeyboardInterrupt):
        _study(tmp_path)
    assert not (tmp_path / "report").exists() and len(list((tmp_path / "rows").glob("*.json"))) == 4
    monkeypatch.setattr(compare, "evaluate_row", real)
    _study(tmp_path)
    assert _tables(tmp_path) == _tables(workdir)
    gmm = next(l for l in _tables(tmp_path)[0] if l.startswith("| AE + ex-post GMM |"))
    assert re.match(r" [+-]\d+\.\d ± \d+\.\d \[seeds ±\d+\.\d\] ", gmm.split("|")[4])   # its paired difference


def test_a_budget_reuses_what_is_finished(one_then_two_seeds, tmp_path):
    """Past its budget a study starts no work, but trained runs and measured rows cost nothing: a budget of
    0 s on a finished workdir reports every seed, unchanged; on a new workdir it skips everything."""
    workdir, _, second, _ = one_then_two_seeds
    again = compare_study.run_study(workdir, preset="tiny", settings=SETTINGS, only=ONLY, progress=False,
                                    log=lambda s: None, budget_seconds=0)
    assert again["skipped"] == [] and again["seeds"] == [0, 1]
    assert again["rows_by_seed"]["1"]["ae+gmm"]["log_px"] == second["rows_by_seed"]["1"]["ae+gmm"]["log_px"]
    empty = compare_study.run_study(tmp_path, preset="tiny", settings=SETTINGS, only=ONLY, progress=False,
                                    log=lambda s: None, budget_seconds=0)
    assert empty["seeds"] == [0] and any(s.startswith("training vae") for s in empty["skipped"])
