"""ResUNet (timm encoder + residual decoder) and TumorClassifier (timm ResNet, one logit).

Both carry their typed config and save/load in Hub format (``config.json`` +
``model.safetensors``) through :class:`huggingface_hub.PyTorchModelHubMixin`. Loading is strict
and safetensors-only: a checkpoint with missing or unexpected weights fails instead of leaving
layers random, and no pickle is ever read. The classifier's file holds the timm network's own
state dict (keys such as ``conv1.weight``), so ``timm.create_model("hf-hub:ID", pretrained=True)``
and transformers' TimmWrapper read the same folder without a filter.
"""
import json
import os
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Dict, List, Optional, Union

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin, hf_hub_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .hub_meta import LABEL_NAMES, MODEL_CLASSES, PIPELINE_MEAN, PIPELINE_STD, kind_of_config, mixin_metadata
from .config import ClassifierConfig, ConfigError, SegmenterConfig, validate_config
from .integrity import check_weights_sha256

# Keys of config.json that are not config fields: the class to load with, and timm's own fields.
METADATA_KEYS = frozenset({"model_class", "architecture", "num_classes", "num_features", "pretrained_cfg",
                           "model_args", "label_names", "dtype"})


class CheckpointError(RuntimeError, ValueError):
    """Weights that cannot be read, or that do not fit the model their config.json describes."""


def create_encoder(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """timm.create_model with a clear message when ImageNet weights cannot be fetched."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except Exception as e:  # noqa: BLE001 - timm raises many kinds for an unreachable Hub
        if not pretrained:
            raise
        raise RuntimeError(
            f"Could not get ImageNet weights for timm model '{name}' from the Hugging Face Hub "
            f"({type(e).__name__}: {e}). The Hub is unreachable or the weights are not cached. "
            f"Train from scratch instead: drop --pretrained (pretrained=False)."
        ) from e


class HubModel(nn.Module):
    """Shared Hub behaviour: config handling, config.json with ``model_class``, strict safetensors-only loading."""

    config_class = None

    @classmethod
    def _coerce_config(cls, config):
        if config is None:
            return cls.config_class()
        if isinstance(config, dict):
            fields = cls.config_class.__dataclass_fields__
            unknown = sorted(set(config) - set(fields) - METADATA_KEYS)
            if unknown:  # a typo, or a config from a newer brainseg: say so rather than drop it silently
                warnings.warn(f"{cls.__name__}: ignoring config keys that {cls.config_class.__name__} does not have: "
                              f"{', '.join(unknown)}", UserWarning, stacklevel=3)
            return cls.config_class(**{k: v for k, v in config.items() if k in fields})
        return config

    def hub_metadata(self) -> Dict[str, object]:
        """What config.json holds beside the config fields: the class that loads it."""
        return {"model_class": type(self).__name__}

    def config_json(self) -> dict:
        """The config.json content: the typed config plus :meth:`hub_metadata`."""
        return {**asdict(self.config), **self.hub_metadata()}

    def hub_weights(self) -> nn.Module:
        """The module whose state dict ``model.safetensors`` holds: the whole model here."""
        return self

    def save_weights(self, path: Union[str, Path], dtype: Optional[torch.dtype] = None) -> None:
        """Write :meth:`hub_weights`' state dict as safetensors; ``dtype`` (e.g. float16) stores floats smaller
        (loading restores float32)."""
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
                 for k, v in self.hub_weights().state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt"})

    def _save_pretrained(self, save_directory: Path) -> None:
        # The mixin writes config.json only from __init__ arguments, so a model built with defaults got none.
        self.save_weights(Path(save_directory) / "model.safetensors")
        (Path(save_directory) / "config.json").write_text(json.dumps(self.config_json(), sort_keys=True, indent=2))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: Optional[str], cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                         config=None, **model_kwargs):
        config = cls._coerce_config(config)
        validate_config(config, str(Path(model_id) / "config.json"))
        if os.path.isdir(model_id):
            weights = Path(model_id) / "model.safetensors"
            if not weights.exists():
                raise FileNotFoundError(f"No model.safetensors in {model_id} (only safetensors weights are loaded)")
            check_weights_sha256(weights, Path(model_id) / "metrics.json")
        else:
            weights = hf_hub_download(repo_id=model_id, filename="model.safetensors", revision=revision,
                                      cache_dir=cache_dir, force_download=force_download, token=token,
                                      local_files_only=local_files_only)
            try:
                metrics = hf_hub_download(repo_id=model_id, filename="metrics.json", revision=revision,
                                          cache_dir=cache_dir, token=token, local_files_only=local_files_only)
            except Exception:  # noqa: BLE001 - a repo without metrics.json has no recorded hash to check
                metrics = None
            check_weights_sha256(weights, metrics)
        try:
            model = cls(replace(config, pretrained=False))  # weights come from the file, not ImageNet
        except (ValueError, RuntimeError) as e:  # fields valid one by one that do not fit together
            raise ConfigError(f"{Path(model_id) / 'config.json'}: {e}") from None
        model.config = config
        model._hub_mixin_config = config
        try:
            raw = load_file(str(weights))
        except (SafetensorError, OSError) as e:
            reason = " ".join(str(e).split())  # one line, whatever the library says
            raise CheckpointError(f"{weights} cannot be read ({reason}): the file is truncated or not safetensors; "
                                  "download or save it again") from None
        target = model.hub_weights()
        prefix = next((f"{name}." for name, child in model.named_children() if child is target), "")
        # files saved before the classifier stored timm's keys hold them under "backbone."
        state = {k.removeprefix(prefix): v.float() if v.is_floating_point() else v for k, v in raw.items()}
        own = target.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and v.shape != own[k].shape]
        if wrong:
            raise CheckpointError(f"Checkpoint {model_id} does not match {cls.__name__}({config.encoder}): "
                                  f"shape mismatch for {wrong[:3]} (weights vs the model its config.json builds)")
        missing, unexpected = target.load_state_dict(state, strict=False)
        if strict and (missing or unexpected):
            raise CheckpointError(f"Checkpoint {model_id} does not match {cls.__name__}({config.encoder}): "
                                  f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                  f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        return model.to(map_location).eval()


# ---------------------------------------------------------------- ResUNet

class ResidualBlock(nn.Module):
    """conv-bn-relu-conv-bn plus a (projected) shortcut, then relu."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class ResidualDecoder(nn.Module):
    """Upsample, concatenate the encoder skip, residual block; sized from the encoder's channels."""

    def __init__(self, enc_channels: List[int], enc_reductions: List[int], dec_channels: List[int]):
        super().__init__()
        n = len(enc_channels)
        if len(dec_channels) < n:
            raise ValueError(f"decoder_channels needs {n} entries for this encoder, got {dec_channels}")
        dec_channels = list(dec_channels[:n])
        self.scales = [enc_reductions[i + 1] // enc_reductions[i] for i in range(n - 1)][::-1]
        ins = [enc_channels[-1]] + dec_channels[:-1]
        skips = enc_channels[-2::-1] + [0]
        self.blocks = nn.ModuleList(ResidualBlock(i + s, o) for i, s, o in zip(ins, skips, dec_channels))
        self.final_scale = enc_reductions[0]
        self.out_channels = dec_channels[-1]

    def forward(self, features: List[torch.Tensor], stages: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """The finest decoder map; ``stages``, when given, collects the coarser blocks' outputs (finest first)."""
        x = features[-1]
        skips = features[-2::-1]
        for block, skip in zip(self.blocks[:-1], skips):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], 1))
            if stages is not None:
                stages.insert(0, x)
        if self.final_scale > 1:
            x = F.interpolate(x, scale_factor=self.final_scale, mode="nearest")
        return self.blocks[-1](x)


