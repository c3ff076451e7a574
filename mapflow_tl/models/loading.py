"""Reading a checkpoint directory's Hugging Face parts with errors that name the directory and
the fix, instead of a traceback from deep inside transformers; and the cross-check of our token
ids against the checkpoint's own HF processor."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from jaxtyping import Int
from torch import nn

__all__ = [
    "read_config",
    "read_json",
    "has_weights",
    "check_weights",
    "is_hub_id",
    "local_hub_snapshot",
    "load_hf_model",
    "quiet_progress_bars",
    "read_weight_files",
    "load_tokenizer",
    "torchvision_available",
    "check_processor_ids",
]

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json",
                    "*.pt", "*.pth")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the checkpoint as a dict (``{}`` when the file does not exist)."""
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def read_config(path: Path) -> dict[str, Any]:
    """Read ``config.json`` of a local checkpoint directory, with errors naming the file."""
    if not (path / "config.json").is_file():
        raise ValueError(f"{path} has no config.json: is this a model directory?")
    return read_json(path / "config.json")


def has_weights(path: Path, *, ignore_prefix: str | None = None) -> bool:
    """Whether ``path`` holds model weight files (those named ``ignore_prefix...`` not counted,
    e.g. a LoRA adapter's ``adapter_model``)."""
    return any(ignore_prefix is None or not file.name.startswith(ignore_prefix)
               for pattern in _WEIGHT_PATTERNS for file in path.glob(pattern))


def check_weights(path: Path) -> None:
    """A checkpoint directory must hold weight files; say how to get them when it does not."""
    if not has_weights(path):
        raise ValueError(
            f"{path} has a config.json but no model weights (*.safetensors or *.bin): the "
            f"download is incomplete. Download the checkpoint again, e.g. `hf download <hub id> "
            f"--local-dir {path}`, or pass the directory that holds the weights.")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` has the shape of a Hugging Face hub id ("owner/model")."""
    return name.count("/") == 1 and not name.startswith(("/", "."))


def local_hub_snapshot(name: str) -> Path | None:
    """The local Hugging Face cache's copy of hub id ``name`` ("owner/model"), or None when the
    name is no hub id or the model is not cached. Never downloads: mapflow-tl reads only what is
    already on disk, so a run never stalls on the network."""
    if not is_hub_id(name):
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        return None


def read_weight_files(files: list[Path]) -> dict[str, torch.Tensor]:
    """The tensors of ``*.safetensors`` / ``*.bin`` weight files, merged into one state dict (for
    formats loaded by mapping weights by hand rather than through ``from_pretrained``)."""
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file)))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True))
    return state


@contextmanager
def quiet_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars (the "Loading weights" bar of every
    ``from_pretrained``) inside the block, and restore the previous setting on exit: a caller
    who turned the bars on or off keeps that setting for their own loads."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from huggingface_hub.utils import disable_progress_bars as disable_hub_bars
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hub_was_disabled = are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also turns off huggingface_hub's bars
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # turns huggingface_hub's back on: undo if it was off
            if hub_was_disabled:
                disable_hub_bars()


def load_hf_model(model_class: type, path: Path, dtype: torch.dtype, **kwargs: Any) -> nn.Module:
    """``model_class.from_pretrained(path)`` on CPU in ``dtype`` with eager attention, errors
    naming the directory instead of a traceback from deep inside transformers, and without the
    progress bar (:func:`quiet_progress_bars`; a local load takes seconds). ``kwargs`` pass
    through to ``from_pretrained`` (e.g. ``config=``)."""
    check_weights(path)
    try:
        with quiet_progress_bars():
            model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="eager",
                                                **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        if "mismatched" in str(error):
            raise ValueError(f"cannot load {model_class.__name__} from {path}: the weights do "
                             f"not have the shapes its config.json describes "
                             f"({_mismatched(model_class, path, dtype, kwargs)}). Is config.json "
                             f"from another model, or a weight file from another size?") from None
        raise ValueError(f"cannot load {model_class.__name__} from {path}: {error}") from None
    return model.eval()


def _mismatched(model_class: type, path: Path, dtype: torch.dtype, kwargs: dict) -> str:
    """A short list of the weights whose shapes disagree with the config (error path only)."""
    try:
        with quiet_progress_bars():
            _, info = model_class.from_pretrained(path, dtype=dtype, ignore_mismatched_sizes=True,
                                                  output_loading_info=True, **kwargs)
    except Exception:  # noqa: BLE001 - the list is a courtesy; the error is raised regardless
        return "shapes differ"
    entries = [f"{name}: checkpoint {tuple(saved)} vs config {tuple(expected)}"
               if isinstance(saved, (tuple, list, torch.Size)) else str(name)
               for name, saved, expected in (
                   (entry + (None, None))[:3] if isinstance(entry, tuple) else (entry, None, None)
                   for entry in info.get("mismatched_keys", []))]
    more = f", and {len(entries) - 3} more" if len(entries) > 3 else ""
    return "; ".join(entries[:3]) + more if entries else "shapes differ"


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's fast tokenizer (offset mappings are needed for exact spans)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # noqa: BLE001
        raise ValueError(f"cannot load the tokenizer of {path}: {error}. The checkpoint needs "
                         f"its tokenizer files (tokenizer.json or tokenizer_config.json)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"the tokenizer of {path} is a slow tokenizer; mapflow-tl needs a fast "
                         f"tokenizer (tokenizer.json) for exact token spans")
    return tokenizer


def torchvision_available() -> bool:
    """Whether a working torchvision is installed (HF video processors need it)."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken install is as good as none
        return False
    return True


def check_processor_ids(adapter: Any, text: str, frames: np.ndarray,
                        input_ids: Int[torch.Tensor, "1 pos"]) -> None:
    """Where the HF processor can run (torchvision installed), check that the ids it makes of the
    prompt and the video equal ours, so the video positions are where it puts them."""
    if not torchvision_available():
        return
    if adapter.processor is None:
        from transformers import AutoProcessor

        adapter.processor = AutoProcessor.from_pretrained(adapter.path)
    theirs = adapter.processor(text=text, videos=[frames], return_tensors="pt")["input_ids"]
    if not torch.equal(theirs.cpu(), input_ids.cpu()):
        raise RuntimeError(
            f"{adapter.name}: the HF processor makes {theirs.shape[1]} token ids of this prompt "
            f"but mapflow-tl made {input_ids.shape[1]}; the video positions would be wrong. "
            f"Please report this with the checkpoint name.")
