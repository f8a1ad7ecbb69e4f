"""The house plan's import rules, checked on the source: a demo is a use of a task (no task module imports a demo
module), and the decoder / checkpoint reader are used instead of private copies."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "lsknet"


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_task_module_imports_a_demo_module():
    offenders = {
        str(path.relative_to(SRC)): sorted(n for n in _imports(path) if n.endswith("_demo"))
        for path in (SRC / "tasks").glob("*.py")
        if not path.stem.endswith("_demo")
    }
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_torch_load_only_in_the_checkpoint_reader():
    users = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if "torch.load(" in path.read_text() and path.name != "checkpoint.py"
    )
    assert users == [], f"read checkpoints with lsknet.models.checkpoint.load_checkpoint_file: {users}"


def test_pil_image_open_only_in_the_decoder_and_mask_readers():
    # masks are not images; corruptions re-encode JPEG in memory
    allowed = {"data/imageio.py", "data/segmentation.py", "evaluation/segmentation.py", "data/corruptions.py"}
    users = sorted(
        str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if "Image.open(" in path.read_text()
    )
    assert set(users) <= allowed, f"decode images with lsknet.data.imageio: {sorted(set(users) - allowed)}"
