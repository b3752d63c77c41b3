"""Where models come from: a local folder or a Hub repo id, and loading them (safetensors only, strict).

A source is a folder (``models/segmenter``) or a Hub repo id (``user/brainseg-segmenter``) with an
optional ``revision=``; ``"user/repo@rev"`` is a shortcut for the command lines. Something that
looks like a path but is not a folder fails at once ("no such folder"), without asking the Hub.
"""
import difflib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from .hub_meta import MODEL_CLASSES, PROJECT_ROOT, kind_of_config  # noqa: F401 (re-exported)

DEFAULT_MODELS = {"segmenter": PROJECT_ROOT / "models" / "segmenter",
                  "classifier": PROJECT_ROOT / "models" / "classifier"}
ENV_VARS = {"segmenter": "BRAINSEG_SEGMENTER", "classifier": "BRAINSEG_CLASSIFIER"}


class SourceNotFoundError(FileNotFoundError, ValueError):
    """A model source that is neither an existing folder nor a Hub repo id (raised before any network call)."""


@dataclass
class ModelSource:
    """Where a model came from: a local folder, or a Hub repo id with an optional revision."""

    location: str
    revision: Optional[str] = None
    local: bool = True

    def __str__(self) -> str:
        return self.location + (f"@{self.revision}" if self.revision else "")


def _is_hub_repo_id(repo: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError:
        return False
    return repo.count("/") == 1


def _existing_part(spec: str) -> Optional[Path]:
    """The deepest existing folder above ``spec`` (None when only the working directory exists)."""
    for parent in Path(spec).parents:
        if str(parent) not in ("", ".") and parent.is_dir():
            return parent
    return None


def _no_such_folder(spec: str, why: str) -> SourceNotFoundError:
    hint = ""
    parent = _existing_part(spec)
    if parent is not None:
        near = difflib.get_close_matches(Path(spec).name, [p.name for p in parent.iterdir() if p.is_dir()], n=1)
        hint = f"; did you mean {parent / near[0]}?" if near else f"; {parent} exists but holds no such folder"
    return SourceNotFoundError(f"no such folder: {spec} ({why}){hint}. A model source is a folder with config.json "
                               "+ model.safetensors, or a Hub repo id user/name[@revision].")


def parse_source(spec: str, revision: Optional[str] = None) -> ModelSource:
    """``"models/segmenter"`` -> local folder; ``"user/repo"`` or ``"user/repo@rev"`` -> Hub repo.

    An existing folder always wins, so a local path that happens to look like a repo id works.
    Anything that looks like a path (starts with ``.``, ``/`` or ``~``, has a folder above it that
    exists, or is no valid Hub repo id) raises :class:`SourceNotFoundError` without a network call.

    Args:
        spec: folder or repo id; ``@rev`` after a repo id is the command-line shortcut for ``revision``.
        revision: Hub branch, tag or commit; must agree with ``@rev`` when both are given.
    """
    spec = str(spec)
    if os.path.isdir(spec):
        if revision:
            raise ValueError(f"revision={revision!r} applies to Hub repos, but {spec} is a local folder")
        return ModelSource(str(Path(spec)), None, True)
    if spec.startswith((".", "/", "~")) or "\\" in spec or ":" in spec:
        raise _no_such_folder(spec, "it is written as a path")
    repo, _, rev = spec.partition("@")
    if _existing_part(repo) is not None:
        raise _no_such_folder(spec, f"{_existing_part(repo)} is a local folder, so this is read as a path")
    if not _is_hub_repo_id(repo) or (_ and not rev):
        raise _no_such_folder(spec, "and neither an existing folder nor a Hub repo id user/name[@revision]")
    if revision and rev and revision != rev:
        raise ValueError(f"Model source {spec!r} names revision {rev!r} but revision={revision!r} was passed")
    return ModelSource(repo, revision or rev or None, False)


def resolve_source(kind: str, spec: Optional[str] = None, revision: Optional[str] = None) -> ModelSource:
    """The source to use for ``kind`` ('segmenter' or 'classifier'): argument, env var, else shipped default."""
    spec = spec or os.environ.get(ENV_VARS[kind]) or str(DEFAULT_MODELS[kind])
    return parse_source(spec, revision)


def _hub_error(src: ModelSource, e: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not get the model files from Hub repo {src}: {e}. brainseg loads only config.json + "
        f"model.safetensors (never pickled .bin weights); offline (HF_HUB_OFFLINE=1) they must already be "
        f"in the Hub cache. Push a Hub-format folder with push_to_hub.py, or pass a local folder.")


def read_config(src: ModelSource) -> dict:
    """The source's ``config.json`` as a dict (from the folder, or the Hub / its cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    if src.local:
        path = Path(src.location) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"No config.json in model folder {src.location}: is it a Hub-format checkpoint?")
    else:
        try:
            path = Path(hf_hub_download(src.location, "config.json", revision=src.revision))
        except EntryNotFoundError as e:  # a file missing remotely, or from the cache when offline
            raise _hub_error(src, e) from e
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{path} holds no JSON object")
    return cfg


def _load(src: ModelSource, kind: Optional[str]):
    from huggingface_hub.errors import EntryNotFoundError

    from . import models

    cfg = read_config(src)
    found = kind_of_config(cfg, f"config.json of {src}")
    if kind is not None and found != kind:
        raise ValueError(f"{src} holds a {found} ({MODEL_CLASSES[found]}), not a {kind}")
    cls = getattr(models, MODEL_CLASSES[found])
    try:
        return cls.from_pretrained(src.location, revision=src.revision).eval()
    except EntryNotFoundError as e:
        raise _hub_error(src, e) from e


def load_model(kind: str, spec: Optional[str] = None, revision: Optional[str] = None) -> Tuple[object, ModelSource]:
    """Load a segmenter or classifier from a folder or the Hub (safetensors only, strict).

    Args:
        kind: ``"segmenter"`` or ``"classifier"``; a checkpoint of the other kind is refused.
        spec: folder or repo id (None: ``$BRAINSEG_SEGMENTER`` / ``$BRAINSEG_CLASSIFIER``, else ``models/<kind>``).
        revision: Hub branch, tag or commit.

    Returns:
        (model in eval mode, the :class:`ModelSource` it came from).
    """
    src = resolve_source(kind, spec, revision)
    return _load(src, kind), src


def from_pretrained(source: str, revision: Optional[str] = None):
    """A ResUNet or TumorClassifier, whichever the source's ``config.json`` holds.

    Example:
        >>> import brainseg
        >>> model = brainseg.from_pretrained("models/classifier")   # -> TumorClassifier
        >>> model = brainseg.from_pretrained("user/brainseg-segmenter", revision="v1")  # USER: a placeholder
    """
    return _load(parse_source(source, revision), None)


def model_folder(spec: str, revision: Optional[str] = None) -> Path:
    """A folder holding the source's files: the folder itself, or the Hub repo's files fetched into the
    Hub cache (config, safetensors weights and the metrics and curves beside them), for code that reads files."""
    src = parse_source(spec, revision)
    if src.local:
        return Path(src.location)
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(src.location, revision=src.revision,
                                      allow_patterns=["config.json", "model.safetensors", "input_check.safetensors",
                                                      "metrics.json", "curves.png"]))
    except Exception as e:  # offline without a cached copy, a missing repo or revision
        raise _hub_error(src, e) from e
