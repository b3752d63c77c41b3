"""How models and the demo are uploaded: plans of every file and its target, a dry-run listing, the push.

:func:`plan_model_upload` and :func:`plan_space_upload` describe what goes where
(:class:`UploadPlan`) without touching the network; :func:`format_plans` prints a plan for
``push_to_hub.py --dry-run`` and :func:`push` carries it out through an ``HfApi`` (or a stand-in).
"""
import contextlib
import fnmatch
import glob
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .card_tables import EVAL_GLOB
from .cards import build_model_card, fill_repo_ids, is_brainseg_card, stale_card_reason
from .hub_meta import LICENSE, PLACEHOLDER_NAMESPACE, PROJECT_ROOT, is_placeholder

MODEL_FILE_PATTERNS = ("config.json", "model.safetensors", "input_check.safetensors", "README.md", "metrics.json", "*.png",
                       EVAL_GLOB)
SPACE_REQUIRED_FILES = ("app.py", "requirements.txt")
SPACE_OPTIONAL_FILES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "NOTICE", "packages.txt")
SPACE_DIRS = ("brainseg", "examples")
SPACE_EXCLUDED = {".venv", "venv", "runs", "tests", "__pycache__", ".git", ".pytest_cache", ".gradio", "flagged"}
SPACE_HEADER_FILE = Path("docs") / "space_header.yml"
# Last resort when neither README.md nor docs/space_header.yml carries the Spaces header.
SPACE_HEADER_DEFAULTS = {"title": "brainseg", "emoji": "🧠", "colorFrom": "indigo", "colorTo": "pink",
                         "sdk": "gradio", "sdk_version": "6.31.0", "app_file": "app.py", "pinned": False,
                         "license": LICENSE, "short_description": "Brain MRI tumour detection and segmentation"}
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)", re.S)


@dataclass
class UploadFile:
    """One file of an upload: read from disk (``source``) or generated here (``content``)."""

    path_in_repo: str
    size: int
    source: Optional[Path] = None
    content: Optional[bytes] = None
    note: str = ""
    warning: str = ""  # shown by the dry run and before a push; the upload goes ahead


@dataclass
class UploadPlan:
    """Everything one commit to one Hub repo needs; the dry run prints it, :func:`push` carries it out."""

    repo_id: str
    repo_type: str  # "model" or "space"
    folder: Path
    files: List[UploadFile]
    private: bool = False
    revision: Optional[str] = None  # a branch, created when missing; None is the default branch
    space_sdk: Optional[str] = None
    commit_message: str = "Upload with brainseg push_to_hub.py"
    warnings: List[str] = field(default_factory=list)  # about the plan as a whole (e.g. a placeholder repo id)

    @property
    def url(self) -> str:
        from huggingface_hub import constants

        kind = "spaces/" if self.repo_type == "space" else "datasets/" if self.repo_type == "dataset" else ""
        return f"{constants.ENDPOINT}/{kind}{self.repo_id}" + (f"/tree/{self.revision}" if self.revision else "")

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def allow_patterns(self) -> List[str]:
        """The exact file list as ``upload_folder`` patterns (fnmatch specials escaped)."""
        return [glob.escape(f.path_in_repo) for f in self.files]

    @property
    def needs_staging(self) -> bool:
        """True when some file is generated or lands at another path than in ``folder``."""
        return any(f.content is not None or f.source is None or f.source != self.folder / f.path_in_repo
                   for f in self.files)


@dataclass
class PushResult:
    """What the Hub answered for one plan."""

    repo_id: str
    repo_type: str
    revision: Optional[str]
    repo_url: str
    commit_url: Optional[str]
    commit: Optional[str]


