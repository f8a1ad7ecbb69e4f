"""Oriented-object prediction on images of any size: tiling, merging, result objects, drawing and output files.

::

    predictor = Predictor.from_checkpoint("runs/dota/checkpoints/best.ckpt")   # or Predictor(model, classes)
    for det in predictor.predict(["scene.png", "big_tile.tif"]):
        print(det.image_id, len(det), det.names[:3], det.rboxes[:3])
    write_outputs(results, "preds/")     # Task1_<class>.txt, detections.json, vis/<image>.png

Images larger than ``tile_size`` are cut into overlapping windows (``overlap`` pixels; the last window in each
direction is shifted to the border), the windows are run in batches, their boxes are shifted back and merged
with per-class rotated NMS (IoU ``merge_iou``, 0.1 as DOTA_devkit / MMRotate). Smaller images run whole.
Boxes are rboxes ``(cx, cy, w, h, theta)`` in image pixels and radians (le90); corners are ``(N, 4, 2)``
clockwise on screen (DOTA order).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from lsknet.atomic import atomic_target
from lsknet.data.imageio import IMAGE_EXTENSIONS, colour_channels, list_images, load_rgb, to_rgb, to_uint8
from lsknet.errors import CheckpointError, DatasetFormatError, DataSkipWarning
from lsknet.ops import nms_rotated, rbox_to_corners

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = IMAGE_EXTENSIONS  # the one list (lsknet.data.imageio); old name kept


@dataclass
class Detections:
    """Oriented detections of one image.

    ``rboxes`` (N, 5) float ``(cx, cy, w, h, theta)`` pixels/radians le90; ``scores`` (N,); ``labels`` (N,) int64
    indices into ``classes``; ``image_size`` (H, W); ``path`` of the source image when read from a file.
    """

    image_id: str
    rboxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def corners(self) -> torch.Tensor:
        """(N, 4, 2) corner polygons in pixels, DOTA order."""
        return rbox_to_corners(self.rboxes.double()).float() if len(self) else torch.zeros(0, 4, 2)

    @property
    def names(self) -> list[str]:
        """Class name of each detection."""
        return [self.classes[i] for i in self.labels.tolist()]

    def select(self, keep: torch.Tensor) -> Detections:
        """A new result with the detections at ``keep`` (indices or boolean mask)."""
        return Detections(
            self.image_id,
            self.rboxes[keep],
            self.scores[keep],
            self.labels[keep],
            self.classes,
            self.image_size,
            self.path,
            dict(self.extra),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: image info and one entry per detection (class, score, rbox, corners)."""
        corners = self.corners.tolist()
        return {
            "image_id": self.image_id,
            "path": str(self.path) if self.path else None,
            "height": self.image_size[0],
            "width": self.image_size[1],
            "detections": [
                {
                    "class": self.classes[int(label)],
                    "class_id": int(label),
                    "score": round(float(score), 6),
                    "rbox": [round(float(v), 3) for v in box],
                    "corners": [[round(x, 2), round(y, 2)] for x, y in poly],
                }
                for label, score, box, poly in zip(self.labels, self.scores, self.rboxes.tolist(), corners)
            ],
        }


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: stride ``tile - overlap``, the last window shifted to end at the border."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, tile - overlap))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def load_image(source: str | Path | Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Any image -> float32 (3, H, W) RGB in 0..255, by the one decoder and scaling rule of
    :mod:`lsknet.data.imageio` (the training datasets read files the same way).

    Files: :func:`~lsknet.data.imageio.load_rgb` (16-bit / float images stretched to 8 bits per image, grey repeated,
    alpha dropped). PIL images and integer arrays (``(H, W)`` or ``(H, W, C)``, C in 1, 2, 3, 4) follow the same
    rules; float arrays are taken as 0..255 values. Tensors are ``(3, H, W)`` or ``(H, W)`` 0..255. Raises
    :class:`DatasetFormatError` for undecodable files or unusable shapes.
    """
    if isinstance(source, (str, Path)):
        return torch.from_numpy(load_rgb(source)).permute(2, 0, 1).to(torch.float32).contiguous()
    if isinstance(source, Image.Image):
        if source.mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L", "LA", "RGB", "RGBA"):
            source = source.convert("RGB")
        return load_image(np.asarray(source))
    if isinstance(source, torch.Tensor):
        t = source.detach().to(torch.float32).cpu()
        if t.ndim == 2:
            t = t.expand(3, -1, -1)
        if t.ndim != 3 or t.shape[0] != 3:
            raise DatasetFormatError(f"expected an image tensor (3, H, W), got {tuple(source.shape)}")
        return t.contiguous()
    arr = np.asarray(source)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise DatasetFormatError(f"expected an image array (H, W[, 1|2|3|4]), got shape {arr.shape}")
    arr = colour_channels(arr)
    if arr.dtype.kind != "f":
        arr = to_uint8(arr)
    arr = to_rgb(arr)
    return torch.from_numpy(np.ascontiguousarray(arr).astype(np.float32)).permute(2, 0, 1).contiguous()


def list_image_sources(sources: Iterable[Any]) -> list[Any]:
    """Paths expanded by :func:`lsknet.data.imageio.list_images` (folders recursively, missing paths an error);
    other objects (PIL images, arrays, tensors) pass through, in order."""
    items: list[Any] = []
    for source in sources:
        items.extend(list_images(source) if isinstance(source, (str, Path)) else [source])
    return items


def _mmrotate_detector_name(obj: Any, path: Path, variant: str | None = None) -> str:
    """``lsknet_{t,s}_<family>`` of an MMRotate detector checkpoint: the variant (unless given) from the width of
    its first conv (32 / 64 channels), the family (``orcnn``, ``roitrans``, ``s2anet``, ``r3det``) from its module
    names; raises :class:`CheckpointError` when no family matches."""
    from lsknet.models.backbone import LSKNET_ARCHS
    from lsknet.models.detector_base import read_detector_state_dict
    from lsknet.models.detectors import detector_kind_of_state_dict

    state, _, _ = read_detector_state_dict(obj)
    kind = detector_kind_of_state_dict(state)
    if kind is None:
        raise CheckpointError(
            f"{path}: not a detector checkpoint of a known layout (Oriented R-CNN, RoI Transformer, S2A-Net, R3Det: "
            "no rpn_head/roi_head/fam_head/odm_head/refine_head keys)"
        )
    if variant is None:
        weight = state.get("backbone.patch_embed1.proj.weight")
        width = int(weight.shape[0]) if weight is not None else None
        variant = next((n for n, arch in LSKNET_ARCHS.items() if width == arch["embed_dims"][0]), "lsknet_t")
    return f"{variant}_{kind}"


class Predictor:
    """Runs a detector (any :class:`~lsknet.models.detector_base.Detector`: Oriented R-CNN, RoI Transformer,
    S2A-Net, R3Det) on images of any size.

    Args:
        model: the detector (put in eval mode here).
        classes: class names indexed by the model's labels.
        tile_size: windows for images larger than this (pixels; the training patch size, 1024 for DOTA).
        overlap: overlap of neighbouring windows in pixels (DOTA split default 200).
        batch_size: windows per forward pass (windows of several images share batches).
        score_thr: keep detections above this score (the model's own test threshold applies first).
        merge_iou: per-class rotated-NMS IoU when merging windows (0.1).
        max_per_img: at most this many detections per image after merging windows; ``None`` (default) keeps all,
            as the official DOTA merge (per-class rotated NMS, no maximum). Each window keeps the model's own cap
            (``roi.test_cfg.max_per_img``, 2000 officially).
        device: where to run (default: the model's device).
        test_resize: set the detector's keep-ratio test resize of every window (see
            :class:`~lsknet.models.oriented_rcnn.OrientedRCNN`); ``None`` keeps the model's setting.
        optimize: run the copy made by :func:`lsknet.optimize_for_inference` (same detections up to float
            rounding, faster) when ``model`` is an lsknet detector; ``False`` runs ``model`` itself (eager).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        classes: Sequence[str],
        tile_size: int = 1024,
        overlap: int = 200,
        batch_size: int = 2,
        score_thr: float = 0.05,
        merge_iou: float = 0.1,
        max_per_img: int | None = None,
        device: str | torch.device | None = None,
        test_resize: int | Sequence[int] | None = None,
        optimize: bool = True,
    ) -> None:
        self.model = model.eval()
        if test_resize is not None:
            self.model.test_resize = test_resize
        self.classes = tuple(classes)
        num_classes = getattr(model, "num_classes", len(self.classes))
        if num_classes != len(self.classes):
            raise CheckpointError(f"the model predicts {num_classes} classes but {len(self.classes)} names were given")
        self.tile_size = int(tile_size)
        self.overlap = int(overlap)
        tile_origins(self.tile_size, self.tile_size, self.overlap)  # validates tile/overlap
        self.batch_size = max(1, int(batch_size))
        self.score_thr = float(score_thr)
        self.merge_iou = float(merge_iou)
        self.max_per_img = None if max_per_img is None else int(max_per_img)
        if device is not None:
            self.model.to(device)
        param = next(self.model.parameters(), None)  # none: a runtime such as onnxruntime (inputs stay on the CPU)
        self.device = param.device if param is not None else torch.device("cpu")
        self.optimize = bool(optimize)
        self._net = self.model
        if self.optimize:
            from lsknet.inference.optimize import optimize_for_inference
            from lsknet.models.detector_base import Detector

            if isinstance(self.model, Detector):  # other (stand-in) detectors run as given
                self._net = optimize_for_inference(self.model)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        classes: Sequence[str] | str | None = None,
        variant: str | None = None,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A predictor from an lsknet training checkpoint (``.ckpt``: config, classes and tile size stored), an
        ``lsknet export`` ONNX file (``.onnx``: run by onnxruntime, classes stored) or an MMRotate detector
        checkpoint (``classes``: default the ``meta.CLASSES`` stored in the file, else DOTA-v1.0; ``variant``:
        default read from the file's first conv, ``lsknet_t`` or ``lsknet_s``)."""
        from lsknet.data.dota import get_classes
        from lsknet.models.checkpoint import load_checkpoint_file
        from lsknet.models.detector_base import load_detector_checkpoint
        from lsknet.models.detectors import build_detector, detector_from_config

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        if path.suffix.lower() == ".onnx":  # an `lsknet export` file, run by onnxruntime
            from lsknet.inference.onnx_runtime import load_onnx

            runtime = load_onnx(path)
            if runtime.kind != "detector":
                raise CheckpointError(f"{path}: a {runtime.kind} export, not a detector")
            config = runtime.meta.get("config") or {}
            names = tuple(classes) if classes is not None else (runtime.classes or get_classes("dota1.0"))
            data_cfg = config.get("data") or {}
            kwargs.setdefault("tile_size", int(data_cfg.get("tile_size") or data_cfg.get("image_size") or 1024))
            return cls(runtime, names, **kwargs)
        obj = load_checkpoint_file(path)
        config = (obj.get("hyper_parameters") or {}).get("config") if isinstance(obj, dict) else None
        if isinstance(config, dict) and config.get("task") == "detect":
            names = tuple(classes) if classes is not None else tuple(config["data"]["classes"])
            model = detector_from_config(config.get("model") or {}, len(names), load_checkpoint=False)
            load_detector_checkpoint(model, obj)
            data_cfg = config.get("data") or {}
            model.test_resize = data_cfg.get("test_resize")
            kwargs.setdefault("tile_size", int(data_cfg.get("tile_size") or data_cfg.get("image_size") or 1024))
        else:
            meta = obj.get("meta") if isinstance(obj, dict) else None
            stored = meta.get("CLASSES") if isinstance(meta, dict) else None
            names = get_classes(classes if classes is not None else (stored or "dota1.0"))
            model = build_detector(_mmrotate_detector_name(obj, path, variant), num_classes=len(names))
            load_detector_checkpoint(model, obj)
        return cls(model, names, device=device, **kwargs)

    # ---- core --------------------------------------------------------------------------------------------

    @torch.no_grad()
    def _run(self, crops: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        return self._net([c.to(self.device) for c in crops])

    def _merge(self, parts: list[tuple[int, int, dict[str, torch.Tensor]]]) -> tuple[torch.Tensor, ...]:
        boxes, scores, labels = [], [], []
        for x0, y0, res in parts:
            b = res["rboxes"].detach().float().cpu().clone()
            b[:, 0] += x0
            b[:, 1] += y0
            boxes.append(b)
            scores.append(res["scores"].detach().float().cpu())
            labels.append(res["labels"].detach().long().cpu())
        rboxes, s, lab = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = s > self.score_thr
        rboxes, s, lab = rboxes[keep], s[keep], lab[keep]
        if len(parts) > 1 and s.numel():
            order = nms_rotated(rboxes, s, self.merge_iou, labels=lab, max_dets=self.max_per_img)
        else:
            order = s.argsort(descending=True)[: self.max_per_img]
        return rboxes[order], s[order], lab[order]

    def predict(self, sources: Iterable[Any], progress: bool = False, strict: bool = True) -> Iterator[Detections]:
        """Yield one :class:`Detections` per image, in input order.

        ``sources``: file paths, folders (searched recursively for images), PIL images, arrays or tensors.
        Unreadable files raise :class:`DatasetFormatError` (``strict``) or are skipped with a
        :class:`DataSkipWarning`.
        """
        items = list_image_sources(sources)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), desc="predict", unit="img")
        queue: list[tuple[int, int, int, torch.Tensor]] = []  # (image index, x0, y0, crop)
        pending: dict[int, dict[str, Any]] = {}
        next_out = 0
        done: dict[int, Detections | None] = {}

        def flush() -> None:
            if not queue:
                return
            outputs = self._run([q[3] for q in queue])
            for (idx, x0, y0, _), res in zip(queue, outputs):
                entry = pending[idx]
                entry["parts"].append((x0, y0, res))
                if len(entry["parts"]) == entry["num_tiles"]:
                    rboxes, scores, labels = self._merge(entry["parts"])
                    done[idx] = Detections(
                        entry["id"],
                        rboxes,
                        scores,
                        labels,
                        self.classes,
                        entry["size"],
                        entry["path"],
                        {"num_tiles": entry["num_tiles"]},
                    )
                    del pending[idx]
            queue.clear()

        def finished() -> Iterator[Detections]:
            """Yield the completed results in input order (skipped images advance the bar only)."""
            nonlocal next_out
            while next_out in done:
                result = done.pop(next_out)
                next_out += 1
                if bar is not None:
                    bar.update(1)
                if result is not None:
                    yield result

        for idx, item in enumerate(items):
            path = Path(item) if isinstance(item, (str, Path)) else None
            try:
                image = load_image(item)
            except DatasetFormatError as err:
                if strict:
                    raise
                warnings.warn(f"skipping {path or 'image'}: {err}", DataSkipWarning, stacklevel=2)
                done[idx] = None
                image = None
            if image is not None:
                h, w = int(image.shape[1]), int(image.shape[2])
                if h < 1 or w < 1:
                    raise DatasetFormatError(f"{path or 'image'}: empty image ({h}x{w})")
                ys = tile_origins(h, self.tile_size, self.overlap)
                xs = tile_origins(w, self.tile_size, self.overlap)
                pending[idx] = {
                    "id": path.stem if path else f"image_{idx:05d}",
                    "path": path,
                    "size": (h, w),
                    "parts": [],
                    "num_tiles": len(ys) * len(xs),
                }
                for y0 in ys:
                    for x0 in xs:
                        queue.append((idx, x0, y0, image[:, y0 : y0 + self.tile_size, x0 : x0 + self.tile_size]))
                        if len(queue) >= self.batch_size:
                            flush()
            yield from finished()
        flush()
        yield from finished()
        if bar is not None:
            bar.close()

    def predict_image(self, image: Any) -> Detections:
        """Detections of a single image (path, PIL image, array or tensor)."""
        return next(iter(self.predict([image])))


