"""How far one texture's margin can agree with the same texture without a margin, under CLAHE.

    python docs/scripts/clahe_scatter.py [N]

For N textures of each kind (Gaussian noise of a mean and spread, blurred), a disc of radius 230 on a
512 x 512 black image: the outer 0-8 px of the disc after CLAHE (8 x 8 tiles), against the same pixels
when the whole image is the texture (``cv2.createCLAHE(...).apply``: the reference). Rows:

- ``masked``: ``clahe_plane(image, disc)``, what ``normalize --method clahe`` runs;
- ``oracle``: OpenCV's CLAHE with the outside filled by other draws of the same texture, the band's
  outputs averaged over 8 fills. It knows the texture's distribution, which no method given only the
  disc has: a margin tile's missing pixels are then guessed as well as they can be. What is left is the
  reference's own sample (the texture's pixels outside the disc, which its margin tiles equalize);
- ``opencv``: OpenCV's CLAHE on the disc image as it is.

Prints, per kind and clip limit, the band's mean shift (mean over textures, their spread, the largest),
how many textures lie within 1 gray level, and the band's contrast against the reference's (the
smallest std ratio over the textures). See README, "Masked CLAHE".
"""

import sys

import cv2
import numpy as np

from retina_prep.clahe import clahe_plane
from retina_prep.fov import margin_distance

n = int(sys.argv[1]) if len(sys.argv) > 1 else 20
yy, xx = np.mgrid[:512, :512]
disc = (yy - 256) ** 2 + (xx - 256) ** 2 <= 230**2
band = disc & (margin_distance(disc) < 8)


def texture(rng: np.random.Generator, mu: float, sd: float, blur: float) -> np.ndarray:
    tex = cv2.GaussianBlur(rng.normal(mu, sd, (512, 512)).astype(np.float32), (0, 0), blur)
    return np.clip(tex, 0, 255).astype(np.uint8)


print("kind (mean, sd, blur)  clip  row      shift mean  spread  largest  within 1  std ratio")
for mu, sd, blur in [(128, 30, 1.5), (90, 25, 3.0), (170, 20, 1.0), (110, 40, 6.0)]:
    for clip in (2.0, 4.0, 40.0):
        shifts: dict[str, list[float]] = {"masked": [], "oracle": [], "opencv": []}
        ratios: dict[str, list[float]] = {"masked": [], "oracle": [], "opencv": []}
        for seed in range(n):
            rng = np.random.default_rng(seed)
            tex = texture(rng, mu, sd, blur)
            clahe = cv2.createCLAHE(clip, (8, 8))
            ref = clahe.apply(tex)[band].astype(float)
            img = np.where(disc, tex, 0).astype(np.uint8)
            outs = {"masked": [clahe_plane(img, disc, clip_limit=clip, tiles=8)[band]],
                    "oracle": [clahe.apply(np.where(disc, tex, texture(rng, mu, sd, blur)))[band]
                               for _ in range(8)],
                    "opencv": [clahe.apply(img)[band]]}
            for row, bands in outs.items():
                shifts[row].append(float(np.mean([b.mean() for b in bands])) - ref.mean())
                ratios[row].append(min(b.std() for b in bands) / ref.std())
        for row, s in shifts.items():
            a = np.array(s)
            print(f"({mu}, {sd}, {blur})".ljust(22), f"{clip:4.0f}  {row:8s} {a.mean():+10.2f}  "
                  f"{a.std():6.2f}  {np.abs(a).max():7.2f}  {(np.abs(a) <= 1).sum():4d}/{n}"
                  f"  {min(ratios[row]):9.3f}")