class ResUNet(HubModel, PyTorchModelHubMixin, **mixin_metadata("segmenter")):
    """U-Net with any timm CNN encoder and a residual decoder; 1-channel logits at input size.

    Example:
        >>> model = ResUNet.from_pretrained("models/segmenter")
        >>> logits = model(torch.randn(1, 3, 256, 256))  # (1, 1, 256, 256)
    """

    config_class = SegmenterConfig

    def __init__(self, config: Union[SegmenterConfig, dict, None] = None):
        super().__init__()
        self.config = config = self._coerce_config(config)
        self.encoder = create_encoder(config.encoder, config.pretrained, features_only=True,
                                      in_chans=config.model_in_chans)
        info = self.encoder.feature_info
        self.decoder = ResidualDecoder(info.channels(), info.reduction(), config.decoder_channels)
        self.head = nn.Conv2d(self.decoder.out_channels, 1, 1)
        stage_channels = [b.body[-1].num_features for b in self.decoder.blocks[:-1]][::-1]  # finest first
        if config.deep_supervision > len(stage_channels):
            raise ValueError(f"deep_supervision={config.deep_supervision}: this decoder has {len(stage_channels)} "
                             "coarser stages")
        self.side_heads = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in stage_channels[:config.deep_supervision])
        self.output_stride = info.reduction()[-1]

    def check_input_shape(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        s = self.output_stride
        c = self.config.model_in_chans
        if x.ndim != 4 or x.shape[1] != c or h % s or w % s:
            raise ValueError(f"Wrong input shape {tuple(x.shape)}: expected (N, {c}, H, W) with "
                             f"H and W divisible by {s}. Consider resizing or padding to "
                             f"{(h + s - 1) // s * s}x{(w + s - 1) // s * s}.")

    def forward(self, x: torch.Tensor, sides: bool = False):
        """Logits at input size; with ``sides=True`` (training with deep supervision) also the side heads'
        logits of the coarser decoder stages, finest first: ``(logits, [side, ...])``."""
        self.check_input_shape(x)
        stages = [] if sides else None
        logits = self.head(self.decoder(self.encoder(x), stages))
        if not sides:
            return logits
        return logits, [head(stage) for head, stage in zip(self.side_heads, stages)]


# ---------------------------------------------------------------- classifier

class TumorClassifier(HubModel, PyTorchModelHubMixin, **mixin_metadata("classifier")):
    """A timm ResNet with one logit: does this slice hold tumour?

    ``predict_proba`` applies the calibrated temperature stored in the config.
    """

    config_class = ClassifierConfig

    def __init__(self, config: Union[ClassifierConfig, dict, None] = None):
        super().__init__()
        self.config = config = self._coerce_config(config)
        self.backbone = create_encoder(config.encoder, config.pretrained, num_classes=1,
                                       in_chans=config.in_chans, drop_rate=config.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"Wrong input shape {tuple(x.shape)}: expected (N, {self.config.in_chans}, H, W)")
        return self.backbone(x)

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw tumour logit per slice, shape (N,)."""
        return self(x)[:, 0]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Calibrated tumour probability per slice, shape (N,)."""
        return torch.sigmoid(self(x)[:, 0] / self.config.temperature)

    def hub_weights(self) -> nn.Module:
        """The timm network: the file holds timm's own keys, which timm and transformers load as they are."""
        return self.backbone

    def hub_metadata(self) -> Dict[str, object]:
        """Also the fields timm's ``hf-hub:``/``local-dir:`` loader and transformers' TimmWrapper read.

        One logit, so one label (two names would make transformers fall back to ``LABEL_0``): the pipeline's
        score, sigmoid(logit), is the tumour probability before the temperature. ``dtype`` keeps transformers
        computing in float32 from the float16 file; ``mean``/``std`` stand in for the slice z-score
        (:data:`brainseg.hub_meta.PIPELINE_MEAN`)."""
        own = self.backbone.pretrained_cfg or {}
        size = self.config.image_size
        return {**super().hub_metadata(), "architecture": timm.models.split_model_name_tag(self.config.encoder)[0],
                "num_classes": 1, "num_features": int(self.backbone.num_features), "label_names": list(LABEL_NAMES),
                "model_args": {"in_chans": self.config.in_chans}, "dtype": "float32",
                "pretrained_cfg": {"input_size": [self.config.in_chans, size, size], "num_classes": 1,
                                   "interpolation": "bilinear", "crop_pct": 1.0, "mean": list(PIPELINE_MEAN),
                                   "std": list(PIPELINE_STD),
                                   **{k: own[k] for k in ("first_conv", "classifier") if k in own}}}


# ---------------------------------------------------------------- factories

def resunet(encoder: str = "resnet34", **kwargs) -> ResUNet:
    """A ResUNet; kwargs override :class:`SegmenterConfig` fields."""
    return ResUNet(SegmenterConfig(encoder=encoder, **kwargs))


def tumor_classifier(encoder: str = "resnet18", **kwargs) -> TumorClassifier:
    """A TumorClassifier; kwargs override :class:`ClassifierConfig` fields."""
    return TumorClassifier(ClassifierConfig(encoder=encoder, **kwargs))


def build_model(task: str, config: Union[SegmenterConfig, ClassifierConfig]) -> Union[ResUNet, TumorClassifier]:
    return {"segmenter": ResUNet, "classifier": TumorClassifier}[task](config)


def rewrite_config_metadata(model_dir: Union[str, Path]) -> bool:
    """Rewrite a folder's config.json metadata (``model_class``, timm's fields); config values stay. True if changed."""
    path = Path(model_dir) / "config.json"
    raw = json.loads(path.read_text(encoding="utf-8"))
    cls = {"ResUNet": ResUNet, "TumorClassifier": TumorClassifier}[MODEL_CLASSES[kind_of_config(raw, str(path))]]
    config = cls._coerce_config(raw)
    model = cls(replace(config, pretrained=False))  # no ImageNet download: only the metadata is wanted
    model.config = config
    text = json.dumps(model.config_json(), sort_keys=True, indent=2)
    if text == path.read_text(encoding="utf-8"):
        return False
    path.write_text(text)
    return True
