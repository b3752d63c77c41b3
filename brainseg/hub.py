"""Model sources ("folder" or "user/repo@revision"), loading, model cards and upload helpers."""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Type

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS = {"segmenter": PROJECT_ROOT / "models" / "segmenter",
                  "classifier": PROJECT_ROOT / "models" / "classifier"}
ENV_VARS = {"segmenter": "BRAINSEG_SEGMENTER", "classifier": "BRAINSEG_CLASSIFIER"}


@dataclass
class ModelSource:
    """Where a model came from: a local folder, or a Hub repo id with an optional revision."""

    location: str
    revision: Optional[str] = None
    local: bool = True

    def __str__(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")


def parse_source(spec: str) -> ModelSource:
    """``"models/segmenter"`` -> local folder; ``"user/repo@abc123"`` -> Hub repo at a revision.

    An existing folder always wins, so a local path that happens to look like a repo id works.
    """
    if os.path.isdir(spec):
        return ModelSource(str(Path(spec)), None, True)
    repo, _, rev = spec.partition("@")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"Model source {spec!r} is neither an existing folder nor a Hub repo id 'user/name[@revision]'")
    return ModelSource(repo, rev or None, False)


def resolve_source(kind: str, spec: Optional[str] = None) -> ModelSource:
    """The source to use for ``kind`` ('segmenter' or 'classifier'): argument, env var, else shipped default."""
    spec = spec or os.environ.get(ENV_VARS[kind]) or str(DEFAULT_MODELS[kind])
    return parse_source(spec)


def load_model(kind: str, spec: Optional[str] = None) -> Tuple[object, ModelSource]:
    """Load a segmenter or classifier from a folder or the Hub (safetensors only, strict)."""
    from .models import ResUNet, TumorClassifier

    cls: Type = {"segmenter": ResUNet, "classifier": TumorClassifier}[kind]
    src = resolve_source(kind, spec)
    if src.local and not (Path(src.location) / "config.json").exists():
        raise FileNotFoundError(f"No config.json in model folder {src.location}: is it a Hub-format checkpoint?")
    model = cls.from_pretrained(src.location, revision=src.revision)
    return model.eval(), src
