"""Reading and writing files: masks of every format, images, errors, limits, atomic writes."""

import os

import imageio.v3 as iio
import numpy as np
import pytest

from retina_prep.errors import ImageReadError, MaskError, OutputExistsError
from retina_prep.io import read_image, read_mask, write_image

from .helpers import disc, iou


@pytest.mark.parametrize("kind", ["gray", "rgb", "palette"])
def test_read_gif_masks(tmp_path, kind):
    m = disc((40, 50), 15)
    u = m.astype(np.uint8) * 255
    path = tmp_path / "m.gif"
    if kind == "gray":
        iio.imwrite(path, u)
    elif kind == "rgb":
        iio.imwrite(path, np.dstack([u, u, u]))
    else:
        from PIL import Image

        im = Image.fromarray(m.astype(np.uint8), mode="L").convert("P")
        im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
        im.save(path)
    assert np.array_equal(read_mask(path), m)


@pytest.mark.parametrize("kind", ["gray", "palette", "transparent", "animated"])
def test_gif_decoded_by_pillow_as_imageio_gives_it(tmp_path, kind, rng):
    """GIFs are decoded with Pillow (imageio costs start-up time): the first frame, a palette in
    its palette's mode, exactly as imageio reads it."""
    from PIL import Image

    from retina_prep.io.read import _decode_by

    a = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    path = tmp_path / "x.gif"
    if kind == "gray":
        Image.fromarray(a, mode="L").save(path)
    elif kind == "palette":
        Image.fromarray(np.dstack([a, 255 - a, a // 2])).convert("P").save(path)
    elif kind == "transparent":
        Image.fromarray(a, mode="L").convert("P").save(path, transparency=0)
    else:
        frames = [Image.fromarray(np.roll(a, i, axis=1), mode="L") for i in range(3)]
        frames[0].save(path, save_all=True, append_images=frames[1:])
    data = path.read_bytes()
    got, decoder = _decode_by(path, data)
    ref = np.asarray(iio.imread(data, extension=".gif"))
    if ref.ndim == 4 or (ref.ndim == 3 and ref.shape[-1] > 4):
        ref = ref[0]
    assert decoder == "pillow" and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_read_masks_other_formats(tmp_path, ext):
    m = disc((40, 50), 15)
    p = tmp_path / f"m{ext}"
    write_image(p.with_suffix(".png"), m.astype(np.uint8) * 255)
    if ext != ".png":
        iio.imwrite(p, m.astype(np.uint8) * 255)
    got = read_mask(p)
    assert iou(got, m) > 0.98


def test_read_mask_errors(tmp_path):
    empty = tmp_path / "e.png"
    write_image(empty, np.zeros((5, 5), np.uint8))
    with pytest.raises(MaskError, match="empty"):
        read_mask(empty)
    junk = tmp_path / "j.gif"
    junk.write_text("not a gif")
    with pytest.raises(MaskError, match=str(junk.name)):
        read_mask(junk)


# ------------------------------------------------------------ image io

def test_roundtrip_rgb_and_16bit(tmp_path, rng):
    rgb = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    write_image(tmp_path / "a.png", rgb)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)
    # channel order is RGB on disk as everywhere else
    assert np.array_equal(iio.imread(tmp_path / "a.png"), rgb)
    deep = rng.integers(0, 65536, (10, 12)).astype(np.uint16)
    write_image(tmp_path / "b.tif", deep)
    assert np.array_equal(read_image(tmp_path / "b.tif"), deep)
    assert oct(os.stat(tmp_path / "a.png").st_mode & 0o777) != oct(0o600)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_tiff_rgb_roundtrip(tmp_path, rng, dtype):
    """float64 RGB TIFFs crashed in OpenCV's colour conversion (it takes 8/16-bit and float32)."""
    import cv2

    rgb = rng.random((10, 12, 3)).astype(dtype)
    write_image(tmp_path / "a.tif", rgb)
    back = read_image(tmp_path / "a.tif")
    assert back.dtype == dtype and np.array_equal(back, rgb)
    cv2.imwrite(str(tmp_path / "b.tif"), rgb[..., ::-1])  # OpenCV stores BGR: read as RGB
    assert np.array_equal(read_image(tmp_path / "b.tif"), rgb)


def test_float64_tiff_through_normalize(tmp_path):
    """A float64 RGB TIFF in, float64 out, as the library computes it (two images, -j 2)."""
    from click.testing import CliRunner

    from retina_prep.cli.main import cli
    from retina_prep.normalize import normalize_illumination
    from retina_prep.synthetic import synthetic_fundus

    s = synthetic_fundus((90, 100), seed=1, background=5)
    img = s.image.astype(np.float64) / 255
    for name in ("a", "b"):
        write_image(tmp_path / "in" / f"{name}.tif", img[:, ::-1] if name == "b" else img)
    write_image(tmp_path / "fov.png", s.mask.astype(np.uint8) * 255)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "--mask",
                                 str(tmp_path / "fov.png"), "-o", str(tmp_path / "out"),
                                 "--format", "tif", "--window", "9", "--order", "0", "--rim", "none",
                                 "-j", "2"])
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "out" / "a.tif")
    assert out.dtype == np.float64 and out.shape == img.shape
    assert np.allclose(out, normalize_illumination(img, s.mask, window=9, order=0))
    assert read_image(tmp_path / "out" / "b.tif").shape == img.shape


