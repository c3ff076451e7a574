"""Loading a VideoLLM: checkpoint resolution, the family registry, ``load_videollm``.

``load_videollm(name_or_path)`` reads the checkpoint's ``config.json``, picks the family adapter
and returns a :class:`~mapflow_tl.models.videollm.VideoLLM`. Importing this module imports every
family file, which registers its adapter.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from ..errors import InputError
from .adapter import adapter_for
from .adapter import supported_architectures as _registered
from .loading import is_hub_id, local_hub_snapshot, read_config
from .videollm import VideoLLM

__all__ = ["load_videollm", "resolve_checkpoint", "supported_architectures", "check_devices",
           "BUILTIN_MODELS", "FAMILY_MODULES"]

# One module per family; importing it registers its adapter.
FAMILY_MODULES: tuple[str, ...] = (
    "llava_next_video",
    "llava_next",
    "pllava",
    "video_llava",
    "llava_onevision",
    "video_llama_3",
    "internvl",
    "internvl_chat",
    "qwen_vl",
    "qwen3_vl",
    "smolvlm",
    "perception_lm",
    "glm4v",
)

#: Built-in model names resolving to directories shipped with the package: the SynthTV model
#: organism (see mapflow_tl/synthtv and its model cards).
_CHECKPOINTS = Path(__file__).resolve().parents[1] / "synthtv" / "checkpoints"
BUILTIN_MODELS: dict[str, Path] = {name: _CHECKPOINTS / name
                                   for name in ("synthtv-image", "synthtv-video-ft")}

for _module in FAMILY_MODULES:
    importlib.import_module(f"{__package__}.{_module}")


def supported_architectures() -> dict[str, str]:
    """``{model_type: family name}`` of every registered adapter (every family file imported)."""
    return _registered()


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """A local checkpoint directory for a built-in name, a local path or a Hugging Face hub id
    already in the local cache. Nothing is downloaded: a missing model is a ``ValueError`` that
    names it and says how to download it."""
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        path = BUILTIN_MODELS[name]
        if not (path / "config.json").is_file():
            raise InputError(f"built-in model {name!r} is missing its files at {path}")
        return path
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path} is a file; pass the checkpoint directory that holds "
                             f"config.json")
        return path
    if is_hub_id(name):
        cached = local_hub_snapshot(name)
        if cached is not None:
            return cached
        raise InputError(
            f"model {name!r} is neither a local directory nor in the local Hugging Face "
            f"cache, and mapflow-tl never downloads at run time. Download it first "
            f"(`hf download {name}` or `huggingface-cli download {name}`) or pass the "
            f"local directory.")
    raise InputError(f"no model directory {path} (and {name!r} is not a built-in name: "
                     f"{sorted(BUILTIN_MODELS)})")


def check_devices(n_devices: int, device: str | torch.device) -> None:
    """Refuse a backbone split that this machine cannot hold, before any weight is read.

    TransformerLens places block ``i`` of ``n_layers`` on GPU ``i * n_devices // n_layers``; it
    needs ``n_devices`` CUDA GPUs and a CUDA ``device``.
    """
    if not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1:
        raise InputError(f"n_devices must be a positive integer, got {n_devices!r}")
    if n_devices == 1:
        return
    if torch.device(device).type != "cuda":
        raise InputError(f"n_devices={n_devices} splits the backbone across CUDA GPUs: pass "
                         f"device='cuda' (got device={str(device)!r}), or n_devices=1")
    available = torch.cuda.device_count()
    if available < n_devices:
        raise InputError(f"n_devices={n_devices} needs {n_devices} CUDA GPUs; this machine has "
                         f"{available}. Use n_devices={max(1, available)} or run on a node "
                         f"with more GPUs (see docs/scaling.md)")


def load_videollm(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    n_devices: int = 1,
    backend: str | None = None,
    **options: Any,
) -> VideoLLM:
    """Load a VideoLLM: its HF vision side and its language backbone as a ``HookedTransformer``
    (TransformerLens 3.9) or a ``TransformerBridge`` (TransformerLens 4).

    Reads ``config.json`` (``model_type`` / ``architectures``), picks the family adapter (see
    :func:`supported_architectures`) and loads. ``n_devices > 1`` splits the backbone across GPUs;
    ``backend`` is ``"hooked"``, ``"bridge"`` or None / ``"auto"`` — the one the installed
    TransformerLens provides (:mod:`mapflow_tl.models.backends`; ``vlm.backend`` says which);
    ``options`` are family-specific load options (for example a pooling shape).
    """
    from .backends import resolve_backend

    backend = resolve_backend(backend)  # a wrong one fails before any weight is read
    check_devices(n_devices, device)
    path = resolve_checkpoint(name_or_path)
    config = read_config(path)
    adapter_class = adapter_for(config, str(path))
    adapter = adapter_class(path, config, dtype=dtype, device=device, n_devices=n_devices,
                            backend=backend, **options)
    adapter.load()
    return VideoLLM(adapter, str(name_or_path))
