import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.cli.main import cli
from retina_prep.evaluate import evaluate_image, roc_auc, roc_curve, summarize
from retina_prep.kernels import box_kernel
from retina_prep.synthetic import synthetic_fundus

from .conftest import REPO


def auc_pairwise(scores, labels):
    """P(score of a positive > score of a negative) + 0.5 P(tie), over every pair."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    total = 0.0
    for p in pos:
        for n in neg:
            total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.booleans()), min_size=2, max_size=40))
def test_auc_matches_pairwise(data):
    scores = [s for s, _ in data]
    labels = [y for _, y in data]
    if all(labels) or not any(labels):
        assert math.isnan(roc_auc(scores, labels))
    else:
        assert roc_auc(scores, labels) == pytest.approx(auc_pairwise(scores, labels))


def test_roc_curve_ends():
    fpr, tpr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_masked_beats_unmasked_on_synthetic():
    evs = []
    for seed in (1, 2, 3):
        s = synthetic_fundus((400, 390), seed=seed, background=8, strength=1.0)
        evs.append(evaluate_image(s.image, s.mask, s.mask, s.vessels, kernel=box_kernel(25)))
    summary = summarize(evs)
    bias = summary["bias"]
    for band in summary["bands"][:4]:  # up to 25 px
        masked = np.abs(bias["IN with mask"][band]).mean()
        plain = np.abs(bias["IN without mask"][band]).mean()
        assert masked < plain, band
    for response in ("inverted green", "black top-hat"):
        assert (summary["auc"]["IN with mask"][response]["margin band"]
                > summary["auc"]["IN without mask"][response]["margin band"])


def test_evaluate_command_on_sample_data(tmp_path):
    out = tmp_path / "report"
    r = CliRunner().invoke(cli, ["evaluate", str(REPO / "sample_data"), "-o", str(out),
                                 "--labels", str(REPO / "sample_data" / "vessels"), "-q"])
    assert r.exit_code == 0, r.output
    assert "| IN with mask |" in r.stdout and "margin band" in r.stdout
    for name in ("bias.csv", "auc.csv", "report.json", "roc_inverted_green.png",
                 "roc_black_top-hat.png"):
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 3 and report["labelled_images"] == 2
    r = CliRunner().invoke(cli, ["evaluate", str(REPO / "sample_data"), "-o", str(out)])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_drive_claim(drive, tmp_path):
    """Seed 000's claim on the DRIVE test set, with the DRIVE preset's window and erosion."""
    r = CliRunner().invoke(cli, ["evaluate", str(drive / "test"), "-o", str(tmp_path / "r"), "-q",
                                 "--window", "21", "--erode", "6"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    bias = report["bias"]
    for band in report["bands"][:4]:
        if report["pixels"]["IN with mask"][band]:
            assert (np.abs(bias["IN with mask"][band]).mean()
                    < np.abs(bias["IN without mask"][band]).mean())
    for response in ("inverted green", "black top-hat"):
        assert (report["auc"]["IN with mask"][response]["margin band"]
                > report["auc"]["IN without mask"][response]["margin band"])


def test_edge_interior_ratio_floors_a_flat_interior():
    """mean |bias| below 6 px over that beyond 50 px; the interior counts as at least one gray
    level (a flat interior, as on large images, made the ratio run to hundreds)."""
    from types import SimpleNamespace

    from retina_prep.evaluate import BANDS

    def ev(interior):
        sums = np.zeros((len(BANDS), 3))
        sums[0], sums[1], sums[-1] = 6.0, -3.0, interior  # one pixel per band
        return SimpleNamespace(bias_sums={"none": sums},
                               bias_counts={"none": np.ones(len(BANDS))}, labels=None)

    assert summarize([ev(2.0)], methods=("none",))["edge_interior"]["none"] == pytest.approx(2.25)
    assert summarize([ev(0.01)], methods=("none",))["edge_interior"]["none"] == pytest.approx(4.5)
    assert summarize([ev(-1.0)], methods=("none",))["edge_interior"]["none"] == pytest.approx(4.5)


def test_peers_rows(tmp_path):
    """evaluate --peers adds the peers' margin treatments; Ben Graham's 0.9 R crop hides the
    margin (its margin bands are I0 exactly, its margin-band AUC chance), masked Ben Graham and
    mirror padding keep the margin's vessels."""
    out = tmp_path / "report"
    r = CliRunner().invoke(cli, ["evaluate", str(REPO / "sample_data"), "-o", str(out),
                                 "--labels", str(REPO / "sample_data" / "vessels"), "--peers",
                                 "--order", "1", "-q"])
    assert r.exit_code == 0, r.output
    from retina_prep.evaluate import PEERS

    for name in PEERS:
        assert f"| {name} |" in r.stdout, name
    report = json.loads((out / "report.json").read_text())
    auc = report["auc"]
    crop = auc["Ben Graham, 0.9 R crop"]["inverted green"]["margin band"]
    assert abs(crop - 0.5) < 0.05  # near chance: the margin band is set to I0
    assert auc["Ben Graham, masked"]["inverted green"]["margin band"] > 0.8
    assert auc["mirror padding, then IN without mask"]["inverted green"]["margin band"] > 0.8
