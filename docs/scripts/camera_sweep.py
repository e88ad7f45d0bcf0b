"""Random synthetic cameras through the default flow, measured against their truth.

    python docs/scripts/camera_sweep.py WORKDIR SEED N

draws N cameras (size, aspect, disc, frame, rim, cut, tab, text, gain, light, noise, JPEG/PNG,
8/16-bit, gray) with ``synthetic_fundus``, runs ``retina-prep normalize WORKDIR/in -o WORKDIR/out -j 2
--write-mask`` with no other flag, and prints per image the estimate's IoU, the retina deeper than
8 px (scaled) kept, and the worst margin band (scaled bands from the truth's edge; ``<--`` marks
IoU < 0.98, kept < 99.5 % or a band beyond 3 gray levels). See docs/fov-masks.md, round 4.
"""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from retina_prep.fov import fov_diameter, margin_distance
from retina_prep.synthetic import synthetic_fundus

root = Path(sys.argv[1])
seed0 = int(sys.argv[2])
n = int(sys.argv[3])
(root / "in").mkdir(parents=True, exist_ok=False)  # a fresh folder: nothing is deleted
rng = np.random.default_rng(seed0)
cases = {}
for i in range(n):
    H = int(rng.choice([300, 480, 584, 768, 1024, 1400, 1800]))
    W = int(H * rng.choice([1.0, 1.1, 1.33, 1.5]))
    kw = dict(
        seed=int(rng.integers(1000)),
        noise=float(rng.choice([0.5, 1.5, 3])),
        strength=float(rng.choice([0.5, 1, 1.5])),
        gain=float(rng.choice([0.4, 0.7, 1.0])),
        radius=float(rng.choice([0.4, 0.46, 0.49, 0.55])),
        center=(float(rng.uniform(0.45, 0.55)), float(rng.uniform(0.4, 0.6))),
    )
    if rng.random() < 0.3:
        kw["cut"] = float(rng.choice([0.8, 0.9]))
    if rng.random() < 0.2:
        kw["notch"] = str(rng.choice(["tab", "notch"]))
    if rng.random() < 0.3:
        kw["text"] = True
    if rng.random() < 0.3:
        kw["vignette"] = float(rng.choice([0.2, 0.4]))
    if rng.random() < 0.3:
        kw["rim"] = int(rng.integers(1, max(2, H // 150)))
    if rng.random() < 0.25:
        kw["frame"] = str(rng.choice(["slide", "colour", "glow"]))
    if rng.random() < 0.15:
        kw["background"] = int(rng.integers(5, 25))
    if rng.random() < 0.15:
        kw["dtype"] = np.uint16
    s = synthetic_fundus((H, W), **kw)
    img = s.image
    gray = rng.random() < 0.1
    if gray:
        img = img[..., 1]
    name = f"c{i:02d}"
    ext = ".png" if img.dtype == np.uint16 or rng.random() < 0.5 else ".jpg"
    out = img[..., ::-1] if img.ndim == 3 else img
    cv2.imwrite(
        str(root / "in" / (name + ext)),
        out,
        [cv2.IMWRITE_JPEG_QUALITY, 92] if ext == ".jpg" else [],
    )
    np.savez_compressed(root / (name + ".npz"), mask=s.mask, vessels=s.vessels)
    kw.pop("center")
    kw["dtype"] = str(np.dtype(kw.get("dtype", np.uint8)))
    cases[name] = dict(H=H, W=W, gray=gray, ext=ext, **kw)
json.dump(cases, open(root / "cases.json", "w"), default=str)
r = subprocess.run(
    [
        "retina-prep",
        "normalize",
        str(root / "in"),
        "-o",
        str(root / "out"),
        "-j",
        "2",
        "--write-mask",
    ],
    capture_output=True,
    text=True,
)
print(r.stderr[-2000:])
for name, c in cases.items():
    z = np.load(root / (name + ".npz"))
    truth, ves = z["mask"], z["vessels"]
    outs = list((root / "out").glob(name + "*"))
    o = [p for p in outs if "mask" not in p.name]
    mk = [p for p in outs if "mask" in p.name]
    if not o:
        print(name, "NO OUTPUT", c)
        continue
    out = cv2.imread(str(o[0]), cv2.IMREAD_UNCHANGED)
    if out.ndim == 3:
        out = out[..., ::-1]
    m = cv2.imread(str(mk[0]), cv2.IMREAD_UNCHANGED) > 0 if mk else None
    iou = (m & truth).sum() / (m | truth).sum()
    scale = 257.0 if out.dtype == np.uint16 else 1.0
    o8 = out.astype(float) / scale
    if o8.ndim == 2:
        o8 = o8[..., None]
    d = margin_distance(truth)
    f = fov_diameter(truth) / 540
    worst, wband = 0, None
    for lo, hi in [(0, 2), (2, 4), (4, 8), (8, 16), (16, 32)]:
        sel = m & truth & ~ves & (d >= lo * f) & (d < hi * f)
        if sel.sum() > 50:
            b = np.abs(o8[sel].mean(0) - 128).max()
            if b > worst:
                worst, wband = b, (lo, hi)
    inner = truth & (d >= 8 * f)
    kept = (m & inner).sum() / inner.sum()
    extra = (m & ~truth).sum() / truth.sum()
    flag = " <--" if worst > 3 or iou < 0.98 or kept < 0.995 else ""
    print(
        f"{name} {c['H']}x{c['W']} iou {iou:.4f} kept {100 * kept:.2f}% "
        f"extra {100 * extra:.2f}% worst {worst:4.1f} {wband}{flag} {c}"
    )
