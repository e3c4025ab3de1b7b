"""Turn a matrix's dataset section into concrete files (generating synthetic ones once)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from harness.errors import UserError


def resolve_dataset(spec, cache_dir: Path, where: str = "dataset") -> dict:
    """Paths of images and annotations; a synthetic set is generated into the cache, keyed by its parameters."""
    if spec.synth is not None:
        images_dir, ann = synth_dataset(spec.synth.images, spec.synth.seed, spec.synth.size, cache_dir,
                                        rotated=getattr(spec.synth, "rotated", False))
        return {"images": str(images_dir), "annotations": str(ann), "limit": spec.limit,
                "synth": spec.synth.model_dump()}
    images, ann = Path(spec.images), Path(spec.annotations)
    if not ann.is_file():
        raise UserError(f"{where}.annotations: '{ann}' does not exist; give the path of a COCO "
                        "instances json (relative paths are relative to the matrix file)")
    if not images.is_dir():
        raise UserError(f"{where}.images: '{images}' is not a directory")
    return {"images": str(images), "annotations": str(ann), "limit": spec.limit}


def synth_dataset(images: int, seed: int, size: int, cache_dir: Path,
                  rotated: bool = False) -> tuple[Path, Path]:
    """Generate (or reuse) a synthetic COCO dataset (``rotated``: the rotated generator's, #19);
    writes to a temp dir then renames (atomic)."""
    if rotated:
        from harness.data.synth_rotated import generate
    else:
        from harness.data.synth import generate

    gen = _generator_hash() + (_generator_hash("synth_rotated.py") if rotated else "")
    key = hashlib.sha256(json.dumps([images, seed, size, gen]).encode()).hexdigest()[:16]
    kind = "synth-rotated" if rotated else "synth"
    out = Path(cache_dir) / "datasets" / f"{kind}-n{images}-s{seed}-{size}px-{key}"
    if not (out / "annotations.json").is_file():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        generate(tmp, images=images, seed=seed, size=size)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out / "images", out / "annotations.json"


def _generator_hash(name: str = "synth.py") -> str:
    """A change to the generator's code must not reuse datasets made by the old one."""
    return hashlib.sha256(Path(__file__).with_name(name).read_bytes()).hexdigest()


BOX_TYPES = ("horizontal", "rotated")


def box_type(annotations_path, where: str = "dataset.annotations") -> str:
    """``"rotated"`` iff the COCO file's ``info.box_type`` is ``"rotated"``, else ``"horizontal"``.

    A file without ``info`` or without ``info.box_type`` is an ordinary (horizontal)
    COCO file.  A ``box_type`` that is neither value is a user error, as is a file
    that does not exist or is not a JSON object.
    """
    path = Path(annotations_path)
    if not path.is_file():
        raise UserError(f"{where}: '{path}' does not exist; give the path of a COCO instances json")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise UserError(f"{where}: '{path}' is not valid JSON ({exc}); give a COCO instances "
                        "json") from exc
    info = doc.get("info") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or not isinstance(info, (dict, type(None))):
        raise UserError(f"{where}: '{path}' is not a COCO instances file (expected a JSON object "
                        "whose 'info' is an object)")
    value = (info or {}).get("box_type", "horizontal")
    if value not in BOX_TYPES:
        raise UserError(f"{where}: '{path}' has info.box_type {value!r}; use 'rotated' (with "
                        "rbox annotations) or 'horizontal' (or leave it out)")
    return value
