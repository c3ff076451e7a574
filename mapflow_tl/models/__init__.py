"""VideoLLM families: one adapter file each, registered by ``config.json`` model_type.

``load_videollm(name_or_path)`` reads the checkpoint's ``config.json``, picks the family adapter
and returns a :class:`~mapflow_tl.models.videollm.VideoLLM`. The layout (which file owns what) is
in docs/adding_a_model.md.

Names resolve on first use, so a light submodule (``mapflow_tl.models.frames``, used by ``data
check``) can be imported without loading TransformerLens and every family.
"""

from __future__ import annotations

from .._lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("load_videollm", "resolve_checkpoint", "supported_architectures",
                     "check_devices", "BUILTIN_MODELS", "FAMILY_MODULES"), "load"),
    **dict.fromkeys(("VideoLLM", "Prepared", "VideoSample", "as_video_sample"), "videollm"),
    **dict.fromkeys(("FamilyAdapter", "register_adapter"), "adapter"),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
