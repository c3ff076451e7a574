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

from ..errors import InputError

__all__ = [
    "read_config",
    "read_json",
    "has_weights",
    "check_weights",
    "check_loaded_keys",
    "is_hub_id",
    "local_hub_snapshot",
    "load_hf_model",
    "quiet_progress_bars",
    "read_weight_files",
    "load_tokenizer",
    "video_processor_settings",
    "torchvision_available",
    "check_processor_ids",
]

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json",
                    "*.pt", "*.pth")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file of the checkpoint as a dict (``{}`` when the file does not exist). Every
    checkpoint JSON file (config, preprocessor, adapter settings) is an object; anything else
    (a list, ``null``, a number, not JSON, not text) is an :class:`InputError` naming the file."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path} is not valid JSON ({error}); restore it from the "
                         f"checkpoint's download") from None
    if not isinstance(data, dict):
        raise InputError(f"{path} holds {_json_kind(data)}, expected a JSON object "
                         f"({{\"model_type\": ...}} and the model's settings); restore it from "
                         f"the checkpoint's download")
    return data


def _json_kind(data: Any) -> str:
    if data is None:
        return "null"
    return {list: "a list", str: "a string", bool: "a boolean"}.get(type(data), "a number")


def read_config(path: Path) -> dict[str, Any]:
    """Read ``config.json`` of a local checkpoint directory, with errors naming the file."""
    if not (path / "config.json").is_file():
        raise InputError(f"{path} has no config.json: is this a model directory?")
    return read_json(path / "config.json")


def has_weights(path: Path, *, ignore_prefix: str | None = None) -> bool:
    """Whether ``path`` holds model weight files (those named ``ignore_prefix...`` not counted,
    e.g. a LoRA adapter's ``adapter_model``)."""
    return any(ignore_prefix is None or not file.name.startswith(ignore_prefix)
               for pattern in _WEIGHT_PATTERNS for file in path.glob(pattern))


def check_weights(path: Path) -> None:
    """A checkpoint directory must hold weight files, each readable: an empty file, or a
    ``*.safetensors`` file whose header cannot be read (truncated, overwritten, a Git LFS
    pointer), is an :class:`InputError` naming the file, before any weight is loaded. Reading a
    safetensors header costs one small read per file."""
    if not has_weights(path):
        raise InputError(
            f"{path} has a config.json but no model weights (*.safetensors or *.bin): the "
            f"download is incomplete. Download the checkpoint again, e.g. `hf download <hub id> "
            f"--local-dir {path}`, or pass the directory that holds the weights.")
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"):
        for file in sorted(path.glob(pattern)):
            check_weight_file(file)


_REDOWNLOAD = "download the checkpoint again (e.g. `hf download <hub id> --local-dir <dir>`)"


