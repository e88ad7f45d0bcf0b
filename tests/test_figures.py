import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.figures import PALETTE, THEME, choose_inset, contact_sheet, panel, to_display
from retina_prep.io import read_image, write_image
from retina_prep.synthetic import synthetic_fundus

from .helpers import make_drive


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _geometry(w, n):
    pad = max(2, round(THEME["pad_fraction"] * w))
    title = max(14, round(THEME["title_fraction"] * w))
    return pad, title


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("shape", [(60, 80), (300, 280)])
def test_panel_geometry_and_columns(n, shape, rng):
    h, w = shape
    cols = [(f"c{i}", np.full((h, w, 3), 40 * (i + 1), np.uint8)) for i in range(n)]
    out = panel(cols)
    pad, title = _geometry(w, n)
    assert out.shape == (title + h + 2 * pad, n * w + (n + 1) * pad, 3)
    for i in range(n):
        x0 = pad + i * (w + pad)
        block = out[pad + title: pad + title + h, x0:x0 + w]
        assert np.all(block == 40 * (i + 1)), f"column {i} does not hold its image"


def test_panel_inset_shows_the_same_pixels(rng):
    h, w = 100, 120
    a = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    b = 255 - a
    inset = (30, 20, 25)
    out = panel([("a", a), ("b", b)], inset=inset)
    pad, title = _geometry(w, 2)
    ih = w // 2
    assert out.shape[0] == title + h + 2 * pad + ih + pad
    yz = pad + title + h + pad
    for i, im in enumerate([a, b]):
        xz = pad + i * (w + pad) + (w - ih) // 2
        zoom = out[yz:yz + ih, xz:xz + ih]
        # nearest-neighbour zoom: the zoom's centre pixel is the inset's centre pixel
        x, y, s = inset
        c = ih // 2
        src = im[y + (c * s) // ih, x + (c * s) // ih]
        assert np.array_equal(zoom[c, c], src)


def test_panel_profile_and_16bit_gray():
    s = synthetic_fundus((200, 190), seed=1)
    gray16 = (s.image[..., 1].astype(np.uint16) * 257)
    out = panel([("g16", gray16), ("rgb", s.image)], mask=s.mask, inset="auto", profile=True)
    pad, title = _geometry(190, 2)
    assert out.shape[0] == title + 200 + 2 * pad + 95 + pad + round(0.35 * 190) + pad
    x0 = pad
    # the 16-bit gray column shows the 8-bit values (contour drawn only at the margin)
    block = out[pad + title: pad + title + 200, x0:x0 + 190, 0].astype(int)
    inner = s.mask.copy()
    inner[:, :] &= (np.roll(s.mask, 3, 0) & np.roll(s.mask, -3, 0)
                    & np.roll(s.mask, 3, 1) & np.roll(s.mask, -3, 1))
    yb, xb = np.nonzero(inner)
    # the inset box may cover some pixels; most interior pixels are the image itself
    same = block[yb, xb] == s.image[yb, xb, 1]
    assert same.mean() > 0.9


def test_to_display():
    assert to_display(np.full((2, 2), 65535, np.uint16)).max() == 255
    assert to_display(np.full((2, 2), 0.5, np.float32))[0, 0, 0] == 128
    assert to_display(np.zeros((2, 2, 4), np.uint8)).shape == (2, 2, 3)


def test_choose_inset_finds_the_difference():
    m = np.zeros((100, 100), bool)
    m[10:90, 10:90] = True
    a = np.zeros((100, 100), np.uint8)
    b = a.copy()
    b[75:85, 12:20] = 200  # a difference near the lower-left margin
    x, y, size = choose_inset([a, b], m, 20)
    assert x <= 12 < x + size and y <= 80 < y + size


def test_contact_sheet_shape():
    tiles = [(str(i), np.zeros((30, 40, 3), np.uint8)) for i in range(5)]
    sheet = contact_sheet(tiles)
    assert sheet.shape[1] > 3 * 40 and sheet.shape[0] > 2 * 30
    # one tall tile makes its own row tall, not every row
    tall = tiles[:4] + [("tall", np.zeros((90, 40, 3), np.uint8))]
    grown = contact_sheet(tall)
    assert grown.shape[0] - sheet.shape[0] == 60
    each_row_tall = contact_sheet([(t, np.zeros((90, 40, 3), np.uint8)) for t, _ in tall])
    assert grown.shape[0] < each_row_tall.shape[0]


def test_compare_end_to_end(tmp_path):
    root = make_drive(tmp_path / "D", 1, 1)
    out = tmp_path / "fig.png"
    img = root / "test" / "images" / "01_test.tif"
    r = invoke("compare", img, "-o", out, "--kernel", "sharpen")
    assert r.exit_code == 0, r.output
    fig = read_image(out)
    assert fig.ndim == 3 and fig.shape[1] > 4 * 110
    r = invoke("compare", img, "-o", tmp_path / "fig4.png", "--normalize", "--window", 15,
               "--inset", "5,40,30", "--no-profile")
    assert r.exit_code == 0, r.output
    r = invoke("compare", root, "-o", tmp_path / "figs", "--sheet", tmp_path / "s.png",
               "--kernel", "gaussian", "--sigma", 2, "--size", 9)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "figs").rglob("*.png")) == ["01_test.png",
                                                                          "21_training.png"]
    assert (tmp_path / "s.png").exists()
    r = invoke("compare", root, "-o", tmp_path / "one.png")
    assert r.exit_code == 2 and "give a folder" in r.output
    r = invoke("compare", img, "-o", out, "--kernel", "sharpen")
    assert r.exit_code == 1 and "--overwrite" in r.output
    r = invoke("compare", img, "-o", tmp_path / "x.png", "--inset", "1,2")
    assert r.exit_code == 2


