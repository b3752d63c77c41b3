"""Entry points for the commands that live beside the package, as scripts people read top to bottom.

``train.py`` (nanoGPT's habit: a training run as a story), ``app.py`` (the Space runs it as is) and
``push_to_hub.py`` stay scripts in the repository root; ``brainseg-train``, ``brainseg-app`` and
``brainseg-push`` run them from an editable install (``make install``), with the same arguments and exit codes.
"""
import runpy
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _run_script(name: str) -> int:
    path = PROJECT_ROOT / name
    if not path.is_file():
        print(f"brainseg: {path} not found: {name} runs from a clone of the repository (make install)",
              file=sys.stderr)
        return 2
    sys.argv[0] = str(path)
    namespace = runpy.run_path(str(path), run_name="brainseg.commands")
    main = namespace.get("main")
    return main() if callable(main) else 0


def train() -> int:
    """``brainseg-train``: ``python train.py``."""
    return _run_script("train.py")


def app() -> int:
    """``brainseg-app``: ``python app.py``."""
    return _run_script("app.py")


def push() -> int:
    """``brainseg-push``: ``python push_to_hub.py``."""
    return _run_script("push_to_hub.py")
