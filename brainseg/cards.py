"""What a model card says: a card from ``templates/model_card.md`` filled with the folder's facts.

:func:`build_model_card` fills the template (``huggingface_hub.ModelCard.from_template``, as
segmentation_models_pytorch's Hub mixin does) from a Hub-format folder's ``config.json``,
``metrics.json`` and evaluation JSON (the tables: :mod:`brainseg.card_tables`);
:func:`write_model_card` saves it as the folder's README.md. ``python -m brainseg.hub card DIR``
does it from the shell. Hub ids and the code's address come from :mod:`brainseg.hub_meta`.
"""
import re
from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Union

from .card_tables import (DATASET_CASES, DATASET_ID, DATASET_NAME, KINDS, NOT_MEASURED,
                          calibration_report, calibration_tables, config_rows, count_of, eval_results, fmt,
                          find_eval_json, index_column, metric_columns, number, read_json,
                          reconstruct_train_command, split_lines, table, weights_summary)
from .hub_meta import (BASE_TAGS, HUB_IDS, LIBRARY_NAME, LICENSE, MODEL_CLASSES, PIPELINE_TAGS, PROJECT_ROOT, REPO_URL,
                       is_placeholder)

TEMPLATE = Path(__file__).with_name("templates") / "model_card.md"
PIPELINE_AGREEMENT = "pipeline_agreement.json"  # benchmarks/pipeline_agreement.py --json, beside the classifier


def build_model_card(model_dir: Union[str, Path], kind: str, metrics: Optional[dict] = None,
                     eval_metrics: Union[dict, str, Path, None] = None,
                     train_command: Union[str, Sequence[str], None] = None,
                     repo_ids: Optional[Mapping[str, str]] = None):
    """A :class:`huggingface_hub.ModelCard` for a Hub-format folder, from its config and metrics.

    Args:
        model_dir: folder with ``config.json`` (and ideally ``model.safetensors``, ``metrics.json``).
        kind: ``"segmenter"`` or ``"classifier"``.
        metrics: ``train.py``'s metrics dict; None reads ``metrics.json`` from the folder if present.
        eval_metrics: ``brainseg.evaluate``'s dict or a path to its JSON; None uses ``eval_val.json`` /
            ``eval*.json`` in the folder if present.
        train_command: the command(s) that produced the weights; None rebuilds the last stage from
            metrics.json.
        repo_ids: Hub ids for ``"segmenter"``, ``"classifier"``, ``"space"`` to write into the usage
            snippets; missing ones stay as :data:`brainseg.hub_meta.HUB_IDS` (placeholders).

    Returns:
        The card; ``str(card)`` is the README text. Only metric values that exist are shown or put in
        the model-index (for the classifier: its own figures, not the fused ones); the rest read
        "not measured".
    """
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in KINDS:
        raise ValueError(f"kind must be 'segmenter' or 'classifier', got {kind!r}")
    model_dir, spec = Path(model_dir), KINDS[kind]
    cfg = read_json(model_dir / "config.json")
    if cfg is None:
        raise FileNotFoundError(f"No config.json in {model_dir}: save the model with save_pretrained() first")
    metrics = metrics if metrics is not None else read_json(model_dir / "metrics.json")
    eval_name = "eval_val.json"
    if isinstance(eval_metrics, (str, Path)):
        eval_name, eval_metrics = Path(eval_metrics).name, read_json(Path(eval_metrics))
    elif eval_metrics is None and find_eval_json(model_dir):
        path = find_eval_json(model_dir)
        eval_name, eval_metrics = path.name, read_json(path)
    repos = {**HUB_IDS, **(repo_ids or {})}
    calibration = calibration_report(cfg, metrics, eval_metrics)
    cv = (eval_metrics or {}).get("cross_validation")  # out-of-fold figures (calibrate --cv --eval-json)
    columns = metric_columns(kind, metrics, eval_metrics, eval_name, calibration, cv)
    n_val = count_of((eval_metrics or {}).get("cases")) if eval_metrics else (metrics or {}).get("val_cases")
    results = eval_results(kind, index_column(columns), n_val, oof=bool(cv))
    data = ModelCardData(
        license=LICENSE, library_name=LIBRARY_NAME, pipeline_tag=PIPELINE_TAGS[kind], datasets=[DATASET_ID],
        tags=[*BASE_TAGS, spec["task_tag"], "lgg", "pytorch", "timm", "model_hub_mixin", "pytorch_model_hub_mixin"],
        model_name=repos[kind].split("/")[-1] if results else None, eval_results=results or None)
    commands = ([train_command] if isinstance(train_command, str) else list(train_command or [])
                ) or reconstruct_train_command(metrics, model_dir)
    rows = [[m.name] + ([fmt(c[2].get(m.key)) for c in columns] or [NOT_MEASURED]) for m in spec["metrics"]]
    used = [repos[k] for k in ("segmenter", "classifier")]
    card = ModelCard.from_template(
        data, template_path=str(TEMPLATE), kind=kind, title=spec["title"], model_class=MODEL_CLASSES[kind],
        order=", ".join(cfg.get("channel_order") or []), size=cfg.get("image_size"), repo=repos[kind], repos=repos,
        other_repo=repos["classifier" if kind == "segmenter" else "segmenter"], fused=bool(cfg.get("fusion_weights")),
        calibrated=("a temperature-calibrated" if calibration or cfg.get("temperature", 1.0) != 1.0
                    else "an uncalibrated (temperature 1)"),
        dataset_id=DATASET_ID, dataset_name=DATASET_NAME, dataset_cases=DATASET_CASES, not_measured=NOT_MEASURED,
        split_lines="\n".join(split_lines(metrics, cv)), oof=bool(cv),
        oof_folds=fmt((cv or {}).get("folds")),
        eval_table="\n".join(table(["Metric"] + ([c[0] for c in columns] or ["Value"]), rows)),
        columns=columns, evaluated=bool(eval_metrics), speed=number((eval_metrics or {}).get("seconds_per_slice")),
        precision=(eval_metrics or {}).get("precision"),
        calibration_tables="\n".join(calibration_tables(calibration)) if calibration else "",
        config_table="\n".join(table(["Setting", "Value"],
                                      config_rows(kind, cfg, weights_summary(model_dir / "model.safetensors"),
                                                   oof=bool(cv)))),
        commands="\n".join(commands),
        rebuilt=train_command is None and bool(commands) and (PROJECT_ROOT / "scripts" / "train_models.sh").is_file(),
        placeholders=any(is_placeholder(r) for r in used), repo_url=REPO_URL,
        cfg=cfg, labels=cfg.get("label_names") or [], agreement=read_json(model_dir / PIPELINE_AGREEMENT))
    return ModelCard(re.sub(r"\n{3,}", "\n\n", card.content).rstrip("\n") + "\n")


