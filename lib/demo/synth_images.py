"""Synthetic chest radiographs whose pixels carry the findings of a report.

The demo corpus has no real images, so this module draws them: a frontal (PA/AP) or lateral
chest radiograph with anatomy that varies from patient to patient and with each CheXpert
finding drawn where and how a radiologist would look for it, its strength growing with the
finding's severity. A model trained on these images can therefore really learn the findings.

Everything is drawn in a canonical, patient-centred frame (units of roughly half a chest
width; ``u`` to the image right, ``v`` downwards) and mapped to pixels by one similarity
transform, so size, position and tilt of the patient vary without touching the drawing code.
Shapes are filled polygons and polylines drawn with PIL into a few 8-bit layers, each blurred
once; numpy combines the layers into an attenuation map and maps that to grey levels. Layers
that are blurred heavily anyway (body thickness, haze, fluid) are drawn at a quarter of the
resolution, which keeps one image at a few milliseconds.

Why one module of ~1,200 lines: it is a single renderer whose parts are private to it (the
frontal and lateral geometries share ``_Geometry``, ``_Layers`` and ``_Scene`` with the
finding drawer ``_draw_findings``); only ``render_cxr`` is its interface, and it belongs to
the demo corpus alone (nothing outside ``lib/demo`` imports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import lru_cache

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from lib.data.mimic import FINDINGS, LABELS

# View positions that show the chest from the side; every other value is drawn frontal.
LATERAL_VIEWS: frozenset[str] = frozenset({"LATERAL", "LL", "XTABLE LATERAL"})

# "No Finding" is the absence of everything else, so it draws nothing.

# Weights of the layers in the attenuation map (1.0 ~ the densest soft tissue shown white).
_K_TISSUE = 0.80
_K_MEDI = 0.12
_K_BONE = 0.40
_K_AIR = 0.54
_K_OPAQUE = 0.05
_K_DEVICE = 0.75

# Air layer values: aerated lung, and pure air where a pneumothorax has no lung in it.
_LUNG_AIR = 200
_FREE_AIR = 255
# Extra lucency of a pneumothorax: no lung tissue at all in the beam there, so it is darker
# than aerated lung by more than the air layer alone can show.
_K_FREE_AIR = 0.1

# Blur of each layer in canonical units. Low-resolution layers are drawn at 1/_LOW scale.
_LOW = 4
_BLUR_FULL = {"air": 0.007, "medi": 0.012, "bone": 0.004, "soft": 0.012, "device": 0.003}
_BLUR_LOW = {"tissue": 0.05, "hazy": 0.045, "fluid": 0.02}

# Cubic Bezier basis, shared by every curve (ribs, wires, tubes).
_BEZ_T = np.linspace(0.0, 1.0, 14)
_BEZ = np.stack(
    [(1 - _BEZ_T) ** 3, 3 * (1 - _BEZ_T) ** 2 * _BEZ_T, 3 * (1 - _BEZ_T) * _BEZ_T**2, _BEZ_T**3],
    axis=1,
)
_CIRCLE = np.linspace(0.0, 2.0 * math.pi, 25)[:-1]
_COS, _SIN = np.cos(_CIRCLE), np.sin(_CIRCLE)

# Frontal right-lung outline (the left lung is its mirror image). Upper part: (u / W, t) with
# t running from the apex (0) to the costophrenic angle (1); diaphragm: (u / W, fraction of the
# dome height above the angle); medial border: (u / W, t).
_LUNG_UP = np.array(
    [
        (0.12, 0.12), (0.20, 0.04), (0.33, 0.005), (0.47, 0.0), (0.60, 0.04), (0.72, 0.11),
        (0.83, 0.22), (0.91, 0.36), (0.96, 0.52), (0.99, 0.68), (1.0, 0.84), (0.995, 1.0),
    ]
)  # fmt: skip
_LUNG_DIA = np.array(
    [(0.92, 0.45), (0.82, 0.76), (0.67, 0.94), (0.5, 1.0), (0.35, 0.97), (0.2, 0.86), (0.08, 0.7)]
)
_LUNG_MED = np.array([(0.05, 0.8), (0.06, 0.45), (0.08, 0.25)])
_CP = 11  # index of the costophrenic angle in a frontal lung outline
_DOME = slice(11, 19)  # the angle and the diaphragm points
_DOME_TOP = 15

# Frontal cardiac silhouette: u as a fraction of the right (u < 0) or left extent, v as a
# fraction of the heart height from its top (at the pulmonary trunk) to the diaphragm.
_HEART = np.array(
    [
        (-0.32, 0.0), (-0.7, 0.2), (-0.93, 0.42), (-1.0, 0.63), (-0.92, 0.84), (-0.72, 1.0),
        (0.0, 1.04), (0.6, 1.04), (0.93, 0.97), (1.0, 0.8), (0.95, 0.58), (0.8, 0.36),
        (0.62, 0.19), (0.5, 0.07), (0.44, 0.0),
    ]
)  # fmt: skip
_HEART_APEX = 9

# Lateral lung outline (anterior to the image left) down to the lower hemidiaphragm.
_LAT_LUNG = np.array(
    [
        (0.12, -0.74), (-0.08, -0.70), (-0.28, -0.60), (-0.43, -0.44), (-0.53, -0.24),
        (-0.58, -0.04), (-0.60, 0.10), (-0.60, 0.20),
        (-0.42, 0.19), (-0.22, 0.17), (0.0, 0.19), (0.2, 0.24), (0.38, 0.33), (0.52, 0.44),
        (0.64, 0.55),
        (0.70, 0.34), (0.71, 0.05), (0.67, -0.28), (0.56, -0.55), (0.38, -0.70),
    ]
)  # fmt: skip
_LAT_DOME = slice(7, 15)  # the diaphragm points of _LAT_LUNG
_LAT_SULCUS = 14  # posterior costophrenic sulcus

# Lateral cardiac silhouette before enlargement; grows about its anterior-inferior corner.
_LAT_HEART = np.array(
    [
        (-0.64, 0.22), (-0.64, 0.05), (-0.58, -0.1), (-0.47, -0.22), (-0.32, -0.3),
        (-0.15, -0.3), (0.0, -0.22), (0.1, -0.1), (0.17, 0.04), (0.19, 0.16), (0.15, 0.3),
        (-0.64, 0.3),
    ]
)  # fmt: skip


def render_cxr(
    severity: Mapping[str, float],
    view: str,
    height: int,
    width: int,
    rng: np.random.Generator,
    places: Mapping[str, str] | None = None,
) -> np.ndarray:
    """Render a synthetic chest radiograph showing the given findings.

    Args:
        severity: CheXpert label name -> severity in [0, 1]; 0 or missing means absent and
            "No Finding" is ignored.
        view: A MIMIC ``ViewPosition`` ("PA", "AP", "LATERAL", "LL", "", ...). Lateral
            positions draw a lateral chest, blank draws either at random, the rest frontal.
        height: Rows of the image.
        width: Columns of the image.
        rng: The only source of randomness; equal generator states give equal images.
        places: Label -> where its report puts it ("right lower", "left upper", "both
            lower", ...: ``synth_reports.LOCATIONS``), so that a finding the report calls
            left is drawn in the patient's left hemithorax (the image's right on a frontal
            film). The side, and the level where a finding has one (a lobe, a zone), follow
            it; a finding without a place is drawn where its own random stream says. The
            random draws are the same either way, so a place moves a finding and nothing else.

    Returns:
        A uint8 array of shape (height, width), a synthetic chest radiograph.

    Raises:
        ValueError: For an unknown label, a severity outside [0, 1] or a tiny size.
    """
    strength = _validate(severity)
    where = _places(places or {})
    if height < 16 or width < 16:
        raise ValueError(f"image size must be at least 16x16, got {height}x{width}")
    key = view.strip().upper()
    # Always drawn, so that the seeds below (and thus the patient) do not depend on the view.
    coin = rng.random()
    lateral = key in LATERAL_VIEWS or (key == "" and coin < 0.5)
    seeds = rng.integers(0, 2**63 - 1, size=2 + len(FINDINGS))
    # Independent streams for anatomy, exposure/noise and each finding: the same seed with
    # and without a finding gives the same patient on the same film, plus the finding.
    anat = np.random.default_rng(seeds[0])
    expo = np.random.default_rng(seeds[1])
    frng = {
        name: np.random.default_rng(seeds[2 + i])
        for i, name in enumerate(FINDINGS)
        if name in strength
    }
    if lateral:
        scene = _Scene(height, width, anat, lateral=True, ap=False, tilt=0.02)
        geo: _Geometry = _Lateral(anat, scene)
    else:
        ap = key.startswith("AP")
        scene = _Scene(height, width, anat, lateral=False, ap=ap, tilt=0.05 if ap else 0.025)
        geo = _Frontal(
            anat,
            scene,
            ap=ap,
            oblique=key in {"LAO", "RAO", "SWIMMERS"},
            lordotic="AXIAL" in key,
        )
    geo.adapt(strength, frng, where)
    geo.build()
    if "Fracture" in strength:  # chosen before the ribs are drawn, so they are drawn broken
        _plan_fractures(geo, strength["Fracture"], frng["Fracture"], where.get("Fracture"))
    layers = _Layers(scene)
    geo.draw_anatomy(layers)
    _draw_findings(geo, layers, strength, frng, where)
    return _compose(scene, layers, expo)


# A report's place (lib/demo/synth_reports.LOCATIONS): its side in the canonical frame
# (-1: the patient's right, the image's left on a frontal film; +1: the patient's left)
# and its level.
_PLACE_SIDES: dict[str, tuple[int, ...]] = {"right": (-1,), "left": (1,), "both": (-1, 1)}
_PLACE_LEVELS = ("upper", "middle", "lower")


class _Place:
    """Where a report puts one finding: the sides and the level (upper / middle / lower)."""

    def __init__(self, sides: tuple[int, ...], level: str) -> None:
        self.sides, self.level = sides, level


def _places(places: Mapping[str, str]) -> dict[str, _Place]:
    """Check and parse ``render_cxr``'s ``places``."""
    out: dict[str, _Place] = {}
    for name, place in places.items():
        if name not in LABELS:
            raise ValueError(f"places: unknown label {name!r}; expected one of {LABELS}")
        parts = str(place).split()
        if len(parts) != 2 or parts[0] not in _PLACE_SIDES or parts[1] not in _PLACE_LEVELS:
            raise ValueError(
                f"places[{name!r}] = {place!r}: expected '<right|left|both> "
                f"<upper|middle|lower>', e.g. 'right lower'"
            )
        out[name] = _Place(_PLACE_SIDES[parts[0]], parts[1])
    return out


