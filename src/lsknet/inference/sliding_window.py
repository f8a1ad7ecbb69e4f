"""Sliding-window segmentation of images of any size with bounded memory.

Windows of ``window`` pixels are laid out with ``stride = window - overlap`` (the last row/column aligned to the
border, :func:`lsknet.data.segmentation.tile_windows`). Each window's softmax probabilities (averaged over the
test-time augmentations: ``flip`` = identity + horizontal + vertical flip, ``d4`` = the 8 rotations/reflections)
are multiplied by a blending weight (``gaussian``: separable Gaussian, sigma = window / 4, highest in the window
centre; ``uniform``: 1) and accumulated; the class of a pixel is the argmax of its accumulated probabilities.

Memory: the image is processed one row of windows at a time. Only the rows still covered by an unprocessed window
are held as per-class float maps (``K x window x W`` floats); finished rows are handed to a sink as uint8 labels and
dropped. With a GeoTIFF source (windowed reads) and a GeoTIFF sink nothing of size ``H x W x K`` or ``H x W x C``
is ever allocated.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from lsknet.data.segmentation import IMAGENET_MEAN, IMAGENET_STD, colorize, read_image, tile_windows
from lsknet.errors import ConfigError, DatasetFormatError

_log = logging.getLogger(__name__)

TTA_MODES = ("none", "flip", "d4")


class RasterSource(Protocol):
    """Anything with ``shape`` ``(H, W)`` and ``read(y, x, h, w) -> (h, w, C)``."""

    shape: tuple[int, int]

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray: ...


class ArraySource:
    """An in-memory ``(H, W, C)`` (or ``(H, W)``) image as a :class:`RasterSource`."""

    def __init__(self, image: np.ndarray) -> None:
        self.image = image if image.ndim == 3 else image[..., None]
        self.shape = self.image.shape[:2]

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.image[y : y + h, x : x + w]


def blend_weights(h: int, w: int, mode: str = "gaussian") -> Tensor:
    """``(h, w)`` float32 blending weights: separable Gaussian (sigma = size / 4, max 1) or all ones."""
    if mode == "uniform":
        return torch.ones(h, w)
    if mode != "gaussian":
        raise ConfigError(f"unknown blending {mode!r}; expected gaussian or uniform")

    def g(n: int) -> Tensor:
        c = (n - 1) / 2.0
        t = (torch.arange(n, dtype=torch.float32) - c) / max(n / 4.0, 1e-6)
        return torch.exp(-0.5 * t * t)

    return (g(h)[:, None] * g(w)[None, :]).clamp_min(1e-3)


def _tta_transforms(mode: str) -> list[tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]]:
    """(forward, inverse) pairs acting on the last two dims."""
    ident = (lambda t: t, lambda t: t)
    if mode in (None, "none"):
        return [ident]
    hflip = (lambda t: t.flip(-1), lambda t: t.flip(-1))
    vflip = (lambda t: t.flip(-2), lambda t: t.flip(-2))
    if mode == "flip":
        return [ident, hflip, vflip]
    if mode == "d4":
        out = []
        for k in range(4):
            out.append((lambda t, k=k: t.rot90(k, (-2, -1)), lambda t, k=k: t.rot90(-k, (-2, -1))))
            out.append((lambda t, k=k: t.rot90(k, (-2, -1)).flip(-1), lambda t, k=k: t.flip(-1).rot90(-k, (-2, -1))))
        return out
    raise ConfigError(f"unknown test-time augmentation {mode!r}; expected one of {', '.join(TTA_MODES)}")


class SlidingWindowSegmenter:
    """Run a segmentation model (images ``(B, C, h, w)`` -> logits ``(B, K, h, w)``) over large images.

    ``window`` and ``overlap`` are in pixels (``overlap`` < ``window``; a float in (0, 1) is a fraction of the window).
    ``input_scale``: pixel values are divided by it before mean/std normalisation (255 for 8-bit imagery).
    """

    def __init__(
        self,
        model: nn.Module,
        window: int = 512,
        overlap: float = 0.25,
        batch_size: int = 4,
        tta: str | None = "none",
        blend: str = "gaussian",
        device: str | torch.device | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        input_scale: float = 255.0,
        progress: bool = False,
    ) -> None:
        self.model = model.eval()
        self.window = int(window)
        ov = overlap * window if 0 < overlap < 1 else overlap
        self.stride = int(window - round(ov))
        if self.window <= 0 or not 0 < self.stride <= self.window:
            raise ConfigError(f"need 0 <= overlap < window, got window {window}, overlap {overlap}")
        self.batch_size = max(1, int(batch_size))
        self.transforms = _tta_transforms(tta or "none")
        self.blend = blend
        blend_weights(2, 2, blend)  # validate early
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.input_scale = float(input_scale)
        self.progress = progress

    # ----------------------------------------------------------------------------------------------- model calls
    def _normalize(self, tiles: list[np.ndarray]) -> Tensor:
        x = torch.from_numpy(np.stack(tiles).astype(np.float32)).permute(0, 3, 1, 2) / self.input_scale
        c = x.shape[1]
        mean = self.mean.repeat(math.ceil(c / len(self.mean)))[:c].view(1, c, 1, 1)
        std = self.std.repeat(math.ceil(c / len(self.std)))[:c].view(1, c, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.inference_mode()
    def probabilities(self, tiles: list[np.ndarray]) -> Tensor:
        """Softmax probabilities ``(B, K, h, w)`` (CPU float32) of equally sized ``(h, w, C)`` tiles, TTA-averaged."""
        x = self._normalize(tiles)
        acc = None
        for fwd, inv in self.transforms:
            p = inv(self.model(fwd(x)).float().softmax(1))
            acc = p if acc is None else acc + p
        return (acc / len(self.transforms)).cpu()

    # ----------------------------------------------------------------------------------------------- strips
    def run(
        self,
        source: RasterSource,
        sink: Callable[[int, np.ndarray, np.ndarray], None],
        nodata: Callable[[int, int, int, int], np.ndarray | None] | None = None,
    ) -> None:
        """Segment ``source``; ``sink(y0, labels, confidence)`` receives finished rows in order (``labels`` uint8
        ``(n, W)``, ``confidence`` = blended max probability, float16 ``(n, W)``). ``nodata(y, x, h, w)`` may return a
        bool mask of pixels to label 255; windows whose pixels are all nodata are not run (``self.skipped_windows``
        counts them)."""
        height, width = source.shape
        windows = tile_windows(height, width, self.window, self.stride)
        row_starts = sorted({y for y, _, _, _ in windows})
        bar = _progress(len(windows), self.progress)
        self.skipped_windows = 0
        # Accumulators hold the rows [base, base + cap): a row of windows starts at `base` (the first unfinished
        # row) and is at most `cap` rows high, so they never grow; finished rows are flushed and the remaining
        # (overlap) rows shifted up.
        cap = min(self.window, height)
        acc: Tensor | None = None  # (K, cap, W) weighted probability sums
        wsum = torch.zeros(cap, width)  # (cap, W) weight sums
        base = 0
        for r, y0 in enumerate(row_starts):
            row = [win for win in windows if win[0] == y0]
            weights = blend_weights(row[0][2], row[0][3], self.blend)
            if nodata is not None:  # windows without a single valid pixel are not run (counted)
                masks = [nodata(y, x, hh, ww) for y, x, hh, ww in row]
                kept = [win for win, m in zip(row, masks) if m is None or not bool(m.all())]
                self.skipped_windows += len(row) - len(kept)
                bar.update(len(row) - len(kept))
                row = kept
            for i in range(0, len(row), self.batch_size):
                batch = row[i : i + self.batch_size]
                probs = self.probabilities([source.read(y, x, hh, ww) for y, x, hh, ww in batch])
                if acc is None:
                    acc = torch.zeros(probs.shape[1], cap, width)
                for (y, x, hh, ww), p in zip(batch, probs):
                    acc[:, y - base : y - base + hh, x : x + ww] += p * weights
                    wsum[y - base : y - base + hh, x : x + ww] += weights
                bar.update(len(batch))
            done = row_starts[r + 1] if r + 1 < len(row_starts) else height
            n = done - base
            if acc is None:  # only skipped windows so far: these rows are all invalid
                labels = np.full((n, width), 255, np.uint8)
                conf = np.zeros((n, width), np.float16)
                sink(base, labels, conf)
                base = done
                continue
            conf, labels = acc[:, :n].max(0)
            labels = labels.to(torch.uint8).numpy()
            conf = (conf / wsum[:n].clamp_min(1e-12)).to(torch.float16).numpy()
            if nodata is not None:
                mask = nodata(base, 0, n, width)
                if mask is not None:
                    labels[mask] = 255
            sink(base, labels, conf)
            keep = cap - n
            if keep > 0:
                acc[:, :keep] = acc[:, n:].clone()
                wsum[:keep] = wsum[n:].clone()
            acc[:, max(keep, 0) :] = 0
            wsum[max(keep, 0) :] = 0
            base = done
        bar.close()

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """In-memory image ``(H, W, C)`` -> (labels uint8 ``(H, W)``, confidence float16 ``(H, W)``)."""
        labels = np.zeros(image.shape[:2], dtype=np.uint8)
        conf = np.zeros(image.shape[:2], dtype=np.float16)

        def sink(y: int, lab: np.ndarray, c: np.ndarray) -> None:
            labels[y : y + len(lab)] = lab
            conf[y : y + len(lab)] = c

        self.run(ArraySource(image), sink)
        return labels, conf


def segment_file(
    segmenter: SlidingWindowSegmenter,
    path: str | Path,
    out_dir: str | Path,
    palette: Sequence[Sequence[int]],
    outputs: Sequence[str] = ("index", "color", "overlay", "geotiff"),
    overlay_alpha: float = 0.5,
    gdal_cache_mb: int = 64,
    classes: Sequence[str] | None = None,
    bands: Sequence[int] | None = None,
    scale: tuple[float, float] | None = None,
    min_area: float = 0.0,
    simplify: float = 0.0,
    strip_rows: int = 4096,
) -> dict[str, Any]:
    """Segment one image file and write the requested outputs under ``out_dir`` (named after the file stem):
    ``index/<stem>.png`` (class indices, what ``lsknet seg score --pred`` reads), ``color/<stem>.png``,
    ``overlay/<stem>.png``, for a raster input ``geotiff/<stem>.tif`` (class-index GeoTIFF with the input's
    CRS/transform, the palette as colour table, nodata 255), and ``vectors/<stem>.geojson|gpkg|shp`` (outputs
    ``geojson``/``gpkg``/``shp``: class regions as polygons, :func:`lsknet.inference.vectors.label_polygons`; layer
    ``segments``; GeoJSON in WGS84, the others in the raster CRS; plain images: pixel coordinates and a warning).

    A raster is read window by window (``bands``/``scale``: the model-input rule of
    :class:`~lsknet.inference.geotiff.GeoTiffSource`, applied to non-8-bit data or when ``scale`` is given), windows
    without a valid pixel are skipped and counted (``skipped_windows``), the GeoTIFF is written strip by strip and
    polygons are traced from it in strips of ``strip_rows`` rows (a region crossing a strip border is cut there).
    The PNG outputs need the full ``H x W`` label map (1 byte per pixel; colour and overlay 3 bytes per pixel).
    """
    from PIL import Image

    from lsknet.inference.geotiff import GeoTiffLabelWriter, GeoTiffSource, is_raster_file
    from lsknet.inference.vectors import VECTOR_FORMATS, label_polygons, write_vectors

    path, out_dir = Path(path), Path(out_dir)
    if not path.is_file():
        raise DatasetFormatError(f"image not found: {path}")
    vector_formats = [o for o in outputs if o in VECTOR_FORMATS]
    for sub in (o for o in outputs if o in ("index", "color", "overlay")):
        (out_dir / sub).mkdir(parents=True, exist_ok=True)
    stem = path.stem
    written: dict[str, Any] = {}
    want_png = any(o in outputs for o in ("index", "color", "overlay"))
    names = list(classes) if classes is not None else [str(i) for i in range(len(palette))]
    if is_raster_file(path):
        import rasterio

        # GDAL's block cache would otherwise keep up to 5 % of the RAM of read / written blocks
        with rasterio.Env(GDAL_CACHEMAX=gdal_cache_mb), GeoTiffSource(path, bands=bands, scale=scale) as src:
            stretched = src.dtype != np.uint8 or scale is not None
            reader: RasterSource = _StretchedSource(src) if stretched else src
            labels = np.zeros(src.shape, dtype=np.uint8) if want_png else None
            georef = src.georeferenced
            label_path = out_dir / "geotiff" / f"{stem}.tif"
            if not georef:
                label_path = out_dir / "geotiff" / f".{stem}.nogeo.tif"  # strips for the polygons only
            writer = (
                GeoTiffLabelWriter(label_path, src.profile, palette)
                if ("geotiff" in outputs and georef) or vector_formats
                else None
            )

            def sink(y: int, lab: np.ndarray, _c: np.ndarray) -> None:
                if writer is not None:
                    writer.write_rows(y, lab)
                if labels is not None:
                    labels[y : y + len(lab)] = lab

            segmenter.run(reader, sink, nodata=src.nodata_mask)
            written["skipped_windows"] = segmenter.skipped_windows
            if writer is not None:
                writer.close()
                if "geotiff" in outputs and georef:
                    written["geotiff"] = str(label_path)
            image = reader.read(0, 0, *src.shape) if "overlay" in outputs else None
            if vector_formats:
                if not georef:
                    warnings.warn(f"{path}: no georeference; polygons are in pixel coordinates", stacklevel=2)
                geoms, columns = [], {"class": [], "class_id": [], "area": []}
                with rasterio.open(label_path) as lab_src:
                    for y in range(0, lab_src.height, strip_rows):
                        h = min(strip_rows, lab_src.height - y)
                        window = rasterio.windows.Window(0, y, lab_src.width, h)
                        transform = lab_src.window_transform(window) if georef else (1, 0, 0, 0, 1, y)
                        g, c = label_polygons(lab_src.read(1, window=window), transform, names, min_area, simplify)
                        geoms += g
                        for key in columns:
                            columns[key] += c[key]
                if not georef:
                    label_path.unlink()
                written.update(
                    write_vectors(out_dir / "vectors" / stem, vector_formats, geoms, columns,
                                  src.crs if georef else None, layer="segments")
                )  # fmt: skip
    else:
        image = read_image(path)
        labels, _ = segmenter.predict(image)
        if vector_formats:
            warnings.warn(f"{path}: no georeference; polygons are in pixel coordinates", stacklevel=2)
            geoms, columns = label_polygons(labels, (1, 0, 0, 0, 1, 0), names, min_area, simplify)
            written.update(write_vectors(out_dir / "vectors" / stem, vector_formats, geoms, columns, None, "segments"))
    if labels is not None:
        if "index" in outputs:
            Image.fromarray(labels).save(out_dir / "index" / f"{stem}.png")
            written["index"] = str(out_dir / "index" / f"{stem}.png")
        color = colorize(labels, palette)
        if "color" in outputs:
            Image.fromarray(color).save(out_dir / "color" / f"{stem}.png")
            written["color"] = str(out_dir / "color" / f"{stem}.png")
        if "overlay" in outputs and image is not None:
            rgb = _to_rgb8(image)
            mix = (rgb.astype(np.float32) * (1 - overlay_alpha) + color.astype(np.float32) * overlay_alpha).astype(
                np.uint8
            )
            mix[labels == 255] = rgb[labels == 255]
            Image.fromarray(mix).save(out_dir / "overlay" / f"{stem}.png")
            written["overlay"] = str(out_dir / "overlay" / f"{stem}.png")
    return written


class _StretchedSource:
    """A raster's windows through the model-input rule (``read_uint8`` keeping the band count)."""

    def __init__(self, src: Any) -> None:
        self.src = src
        self.shape = src.shape

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        return self.src.read_uint8(y, x, h, w, rgb=False)


def _to_rgb8(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        hi = float(np.percentile(image, 99)) or 1.0
        image = np.clip(image.astype(np.float32) / hi * 255, 0, 255).astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, -1)
    return image[..., :3]


class _NoBar:
    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return _NoBar()
    return tqdm(total=total, unit="win", desc="sliding window", leave=False)