def write_model_card(model_dir: Union[str, Path], kind: str, metrics: Optional[dict] = None,
                     eval_metrics: Union[dict, str, Path, None] = None,
                     train_command: Union[str, Sequence[str], None] = None,
                     repo_ids: Optional[Mapping[str, str]] = None) -> Path:
    """Write ``README.md`` (the model card) into a Hub-format folder, replacing the mixin's default card.

    Call it after ``save_pretrained`` and after ``metrics.json`` (and any evaluation JSON) are written;
    arguments as in :func:`build_model_card`. Returns the README path.

    Example:
        >>> write_model_card("models/segmenter", "segmenter",
        ...                  train_command="bash scripts/train_models.sh ../shared/data/lgg/kaggle_3m")
    """
    card = build_model_card(model_dir, kind, metrics, eval_metrics, train_command, repo_ids)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path


def is_brainseg_card(text: str) -> bool:
    """True for a card written by :func:`write_model_card` (not the mixin's default card)."""
    return "NOT a medical device" in text and f"library_name: {LIBRARY_NAME}" in text


def fill_repo_ids(text: str, repo_ids: Mapping[str, str]) -> str:
    """Replace the placeholder :data:`brainseg.hub_meta.HUB_IDS` in a card or README with the real repo ids."""
    for key, placeholder in HUB_IDS.items():
        if repo_ids.get(key):
            text = text.replace(placeholder, repo_ids[key])
    return text


def card_commands(text: str) -> List[str]:
    """The training commands a card shows (its ``## Training`` bash block)."""
    m = re.search(r"^## Training\n.*?^```bash\n(.*?)^```", text, re.S | re.M)
    return m.group(1).rstrip("\n").split("\n") if m else []


def stale_card_reason(model_dir: Union[str, Path], kind: str, repo_ids: Optional[Mapping[str, str]] = None
                      ) -> Optional[str]:
    """None when the folder's README.md is what :func:`build_model_card` writes today, else why not.

    The card is regenerated with the training commands it already shows and compared as text, so
    checkout times (a fresh clone) do not matter; edited metrics, config or evaluation JSON do.
    """
    model_dir = Path(model_dir)
    text = (model_dir / "README.md").read_text(encoding="utf-8")
    commands = card_commands(text)
    metrics = read_json(model_dir / "metrics.json")
    given = None if commands == reconstruct_train_command(metrics, model_dir) else commands
    for ids in ({}, dict(repo_ids or {})):
        if str(build_model_card(model_dir, kind, train_command=given, repo_ids=ids)) == fill_repo_ids(text, ids):
            return None
    return (f"{model_dir / 'README.md'} differs from the card its config.json, metrics.json and evaluation JSON "
            f"give now: regenerate it with python -m brainseg.hub card {model_dir}")