def _validate(severity: Mapping[str, float]) -> dict[str, float]:
    """Check the severity mapping; return the drawing strength of each present finding."""
    strength: dict[str, float] = {}
    for name, value in severity.items():
        if name not in LABELS:
            raise ValueError(f"unknown label {name!r}; expected one of {LABELS}")
        value = float(value)
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise ValueError(f"severity of {name!r} must be in [0, 1], got {value}")
        if name != "No Finding" and value > 0.0:
            # A floor keeps mild findings visible; the rest of the range scales the strength.
            strength[name] = 0.4 + 0.6 * value
    return strength


class _Xform:
    """Similarity map from the canonical frame to the pixels of one raster."""

    def __init__(self, cx: float, cy: float, s: float, c: float, sn: float) -> None:
        self.cx, self.cy, self.s, self.c, self.sn = cx, cy, s, c, sn

    def arr(self, pts: np.ndarray) -> np.ndarray:
        """Canonical points (..., 2) -> pixel coordinates (..., 2)."""
        u, v = pts[..., 0], pts[..., 1]
        out = np.empty(pts.shape)
        out[..., 0] = self.cx + self.s * (self.c * u - self.sn * v)
        out[..., 1] = self.cy + self.s * (self.sn * u + self.c * v)
        return out

    def xy(self, pts: np.ndarray) -> list[float]:
        """Canonical points -> the flat coordinate list ImageDraw takes."""
        return self.arr(np.asarray(pts, dtype=float)).ravel().tolist()

    def px(self, length: float) -> int:
        """A canonical length in whole pixels, at least 1 (line widths)."""
        return max(1, round(length * self.s))


