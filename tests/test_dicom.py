"""DICOM input: files built here with pydicom (uncompressed RGB and YBR, JPEG baseline,
multi-frame) read like PNGs; without the extra, one line naming it."""

import json
import sys

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.errors import ImageReadError
from retina_prep.io import read_image, write_image
from retina_prep.synthetic import synthetic_fundus

pydicom = pytest.importorskip("pydicom")


def write_dicom(path, rgb, *, photometric="RGB", jpeg=False, frames=1, spacing=(0.0125, 0.0125)):
    """A secondary-capture colour fundus DICOM holding ``rgb`` (H, W, 3) uint8."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP"
    h, w = rgb.shape[:2]
    ds.Rows, ds.Columns = h, w
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 3, 8, 8, 7
    ds.PixelRepresentation, ds.PlanarConfiguration = 0, 0
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    stack = np.stack([rgb] * frames)
    if frames > 1:
        ds.NumberOfFrames = frames
    if jpeg:
        ds.PhotometricInterpretation = "YBR_FULL_422"
        parts = [cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                 for f in stack]
        ds.PixelData = encapsulate(parts)
        ds["PixelData"].VR = "OB"
    else:
        if photometric == "YBR_FULL":
            from pydicom.pixels import convert_color_space

            stack = np.stack([convert_color_space(f, "RGB", "YBR_FULL") for f in stack])
        ds.PhotometricInterpretation = photometric
        ds.PixelData = stack.astype(np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def fundus():
    return synthetic_fundus((80, 96), seed=4)


@pytest.mark.parametrize("kind", ["rgb", "ybr", "jpeg"])
def test_colour_dicom_reads_as_rgb_with_spacing(tmp_path, fundus, kind):
    path = write_dicom(tmp_path / "eye.dcm", fundus.image, jpeg=kind == "jpeg",
                       photometric="YBR_FULL" if kind == "ybr" else "RGB")
    meta = {}
    got = read_image(path, meta=meta)
    assert got.shape == fundus.image.shape and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - fundus.image)
    assert diff.max() == 0 if kind == "rgb" else diff.mean() < 3  # YBR and JPEG: rounding, loss
    assert meta["pixel_spacing"] == [0.0125, 0.0125] and meta["frames"] == 1


def test_multiframe_gives_the_first_frame(tmp_path, fundus):
    path = write_dicom(tmp_path / "eye.dcm", fundus.image, frames=3)
    meta = {}
    np.testing.assert_array_equal(read_image(path, meta=meta), fundus.image)
    assert meta["frames"] == 3


def test_without_the_extra_one_line_names_it(tmp_path, fundus, monkeypatch):
    path = write_dicom(tmp_path / "eye.dcm", fundus.image)
    monkeypatch.setitem(sys.modules, "pydicom", None)  # as if not installed
    with pytest.raises(ImageReadError, match=r"retina-prep\[dicom\]"):
        read_image(path)


def test_damaged_dicom_is_one_error_line(tmp_path, fundus):
    path = write_dicom(tmp_path / "eye.dcm", fundus.image)
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_image(tmp_path / "cut.dcm")


def test_dicom_folder_normalizes_like_pngs(tmp_path, fundus):
    """DICOM files (uncompressed and JPEG) in a folder, -j 2: the same output as the PNGs of
    the same pixels, and the pixel spacing in the manifest."""
    dcm, png = tmp_path / "dcm", tmp_path / "png"
    for i in range(3):
        s = synthetic_fundus((80, 96), seed=10 + i)
        write_dicom(dcm.mkdir(exist_ok=True) or dcm / f"eye{i}.dcm", s.image)
        write_image(png / f"eye{i}.png", s.image)
    write_dicom(dcm / "eye9.dcm", fundus.image, jpeg=True)
    run = CliRunner()
    for src in (dcm, png):
        r = run.invoke(cli, ["normalize", str(src), "-o", str(tmp_path / f"out_{src.name}"),
                             "--window", "9", "-j", "2"])
        assert r.exit_code == 0, r.output
    for i in range(3):
        np.testing.assert_array_equal(read_image(tmp_path / "out_dcm" / f"eye{i}.png"),
                                      read_image(tmp_path / "out_png" / f"eye{i}.png"))
    assert read_image(tmp_path / "out_dcm" / "eye9.png").shape == (80, 96, 3)
    recs = [json.loads(x) for x in (tmp_path / "out_dcm" / "manifest.jsonl").read_text().splitlines()]
    spacings = [x["params"].get("pixel_spacing") for x in recs if x["type"] == "image"]
    assert spacings == [[0.0125, 0.0125]] * 4


def test_jpeg2000_dicom_reads_losslessly(tmp_path, fundus):
    """JPEG 2000 (as many clinical exports hold), compressed here with pydicom's pylibjpeg
    encoder and decoded by the extra's OpenJPEG plugin."""
    from pydicom.uid import JPEG2000Lossless

    ds = pydicom.dcmread(write_dicom(tmp_path / "raw.dcm", fundus.image))
    try:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    except Exception as exc:  # pragma: no cover - the encoder plugin is part of the test extra
        pytest.skip(f"no JPEG 2000 encoder here: {exc}")
    ds.save_as(tmp_path / "j2k.dcm")
    np.testing.assert_array_equal(read_image(tmp_path / "j2k.dcm"), fundus.image)


def write_gray_dicom(path, gray):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 8, 8, 7
    ds.PixelRepresentation, ds.PhotometricInterpretation = 0, "MONOCHROME2"
    ds.PixelData = gray.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_grayscale_dicom(tmp_path, fundus):
    gray = fundus.image[..., 1]
    write_gray_dicom(tmp_path / "gray.dcm", gray)
    meta_out = {}
    np.testing.assert_array_equal(read_image(tmp_path / "gray.dcm", meta=meta_out), gray)
    assert "pixel_spacing" not in meta_out  # none in the header: none recorded


def test_dicom_mask_file(tmp_path, fundus):
    """A mask exported as DICOM reads like a PNG one (it was decoded as an ordinary image file and
    failed)."""
    from retina_prep.io import read_mask

    write_gray_dicom(tmp_path / "fov.dcm", fundus.mask.astype(np.uint8) * 255)
    assert np.array_equal(read_mask(tmp_path / "fov.dcm"), fundus.mask)
    write_image(tmp_path / "in" / "eye.png", fundus.image)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "--mask",
                                 str(tmp_path / "fov.dcm"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert (read_image(tmp_path / "out" / "eye.png")[~fundus.mask] == 0).all()