# ---- drawing and files -----------------------------------------------------------------------------------

_PALETTE = [
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255), (170, 110, 40),
    (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
]  # fmt: skip


def draw_detections(
    image: Any, det: Detections, score_thr: float = 0.3, line_width: int = 2, labels: bool = True
) -> Image.Image:
    """The image (path, PIL, array or tensor) as a PIL RGB image with the detections above ``score_thr`` drawn as
    rotated boxes, coloured per class and labelled ``class score``."""
    arr = load_image(image).clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    canvas = Image.fromarray(arr, "RGB")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    keep = det.scores >= score_thr
    shown = det.select(keep)
    for poly, label, score in zip(shown.corners.tolist(), shown.labels.tolist(), shown.scores.tolist()):
        colour = _PALETTE[label % len(_PALETTE)]
        points = [tuple(p) for p in poly]
        draw.line(points + [points[0]], fill=colour, width=line_width)
        if labels:
            text = f"{det.classes[label]} {score:.2f}"
            x = min(p[0] for p in points)
            y = min(p[1] for p in points)
            box = draw.textbbox((x, y - 11), text, font=font)
            draw.rectangle(box, fill=colour)
            draw.text((x, y - 11), text, fill=(0, 0, 0), font=font)
    return canvas


def _atomic_save_png(img: Image.Image, path: Path) -> None:
    with atomic_target(path) as tmp:
        img.save(tmp, format="PNG")