class _Scene(_Xform):
    """Image size, the patient's placement, and the low-resolution raster's map."""

    def __init__(
        self,
        height: int,
        width: int,
        rng: np.random.Generator,
        *,
        lateral: bool,
        ap: bool,
        tilt: float,
    ) -> None:
        self.h, self.w = height, width
        # The lungs fill ~80 % of the width or ~65 % of the height, whichever binds, as on
        # real films; patients differ in size and in where they stand.
        s = min(0.55 * width, 0.58 * height) * rng.uniform(0.9, 1.05) * (1.04 if ap else 1.0)
        cx = width / 2 + rng.normal(0, 0.02) * width + (0.05 * s if lateral else 0.0)
        cy = 0.47 * height + 0.12 * s + rng.normal(0, 0.02) * height
        theta = rng.normal(0, tilt)
        super().__init__(cx, cy, s, math.cos(theta), math.sin(theta))
        self.lw, self.lh = -(-width // _LOW), -(-height // _LOW)
        self.low = _Xform(cx / _LOW, cy / _LOW, s / _LOW, self.c, self.sn)


class _Layers:
    """The 8-bit layers of one image, created when first drawn on.

    ``air`` holds aerated lung (plus trachea and bowel gas); ``vessel`` holds how much the
    pulmonary vessels and interstitial lines take away from that air, so they show only inside
    the lungs; ``free_air`` polygons (pneumothorax) are painted over both afterwards.
    """

    def __init__(self, scene: _Scene) -> None:
        self.scene = scene
        self.images: dict[str, tuple[Image.Image, ImageDraw.ImageDraw]] = {}
        self.free_air: list[list[float]] = []

    def ctx(self, name: str) -> tuple[ImageDraw.ImageDraw, _Xform]:
        """Drawing context of a layer and the map into its raster."""
        low = name in _BLUR_LOW
        if name not in self.images:
            sc = self.scene
            img = Image.new("L", (sc.lw, sc.lh) if low else (sc.w, sc.h), 0)
            self.images[name] = (img, ImageDraw.Draw(img))
        return self.images[name][1], self.scene.low if low else self.scene

    def array(self, name: str) -> np.ndarray | None:
        """A layer blurred and at full size as float32 in [0, 1]; None if never drawn."""
        if name not in self.images:
            return None
        sc, img = self.scene, self.images[name][0]
        if name in _BLUR_LOW:
            img = img.filter(ImageFilter.GaussianBlur(_BLUR_LOW[name] * sc.low.s))
            img = img.resize((sc.w, sc.h), Image.Resampling.BILINEAR,
                             box=(0, 0, sc.w / _LOW, sc.h / _LOW))  # fmt: skip
        else:
            if name == "air":
                img = self._air(img)
            radius = _BLUR_FULL[name] * sc.s
            if radius >= 0.3:
                # A box blur costs half a Gaussian and looks the same at a pixel or two.
                img = img.filter(ImageFilter.BoxBlur(radius))
        return np.asarray(img, dtype=np.float32) * np.float32(1 / 255)

    def free_air_mask(self) -> np.ndarray | None:
        """Where a pneumothorax is, blurred like the air layer, float32 in [0, 1]."""
        if not self.free_air:
            return None
        sc = self.scene
        img = Image.new("L", (sc.w, sc.h), 0)
        d = ImageDraw.Draw(img)
        for poly in self.free_air:
            d.polygon(poly, 255)
        radius = _BLUR_FULL["air"] * sc.s
        if radius >= 0.3:
            img = img.filter(ImageFilter.BoxBlur(radius))
        return np.asarray(img, dtype=np.float32) * np.float32(1 / 255)

    def _air(self, img: Image.Image) -> Image.Image:
        if "vessel" in self.images:
            img = ImageChops.subtract(img, self.images["vessel"][0])
        if self.free_air:
            d = ImageDraw.Draw(img)
            for poly in self.free_air:
                d.polygon(poly, _FREE_AIR)
        return img


def _ellipse(cu: float, cv: float, ru: float, rv: float, rot: float = 0.0) -> np.ndarray:
    """Points of a (rotated) ellipse in the canonical frame."""
    x, y = ru * _COS, rv * _SIN
    c, s = math.cos(rot), math.sin(rot)
    return np.stack([cu + c * x - s * y, cv + s * x + c * y], axis=1)


def _bezier(ctrl: np.ndarray) -> np.ndarray:
    """Cubic Bezier curves: control points (..., 4, 2) -> polylines (..., 14, 2)."""
    return np.einsum("tk,...kd->...td", _BEZ, ctrl)


def _ragged(poly: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Subdivide a polygon's edges and jitter the points: an irregular, natural border."""
    nxt = np.roll(poly, -1, axis=0)
    t = np.linspace(0.0, 1.0, 5, endpoint=False)[None, :, None]
    pts = (poly[:, None] + t * (nxt - poly)[:, None]).reshape(-1, 2)
    return pts + rng.normal(0.0, amount, pts.shape)


def _toward(pts: np.ndarray, centre: np.ndarray, dist: np.ndarray | float) -> np.ndarray:
    """Move each point ``dist`` towards ``centre``."""
    vec = centre - pts
    vec /= np.linalg.norm(vec, axis=1, keepdims=True) + 1e-9
    return pts + vec * np.reshape(dist, (-1, 1))


def _band(pts: np.ndarray, width: float) -> np.ndarray:
    """Outlines of bands of ``width`` around polylines (..., n, 2) (ribs), as polygons."""
    tang = np.empty_like(pts)
    tang[..., 1:-1, :] = pts[..., 2:, :] - pts[..., :-2, :]
    tang[..., 0, :] = pts[..., 1, :] - pts[..., 0, :]
    tang[..., -1, :] = pts[..., -1, :] - pts[..., -2, :]
    normal = np.stack([-tang[..., 1], tang[..., 0]], axis=-1)
    normal *= 0.5 * width / (np.sqrt((normal**2).sum(axis=-1, keepdims=True)) + 1e-9)
    return np.concatenate([pts + normal, (pts - normal)[..., ::-1, :]], axis=-2)


def _smooth(poly: np.ndarray) -> np.ndarray:
    """One round of Chaikin corner cutting: a closed outline without visible corners."""
    nxt = np.roll(poly, -1, axis=0)
    return np.stack([0.75 * poly + 0.25 * nxt, 0.25 * poly + 0.75 * nxt], axis=1).reshape(-1, 2)


class _Geometry:
    """Patient anatomy in the canonical frame; subclasses draw one view."""

    lateral = False
    ap = False
    atel_sides: tuple[int, ...] = (0,)  # hemidiaphragms atelectasis raises (0 right, 1 left)
    rib_fill = 58
    rib_width = 0.05

    def __init__(self, rng: np.random.Generator, scene: _Scene) -> None:
        self.rng = rng
        self.scene = scene
        self.ribs = np.empty((0, 14, 2))  # posterior rib centre lines, for fractures
        self.fractures: dict[int, tuple[int, float]] = {}  # rib -> (break index, step)
        # Frontal only: (side, point of the break, step) of a broken clavicle, or None.
        self.clavicle_fracture: tuple[int, int, float] | None = None
        self.calluses: list[tuple[np.ndarray, float, float]] = []  # (centre, angle, size)
        self.lungs: list[np.ndarray] = []
        self.zones: list[tuple[float, float, float, float]] = []  # (cu, cv, ru, rv) per lung
        self.hila: list[tuple[float, float]] = []
        self.lobe_centre = np.zeros(2)
        self.mw_scale = 1.0  # widening of the upper mediastinum

    def adapt(
        self,
        strength: Mapping[str, float],
        frng: Mapping[str, np.random.Generator],
        where: Mapping[str, _Place],
    ) -> None:
        """Change the anatomy that findings alter (heart size, mediastinum, diaphragm)."""
        raise NotImplementedError

    def build(self) -> None:
        """Compute the outlines from the parameters."""
        raise NotImplementedError

    def draw_anatomy(self, lay: _Layers) -> None:
        """Draw body, lungs, mediastinum, bones and vessels."""
        raise NotImplementedError

    def zone_centre(self, side: int) -> np.ndarray:
        """Centre of the lung on ``side`` (the only lung on lateral views)."""
        z = self.zones[1 if side > 0 and len(self.zones) > 1 else 0]
        return np.array(z[:2])

    def behind_heart(self, p: np.ndarray) -> bool:
        """Whether the point ``p`` projects onto the cardiac silhouette (frontal only)."""
        heart = getattr(self, "heart", None)
        if heart is None or self.lateral:
            return False
        # Even-odd ray casting along +u.
        u, v = heart[:, 0], heart[:, 1]
        un, vn = np.roll(u, -1), np.roll(v, -1)
        cross = (v > p[1]) != (vn > p[1])
        at = u + (p[1] - v) * (un - u) / np.where(vn == v, 1e-12, vn - v)
        return bool((cross & (at > p[0])).sum() % 2)

    def random_point(
        self, rng: np.random.Generator, side: int | None = None, level: str | None = None
    ) -> np.ndarray:
        """A random point well inside a lung: that of ``side`` (-1 right, +1 left) and in
        its upper, middle or lower part if given, else anywhere."""
        zone = int(rng.integers(len(self.zones)))
        a, r = rng.uniform(0, 2 * math.pi), math.sqrt(rng.uniform(0, 1)) * 0.85
        if side is not None and len(self.zones) > 1:
            zone = 0 if side < 0 else 1
        cu, cv, ru, rv = self.zones[zone]
        dv = r * math.sin(a)
        if level == "upper":
            dv = -abs(dv)
        elif level == "lower":
            dv = abs(dv)
        elif level == "middle":
            dv *= 0.4
        return np.array([cu + ru * r * math.cos(a), cv + rv * dv])

    def draw_ribs(self, d: ImageDraw.ImageDraw, xf: _Xform) -> None:
        """Posterior ribs as faint bands with a brighter lower cortex; fractures broken."""
        fill, width = self.rib_fill, self.rib_width
        edge_fill, edge_w = min(255, round(1.8 * fill)), xf.px(0.22 * width)
        whole = [i for i in range(len(self.ribs)) if i not in self.fractures]
        parts = list(self.ribs[whole])
        for i, (k, step) in self.fractures.items():
            rib = self.ribs[i]
            tang = rib[k + 1] - rib[k]
            normal = np.array([-tang[1], tang[0]]) / (math.hypot(*tang) + 1e-9)
            # A gap where the cortex is interrupted, the distal fragment displaced by
            # ``step`` across the rib (more than a rib's width when the fracture is severe).
            parts.append(np.vstack([rib[: k + 1], rib[k] + 0.1 * tang]))
            parts.append(np.vstack([rib[k] + 0.9 * tang, rib[k + 1 :]]) + normal * step)
        bands = xf.arr(_band(self.ribs[whole], width))
        cortex = xf.arr(self.ribs[whole] + np.array([0.0, 0.4 * width]))
        for j in range(len(whole)):
            d.polygon(bands[j].ravel().tolist(), fill)
            d.line(cortex[j].ravel().tolist(), edge_fill, edge_w)
        for part in parts[len(whole) :]:
            d.polygon(xf.xy(_band(part, width)), fill)
            d.line(xf.xy(part + np.array([0.0, 0.4 * width])), edge_fill, edge_w)

    def draw_vessels(self, lay: _Layers, angles: list[np.ndarray], length: float) -> None:
        """Branching pulmonary vessels fanning out from each hilum, tapering as they go."""
        d, xf = lay.ctx("vessel")
        rng = self.rng
        for (hu, hv), base in zip(self.hila, angles, strict=True):
            n = len(base)
            ang = base + rng.normal(0, 0.08, n)
            lens = length * rng.uniform(0.75, 1.15, n)
            turn = rng.normal(0, 0.3, (n, 2))
            seg = np.empty((n, 4, 2))
            # Vessels leave the hilum over a small area, not from one point.
            seg[:, 0, 0] = hu + rng.normal(0, 0.03, n)
            seg[:, 0, 1] = hv + rng.normal(0, 0.05, n)
            a = ang.copy()
            for k, frac in enumerate((0.3, 0.38, 0.32)):
                if k:
                    a = a + turn[:, k - 1]
                seg[:, k + 1, 0] = seg[:, k, 0] + frac * lens * np.cos(a)
                seg[:, k + 1, 1] = seg[:, k, 1] + frac * lens * np.sin(a)
            # Side branches leave the first two joints at ~30 degrees.
            side = rng.choice([-0.55, 0.55], (n, 2))
            b = ang[:, None] + turn + side
            bl = lens[:, None] * np.array([0.25, 0.17])
            branch = np.stack([seg[:, 1:3], seg[:, 1:3] + bl[..., None] *
                               np.stack([np.cos(b), np.sin(b)], axis=-1)], axis=2)  # fmt: skip
            seg_px, br_px = xf.arr(seg), xf.arr(branch)
            widths = [xf.px(0.014), xf.px(0.008), xf.px(0.004)]
            thin = xf.px(0.004)
            for j in range(n):
                for k, val in enumerate((80, 60, 40)):
                    d.line(seg_px[j, k : k + 2].ravel().tolist(), val, widths[k])
                for k in range(2):
                    d.line(br_px[j, k].ravel().tolist(), 35, thin)

    # -- hooks the findings use -------------------------------------------------------------
    def lobe(self, rng: np.random.Generator, place: _Place | None = None) -> np.ndarray:
        """Outline of a lobe, random or at ``place`` (a shape reaching past the lung is
        clipped by it)."""
        raise NotImplementedError

    def effusion(self, side: int, level: float) -> np.ndarray:
        """Fluid outline at a lung base rising to ``level`` (fraction of lung height)."""
        raise NotImplementedError

    def ptx_arc(self, side: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
        """Pleural surface over the apex (polyline) and the point the lung collapses to."""
        raise NotImplementedError

    def wall(self, side: int) -> np.ndarray:
        """The chest wall along the lateral (frontal) or anterior/posterior (lateral) lung."""
        raise NotImplementedError

    def base_band(self, side: int) -> tuple[float, float, float, float]:
        """(u0, u1, v0, v1): the lung base region for plate atelectasis."""
        raise NotImplementedError

    def devices(self, rng: np.random.Generator, kinds: set[str], lay: _Layers) -> None:
        """Draw the given support devices."""
        raise NotImplementedError


class _Frontal(_Geometry):
    """PA or AP chest: two lung fields, heart to the image right, spine in the midline."""

    def __init__(
        self,
        rng: np.random.Generator,
        scene: _Scene,
        *,
        ap: bool,
        oblique: bool,
        lordotic: bool,
    ) -> None:
        super().__init__(rng, scene)
        self.ap = ap
        self.wide = rng.uniform(0.68, 0.78)  # half-width of the lung fields
        self.va = -0.68 + rng.normal(0, 0.025)  # apex
        # Portable AP films are taken supine or sitting, with shallower inspiration.
        self.vcp = (0.33 if ap else 0.44) + rng.normal(0, 0.035)
        self.dome = rng.uniform(0.12, 0.19)  # dome height above the costophrenic angle
        self.raise_dia = [0.0, 0.0]  # per side (right, left), e.g. from atelectasis
        # AP magnifies the heart (it is far from the detector).
        self.ctr = rng.normal(0.49 if ap else 0.45, 0.025)
        self.mw = rng.uniform(0.075, 0.095) * (1.15 if ap else 1.0)  # upper mediastinum
        # Patient rotation shifts midline structures relative to the rib cage.
        self.mid = rng.normal(0, 0.06 if oblique else 0.035 if ap else 0.018)
        self.clav = rng.normal(-0.07 if lordotic else -0.02 if ap else 0.0, 0.02)
        self.breast = rng.random() < 0.4
        self.marker = rng.random() < 0.7

    def adapt(
        self,
        strength: Mapping[str, float],
        frng: Mapping[str, np.random.Generator],
        where: Mapping[str, _Place],
    ) -> None:
        if "Cardiomegaly" in strength:
            self.ctr += 0.1 + 0.14 * strength["Cardiomegaly"]
        if "Enlarged Cardiomediastinum" in strength:
            self.mw_scale = 1.25 + 0.9 * strength["Enlarged Cardiomediastinum"]
        if "Atelectasis" in strength:
            self.atel_sides = (int(frng["Atelectasis"].integers(2)),)
            if "Atelectasis" in where:
                self.atel_sides = tuple(0 if s < 0 else 1 for s in where["Atelectasis"].sides)
            for i in self.atel_sides:
                self.raise_dia[i] = 0.03 + 0.06 * strength["Atelectasis"]

    def _lung(self, sgn: int) -> np.ndarray:
        i = 0 if sgn < 0 else 1
        lift = self.raise_dia[i]
        vcp = self.vcp + (0.03 if sgn > 0 else 0.0)
        va, w, h = self.va, self.wide, vcp - self.va
        # A raised hemidiaphragm (volume loss at the base) lifts the lower lung and leaves the
        # apex where it is; it lifts the dome more than the costophrenic angle.
        up = np.column_stack(
            [sgn * w * _LUNG_UP[:, 0], va + h * _LUNG_UP[:, 1] - lift * _LUNG_UP[:, 1] ** 4]
        )
        dome = self.dome + 0.5 * lift
        dia = np.column_stack([sgn * w * _LUNG_DIA[:, 0], vcp - lift - dome * _LUNG_DIA[:, 1]])
        med = np.column_stack(
            [sgn * w * _LUNG_MED[:, 0], va + h * _LUNG_MED[:, 1] - lift * _LUNG_MED[:, 1] ** 4]
        )
        return np.vstack([up, dia, med])

    def build(self) -> None:
        w, va, mid = self.wide, self.va, self.mid
        self.lungs = [self._lung(-1), self._lung(1)]
        self.outlines = [_smooth(lung) for lung in self.lungs]
        h = self.vcp - va
        self.zones = [(sgn * 0.52 * w, va + 0.55 * h, 0.3 * w, 0.36 * h) for sgn in (-1, 1)]
        self.hila = [(mid - 0.2, va + 0.56 * h), (mid + 0.2, va + 0.52 * h)]
        r_dia, l_dia = self.lungs[0][_DOME], self.lungs[1][_DOME]
        # Where the domes meet the heart without a raised hemidiaphragm: the heart and the
        # mediastinum stay put when atelectasis lifts one side (the change is local).
        medial_lift = 0.5 * sum(self.raise_dia) * (1 + 0.5 * _LUNG_DIA[-1, 1])
        centre_v = 0.5 * (r_dia[-1, 1] + l_dia[-1, 1]) + medial_lift
        # Below the domes: liver, spleen, bowel (thick tissue, no mediastinum).
        self.abdomen = np.vstack(
            [r_dia, [(mid, centre_v + 0.06)], l_dia[::-1], [(1.6, 2.0), (-1.6, 2.0)]]
        )
        # Heart: sits on the diaphragm, its width set by the cardiothoracic ratio.
        width = self.ctr * 2 * w
        right, left = 0.36 * width, 0.64 * width
        bottom = centre_v + 0.04
        hh = 0.42 + 0.25 * max(0.0, self.ctr - 0.5)
        hu = np.where(_HEART[:, 0] < 0, right, left) * _HEART[:, 0] + mid + 0.02
        self.heart = np.column_stack([hu, bottom - hh + hh * _HEART[:, 1]])
        top = self.heart_top = bottom - hh
        # Upper mediastinum with the aortic knob; a widened one bulges between the thoracic
        # inlet and the heart.
        mw, big = self.mw, self.mw_scale
        self.knob = (mid + mw * big + 0.06, top - 0.13, 0.055 * (1 + 0.3 * (big - 1)))
        self.medi = np.array(
            [
                (mid - mw, -1.6), (mid - mw, va - 0.05), (mid - mw * 1.1 * big, top - 0.2),
                (mid - mw * 1.35 * big, top + 0.02), (hu[0], top + 0.02),
                (hu[-1], top + 0.02), (mid + mw * 1.2 * big, top - 0.05),
                (mid + mw * big, va + 0.2), (mid + mw * 0.9, va - 0.05), (mid + mw * 0.85, -1.6),
            ]
        )  # fmt: skip
        # Posterior ribs: from the spine up and out, then down along the chest wall.
        n = 10
        lv = va + 0.03 + (self.vcp - va - 0.1) * (np.arange(n) / n) ** 1.1
        reach = w * (0.6 + 0.4 * np.sin(np.minimum(np.arange(n) / 3.5, 1.0) * math.pi / 2))
        ctrl = np.empty((2 * n, 4, 2))
        for k, sgn in enumerate((-1, 1)):
            sl = slice(k * n, (k + 1) * n)
            ctrl[sl, 0] = np.column_stack([np.full(n, mid + sgn * 0.05), lv])
            ctrl[sl, 1] = np.column_stack([mid + sgn * 0.4 * reach, lv - 0.11])
            ctrl[sl, 2] = np.column_stack([sgn * (reach + 0.1), lv - 0.03])
            ctrl[sl, 3] = np.column_stack([sgn * (reach + 0.03), lv + 0.3])
        self.ribs = _bezier(ctrl + self.rng.normal(0, 0.008, ctrl.shape))
        # Anterior ribs: fainter, from the chest wall down towards the sternum.
        m = 6
        av = va + 0.12 + 0.14 * np.arange(m)
        actrl = np.empty((2 * m, 4, 2))
        for k, sgn in enumerate((-1, 1)):
            sl = slice(k * m, (k + 1) * m)
            actrl[sl, 0] = np.column_stack([np.full(m, sgn * (w + 0.04)), av - 0.06])
            actrl[sl, 1] = np.column_stack([np.full(m, sgn * (w * 0.8)), av - 0.06])
            actrl[sl, 2] = np.column_stack([np.full(m, sgn * w * 0.5), av + 0.04])
            actrl[sl, 3] = np.column_stack([np.full(m, sgn * w * 0.3), av + 0.16])
        self.ant_ribs = _bezier(actrl)

    def draw_anatomy(self, lay: _Layers) -> None:
        rng = self.rng
        w, va, mid = self.wide, self.va, self.mid
        wt = w + 0.1 + rng.uniform(-0.02, 0.04)  # body wall outside the ribs
        sh = va - 0.1 + rng.normal(0, 0.03)  # top of the shoulders

        # Body: neck, shoulders and the adducted arms, thicker in the middle of the trunk.
        d, xf = lay.ctx("tissue")
        body = np.array(
            [
                (mid - 0.2, -1.8), (mid - 0.21, sh - 0.12), (-0.4, sh - 0.02), (-wt, sh + 0.04),
                (-wt - 0.22, sh + 0.1), (-wt - 0.34, sh + 0.3), (-wt - 0.38, 1.8),
                (wt + 0.38, 1.8), (wt + 0.34, sh + 0.3), (wt + 0.22, sh + 0.1),
                (wt, sh + 0.04), (0.4, sh - 0.02), (mid + 0.21, sh - 0.12), (mid + 0.2, -1.8),
            ]
        )  # fmt: skip
        d.polygon(xf.xy(body), 185)
        trunk = np.array([(-wt, sh + 0.08), (wt, sh + 0.08), (wt + 0.02, 1.8), (-wt - 0.02, 1.8)])
        d.polygon(xf.xy(trunk), 205)
        d.polygon(xf.xy(_ellipse(0, 0.3, wt * 0.82, 1.1)), 230)
        if rng.random() < 0.5:  # a little air between arm and chest wall
            for sgn in (-1, 1):
                gap = np.array([(wt + 0.01, va + 0.45), (wt + 0.05, va + 0.45),
                                (wt + 0.1, 1.8), (wt + 0.03, 1.8)])  # fmt: skip
                gap[:, 0] *= sgn
                d.polygon(xf.xy(gap), 120)
        if self.breast:
            for sgn in (-1, 1):
                d.polygon(xf.xy(_ellipse(sgn * 0.45 * w, self.vcp - 0.02, 0.3, 0.2)), 245)
        d.polygon(xf.xy(self.abdomen), 250)
        # Less tissue in the beam towards the middle of each lung: after the heavy blur of
        # this layer the lungs are greyer at the apex (shoulder girdle) and along the walls
        # and most lucent in the middle, as on real films.
        for lung, (cu, cv, _, _) in zip(self.lungs, self.zones, strict=True):
            centre = np.array([cu, cv])
            for scale, val in ((0.85, 195), (0.6, 165)):
                d.polygon(xf.xy(centre + scale * (lung - centre)), val)

        # Lungs (air) and the gastric bubble under the left dome.
        d, xf = lay.ctx("air")
        for outline in self.outlines:
            d.polygon(xf.xy(outline), _LUNG_AIR)
        bubble = _ellipse(0.42 * w, self.lungs[1][_DOME_TOP, 1] + 0.09, 0.07, 0.035)
        d.polygon(xf.xy(bubble), 110)

        # Mediastinum, heart and hila; the trachea is an air column cut out of it.
        dm, xf = lay.ctx("medi")
        neck = np.array([(-0.16, -1.8), (0.16, -1.8), (0.16, va), (-0.16, va)]) + np.array([mid, 0])
        dm.polygon(xf.xy(neck), 60)
        for k, (hu, hv) in enumerate(self.hila):  # first, so that the heart may cover them
            dm.polygon(xf.xy(_ellipse(hu, hv, 0.035, 0.08, 0.3 if k else -0.3)), 70)
        dm.polygon(xf.xy(self.medi), 255)
        dm.polygon(xf.xy(self.heart), 255)
        ku, kv, kr = self.knob
        dm.polygon(xf.xy(_ellipse(ku - kr * 0.5, kv, kr * 1.2, kr)), 255)
        carina = np.array([mid + 0.01, self.heart_top - 0.06])
        airway = [(np.array([(mid - 0.01, -1.7), carina]), 0.05)]
        for sgn in (-1, 1):
            end = carina + np.array([sgn * 0.13, 0.11 if sgn < 0 else 0.08])
            airway.append((np.stack([carina, end]), 0.028))
        for pts, width in airway:
            dm.line(xf.xy(pts), 0, xf.px(width))
            d.line(xf.xy(pts), 120, xf.px(width * 0.9))
        dm.polygon(xf.xy(self.abdomen), 0)

        # Bones: spine (faint behind the mediastinum), ribs, clavicles, scapulae, humeri.
        d, xf = lay.ctx("bone")
        vs = np.arange(-1.05, 1.2, 0.088)
        cu = mid + 0.004 * np.arange(len(vs))
        d.polygon(xf.xy(np.array([(cu[0] - 0.06, vs[0]), (cu[0] + 0.06, vs[0]),
                                  (cu[-1] + 0.065, 1.3), (cu[-1] - 0.065, 1.3)])), 26)  # fmt: skip
        # Disc spaces (darker) and pedicles (bright ovals, drawn as short thick strokes).
        disc = xf.arr(np.stack([np.column_stack([cu - 0.06, vs - 0.01]),
                                np.column_stack([cu + 0.06, vs - 0.01])], axis=1))  # fmt: skip
        ped = xf.arr(np.stack([np.column_stack([cu, vs + 0.015]),
                               np.column_stack([cu, vs + 0.05])], axis=1))  # fmt: skip
        off = xf.arr(np.array([[0.045, 0.0]])) - xf.arr(np.zeros((1, 2)))
        dw, pw = xf.px(0.016), xf.px(0.022)
        for k in range(len(vs)):
            d.line(disc[k].ravel().tolist(), 8, dw)
            d.line((ped[k] - off).ravel().tolist(), 40, pw)
            d.line((ped[k] + off).ravel().tolist(), 40, pw)
        self.draw_ribs(d, xf)
        for ant in xf.arr(_band(self.ant_ribs, 0.024)):
            d.polygon(ant.ravel().tolist(), 26)
        for sgn in (-1, 1):
            cl = np.array([(0.06, 0.0), (0.25, -0.05), (0.45, -0.09), (0.62, -0.1), (0.74, -0.14)])
            cl = np.column_stack([mid * (1 - cl[:, 0]) + sgn * cl[:, 0] * w / 0.73,
                                  va + 0.15 + cl[:, 1]])  # fmt: skip
            cl[:, 1] += self.clav + rng.normal(0, 0.01)
            for part in self._clavicle_parts(cl, sgn):
                d.polygon(xf.xy(_band(part, 0.04)), 105)
                d.line(xf.xy(part + np.array([0.0, 0.012])), 140, xf.px(0.012))
            # Scapula: outside the lungs on PA (arms rotated forward), over them on AP.
            su = (w + 0.05) if not self.ap else w * 0.72
            scap = np.array([(su - 0.12, va + 0.06), (w + 0.2, va + 0.02), (w + 0.14, va + 0.45),
                             (su, va + 0.7), (su - 0.06, va + 0.35)])  # fmt: skip
            scap[:, 0] *= sgn
            d.polygon(xf.xy(scap), 40)
            hu = sgn * (wt + 0.2)
            d.polygon(xf.xy(_ellipse(hu, va + 0.02, 0.12, 0.13)), 90)
            d.line(xf.xy(np.array([(hu, va), (hu + sgn * 0.06, va + 1.5)])), 85, xf.px(0.14))
        if self.marker:  # the technologist's side marker, a bright letter in a corner
            sc = self.scene
            x0, y0 = (0.88 if rng.random() < 0.7 else 0.06) * sc.w, 0.05 * sc.h
            k = max(2.0, 0.03 * sc.s)
            d.line([(x0, y0), (x0, y0 + 1.6 * k), (x0 + k, y0 + 1.6 * k)], 255, max(1, int(k / 3)))

        # Vessels, fanning up, out and down from each hilum.
        ang = np.linspace(-1.4, 1.35, 11)
        self.draw_vessels(lay, [math.pi - ang, ang], 0.45 * w)

    def _clavicle_parts(self, cl: np.ndarray, sgn: int) -> list[np.ndarray]:
        """The clavicle on side ``sgn`` whole, or in two fragments if it is broken.

        A midshaft fracture, the commonest: the lateral fragment drops (the arm's weight)
        and overrides the medial one, and a callus forms around the break.
        """
        frac = self.clavicle_fracture
        if frac is None or frac[0] != sgn:
            return [cl]
        _, k, step = frac
        tang = cl[k + 1] - cl[k]
        at = cl[k] + 0.5 * tang
        medial = np.vstack([cl[: k + 1], at + 0.1 * tang])
        lateral = np.vstack([at - 0.25 * tang, cl[k + 1 :]]) + np.array([0.0, step])
        self.calluses.append((at + np.array([0.0, 0.5 * step]), math.atan2(tang[1], tang[0]),
                              0.05 + 0.4 * step))  # fmt: skip
        return [medial, lateral]

    def lobe(self, rng: np.random.Generator, place: _Place | None = None) -> np.ndarray:
        w, va, h = self.wide, self.va, self.vcp - self.va
        side = -1 if rng.random() < 0.55 else 1
        fis = va + 0.5 * h  # horizontal fissure / upper-lobe boundary
        kind = int(rng.integers(3))
        if place is not None:
            side = place.sides[0] if len(place.sides) == 1 else side
            kind = _PLACE_LEVELS.index(place.level)
        if kind == 0:  # upper lobe, sharp lower border at the fissure
            pts = [(0.05, va - 0.2), (w + 0.2, va - 0.2), (w + 0.2, fis + 0.04), (0.1, fis - 0.02)]
        elif kind == 1:  # middle lobe / lingula: against the heart border
            pts = [(0.08, fis), (0.7 * w, fis + 0.03), (0.6 * w, self.vcp), (0.08, self.vcp)]
        else:  # lower lobe: the base, hiding the diaphragm
            pts = [(0.25 * w, fis + 0.12), (w + 0.2, fis + 0.08), (w + 0.2, self.vcp + 0.2),
                   (0.12, self.vcp + 0.2)]  # fmt: skip
        pts = np.array(pts)
        pts[:, 0] *= side
        centre = [(0.5 * w, va + 0.25 * h), (0.35 * w, fis + 0.2 * h), (0.6 * w, fis + 0.32 * h)]
        self.lobe_centre = np.array([side * centre[kind][0], centre[kind][1]])
        return pts

    def effusion(self, side: int, level: float) -> np.ndarray:
        sgn = -1 if side < 0 else 1
        lung = self.lungs[0 if side < 0 else 1]
        w, vcp = self.wide, lung[_CP, 1]
        rise = level * (vcp - self.va)
        # Meniscus: highest at the chest wall, curving down medially.
        mu = np.array([1.12, 0.98, 0.85, 0.65, 0.4, 0.1])
        mv = vcp - rise * np.array([1.0, 0.92, 0.72, 0.52, 0.4, 0.35])
        top = np.column_stack([sgn * w * mu, mv])
        return np.vstack([top, [(sgn * 0.05, 1.5), (sgn * (w + 0.3), 1.5)]])

    def ptx_arc(self, side: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
        lung = self.lungs[0 if side < 0 else 1]
        n = 4 + round(6 * extent)  # from the medial apex over the top and down the wall
        hu, hv = self.hila[0 if side < 0 else 1]
        return lung[: n + 1], np.array([hu * 0.8, hv])

    def wall(self, side: int) -> np.ndarray:
        return self.lungs[0 if side < 0 else 1][4 : _CP + 1]

    def base_band(self, side: int) -> tuple[float, float, float, float]:
        sgn = -1 if side < 0 else 1
        top = self.lungs[0 if side < 0 else 1][_DOME_TOP, 1]
        u0, u1 = sorted((sgn * 0.3 * self.wide, sgn * 0.9 * self.wide))
        return u0, u1, top - 0.2, top - 0.04

    def devices(self, rng: np.random.Generator, kinds: set[str], lay: _Layers) -> None:
        d, xf = lay.ctx("device")
        mid, w, va = self.mid, self.wide, self.va
        carina_v = self.heart_top - 0.06
        if "ett" in kinds:  # endotracheal tube, tip a few cm above the carina
            # A plastic tube (faint walls) with a radio-opaque stripe.
            tube = np.array([(mid - 0.01, -1.7), (mid + 0.005, carina_v - rng.uniform(0.08, 0.2))])
            d.line(xf.xy(tube), 110, xf.px(0.05))
            d.line(xf.xy(tube + np.array([0.01, 0.0])), 255, xf.px(0.012))
        if "ng" in kinds:  # enteric tube down the oesophagus into the stomach
            ctrl = np.array(
                [
                    [(mid + 0.02, -1.7), (mid + 0.03, -0.5), (mid + 0.0, 0.0), (mid + 0.04, 0.3)],
                    [(mid + 0.04, 0.3), (0.15, 0.45), (0.45 * w, 0.5), (0.42 * w, 0.62)],
                ]
            ) + rng.normal(0, 0.02, (2, 4, 2))  # fmt: skip
            ctrl[1, 0] = ctrl[0, 3]
            d.line(xf.xy(np.vstack(_bezier(ctrl))), 235, xf.px(0.025))
        if "line" in kinds:  # central venous line from the right, tip in the SVC
            ctrl = np.array([(-w - 0.1, va + 0.05), (-0.45, va + 0.02), (mid - 0.12, va + 0.1),
                             (mid - 0.06, self.heart_top)])  # fmt: skip
            d.line(xf.xy(_bezier(ctrl + rng.normal(0, 0.025, ctrl.shape))), 225, xf.px(0.016))
        if "pacer" in kinds:  # generator below the left clavicle, leads into the heart
            pu, pv = 0.5 * w + rng.normal(0, 0.05), va + 0.22 + rng.normal(0, 0.04)
            box = np.array([(-0.13, -0.1), (0.13, -0.1), (0.14, 0.09), (-0.13, 0.1)])
            d.polygon(xf.xy(box + np.array([pu, pv])), 255)
            apex = self.heart[_HEART_APEX]
            for k in range(1 + int(rng.integers(2))):
                ctrl = np.array([(pu - 0.05, pv), (mid + 0.05, va + 0.1),
                                 (mid - 0.1, self.heart_top + 0.2),
                                 (apex[0] - 0.12 - 0.15 * k, apex[1] - 0.1 * k)])  # fmt: skip
                ctrl[1:] += rng.normal(0, 0.02, (3, 2))
                d.line(xf.xy(_bezier(ctrl)), 245, xf.px(0.016))
        if "ecg" in kinds:  # electrodes on the chest wall with their wires
            _ecg_leads(xf, rng, d, (-w, w), (va + 0.05, self.vcp + 0.1), outward=True)
        if "chest_tube" in kinds:
            sgn = -1 if rng.random() < 0.5 else 1
            ctrl = np.array([(sgn * (w + 0.4), self.vcp + 0.1), (sgn * (w - 0.05), self.vcp),
                             (sgn * 0.6 * w, va + 0.5), (sgn * 0.35 * w, va + 0.1)])  # fmt: skip
            ctrl[1:] += rng.normal(0, 0.03, (3, 2))
            d.line(xf.xy(_bezier(ctrl)), 230, xf.px(0.045))


class _Lateral(_Geometry):
    """Lateral chest: anterior to the image left, spine at the back, one lung field."""

    lateral = True
    rib_fill = 30
    rib_width = 0.025

    def __init__(self, rng: np.random.Generator, scene: _Scene) -> None:
        super().__init__(rng, scene)
        self.depth = rng.uniform(0.92, 1.08)  # anteroposterior scale of the chest
        self.tall = rng.uniform(0.92, 1.08)
        self.dome_shift = rng.normal(0, 0.04)  # inspiration
        self.second = rng.uniform(0.04, 0.09)  # the other hemidiaphragm, lower
        self.heart_r = rng.normal(1.0, 0.05)
        self.aorta_w = rng.uniform(0.07, 0.09)
        self.kyphosis = rng.uniform(0.0, 0.06)
        self.raise_dia = 0.0

    def adapt(
        self,
        strength: Mapping[str, float],
        frng: Mapping[str, np.random.Generator],
        where: Mapping[str, _Place],
    ) -> None:
        if "Cardiomegaly" in strength:
            self.heart_r += 0.1 + 0.2 * strength["Cardiomegaly"]
        if "Enlarged Cardiomediastinum" in strength:
            self.mw_scale = 1.3 + 1.0 * strength["Enlarged Cardiomediastinum"]
        if "Atelectasis" in strength:
            self.raise_dia = 0.03 + 0.06 * strength["Atelectasis"]

    def _p(self, pts: np.ndarray) -> np.ndarray:
        """Apply this patient's chest depth and height to template points."""
        return np.asarray(pts, dtype=float) * np.array([self.depth, self.tall])

    def build(self) -> None:
        lung = self._p(_LAT_LUNG)
        lung[_LAT_DOME, 1] += self.dome_shift - self.raise_dia + self.second
        self.lungs = [lung]  # outlined down to the lower dome
        self.upper_dome = lung[_LAT_DOME].copy()
        self.upper_dome[:, 1] -= self.second
        # Placement zone for lesions: the lung behind and above the heart.
        self.zones = [(0.22 * self.depth, -0.22 * self.tall, 0.36 * self.depth, 0.36 * self.tall)]
        self.hila = [(0.12 * self.depth, -0.12 * self.tall)]
        # Posterior ribs run down and forwards from the spine; both sides, slightly offset.
        n = 8
        lv = (-0.72 + 0.12 * np.arange(n)) * self.tall
        ctrl = np.empty((2 * n, 4, 2))
        for k, off in enumerate((0.0, 0.05)):
            sl = slice(k * n, (k + 1) * n)
            ctrl[sl, 0] = np.column_stack([np.full(n, 0.68 * self.depth), lv + off])
            ctrl[sl, 1] = np.column_stack([np.full(n, 0.48 * self.depth), lv + off + 0.02])
            ctrl[sl, 2] = np.column_stack([np.full(n, 0.2 * self.depth), lv + off + 0.12])
            ctrl[sl, 3] = np.column_stack([np.full(n, 0.05), lv + off + 0.24])
        self.ribs = _bezier(ctrl + self.rng.normal(0, 0.01, ctrl.shape))

    def draw_anatomy(self, lay: _Layers) -> None:
        rng = self.rng
        dp, tl = self.depth, self.tall
        lung = self.lungs[0]

        d, xf = lay.ctx("tissue")
        body = self._p(
            [
                (-0.25, -1.8), (-0.3, -1.0), (-0.55, -0.72), (-0.74, -0.3), (-0.78, 0.15),
                (-0.76, 0.6), (-0.74, 1.8), (0.92, 1.8), (0.94, 0.5), (0.95, 0.0),
                (0.9, -0.5), (0.72, -0.95), (0.55, -1.8),
            ]
        )  # fmt: skip
        body[:, 0] += rng.uniform(-0.03, 0.03)
        d.polygon(xf.xy(body), 205)
        d.polygon(xf.xy(_ellipse(0.05, 0.1, 0.7 * dp, 1.0 * tl)), 228)
        # Raised arms project over the upper chest.
        d.polygon(xf.xy(_ellipse(-0.15, -0.92 * tl, 0.62, 0.28, -0.35)), 240)
        centre = np.array(self.zones[0][:2])
        d.polygon(xf.xy(centre + 0.7 * (lung - centre)), 200)  # thinner mid-lung

        d, xf = lay.ctx("air")
        trachea = self._p([(0.0, -1.6), (0.1, -0.5), (0.14, -0.2)])
        d.line(xf.xy(trachea), 90, xf.px(0.065))  # shows above the lung only
        d.polygon(xf.xy(_smooth(lung)), _LUNG_AIR)
        # Between the two domes only one lung is in the beam.
        between = np.vstack([self.upper_dome, lung[_LAT_DOME][::-1]])
        d.polygon(xf.xy(between), 140)
        d.polygon(xf.xy(_ellipse(-0.1, lung[9, 1] + 0.1, 0.08, 0.035)), 110)

        d, xf = lay.ctx("medi")
        hu, hv = self.hila[0]
        d.polygon(xf.xy(_ellipse(hu, hv, 0.07, 0.1)), 90)
        # Heart: against the lower sternum, resting on the diaphragm; an enlarged heart grows
        # backwards and upwards, filling the clear space behind it.
        hr = self.heart_r
        anchor = np.array([-0.64 * dp, self.upper_dome[0, 1] + 0.03])
        heart = anchor + (self._p(_LAT_HEART) - anchor) * np.array([hr, 1 + 0.3 * (hr - 1)])
        d.polygon(xf.xy(heart), 255)
        aorta = self._p([(-0.3, -0.28), (-0.22, -0.42), (0.02, -0.48), (0.28, -0.38),
                         (0.42, -0.12), (0.46, 0.3)])  # fmt: skip
        d.line(xf.xy(aorta), 45, xf.px(self.aorta_w))
        if self.mw_scale > 1.0:  # widened mediastinum fills the retrosternal clear space
            g = self.mw_scale - 1.0
            bulge = _ellipse((-0.18 - 0.1 * g) * dp, (-0.33 - 0.03 * g) * tl, 0.12 + 0.1 * g,
                             0.15 + 0.05 * g, 0.6)  # fmt: skip
            d.polygon(xf.xy(bulge), 230)
        below = np.vstack([lung[_LAT_DOME], [(1.5, 3.0), (-1.5, 3.0)]])
        below[0, 0] -= 0.3
        d.polygon(xf.xy(below), 0)

        d, xf = lay.ctx("bone")
        # Thoracic spine: bodies along a gentle kyphosis, posterior elements behind.
        vs = np.arange(-1.1, 1.25, 0.09)
        cu = (0.62 + self.kyphosis * (1 - (vs / 1.1) ** 2)) * dp
        corners = np.array([(-0.07, 0.0), (0.07, 0.01), (0.07, 0.075), (-0.07, 0.068)])
        bodies = xf.arr(np.stack([cu, vs], axis=1)[:, None] + corners[None])
        spinous = xf.arr(np.stack([np.column_stack([cu + 0.12, vs + 0.03]),
                                   np.column_stack([cu + 0.22, vs + 0.07])], axis=1))  # fmt: skip
        sw = xf.px(0.03)
        for k in range(len(vs)):
            d.polygon(bodies[k].ravel().tolist(), 50)
            d.line(spinous[k].ravel().tolist(), 25, sw)
        sternum = self._p([(-0.5, -0.66), (-0.6, -0.3), (-0.66, 0.0), (-0.68, 0.18)])
        d.polygon(xf.xy(_band(sternum, 0.04)), 60)
        self.draw_ribs(d, xf)
        # Scapulae: oblique lines over the upper posterior chest.
        for off in (0.0, 0.06):
            scap = self._p([(0.3 + off, -0.8), (0.42 + off, -0.4), (0.62 + off, -0.02)])
            d.line(xf.xy(scap), 40, xf.px(0.02))

        self.draw_vessels(lay, [np.linspace(-2.6, 2.2, 12)], 0.42)

    def lobe(self, rng: np.random.Generator, place: _Place | None = None) -> np.ndarray:
        kind = int(rng.integers(3))
        if place is not None:
            kind = _PLACE_LEVELS.index(place.level)
        if kind == 0:  # upper lobe, above the fissures
            pts = [(-0.9, -1.0), (0.9, -1.0), (0.9, -0.5), (0.5, -0.45), (0.1, -0.1), (-0.9, -0.1)]
        elif kind == 1:  # middle lobe / lingula, anterior wedge over the heart
            pts = [(-0.9, -0.1), (0.08, -0.1), (-0.32, 0.25), (-0.9, 0.3)]
        else:  # lower lobe, posterior and basal
            pts = [(0.5, -0.45), (0.9, -0.5), (0.9, 0.9), (-0.32, 0.9), (-0.32, 0.25), (0.1, -0.1)]
        self.lobe_centre = self._p([[(0.1, -0.45), (-0.4, 0.05), (0.4, 0.1)][kind]])[0]
        return self._p(pts)

    def effusion(self, side: int, level: float) -> np.ndarray:
        # Fluid collects first in the posterior costophrenic sulcus, meniscus rising behind.
        base = self.lungs[0][_LAT_SULCUS, 1] - (0.0 if side < 0 else 0.5 * self.second)
        rise = level * 1.1 * self.tall
        mu = np.array([0.85, 0.7, 0.55, 0.35, 0.1, -0.3, -0.7]) * self.depth
        mv = base - rise * np.array([1.0, 0.93, 0.72, 0.5, 0.38, 0.3, 0.25])
        return np.vstack([np.column_stack([mu, mv]), [(-0.9, 1.6), (0.9, 1.6)]])

    def ptx_arc(self, side: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
        lung = self.lungs[0]
        n = 2 + round(3 * extent)
        arc = np.vstack([lung[-n:], lung[: n + 1]])  # over the apex, both ways
        return arc, np.array([0.1 * self.depth, 0.1])

    def wall(self, side: int) -> np.ndarray:
        lung = self.lungs[0]
        return lung[15:20] if side > 0 else lung[1:7]

    def base_band(self, side: int) -> tuple[float, float, float, float]:
        # Behind the heart, above the posterior part of the diaphragm.
        top = self.upper_dome[4, 1]
        return 0.02 * self.depth, 0.6 * self.depth, top - 0.22, top - 0.06

    def devices(self, rng: np.random.Generator, kinds: set[str], lay: _Layers) -> None:
        d, xf = lay.ctx("device")
        dp, tl = self.depth, self.tall
        if "ett" in kinds:
            tube = self._p([(-0.02, -1.7), (0.1, -0.5), (0.12, -0.32)])
            d.line(xf.xy(tube), 110, xf.px(0.05))
            d.line(xf.xy(tube + np.array([0.01, 0.0])), 255, xf.px(0.012))
        if "ng" in kinds:  # behind the trachea, down into the stomach below the diaphragm
            tube = np.array([(0.2, -1.7), (0.3 * dp, -0.4), (0.35 * dp, 0.3), (0.1, 0.6)])
            d.line(xf.xy(tube + rng.normal(0, 0.02, tube.shape)), 235, xf.px(0.025))
        if "line" in kinds:
            line = np.array([(0.05, -1.5), (-0.05, -0.8), (-0.12 * dp, -0.35 * tl)])
            d.line(xf.xy(line + rng.normal(0, 0.02, line.shape)), 225, xf.px(0.016))
        if "pacer" in kinds:
            pu, pv = -0.72 * dp, -0.5 * tl + rng.normal(0, 0.04)
            box = np.array([(-0.04, -0.13), (0.04, -0.13), (0.045, 0.13), (-0.045, 0.13)])
            d.polygon(xf.xy(box + np.array([pu, pv])), 255)
            ctrl = np.array([(pu, pv), (-0.3, -0.7), (0.05, -0.3), (-0.35 * dp, 0.1)])
            d.line(xf.xy(_bezier(ctrl)), 245, xf.px(0.016))
        if "ecg" in kinds:
            _ecg_leads(xf, rng, d, (-0.7 * dp, 0.6 * dp), (-0.6 * tl, 0.3), outward=False)
        if "chest_tube" in kinds:
            ctrl = np.array([(0.3, 1.2), (0.45, 0.3), (0.4, -0.2), (0.2, -0.6)])
            ctrl[1:] += rng.normal(0, 0.03, (3, 2))
            d.line(xf.xy(_bezier(ctrl)), 230, xf.px(0.045))


def _ecg_leads(
    xf: _Xform,
    rng: np.random.Generator,
    d: ImageDraw.ImageDraw,
    urange: tuple[float, float],
    vrange: tuple[float, float],
    *,
    outward: bool,
) -> None:
    """Electrodes (bright rings with a snap) and the wires trailing off the image."""
    for _ in range(int(rng.integers(3, 6))):
        u, v = rng.uniform(*urange), rng.uniform(*vrange)
        d.polygon(xf.xy(_ellipse(u, v, 0.05, 0.05)), None, 230, xf.px(0.012))
        d.polygon(xf.xy(_ellipse(u, v, 0.02, 0.02)), 250)
        away = (1.0 if u > 0 else -1.0) if outward else float(rng.choice([-1.0, 1.0]))
        ctrl = np.array([(u, v), (u + away * rng.uniform(0.2, 0.6), v + rng.normal(0, 0.3)),
                         (u + away * rng.uniform(0.4, 1.0), v + rng.normal(0, 0.5)),
                         (u + away * 1.6, v + rng.normal(0, 0.6))])  # fmt: skip
        d.line(xf.xy(_bezier(ctrl)), 200, xf.px(0.011))


def _pick_devices(rng: np.random.Generator, n: int) -> set[str]:
    """Choose ``n`` device kinds; ECG leads and tubes are the common ones."""
    kinds = ["ecg", "ett", "ng", "line", "pacer", "chest_tube"]
    p = np.array([0.3, 0.2, 0.2, 0.13, 0.1, 0.07])
    return set(rng.choice(kinds, size=min(n, len(kinds)), replace=False, p=p).tolist())


def _plan_fractures(
    geo: _Geometry, e: float, r: np.random.Generator, place: _Place | None = None
) -> None:
    """Break ribs (or, on a quarter of frontal films, a clavicle) and place the calluses.

    Trauma breaks neighbouring ribs along one line: two to five consecutive ribs of one
    side, each at about the same point of its lateral arc (where a radiologist traces the
    chest wall), the fragments displaced by a step and a callus around each break; the
    number of ribs, the step and the callus grow with the strength. A callus is what keeps
    a break visible once the image is reduced to the model's size.
    """
    placed = place.sides[0] if place is not None and len(place.sides) == 1 else None
    if not geo.lateral and r.random() < 0.25:
        side = -1 if r.random() < 0.5 else 1
        side = side if placed is None else placed
        geo.clavicle_fracture = (side, int(r.integers(1, 3)), 0.03 + 0.05 * e)
        if r.random() < 0.5:  # often with a rib fracture of the same side
            return
    n_side = len(geo.ribs) // 2  # right then left (frontal); near then far side (lateral)
    side = int(r.integers(0, 2))
    if placed is not None:
        side = 0 if placed < 0 else 1
    n = 2 + int(r.integers(0, 1 + round(3 * e)))
    first = int(r.integers(2, n_side - n + 1))
    shift = int(r.integers(-2, 1))  # at or just behind the rib's most lateral point
    for j in range(n):
        i = side * n_side + first + j
        rib = geo.ribs[i]
        if geo.lateral:  # posterior ribs, near the spine, behind the lung
            k = int(r.integers(1, 4))
        else:
            k = int(np.argmax(np.abs(rib[:, 0] - rib[0, 0]))) + shift
        k = int(np.clip(k, 1, len(rib) - 3))
        step = (0.03 + 0.05 * e) * float(r.choice([-1.0, 1.0]))
        geo.fractures[i] = (k, step)
        p, q = geo.ribs[i][k], geo.ribs[i][k + 1]
        size = (0.04 + 0.04 * e) * r.uniform(0.85, 1.15) * (0.7 if geo.lateral else 1.0)
        geo.calluses.append((0.5 * (p + q), math.atan2(q[1] - p[1], q[0] - p[0]), size))


def _sides(r: np.random.Generator, p_both: float, place: _Place | None) -> tuple[int, ...]:
    """The sides of ``place``, else both with probability ``p_both`` and otherwise right or
    left at even odds (one draw of ``r`` either way)."""
    u = r.random()
    if place is not None:
        return place.sides
    return (-1, 1) if u < p_both else (-1,) if u < (1 + p_both) / 2 else (1,)


def _side_of(place: _Place | None, k: int) -> int | None:
    """The side of a finding's ``k``-th focus: its place's sides in turn, or None (random)."""
    return None if place is None else place.sides[k % len(place.sides)]


def _draw_findings(
    geo: _Geometry,
    lay: _Layers,
    strength: Mapping[str, float],
    frng: Mapping[str, np.random.Generator],
    where: Mapping[str, _Place],
) -> None:
    """Draw every present finding into the finding layers, where ``where`` places it."""
    if "Pleural Effusion" in strength:
        e, r = strength["Pleural Effusion"], frng["Pleural Effusion"]
        d, xf = lay.ctx("fluid")
        for side in _sides(r, 0.45, where.get("Pleural Effusion")):
            level = (0.18 + 0.45 * e) * r.uniform(0.85, 1.15)
            d.polygon(xf.xy(geo.effusion(side, level)), 250)
            if geo.ap:
                # Supine, the fluid layers behind the lung: a veil over the lower hemithorax.
                cu, cv, ru, rv = geo.zones[0 if side < 0 else 1]
                veil = _ellipse(cu, cv + 0.6 * rv, 1.2 * ru, 1.1 * rv)
                dh, xh = lay.ctx("hazy")
                dh.polygon(xh.xy(veil), round(90 * e))

    if "Consolidation" in strength:
        e, r = strength["Consolidation"], frng["Consolidation"]
        d, xf = lay.ctx("soft")
        # Dense, fairly homogeneous opacity of one lobe with a ragged edge, and air
        # bronchograms: dark branching lines inside.
        fill = round(160 + 90 * e)
        d.polygon(xf.xy(_ragged(geo.lobe(r, where.get("Consolidation")), r, 0.025)), fill)
        c = geo.lobe_centre
        for a in r.uniform(0, 2 * math.pi) + np.arange(3) * 2.1 + r.normal(0, 0.3, 3):
            mid_pt = c + 0.07 * np.array([math.cos(a), math.sin(a)])
            a2 = a + r.normal(0, 0.4)
            end = mid_pt + 0.07 * np.array([math.cos(a2), math.sin(a2)])
            d.line(xf.xy(np.stack([c, mid_pt, end])), fill - 70, xf.px(0.008))

    if "Pneumonia" in strength:
        e, r = strength["Pneumonia"], frng["Pneumonia"]
        d, xf = lay.ctx("hazy")
        place = where.get("Pneumonia")
        level = None if place is None else place.level
        for k in range(1 + int(r.integers(1, 3))):  # multifocal: two or three clusters
            c = geo.random_point(r, _side_of(place, k), level)
            for _ in range(int(r.integers(3, 6))):  # each a patchy group of blobs
                p = c + r.normal(0, 0.07, 2)
                rad = r.uniform(0.04, 0.09) * (0.7 + 0.6 * e)
                blob = _ellipse(p[0], p[1], rad, rad * r.uniform(0.7, 1.3))
                d.polygon(xf.xy(blob), round(r.uniform(170, 250) * (0.5 + 0.5 * e)))

    if "Lung Opacity" in strength:
        e, r = strength["Lung Opacity"], frng["Lung Opacity"]
        d, xf = lay.ctx("hazy")
        place = where.get("Lung Opacity")
        level = None if place is None else place.level
        for k in range(int(r.integers(1, 4))):
            p = geo.random_point(r, _side_of(place, k), level)
            rad = r.uniform(0.08, 0.17) * (0.7 + 0.5 * e)
            blob = _ellipse(p[0], p[1], rad * r.uniform(0.8, 1.4), rad, r.uniform(0, math.pi))
            d.polygon(xf.xy(blob), round(r.uniform(140, 200) * e))

    if "Edema" in strength:
        e, r = strength["Edema"], frng["Edema"]
        d, xf = lay.ctx("hazy")
        for hu, hv in geo.hila:  # bat-wing haze around the hila
            for scale, val in ((1.0, 120), (0.6, 190)):
                ru, rv = 0.32 * scale * (0.8 + 0.4 * e), 0.24 * scale * (0.8 + 0.4 * e)
                d.polygon(xf.xy(_ellipse(hu, hv, ru, rv)), round(val * e))
        # Septal (Kerley B) lines at the bases and fine reticular lines: interstitial fluid,
        # so they take away air like the vessels do.
        d, xf = lay.ctx("vessel")
        for side in (1,) if geo.lateral else (-1, 1):
            wall = geo.wall(side)
            lo, hi = wall[:, 1].min(), wall[:, 1].max()
            for _ in range(int(3 + 5 * e)):
                v = r.uniform(lo + 0.55 * (hi - lo), hi)
                u0 = wall[int(np.argmin(np.abs(wall[:, 1] - v))), 0]
                inward = -1.0 if geo.lateral or u0 > 0 else 1.0
                seg = np.array([(u0, v), (u0 + inward * r.uniform(0.05, 0.1), v)])
                d.line(xf.xy(seg), round(90 * e), xf.px(0.006))
        for _ in range(int(6 + 8 * e)):
            p = geo.random_point(r)
            a = r.uniform(0, math.pi)
            seg = np.stack([p, p + 0.08 * np.array([math.cos(a), math.sin(a)])])
            d.line(xf.xy(seg), round(55 * e), xf.px(0.005))

    if "Atelectasis" in strength:
        e, r = strength["Atelectasis"], frng["Atelectasis"]
        d, xf = lay.ctx("soft")
        n_bands = 1 + int(r.integers(1, 2 + round(e)))
        for i in geo.atel_sides:
            u0, u1, v0, v1 = geo.base_band(-1 if i == 0 else 1)
            for _ in range(n_bands):  # plate-like bands
                v = r.uniform(v0, v1)
                seg = np.array([(u0, v + r.normal(0, 0.03)),
                                (0.5 * (u0 + u1), v + r.normal(0, 0.02)),
                                (u1, v + r.normal(0, 0.03))])  # fmt: skip
                width = xf.px(r.uniform(0.02, 0.035) * (0.6 + e))
                d.line(xf.xy(seg), round(180 + 70 * e), width)
            # Subsegmental collapse at the very base.
            base = np.array([(u0, v1 + 0.02), (u1, v1 + 0.02), (u1, v1 + 0.3), (u0, v1 + 0.3)])
            d.polygon(xf.xy(_ragged(base, r, 0.02)), round(90 * e))

    if "Lung Lesion" in strength:
        e, r = strength["Lung Lesion"], frng["Lung Lesion"]
        d, xf = lay.ctx("soft")
        place = where.get("Lung Lesion")
        side = _side_of(place, 0)
        level = None if place is None else place.level
        p = geo.random_point(r, side, level)
        if geo.behind_heart(p):  # retrocardiac masses exist, but most are seen in clear lung
            p = geo.random_point(r, side, level)
        # A nodule growing into a mass with the strength (about 2 to 4 cm across on an adult
        # chest): lobulated, with a few fine spicules, dense enough to hide the lung behind.
        rad = (0.05 + 0.09 * e) * r.uniform(0.85, 1.15)
        lob = rad * (1 + 0.08 * np.sin(r.integers(2, 5) * _CIRCLE + r.uniform(0, 6.3)))
        d.polygon(xf.xy(np.column_stack([p[0] + lob * _COS, p[1] + lob * _SIN])), 250)
        for a in r.uniform(0, 2 * math.pi, int(r.integers(3, 7))):
            tip = p + (rad * r.uniform(1.3, 1.7)) * np.array([math.cos(a), math.sin(a)])
            d.line(xf.xy(np.stack([p, tip])), 200, xf.px(0.008))

    if "Pleural Other" in strength:
        e, r = strength["Pleural Other"], frng["Pleural Other"]
        d, xf = lay.ctx("soft")
        for side in _sides(r, 0.4, where.get("Pleural Other")):
            # A band of thickened pleura along part of the wall, inside the lung outline.
            wall = geo.wall(side)
            a = int(r.integers(1, max(2, len(wall) - 4)))
            seg = wall[a : a + 5]
            inner = _toward(seg, geo.zone_centre(side), 0.05 + 0.06 * e)
            band = np.vstack([seg + (seg - inner) * 0.5, _ragged(inner[::-1], r, 0.008)])
            d.polygon(xf.xy(band), 240)
            if r.random() < 0.4:  # calcified plaque
                db, xb = lay.ctx("bone")
                db.line(xb.xy(inner[1:3]), 160, xb.px(0.015))

    if "Pneumothorax" in strength:
        e, r = strength["Pneumothorax"], frng["Pneumothorax"]
        db, xb = lay.ctx("bone")
        for side in _sides(r, 0.1, where.get("Pneumothorax")):
            arc, centre = geo.ptx_arc(side, min(1.0, 0.3 + 0.7 * e))
            # The visceral pleura pulls away from the wall, most at the apex, none at the
            # ends; in the gap there is only air, no lung and no vessels. A large one is a
            # rim several centimetres wide, darker than any lung beside it.
            t = np.linspace(0, 1, len(arc))
            gap = (0.06 + 0.2 * e) * r.uniform(0.85, 1.15) * np.sin(math.pi * t) ** 0.6
            if geo.lateral:  # seen from the side the rim is narrower, over the apex
                gap *= 0.5
            inner = _toward(arc, centre, gap)
            lay.free_air.append(xb.xy(np.vstack([arc, inner[::-1]])))
            # The visceral pleural line: a thin white edge, the lung's border.
            db.line(xb.xy(inner[1:-1]), 190, xb.px(0.012))

    if "Fracture" in strength:  # the bones were drawn broken; add the healing callus
        e, r = strength["Fracture"], frng["Fracture"]
        db, xb = lay.ctx("bone")
        for centre, ang, size in geo.calluses:
            # Fusiform new bone bridging the break, brighter than the rib itself, with a
            # denser rim where it is most mineralised.
            lump = _ragged(_ellipse(centre[0], centre[1], size, 0.45 * size, ang), r, 0.003)
            db.polygon(xb.xy(lump), round(110 + 70 * e))
            db.polygon(xb.xy(lump), None, round(150 + 60 * e), xb.px(0.008))

    if "Support Devices" in strength:
        e, r = strength["Support Devices"], frng["Support Devices"]
        geo.devices(r, _pick_devices(r, 2 + round(2 * e * r.uniform(0.5, 1.0))), lay)


@lru_cache(maxsize=8)
def _fields(side: int) -> tuple[np.ndarray, np.ndarray]:
    """Texture and grain fields of ``side`` x ``side`` pixels, zero mean and unit spread.

    Lung parenchyma looks mottled at a few pixels' scale and films are grainy. Both fields
    come from a fixed seed and are cached per size bucket; each image crops them at random
    offsets, so the output still depends only on the arguments of ``render_cxr``.
    """
    g = np.random.default_rng(20240611)
    noise = g.standard_normal((side, side), dtype=np.float32)
    img = Image.fromarray((128 + 40 * noise).clip(0, 255).astype(np.uint8))
    fine = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), dtype=np.float32)
    coarse = np.asarray(img.filter(ImageFilter.GaussianBlur(3.6)), dtype=np.float32)
    band = fine - coarse
    band /= band.std() + 1e-6
    return band, g.standard_normal((side, side), dtype=np.float32)


def _compose(sc: _Scene, lay: _Layers, rng: np.random.Generator) -> np.ndarray:
    """Combine the layers into attenuation, then map it to grey levels with grain."""
    tissue, air, medi, bone = (lay.array(n) for n in ("tissue", "air", "medi", "bone"))
    # Every view draws these four; the check narrows the types.
    assert tissue is not None and air is not None and medi is not None and bone is not None
    # Aerated lung: air not hidden by the mediastinum, not replaced by fluid or opacity.
    lung = air * (1.0 - 0.85 * medi)
    soft, hazy, fluid = lay.array("soft"), lay.array("hazy"), lay.array("fluid")
    opacity = soft if hazy is None else hazy if soft is None else np.maximum(soft, hazy)
    if opacity is not None:
        lung *= 1.0 - 0.9 * opacity
    if fluid is not None:
        lung *= 1.0 - 0.95 * fluid
    # Bone contrast is lower behind the dense mediastinum (fewer photons get through).
    dens = _K_TISSUE * tissue + _K_MEDI * medi
    dens += _K_BONE * bone * (1.0 - 0.5 * medi)
    dens -= _K_AIR * lung
    if opacity is not None:  # airspace disease shows, more faintly, even behind the heart
        dens += _K_OPAQUE * opacity * air
    device = lay.array("device")
    if device is not None:
        dens += _K_DEVICE * device
    free = lay.free_air_mask()
    if free is not None:
        free *= 1.0 - 0.85 * medi
        dens -= _K_FREE_AIR * free
        lung = lung * (1.0 - free)  # no parenchymal texture in the pleural space
    # Fields at least twice the image size, in 256-pixel steps so that sizes share them.
    side = 256 * -(-2 * max(sc.h, sc.w) // 256)
    tex, grain = _fields(side)
    oy, ox, gy, gx = (int(v) for v in rng.integers(0, (side - sc.h, side - sc.w) * 2))
    dens += tex[oy : oy + sc.h, ox : ox + sc.w] * (0.014 * lung + 0.006)
    # Exposure and contrast differ between films; a smooth gradient mimics the heel effect.
    lo = rng.uniform(-0.04, 0.06)
    hi = rng.uniform(0.86, 1.0)
    ramp = np.linspace(-0.5, 0.5, sc.h, dtype=np.float32)[:, None] * np.float32(rng.normal(0, 0.04))
    dens += ramp - np.float32(lo)
    dens *= np.float32(1.0 / (hi - lo))
    np.clip(dens, 0.0, 1.0, out=dens)
    dens **= np.float32(rng.uniform(0.8, 1.25))
    dens += grain[gy : gy + sc.h, gx : gx + sc.w] * np.float32(rng.uniform(0.008, 0.03))
    dens *= 255.0
    np.clip(dens, 0.0, 255.0, out=dens)
    return dens.astype(np.uint8)