def check_weight_file(file: Path) -> None:
    """Refuse a weight file that is empty or, for safetensors, whose header does not parse."""
    try:
        size = file.stat().st_size
    except OSError as error:
        raise InputError(f"cannot read the weight file {file}: {error.strerror or error}") \
            from None
    if size == 0:
        raise InputError(f"the weight file {file} is empty (0 bytes): the download is "
                         f"incomplete; {_REDOWNLOAD}")
    if file.suffix != ".safetensors":
        return
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError, ValueError) as error:
        raise InputError(f"the weight file {file} ({size} bytes) is not a readable safetensors "
                         f"file ({error}): it is truncated or corrupt; {_REDOWNLOAD}") from None


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
    import pickle

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        check_weight_file(file)
        try:
            if file.suffix == ".safetensors":
                state.update(load_file(str(file)))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        except (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as error:
            raise InputError(f"cannot read the weight file {file}: {error}; it is truncated or "
                             f"corrupt: {_REDOWNLOAD}") from None
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
    import pickle

    from safetensors import SafetensorError

    check_weights(path)
    try:
        with quiet_progress_bars():
            model, info = model_class.from_pretrained(
                path, dtype=dtype, attn_implementation="eager", output_loading_info=True,
                **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError,
            SafetensorError) as error:
        if "mismatched" in str(error):
            raise InputError(f"cannot load {model_class.__name__} from {path}: the weights do "
                             f"not have the shapes its config.json describes "
                             f"({_mismatched(model_class, path, dtype, kwargs)}). Is config.json "
                             f"from another model, or a weight file from another size?") from None
        raise InputError(f"cannot load {model_class.__name__} from {path}: {error}") from None
    check_loaded_keys(model, info.get("missing_keys", ()), info.get("unexpected_keys", ()),
                      f"{model_class.__name__} from {path}")
    return model.eval()


def check_loaded_keys(model: nn.Module, missing: Any, unexpected: Any, what: str) -> None:
    """Refuse a load whose weights and config disagree on which tensors exist.

    ``from_pretrained`` leaves a weight the checkpoint lacks (``missing``) randomly initialised
    and drops a tensor the config has no place for (``unexpected``), with a log line only: a
    ``num_hidden_layers`` one off in config.json, or one vision layer too many, would load and
    give wrong logits. Unexpected keys that name one of the model's buffers (``position_ids``,
    rotary ``inv_freq`` saved by older versions) are recomputed, not lost, and are let through.
    """
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(missing)
    unexpected = sorted(key for key in unexpected if key not in buffers)
    if not missing and not unexpected:
        return
    parts = []
    if missing:
        parts.append(f"missing from the checkpoint (the config describes them): "
                     f"{_summarise_keys(missing)}")
    if unexpected:
        parts.append(f"in the checkpoint but not in the model its config describes: "
                     f"{_summarise_keys(unexpected)}")
    raise InputError(f"cannot load {what}: the weights do not match config.json; "
                     f"{'; '.join(parts)}. Check num_hidden_layers (text and vision) and the "
                     f"other sizes in config.json against the weights, or download the "
                     f"checkpoint again if a weight file is missing")


def _summarise_keys(keys: list[str], shown: int = 6) -> str:
    """``["a.layers.3.x", "a.layers.3.y", "b"]`` → ``"a.layers.3.{x, y}, b"`` (a short list:
    keys grouped by the prefix through their first layer index)."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        cut = next((i + 1 for i, part in enumerate(parts) if part.isdigit()), len(parts) - 1)
        groups.setdefault(".".join(parts[:cut]), []).append(".".join(parts[cut:]))
    entries = []
    for prefix, rests in groups.items():
        if len(rests) == 1:
            entries.append(f"{prefix}.{rests[0]}" if prefix else rests[0])
        else:
            entries.append(f"{prefix}.* ({len(rests)} tensors)")
    more = f", and {len(entries) - shown} more groups" if len(entries) > shown else ""
    return f"{len(keys)} tensor(s): " + ", ".join(entries[:shown]) + more


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


def video_processor_settings(path: Path) -> dict[str, Any]:
    """The HF video processor's settings where ``BaseVideoProcessor.from_pretrained`` finds them:
    the ``video_processor`` entry of processor_config.json (transformers 5's layout), else
    video_preprocessor_config.json, else the image processor's preprocessor_config.json (older
    releases keep the video settings there); ``{}`` when none exists."""
    nested = read_json(path / "processor_config.json").get("video_processor")
    if isinstance(nested, dict):
        return nested
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            return read_json(path / name)
    return {}


def load_tokenizer(path: Path) -> Any:
    """The checkpoint's fast tokenizer (offset mappings are needed for exact spans)."""
    from transformers import AutoTokenizer

    try:
        # Never the checkpoint's own code (nor the prompt asking whether to run it): a
        # remote-code config.json (auto_map) falls back to the plain config.
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except Exception as error:  # noqa: BLE001
        raise InputError(f"cannot load the tokenizer of {path}: {error}. The checkpoint needs "
                         f"its tokenizer files (tokenizer.json or tokenizer_config.json)") from None
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"the tokenizer of {path} is a slow tokenizer; mapflow-tl needs a fast "
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
                        input_ids: Int[torch.Tensor, "1 pos"], **video_kwargs: Any) -> None:
    """Where the HF processor can run (torchvision installed), check that the ids it makes of the
    prompt and the video equal ours, so the video positions are where it puts them.
    ``video_kwargs`` go to the processor call (e.g. ``do_sample_frames=False``)."""
    if not torchvision_available():
        return
    if adapter.processor is None:
        from transformers import AutoProcessor

        adapter.processor = AutoProcessor.from_pretrained(adapter.path)
    theirs = adapter.processor(text=text, videos=[frames], return_tensors="pt",
                               add_special_tokens=getattr(adapter, "add_special_tokens", True),
                               **video_kwargs)["input_ids"]
    if not torch.equal(theirs.cpu(), input_ids.cpu()):
        raise RuntimeError(
            f"{adapter.name}: the HF processor makes {theirs.shape[1]} token ids of this prompt "
            f"but mapflow-tl made {input_ids.shape[1]}; the video positions would be wrong. "
            f"Please report this with the checkpoint name.")
