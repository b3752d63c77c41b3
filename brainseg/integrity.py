"""The weights a model was shipped with: the sha256 of ``model.safetensors``, recorded in the folder's
``metrics.json`` by the shipping step (``python -m brainseg.hub card``) and checked at every load.

safetensors reads a file whose tensor bytes were flipped without complaint; the recorded hash is
what tells a damaged or swapped file from the one that was evaluated.
"""
import hashlib
import json
from pathlib import Path
from typing import Optional, Union

HASH_KEY = "weights_file_sha256"


class WeightsHashError(ValueError):
    """``model.safetensors`` is not the file that was shipped."""


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def recorded_sha256(metrics: Union[str, Path, None]) -> Optional[str]:
    """The hash in ``metrics.json``, or None where there is no file or no hash (a model trained, not shipped)."""
    if metrics is None or not Path(metrics).is_file():
        return None
    try:
        value = json.loads(Path(metrics).read_text()).get(HASH_KEY)
    except (ValueError, AttributeError):
        raise WeightsHashError(f"{metrics} is not a JSON object; it cannot vouch for the weights") from None
    return value if isinstance(value, str) else None


def record_weights_sha256(model_dir: Union[str, Path]) -> Optional[str]:
    """Write the weights' sha256 into ``model_dir/metrics.json`` (when there is one); returns it."""
    model_dir = Path(model_dir)
    metrics = model_dir / "metrics.json"
    if not metrics.is_file() or not (model_dir / "model.safetensors").is_file():
        return None
    data = json.loads(metrics.read_text())
    data[HASH_KEY] = file_sha256(model_dir / "model.safetensors")
    metrics.write_text(json.dumps(data, indent=2) + "\n")
    return data[HASH_KEY]


def check_weights_sha256(weights: Union[str, Path], metrics: Union[str, Path, None]) -> None:
    """Refuse ``weights`` unless it hashes to what ``metrics`` recorded (nothing recorded: nothing to check)."""
    expected = recorded_sha256(metrics)
    if expected is None:
        return
    actual = file_sha256(weights)
    if actual != expected:
        raise WeightsHashError(f"{weights} has sha256 {actual[:12]}..., not {expected[:12]}... as recorded in {metrics} "
                               f"when it was shipped: the file is damaged or was replaced. Download or ship it again")