def check_repo_id(repo_id: str, what: str = "repo") -> str:
    """``user/name`` or raise ValueError saying what is wrong (no network)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: {e}") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"{what} {repo_id!r} needs a namespace: write it as USER/NAME (or ORG/NAME)")
    return repo_id


def _human(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _disk_file(path: Path, path_in_repo: str) -> UploadFile:
    return UploadFile(path_in_repo, path.stat().st_size, source=path)


def _text_file(path_in_repo: str, text: str, note: str) -> UploadFile:
    data = text.encode("utf-8")
    return UploadFile(path_in_repo, len(data), content=data, note=note)


def model_files(folder: Union[str, Path]) -> List[Path]:
    """The Hub-format files of a model folder (no training state such as ``last_state.pt``)."""
    folder = Path(folder)
    missing = [n for n in ("config.json", "model.safetensors") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} is not a Hub-format model folder: {', '.join(missing)} missing. Train one "
            f"(python train.py ... --out {folder}) or point --segmenter-dir / --classifier-dir at one.")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and any(fnmatch.fnmatchcase(p.name, pat) for pat in MODEL_FILE_PATTERNS))


def _model_upload_files(folder: Path, kind: str, repo_ids: Mapping[str, str], prefix: str = "") -> List[UploadFile]:
    """A model folder's files; its card gets the real repo ids, or is generated if it is the mixin's default."""
    out = []
    for path in model_files(folder):
        if path.name != "README.md":
            out.append(_disk_file(path, prefix + path.name))
            continue
        text = path.read_text(encoding="utf-8")
        if not is_brainseg_card(text):
            continue  # replaced below by a generated card
        filled = fill_repo_ids(text, repo_ids)
        card = (_text_file(prefix + path.name, filled, f"{path} with the repo ids filled in") if filled != text
                else _disk_file(path, prefix + path.name))
        card.warning = stale_card_reason(folder, kind, repo_ids) or ""
        out.append(card)
    if not any(f.path_in_repo == prefix + "README.md" for f in out):
        card = str(build_model_card(folder, kind, repo_ids=repo_ids))
        out.append(_text_file(prefix + "README.md", card, f"model card from {folder}'s config and metrics; "
                              "its README.md is not a brainseg card"))
    return sorted(out, key=lambda f: f.path_in_repo)


def plan_model_upload(folder: Union[str, Path], repo_id: str, kind: str, *, private: bool = False,
                      revision: Optional[str] = None, repo_ids: Optional[Mapping[str, str]] = None) -> UploadPlan:
    """Plan the upload of one Hub-format model folder to a model repo (reads files, no network).

    Args:
        folder: e.g. ``models/segmenter``; only :data:`MODEL_FILE_PATTERNS` files go up.
        repo_id: ``USER/NAME``.
        kind: ``"segmenter"`` or ``"classifier"`` (for a generated card).
        repo_ids: all repo ids of this push, written into the model card's usage snippets.
    """
    check_repo_id(repo_id, f"{kind} repo")
    folder = Path(folder)
    files = _model_upload_files(folder, kind, {**(repo_ids or {}), kind: repo_id})
    return UploadPlan(repo_id, "model", folder, files, private, revision,
                      commit_message=f"Upload brainseg {kind} with push_to_hub.py",
                      warnings=_placeholder_warning(repo_id, f"{kind} repo"))


def split_front_matter(text: str) -> Tuple[Optional[str], str]:
    """(YAML between the leading ``---`` lines or None, the rest of the text)."""
    m = _FRONT_MATTER.match(text)
    return (m.group(1), text[m.end():]) if m else (None, text)


def _pinned_version(requirements: Path, package: str) -> Optional[str]:
    if not requirements.is_file():
        return None
    m = re.search(rf"^\s*{package}\s*==\s*([^\s;#]+)", requirements.read_text(), re.M | re.I)
    return m.group(1) if m else None


def space_readme(root: Union[str, Path], repo_ids: Optional[Mapping[str, str]] = None) -> str:
    """The Space's README.md: the project README with a valid Spaces header.

    The header comes from README.md's own front matter, else ``docs/space_header.yml``, else
    :data:`SPACE_HEADER_DEFAULTS`; ``models`` lists the model repos of this push and ``sdk_version``
    follows the gradio pin in requirements.txt, so the Space builds the Gradio it was tested with.
    """
    import yaml

    root, repo_ids = Path(root), dict(repo_ids or {})
    readme = root / "README.md"
    header, body = split_front_matter(readme.read_text(encoding="utf-8") if readme.is_file() else "")
    for candidate in (root / SPACE_HEADER_FILE, PROJECT_ROOT / SPACE_HEADER_FILE):
        if header is None and candidate.is_file():
            header = split_front_matter(candidate.read_text(encoding="utf-8"))[0]
    meta = yaml.safe_load(header) if header else {}
    if not isinstance(meta, dict):
        raise ValueError(f"The Spaces header in {readme} is not a YAML mapping")
    meta = {**SPACE_HEADER_DEFAULTS, **meta}
    if meta.get("sdk") != "gradio" or not (root / meta["app_file"]).is_file():
        raise ValueError(f"The Spaces header must say sdk: gradio and name an existing app_file "
                         f"(got sdk={meta.get('sdk')!r}, app_file={meta.get('app_file')!r} in {root})")
    gradio = _pinned_version(root / "requirements.txt", "gradio")
    if gradio:
        meta["sdk_version"] = gradio
    models = [repo_ids[k] for k in ("segmenter", "classifier") if repo_ids.get(k)]
    if models:
        meta["models"] = models
    body = fill_repo_ids(body, repo_ids).lstrip("\n") or (
        "# brainseg\n\nBrain MRI tumour detection and segmentation on the LGG kaggle_3m data. "
        "NOT a medical device.\n")
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n\n" + body


def space_files(root: Union[str, Path]) -> List[Path]:
    """The app files a Space needs from the project (models excepted): app.py, brainseg/, examples/, ..."""
    root = Path(root)
    missing = [n for n in SPACE_REQUIRED_FILES if not (root / n).is_file()]
    missing += [] if (root / "brainseg").is_dir() else ["brainseg/"]
    if missing:
        raise FileNotFoundError(f"{root} lacks {', '.join(missing)}: a Gradio Space needs app.py, "
                                "requirements.txt and the brainseg package")
    out = [root / n for n in SPACE_REQUIRED_FILES + SPACE_OPTIONAL_FILES if (root / n).is_file()]
    for d in SPACE_DIRS:
        for p in sorted((root / d).rglob("*")) if (root / d).is_dir() else []:
            rel = p.relative_to(root)
            if p.is_file() and p.suffix not in (".pyc", ".pyo") and not any(
                    part in SPACE_EXCLUDED or part.startswith(".") for part in rel.parts):
                out.append(p)
    return out


def plan_space_upload(root: Union[str, Path], repo_id: str, model_dirs: Mapping[str, Union[str, Path]], *,
                      private: bool = False, revision: Optional[str] = None,
                      repo_ids: Optional[Mapping[str, str]] = None) -> UploadPlan:
    """Plan a Gradio Space of the demo that runs offline on the bundled models (reads files, no network).

    Args:
        root: the project folder (app.py, requirements.txt, brainseg/, examples/, README.md).
        repo_id: the Space, ``USER/NAME``.
        model_dirs: ``{"segmenter": folder, "classifier": folder}``, uploaded to ``models/<kind>/``
            where the app finds its default models.
        repo_ids: the model repos of this push (the header's ``models`` list and the usage snippets).
    """
    check_repo_id(repo_id, "Space")
    root, repo_ids = Path(root), {**(repo_ids or {}), "space": repo_id}
    files = [_disk_file(p, p.relative_to(root).as_posix()) for p in space_files(root)]
    files.append(_text_file("README.md", space_readme(root, repo_ids), "project README with the Spaces header"))
    for kind, folder in model_dirs.items():
        files += _model_upload_files(Path(folder), kind, repo_ids, prefix=f"models/{kind}/")
    files.sort(key=lambda f: f.path_in_repo)
    return UploadPlan(repo_id, "space", root, files, private, revision, space_sdk="gradio",
                      commit_message="Upload the brainseg demo with push_to_hub.py",
                      warnings=_placeholder_warning(repo_id, "Space"))


def format_plans(plans: Sequence[UploadPlan], cwd: Union[str, Path, None] = None) -> str:
    """The dry-run listing: every file with its repo type, repo id, path in the repo, size and origin."""
    cwd = Path(cwd or os.getcwd()).resolve()
    lines = []
    for plan in plans:
        where = f"branch {plan.revision} (created if missing)" if plan.revision else "default branch"
        lines += [f"{plan.repo_type} {plan.repo_id}: {len(plan.files)} files, {_human(plan.size)}, "
                  f"{'private' if plan.private else 'public'} if created, {where} -> {plan.url}"]
        width = max(len(f.path_in_repo) for f in plan.files)
        for f in plan.files:
            if f.source is not None:
                src = Path(f.source).resolve()
                origin = (str(src.relative_to(cwd)) if src.is_relative_to(cwd) else str(src)) + (
                    f" ({f.note})" if f.note else "")
            else:
                origin = f"(generated: {f.note})" if f.note else "(generated)"
            lines.append(f"  {plan.repo_type:<5}  {plan.repo_id}  {f.path_in_repo:<{width}}  {_human(f.size):>9}"
                         f"  <- {origin}")
        lines.append("")
    return "\n".join(lines + [f"warning: {w}" for w in plan_warnings(plans)])


def plan_warnings(plans: Sequence[UploadPlan]) -> List[str]:
    """Distinct warnings of the plans and their files (e.g. a placeholder repo id, a stale model card)."""
    return list(dict.fromkeys([w for plan in plans for w in plan.warnings]
                              + [f.warning for plan in plans for f in plan.files if f.warning]))


def _placeholder_warning(repo_id: str, what: str) -> List[str]:
    if not is_placeholder(repo_id):
        return []
    return [f"{what} {repo_id} uses the README's placeholder {PLACEHOLDER_NAMESPACE!r}: write your Hugging Face "
            f"user or organisation name instead (e.g. alice/{repo_id.split('/', 1)[1]}); a push refuses it"]


@contextlib.contextmanager
def _staged(plan: UploadPlan) -> Iterator[Path]:
    """The folder to upload from: the plan's own, or a temporary copy holding generated files."""
    if not plan.needs_staging:
        yield plan.folder
        return
    with tempfile.TemporaryDirectory(prefix="brainseg-upload-") as tmp:
        for f in plan.files:
            dest = Path(tmp) / f.path_in_repo
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.content is not None:
                dest.write_bytes(f.content)
            else:
                try:
                    os.link(f.source, dest)  # no copy of the weights when on the same disk
                except OSError:
                    shutil.copy2(f.source, dest)
        yield Path(tmp)


def hub_token() -> str:
    """The Hub token from ``HF_TOKEN`` or the cached login, or an error saying how to get one."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import LocalTokenNotFoundError

    token = get_token()
    if not token:
        raise LocalTokenNotFoundError(
            "No Hugging Face token: set HF_TOKEN to a token with write access "
            "(https://huggingface.co/settings/tokens) or log in once with `hf auth login`. "
            "--dry-run shows the plan without one.")
    return token


def push(plans: Sequence[UploadPlan], api, log=print) -> List[PushResult]:
    """Create each repo if needed (and the branch), then upload its files in one commit.

    Args:
        plans: from :func:`plan_model_upload` / :func:`plan_space_upload`.
        api: a :class:`huggingface_hub.HfApi` (holding the token), or a stand-in with the same methods.

    Returns:
        One :class:`PushResult` per plan, with the repo URL and the commit id and URL.
    """
    placeholders = [plan.repo_id for plan in plans if is_placeholder(plan.repo_id)]
    if placeholders:  # checked before any call, so nothing is half pushed
        raise ValueError(f"{', '.join(placeholders)}: {PLACEHOLDER_NAMESPACE} is the README's placeholder, not an "
                         "account; pass your own repo ids (e.g. --segmenter-repo alice/brainseg-segmenter)")
    results = []
    for plan in plans:
        extra = {"space_sdk": plan.space_sdk} if plan.repo_type == "space" else {}
        repo_url = api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=plan.private, exist_ok=True,
                                   **extra)
        if plan.revision:
            api.create_branch(plan.repo_id, branch=plan.revision, repo_type=plan.repo_type, exist_ok=True)
        log(f"uploading {len(plan.files)} files ({_human(plan.size)}) to {plan.repo_type} {plan.repo_id}"
            + (f" on branch {plan.revision}" if plan.revision else "") + " ...")
        with _staged(plan) as folder:
            info = api.upload_folder(repo_id=plan.repo_id, repo_type=plan.repo_type, folder_path=str(folder),
                                     allow_patterns=plan.allow_patterns, revision=plan.revision,
                                     commit_message=plan.commit_message)
        results.append(PushResult(plan.repo_id, plan.repo_type, plan.revision, str(repo_url),
                                  getattr(info, "commit_url", None), getattr(info, "oid", None)))
    return results