def detections_to_task1(results: Sequence[Detections], classes: Sequence[str] | None = None) -> dict[str, Any]:
    """``{class: Task1Detections}`` of predictor results (:func:`lsknet.data.task1.results_to_task1`); ``classes``
    defaults to the results' own."""
    from lsknet.data.task1 import results_to_task1

    per_image = {det.image_id: {"rboxes": det.rboxes, "scores": det.scores, "labels": det.labels} for det in results}
    return results_to_task1(per_image, tuple(classes) if classes is not None else results[0].classes)


def write_outputs(
    results: Sequence[Detections],
    out_dir: str | Path,
    task1: bool = True,
    json_file: bool = True,
    png: bool = True,
    draw_score_thr: float = 0.3,
) -> dict[str, Any]:
    """Write DOTA Task1 files (``Task1_<class>.txt``: ``image score x1 y1 ... x4 y4``), ``detections.json`` and
    drawn ``vis/<image_id>.png`` for ``results``; returns the paths written."""
    from lsknet.data.dota import atomic_write_text
    from lsknet.data.task1 import write_task1_dir

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {}
    if results and task1:
        written["task1_files"] = [str(p) for p in write_task1_dir(out_dir / "task1", detections_to_task1(results))]
    if json_file:
        path = out_dir / "detections.json"
        atomic_write_text(path, json.dumps([det.to_dict() for det in results], indent=1) + "\n")
        written["json"] = str(path)
    if png:
        vis = out_dir / "vis"
        vis.mkdir(exist_ok=True)
        pngs = []
        for det in results:
            if det.path is None:
                continue
            path = vis / f"{det.image_id}.png"
            _atomic_save_png(draw_detections(det.path, det, score_thr=draw_score_thr), path)
            pngs.append(str(path))
        written["png_files"] = pngs
    return written