def test_rgba_drops_alpha(tmp_path, rng):
    rgba = rng.integers(0, 256, (10, 12, 4)).astype(np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgba[..., :3])


@pytest.mark.parametrize(
    "content, message",
    [(b"", "empty"), (b"hello, this is text", "cannot decode"), (None, "not found")],
)
def test_read_image_errors(tmp_path, content, message):
    p = tmp_path / "x.tif"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(ImageReadError, match=message) as exc:
        read_image(p)
    assert str(p) in str(exc.value)


def test_truncated_image(tmp_path, rng):
    p = tmp_path / "t.png"
    write_image(p, rng.integers(0, 256, (64, 64, 3)).astype(np.uint8))
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(ImageReadError):
        read_image(p)


def test_pixel_limit(tmp_path):
    p = tmp_path / "big.png"
    write_image(p, np.zeros((100, 100), np.uint8))
    with pytest.raises(ImageReadError, match="above the limit of 5,000") as info:
        read_image(p, max_pixels=5000)
    assert "--" not in str(info.value)  # library words, no CLI flags
    assert info.value.pixels == 10000 and info.value.limit == 5000
    with pytest.raises(MaskError, match="above the limit"):  # masks have the limit too
        read_mask(p, max_pixels=5000)


def test_write_refuses_existing_and_is_atomic(tmp_path):
    p = tmp_path / "o.png"
    write_image(p, np.zeros((4, 4), np.uint8))
    with pytest.raises(OutputExistsError, match="output exists") as info:
        write_image(p, np.ones((4, 4), np.uint8))
    assert "--" not in str(info.value)
    write_image(p, np.ones((4, 4), np.uint8), overwrite=True)
    assert read_image(p).max() == 1
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.png"]  # no temporary files
    with pytest.raises(ValueError, match="tif"):
        write_image(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    assert not (tmp_path / "f.png").exists()


def _jpeg_with_orientation(path, rgb, orientation):
    from PIL import Image

    im = Image.fromarray(rgb)
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_honoured_like_pillow(tmp_path, orientation):
    """Pixels come turned as viewers show them: the same as Pillow's exif_transpose."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(orientation)
    rgb = np.kron(rng.integers(0, 255, (6, 9, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    path = tmp_path / "eye.jpg"
    _jpeg_with_orientation(path, rgb, orientation)
    meta = {}
    got = read_image(path, meta=meta)
    with Image.open(path) as im:
        ref = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert got.shape == ref.shape
    assert np.abs(got.astype(int) - ref).mean() < 2  # the same decoded JPEG, turned alike
    assert meta.get("orientation", 1) == orientation
    stored = read_image(path, orientation=False)
    assert stored.shape == (48, 72, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_turned_once(tmp_path, orientation):
    """TIFF: OpenCV turns some orientations itself and cannot decode others (imageio then reads
    the stored pixels); either way the image comes turned once, or as stored when asked. The
    reference is the stored pixels (tifffile via imageio) turned by the EXIF rule."""
    from PIL import Image

    from retina_prep.io import apply_orientation

    rng = np.random.default_rng(orientation)
    rgb = np.kron(rng.integers(0, 255, (4, 6, 3)), np.ones((8, 8, 1))).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "eye.tif", format="TIFF", exif=exif.tobytes())
    stored = iio.imread(tmp_path / "eye.tif")
    np.testing.assert_array_equal(stored, rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "eye.tif"), apply_orientation(rgb, orientation))
    np.testing.assert_array_equal(read_image(tmp_path / "eye.tif", orientation=False), rgb)
