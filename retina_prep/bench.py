"""Benchmarks: every figure is measured in the same run as what it is compared with.

Functions return rows (dicts); the ``retina-prep bench`` command prints them.
Nothing here is used by the processing code.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from .batch import run_batch
from .convolution import convolve, masked_convolve
from .dataset import Pair, find_pairs
from .io import encode_image, read_image, read_mask, write_image
from .kernels import Kernel, box_kernel, gaussian_kernel, make_kernel
from .normalize import normalize_illumination, prepare_mask
from .pipeline import MaskSettings, NormalizeSettings, OutputSettings, normalize_pair
from .steps import Caches, NormalizeStep
from .synthetic import synthetic_fundus

#: A row of a benchmark table: column name -> value.
Row = dict[str, Any]

__all__ = [
    "SIZES", "ORDER_SIZES", "machine", "time_call", "time_calls", "in_rows", "order_rows",
    "reference_row", "batch_row", "memory_row", "window_rows", "gaussian_one_thread_row",
]

#: (name, (height, width), box window, gaussian sigma): DRIVE, HRF, 4000x4000.
SIZES = [
    ("DRIVE 565x584", (584, 565), 51, 8.0),
    ("HRF 3504x2336", (2336, 3504), 201, 80.0),
    ("4000x4000", (4000, 4000), 401, 80.0),
]


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores,"
            f" Python {platform.python_version()}, OpenCV {cv2.__version__}, NumPy {np.__version__}")


def time_calls(fns: dict[str, Callable[[], object]], repeat: int = 5) -> dict[str, float]:
    """Median wall time in seconds of each ``fns[name]()``, the calls taken in turn (one round
    of warm-up), so that the machine's drifts touch every one alike."""
    times: dict = {name: [] for name in fns}
    for i in range(repeat + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def time_call(fn: Callable[[], object], repeat: int = 5) -> float:
    """Median wall time of ``fn()`` in seconds, after one warm-up call."""
    return time_calls({"": fn}, repeat)[""]


#: (name, (height, width), box window) for :func:`order_rows`: DRIVE, and HRF at the window
#: the first-order issue targets and at SIZES' one.
ORDER_SIZES = [
    ("DRIVE 565x584", (584, 565), 51),
    ("HRF 3504x2336", (2336, 3504), 101),
    ("HRF 3504x2336", (2336, 3504), 201),
]


def _fundus(shape: tuple[int, int], seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    s = synthetic_fundus(shape, seed=seed, background=10)
    return s.image, s.mask


def _unmasked_in(img: np.ndarray, kernel: Kernel) -> np.ndarray:
    """What a user writes without retina-prep: I - (plain convolution mean) + I0, OpenCV throughout."""
    if kernel.is_box:
        w = kernel.shape[0]
        mean = cv2.boxFilter(img, cv2.CV_32F, (w, w))
    elif kernel.pyramid is not None:  # the same pyramid, unmasked
        mean = convolve(img, kernel)
    else:
        assert kernel.factors is not None  # the kernels the rows time are separable
        ky, kx = kernel.factors
        mean = cv2.sepFilter2D(img, cv2.CV_32F, kx.astype(np.float32), ky.astype(np.float32))
    return cv2.addWeighted(img, 1.0, mean, -1.0, 128.0, dtype=cv2.CV_8U)


def in_rows(sizes: Sequence[tuple[str, tuple[int, int], int, float]] = SIZES, repeat: int = 5,
            threads: int | None = None) -> list[Row]:
    """Masked vs unmasked IN, and the general filter2D path, per size and kernel."""
    if threads is not None:
        cv2.setNumThreads(threads)
    rows = []
    for name, shape, box, sigma in sizes:
        img, mask = _fundus(shape)
        for kname, kernel in [(f"box {box}", box_kernel(box)),
                              (f"gaussian sigma {sigma:g}", gaussian_kernel(sigma))]:
            t_un = time_call(lambda: _unmasked_in(img, kernel), repeat)
            t_ig = time_call(lambda: normalize_illumination(img, mask, kernel=kernel,
                                                            ignore_mask=True), repeat)
            t_m = time_call(lambda: normalize_illumination(img, mask, kernel=kernel), repeat)
            row = {"size": name, "kernel": kname if kernel.pyramid is None
                   else f"{kname} (pyramid)", "unmasked_ms": 1000 * t_un,
                   "ignore_ms": 1000 * t_ig, "masked_ms": 1000 * t_m, "ratio": t_m / t_un,
                   "own_ratio": t_m / t_ig,
                   "ms_per_mpx": 1000 * t_m / (shape[0] * shape[1] / 1e6)}
            if shape[0] * shape[1] <= 600 * 600 or kernel.shape[0] <= 201:
                t_f2d = time_call(lambda: masked_convolve(img, mask, kernel, path="filter2d"), 1)
                row["filter2d_ms"] = 1000 * t_f2d
            rows.append(row)
    return rows


def order_rows(sizes: Sequence[tuple[str, tuple[int, int], int]] = ORDER_SIZES, repeat: int = 5) -> list[Row]:
    """Masked IN of order 1 (local plane) against order 0 (local mean), same image and kernel,
    timed in turn: each image with its own mask, and with a mask shared by many images (its
    part prepared once, as the batch does from a mask's second use); and the floor of the own
    mask's order 1 in the present design (:func:`_window_sums_only`)."""
    rows = []
    for name, shape, box in sizes:
        img, mask = _fundus(shape)
        kernel = box_kernel(box)
        p0 = prepare_mask(mask, kernel=kernel, order=0)
        p1 = prepare_mask(mask, kernel=kernel, order=1)
        t = time_calls({
            "own0": lambda: normalize_illumination(img, mask, kernel=kernel, order=0),
            "own1": lambda: normalize_illumination(img, mask, kernel=kernel, order=1),
            "shared0": lambda: normalize_illumination(img, p0, order=0),
            "shared1": lambda: normalize_illumination(img, p1, order=1),
            "floor": _window_sums_only(img, mask, kernel),
        }, repeat)
        rows.append({"size": name, "kernel": f"box {box}", "order0_ms": 1000 * t["own0"],
                     "order1_ms": 1000 * t["own1"], "ratio": t["own1"] / t["own0"],
                     "shared0_ms": 1000 * t["shared0"], "shared1_ms": 1000 * t["shared1"],
                     "shared_ratio": t["shared1"] / t["shared0"],
                     "shared_vs_own": t["shared1"] / t["own0"],
                     "floor_ratio": t["floor"] / t["own0"]})
    return rows


def _window_sums_only(img: np.ndarray, mask: np.ndarray, kernel: Kernel) -> Callable[[], None]:
    """Order 0 plus nothing but the window sums that order 1 adds with a mask per image -- the
    mask's five moments and the image's two per channel, as box filters over the margin band's
    padded blocks (inputs made beforehand; no products, no solve, no gathers): a floor for
    ``order1_ms`` that no arithmetic saving can go under."""
    from .first_order import plane_geometry

    m = mask > 0
    geometry = plane_geometry(m, kernel, where=m)
    w = kernel.shape[0]
    blocks = [(m[Y0:Y1, X0:X1].astype(np.int32), np.ascontiguousarray(img[Y0:Y1, X0:X1], np.int32))
              for _, (Y0, Y1, X0, X1), _, _ in geometry.blocks]

    def run() -> None:
        normalize_illumination(img, mask, kernel=kernel, order=0)
        for mb, ib in blocks:
            for _ in range(5):
                cv2.boxFilter(mb, cv2.CV_32F, (w, w), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)
            for _ in range(2):
                cv2.boxFilter(ib, cv2.CV_32F, (w, w), normalize=False,
                              borderType=cv2.BORDER_CONSTANT)

    return run


def reference_row(crop: int = 96, window: int = 15) -> Row:
    """Brute-force direct window sums (float64) against the library on the same crop."""
    img, mask = _fundus((584, 565))
    y0, x0 = 200, 10
    p = img[y0:y0 + crop, x0:x0 + crop].astype(np.float64)
    m = mask[y0:y0 + crop, x0:x0 + crop].astype(np.float64)

    def brute() -> np.ndarray:
        r = window // 2
        num = np.zeros_like(p)
        den = np.zeros(m.shape)
        pm = p * m[..., None]
        for i in range(crop):
            for j in range(crop):
                ys, xs = slice(max(0, i - r), i + r + 1), slice(max(0, j - r), j + r + 1)
                num[i, j] = pm[ys, xs].sum(axis=(0, 1))
                den[i, j] = m[ys, xs].sum()
        return num / np.maximum(den, 1e-12)[..., None]

    k = box_kernel(window)
    crop_img = np.ascontiguousarray(img[y0:y0 + crop, x0:x0 + crop])
    crop_mask = np.ascontiguousarray(mask[y0:y0 + crop, x0:x0 + crop])
    t_ref = time_call(brute, 1)
    t_lib = time_call(lambda: masked_convolve(crop_img, crop_mask, k), 5)
    err = np.nanmax(np.abs(masked_convolve(crop_img, crop_mask, k) - brute())[crop_mask])
    return {"case": f"{crop}x{crop} crop, box {window}", "reference_ms": 1000 * t_ref,
            "library_ms": 1000 * t_lib, "speedup": t_ref / t_lib, "max_abs_diff": float(err)}


def _drive_folder(drive_root: Path | None, tmp: Path, n_generated: int) -> tuple[str, Path]:
    """The DRIVE folder to time on (its name for the table), or ``n_generated`` DRIVE-size
    synthetic images with masks written under ``tmp``."""
    if drive_root is not None and (drive_root / "training" / "images").is_dir():
        return f"DRIVE ({drive_root})", drive_root
    folder = tmp / "gen"
    for i in range(n_generated):
        im, mk = _fundus((584, 565), seed=i)
        write_image(folder / "images" / f"{i:02d}.png", im)
        write_image(folder / "mask" / f"{i:02d}_mask.png", mk.astype(np.uint8) * 255)
    return f"{n_generated} generated DRIVE-size images", folder


def _decode_encode(pairs: Sequence[Pair], tmp: Path) -> None:
    """The floor the batch rows compare with: read each image and its mask file, encode the
    image as PNG into ``tmp``; no processing."""
    for p in pairs:
        im = read_image(p.image)
        if p.mask is not None:
            read_mask(p.mask)
        (tmp / "floor.png").write_bytes(encode_image(im))


def batch_row(drive_root: Path | None = None, n_generated: int = 40) -> Row:
    """Images/s of normalize over a DRIVE folder against the decode + encode floor (one process)."""
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        source, folder = _drive_folder(drive_root, tmp, n_generated)
        pairs = find_pairs([folder])
        settings = NormalizeSettings(window=51)

        def full() -> None:
            for p in pairs:
                normalize_pair(p, tmp / "out", settings, output=OutputSettings(overwrite=True))

        t_floor = time_call(lambda: _decode_encode(pairs, tmp), 2)
        t_full = time_call(full, 2)
    n = len(pairs)
    return {"source": source, "images": n, "floor_img_s": n / t_floor, "normalize_img_s": n / t_full,
            "ratio": t_full / t_floor}


def end_to_end_rows(shape: tuple[int, int] = (2336, 3504), repeat: int = 3) -> list[Row]:
    """One HRF-size photograph (JPEG) and its mask file through ``normalize_pair`` in this
    process (read, mask, IN, write), per output format, against the decode + encode floor."""
    rows = []
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        img, mask = _fundus(shape)
        (tmp / "im.jpg").write_bytes(cv2.imencode(".jpg", img[..., ::-1],
                                                  [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        write_image(tmp / "im_mask.png", mask.astype(np.uint8) * 255)
        pair = Pair(tmp / "im.jpg", tmp / "im_mask.png", "given", Path("im"))
        del img, mask
        t_floor = time_call(lambda: _decode_encode([pair], tmp), repeat)
        base = OutputSettings(overwrite=True)
        for label, output in [("png (default)", base),
                              ("png --png-level 0", replace(base, png_level=0)),
                              ("png --png-level 6", replace(base, png_level=6)),
                              ("tif", replace(base, format="tif"))]:
            caches = Caches()
            for shared in (False, True):
                def run(output: OutputSettings = output, shared: bool = shared) -> None:
                    if not shared:
                        caches.clear()
                    # shared: a camera mask used as given (--rim none) is read and prepared once;
                    # the default rim trim looks at each image
                    normalize_pair(pair, tmp / "out", NormalizeSettings(window=101),
                                   MaskSettings(rim="none") if shared else MaskSettings(),
                                   output=output, caches=caches)

                t = time_call(run, repeat)
                size = sum(f.stat().st_size for f in (tmp / "out").iterdir()) / 1e6
                for f in (tmp / "out").iterdir():
                    f.unlink()
                rows.append({"format": label, "mask": "shared (cached)" if shared else "own",
                             "ms": 1000 * t, "floor_ms": 1000 * t_floor, "ratio": t / t_floor,
                             "mb": size})
    return rows


def clahe_row(shape: tuple[int, int] = (2336, 3504), repeat: int = 3) -> Row:
    """Masked CLAHE against OpenCV's CLAHE on one HRF-size photograph's L channel (clip 2, 8x8),
    and on the RGB image through L of Lab; one run, so the ratio holds on a noisy machine."""
    from .clahe import clahe_plane, masked_clahe

    img, mask = _fundus(shape)
    lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
    plane = np.ascontiguousarray(lab[..., 0])
    clahe = cv2.createCLAHE(2.0, (8, 8))
    t = time_calls({
        "opencv": lambda: clahe.apply(plane),
        "masked": lambda: clahe_plane(plane, mask),
        "rgb": lambda: masked_clahe(img, mask),
    }, repeat)
    return {"case": f"L channel, {shape[1]}x{shape[0]}", "opencv_ms": 1000 * t["opencv"],
            "masked_ms": 1000 * t["masked"], "ratio": t["masked"] / t["opencv"],
            "rgb_ms": 1000 * t["rgb"]}


def fov_stage_rows(shape: tuple[int, int] = (2336, 3504), repeat: int = 3) -> list[Row]:
    """The FOV stage at HRF size against the JPEG decode it follows, and the default flow with
    no mask file (decode, estimate, rim trim, IN, PNG) against the decode + PNG-encode floor."""
    from .fov import estimate_fov, trim_rim

    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        img, _ = _fundus(shape)
        (tmp / "im.jpg").write_bytes(cv2.imencode(".jpg", img[..., ::-1],
                                                  [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
        pair = Pair(tmp / "im.jpg", None, "estimated", Path("im"))
        t = time_calls({
            "decode": lambda: read_image(tmp / "im.jpg"),
            "estimate": lambda: estimate_fov(img, details=True),
            "trim": lambda: trim_rim(img, estimate_fov(img, details=True).mask),
            "floor": lambda: _decode_encode([pair], tmp),
            "flow": lambda: normalize_pair(pair, tmp / "out", NormalizeSettings(),
                                           MaskSettings(auto_mask=True),
                                           output=OutputSettings(overwrite=True)),
        }, repeat)
    stage = t["trim"]  # the estimate and the trim of its mask
    return [{"case": "FOV estimate + rim trim / JPEG decode", "ms": 1000 * stage,
             "against_ms": 1000 * t["decode"], "ratio": stage / t["decode"], "target": "<= 0.10"},
            {"case": "default flow, no mask file / decode + PNG encode", "ms": 1000 * t["flow"],
             "against_ms": 1000 * t["floor"], "ratio": t["flow"] / t["floor"], "target": "<= 1.25"}]


def gaussian_vs_box_row(shape: tuple[int, int] = (2336, 3504), sigma: float = 80.0,
                        box: int = 161, repeat: int = 3) -> Row:
    """The kernels ``normalize --kernel gaussian --sigma S`` and ``--window B`` run (one rule,
    :func:`~retina_prep.kernels.make_kernel`), through normalize_illumination on one image."""
    img, mask = _fundus(shape)
    g = make_kernel("gaussian", None, sigma, mask=mask)
    b = make_kernel("mean", box, None, mask=mask)
    tg = time_call(lambda: normalize_illumination(img, mask, kernel=g), repeat)
    tb = time_call(lambda: normalize_illumination(img, mask, kernel=b), repeat)
    return {"case": f"HRF, {g.name} vs box {box}",
            "gaussian_ms": 1000 * tg, "box_ms": 1000 * tb, "ratio": tg / tb}


def parallel_row(drive_root: Path | None = None, n_generated: int = 40, repeat: int = 3) -> Row:
    """Wall time of the whole ``retina-prep normalize`` command (start-up included) with -j 1
    and -j 2, in fresh processes, alternating, best of ``repeat``."""
    with tempfile.TemporaryDirectory() as tmpname:
        tmp = Path(tmpname)
        source, folder = _drive_folder(drive_root, tmp, n_generated)
        pairs = find_pairs([folder])
        best = {1: float("inf"), 2: float("inf")}
        for k in range(repeat):
            for jobs in (1, 2):
                out = tmp / f"out{k}{jobs}"
                t0 = time.perf_counter()
                subprocess.run([sys.executable, "-m", "retina_prep", "normalize", str(folder),
                                "-o", str(out), "-j", str(jobs), "-q"], check=True)
                best[jobs] = min(best[jobs], time.perf_counter() - t0)
        start = min(_startup_seconds() for _ in range(repeat))
        # the images alone: run_batch in this process, the worker pool's start included
        step = NormalizeStep(tmp / "inproc", output_settings=OutputSettings(overwrite=True))
        inproc = {1: float("inf"), 2: float("inf")}
        for _ in range(repeat):
            for jobs in (1, 2):
                t0 = time.perf_counter()
                for _r in run_batch(pairs, step, jobs=jobs):
                    pass
                inproc[jobs] = min(inproc[jobs], time.perf_counter() - t0)
    return {"source": source, "images": len(pairs), "j1_s": best[1], "j2_s": best[2],
            "speedup": best[1] / best[2], "startup_s": start,
            "batch_j1_s": inproc[1], "batch_j2_s": inproc[2],
            "batch_speedup": inproc[1] / inproc[2]}


def _startup_seconds() -> float:
    """Wall time of a command that starts, parses and exits (`normalize --help`)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retina_prep", "normalize", "--help"], check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def memory_row(size: int = 4000, mask_file: bool = True) -> Row:
    """Peak RSS (MB) of `retina-prep normalize` on one size x size RGB image, in a fresh
    process: with its mask file, or with the field of view estimated from the image."""
    with tempfile.TemporaryDirectory() as tmp:
        img, mask = _fundus((size, size))
        path = Path(tmp) / "big.png"
        write_image(path, img)
        if mask_file:
            write_image(Path(tmp) / "big_mask.png", mask.astype(np.uint8) * 255)
        del img, mask
        # VmHWM: this process's own peak (ru_maxrss can carry the parent's peak across exec)
        hwm = ("print([int(l.split()[1]) for l in open('/proc/self/status')"
               " if l.startswith('VmHWM')][0])")
        code = (
            "from retina_prep.cli.main import cli\n"
            "try:\n"
            f"    cli(['normalize', {str(path)!r}, '-o', {str(Path(tmp) / 'out')!r}, '-q', '-j', '1'],"
            " standalone_mode=False)\n"
            "finally:\n"
            f"    {hwm}\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peak_kb = int(out.stdout.strip().splitlines()[-1])
        base = subprocess.run([sys.executable, "-c", f"import retina_prep.cli.main, cv2, numpy; {hwm}"],
                              capture_output=True, text=True, check=True)
        base_kb = int(base.stdout.strip())
    how = "mask file" if mask_file else "estimated FOV"
    return {"case": f"normalize one {size}x{size} RGB PNG, {how} (read, mask, IN, write)",
            "peak_rss_mb": peak_kb / 1024, "imports_only_mb": base_kb / 1024}


def window_rows(shape: tuple[int, int] = (2336, 3504),
                windows: Sequence[int] = (21, 51, 101, 201, 401), repeat: int = 3) -> list[Row]:
    """Masked IN with box windows of growing size on one image: the cost should stay flat."""
    img, mask = _fundus(shape)
    return [{"size": f"{shape[1]}x{shape[0]}", "kernel": f"box {w}",
             "masked_ms": 1000 * time_call(lambda: normalize_illumination(img, mask,
                                                                           kernel=box_kernel(w)),
                                           repeat)} for w in windows]


def gaussian_one_thread_row(sigma: float = 80.0, shape: tuple[int, int] = (2336, 3504),
                            repeat: int = 3) -> Row:
    """Masked IN with a large Gaussian on a full HRF-size image, OpenCV on one thread:
    the pyramid path against the exact separable Gaussian."""
    img, mask = _fundus(shape)
    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        fast = time_call(lambda: normalize_illumination(img, mask, kernel=gaussian_kernel(sigma)),
                         repeat)
        exact = time_call(lambda: normalize_illumination(
            img, mask, kernel=gaussian_kernel(sigma, exact=True)), 1)
    finally:
        cv2.setNumThreads(before)
    return {"case": f"{shape[1]}x{shape[0]}, masked IN, gaussian sigma {sigma:g}, 1 thread",
            "pyramid_s": fast, "exact_s": exact}
