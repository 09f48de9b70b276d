"""Match pictures: two photos side by side with the inlier correspondences drawn (OpenCV).

Wide photos (flank views from boats) are put one above the other instead, which
is the layout that shows them larger; a header strip names the two images and
the verdict. Inliers are coloured lines with dots at both ends (the colour runs
along the first image, so crossing lines stand out); tentative matches that
failed verification are drawn as faint grey dots, or not at all.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..io.atomic import atomic_path

MAX_WIDTH = 1600  # pixels of the whole picture
MAX_HEIGHT = 900
GAP = 8
HEADER = 26  # pixels per header line
FONT = cv2.FONT_HERSHEY_SIMPLEX


def _layout(size_a: tuple[int, int], size_b: tuple[int, int]) -> tuple[str, float, float]:
    """``("h" or "v", scale_a, scale_b)``: the arrangement that shows the photos largest."""
    (wa, ha), (wb, hb) = size_a, size_b
    options = []
    # side by side: equal heights h; total width sa*wa + sb*wb + GAP
    for mode in ("h", "v"):
        if mode == "h":
            h = min(max(ha, hb), MAX_HEIGHT)
            width = h / ha * wa + h / hb * wb + GAP
            k = min(1.0, (MAX_WIDTH - GAP) / max(width - GAP, 1)) if width > MAX_WIDTH else 1.0
            sa, sb = h / ha * k, h / hb * k
            area = sa * sa * wa * ha + sb * sb * wb * hb
        else:
            w = min(max(wa, wb), MAX_WIDTH)
            height = w / wa * ha + w / wb * hb + GAP
            k = min(1.0, (MAX_HEIGHT - GAP) / max(height - GAP, 1)) if height > MAX_HEIGHT else 1.0
            sa, sb = w / wa * k, w / wb * k
            area = sa * sa * wa * ha + sb * sb * wb * hb
        options.append((area, mode, sa, sb))
    _, mode, sa, sb = max(options, key=lambda o: (o[0], o[1] == "h"))
    return mode, sa, sb


def _wrap(lines: list[str], width: int, scale: float = 0.55) -> list[str]:
    """Header lines wrapped to ``width`` pixels at their "   " (three-space) separators."""
    out = []
    for line in lines:
        current = ""
        for part in line.split("   "):
            trial = f"{current}   {part}" if current else part
            if current and cv2.getTextSize(trial, FONT, scale, 1)[0][0] + 12 > width:
                out.append(current)
                current = part
            else:
                current = trial
        out.append(current)
    return out


def _fit_text(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.55) -> None:
    max_w = img.shape[1] - org[0] - 4
    while len(text) > 8 and cv2.getTextSize(text, FONT, scale, 1)[0][0] > max_w:
        text = text[: len(text) - 4] + "..."
    cv2.putText(img, text, org, FONT, scale, (255, 255, 255), 1, cv2.LINE_AA)


def match_picture(
    img_a: np.ndarray,
    img_b: np.ndarray,
    pts_a: np.ndarray,
    pts_b: np.ndarray,
    inliers: np.ndarray,
    header: list[str] = (),
    outliers: str = "faint",
    return_points: bool = False,
):
    """RGB picture of the pair: ``pts_a[i] <-> pts_b[i]`` are the tentative matches (pixel
    coordinates of ``img_a`` and ``img_b``), ``inliers`` marks those that verified.

    With ``return_points``, also the matches' positions on the picture: ``(picture, qa, qb)``.
    """
    if outliers not in ("faint", "hide"):
        raise ValueError("outliers must be 'faint' or 'hide'")
    pts_a = np.asarray(pts_a, np.float64).reshape(-1, 2)
    pts_b = np.asarray(pts_b, np.float64).reshape(-1, 2)
    inliers = np.asarray(inliers, bool).reshape(-1)
    ha, wa = img_a.shape[:2]
    hb, wb = img_b.shape[:2]
    mode, sa, sb = _layout((wa, ha), (wb, hb))
    ra = cv2.resize(img_a, (max(1, round(wa * sa)), max(1, round(ha * sa))), interpolation=cv2.INTER_AREA)
    rb = cv2.resize(img_b, (max(1, round(wb * sb)), max(1, round(hb * sb))), interpolation=cv2.INTER_AREA)
    if mode == "h":
        width, height = ra.shape[1] + GAP + rb.shape[1], max(ra.shape[0], rb.shape[0])
    else:
        width, height = max(ra.shape[1], rb.shape[1]), ra.shape[0] + GAP + rb.shape[0]
    width = max(width, 360)
    header = _wrap(list(header), width)
    top = HEADER * len(header) + (6 if header else 0)
    if mode == "h":
        off_a, off_b = (0, top), (ra.shape[1] + GAP, top)
    else:
        off_a, off_b = (0, top), (0, top + ra.shape[0] + GAP)
    canvas = np.full((top + height, width, 3), 24, np.uint8)
    canvas[off_a[1] : off_a[1] + ra.shape[0], off_a[0] : off_a[0] + ra.shape[1]] = ra
    canvas[off_b[1] : off_b[1] + rb.shape[0], off_b[0] : off_b[0] + rb.shape[1]] = rb
    for i, line in enumerate(header):
        _fit_text(canvas, line, (6, HEADER * (i + 1) - 6))

    scale_a = np.array([ra.shape[1] / wa, ra.shape[0] / ha])
    scale_b = np.array([rb.shape[1] / wb, rb.shape[0] / hb])
    qa = (pts_a + 0.5) * scale_a - 0.5 + off_a
    qb = (pts_b + 0.5) * scale_b - 0.5 + off_b
    if outliers == "faint" and (~inliers).any():
        layer = canvas.copy()
        for p in np.vstack([qa[~inliers], qb[~inliers]]):
            cv2.circle(layer, (int(round(p[0])), int(round(p[1]))), 2, (200, 200, 200), -1, cv2.LINE_AA)
        canvas = cv2.addWeighted(layer, 0.45, canvas, 0.55, 0)
    idx = np.flatnonzero(inliers)
    if len(idx):
        along = qa[idx, 1] if mode == "h" and ha > wa else qa[idx, 0]
        span = max(float(np.ptp(along)), 1.0)
        hues = ((along - along.min()) / span * 150).astype(np.uint8)  # 0..150 of OpenCV's 180-degree hue
        colours = cv2.cvtColor(np.stack([hues, np.full_like(hues, 230), np.full_like(hues, 255)], 1)[None],
                               cv2.COLOR_HSV2RGB)[0]
        thick = 1 if len(idx) > 150 else 2
        for k, i in enumerate(idx):
            c = tuple(int(v) for v in colours[k])
            a = (int(round(qa[i, 0])), int(round(qa[i, 1])))
            b = (int(round(qb[i, 0])), int(round(qb[i, 1])))
            cv2.line(canvas, a, b, c, thick, cv2.LINE_AA)
            cv2.circle(canvas, a, 3, c, -1, cv2.LINE_AA)
            cv2.circle(canvas, b, 3, c, -1, cv2.LINE_AA)
    return (canvas, qa, qb) if return_points else canvas


def save(picture: np.ndarray, path: Path, quality: int = 88) -> Path:
    """Write an RGB picture (JPEG or PNG by the suffix), atomically."""
    path = Path(path)
    suffix = path.suffix.lower() or ".jpg"
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if suffix in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(suffix, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise ValueError(f"{path}: cannot encode a picture with suffix {suffix}")
    with atomic_path(path, suffix=suffix) as tmp:
        tmp.write_bytes(buf.tobytes())
    return path