def test_normalize_panels(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    r = invoke("normalize", root, "-o", tmp_path / "o", "--panels", tmp_path / "p",
               "--panels-compare", "--window", 15)
    assert r.exit_code == 0, r.output
    p = read_image(tmp_path / "p" / "training" / "21_training.png")
    assert p.shape[1] > 3 * 110
    r = invoke("normalize", root, "-o", tmp_path / "o2", "--panels-compare")
    assert r.exit_code == 2 and "--panels" in r.output


def test_write_read_panel_roundtrip(tmp_path):
    cols = [("a", np.zeros((20, 20), np.uint8))]
    write_image(tmp_path / "p.png", panel(cols))
    assert read_image(tmp_path / "p.png").shape[2] == 3


def test_panel_width_limit_downscales_columns_not_insets():
    from retina_prep.figures import panel
    from retina_prep.synthetic import synthetic_fundus

    s = synthetic_fundus((600, 900), seed=2)
    cols = [("a", s.image), ("b", s.image)]
    full = panel(cols, mask=s.mask, inset=(100, 250, 80), profile=True)
    small = panel(cols, mask=s.mask, inset=(100, 250, 80), profile=True, max_width=700)
    assert full.shape[1] > 700 >= small.shape[1] >= 690
    assert small.shape[0] < full.shape[0]
    with pytest.raises(ValueError, match="does not fit"):
        panel(cols, mask=s.mask, inset=(880, 10, 80))


def test_profile_axis_follows_the_data():
    """A dark image's curves span the strip, not its bottom tenth (axis scaled to the data)."""
    from retina_prep.figures import _profile_strip

    g = np.full((50, 50), 20.0, np.float32)
    g[:, 25:] = 30.0
    strip = _profile_strip([g], ["dark"], (0, 25), (49, 25), np.ones((50, 50), bool), 400, 200)
    ink = np.nonzero((np.abs(strip.astype(int) - np.array(PALETTE[0])).sum(axis=2) < 40).any(axis=1))[0]
    assert ink.max() - ink.min() > 0.4 * 200  # the step from 20 to 30 fills much of the height


@pytest.mark.parametrize("shape", [(3, 3), (1, 40), (40, 2)])
def test_auto_inset_on_images_too_small_for_a_zoom(tmp_path, shape):
    """Under 4 px a side there is no room for an inset: the figure shows the columns alone (it
    failed with an error about inset coordinates the user never gave)."""
    rng = np.random.default_rng(0)
    img = rng.integers(40, 200, shape + (3,)).astype(np.uint8)
    mask = np.ones(shape, bool)
    out = panel([("a", img), ("b", img)], mask=mask, inset="auto", profile=True)
    assert out.ndim == 3 and out.dtype == np.uint8
    write_image(tmp_path / "in" / "eye.png", img)
    r = invoke("compare", tmp_path / "in", "-o", tmp_path / "o", "-j", "2")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "eye.png").exists()


def test_the_profile_line_crosses_the_margin_in_the_inset():
    """The line ran through the inset's centre: where that was a way inside the FOV (insets
    placed near the margin, not on it) the profile never crossed the margin."""
    from retina_prep.figures import _profile_line, _sample

    yy, xx = np.mgrid[:200, :200]
    m = (yy - 100) ** 2 + (xx - 100) ** 2 <= 80 ** 2
    for inset in [(121, 121, 40), (150, 60, 40), (165, 90, 30), (10, 90, 40), (60, 150, 40)]:
        p0, p1 = _profile_line(m, inset)
        x, y, size = inset
        for px, py in (p0, p1):  # inside the inset
            assert x - 1e-6 <= px <= x + size + 1e-6 and y - 1e-6 <= py <= y + size + 1e-6
        v = _sample(m.astype(np.float32), p0, p1, 200)
        assert v.max() > 0.5 > v.min(), inset
