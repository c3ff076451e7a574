"""Which TransformerLens backbone a VideoLLM gets: ``"hooked"`` or ``"bridge"``.

- ``"hooked"``: TransformerLens 3.9's ``HookedTransformer``, weights converted one by one from
  the Hugging Face text decoder (:func:`~mapflow_tl.models.backbone.hooked_from_hf`).
- ``"bridge"``: TransformerLens 4's ``TransformerBridge`` around the Hugging Face text decoder
  itself, in compatibility mode without weight processing (HookedTransformer hook names,
  unprocessed weights: :func:`~mapflow_tl.models.bridge.bridge_from_hf`). TransformerLens 4
  removed ``HookedTransformer``.

The two never coexist in one environment (each needs its own TransformerLens major version), so
the default is the one the installed TransformerLens provides; ``backend=`` names it explicitly
and a backend the installed version cannot provide is a one-line error naming the fix. Plain
Python: reads the installed version from package metadata, never imports TransformerLens.
"""

from __future__ import annotations

from importlib import metadata

from ..errors import InputError

__all__ = ["BACKENDS", "installed_transformer_lens", "default_backend", "resolve_backend"]

#: backend name → (TransformerLens major version that provides it, the pip requirement)
BACKENDS: dict[str, tuple[int, str]] = {
    "hooked": (3, "transformer-lens>=3.9,<4"),
    "bridge": (4, "transformer-lens>=4.3,<5"),
}


def installed_transformer_lens() -> str | None:
    """The installed TransformerLens version string, or None."""
    try:
        return metadata.version("transformer-lens")
    except metadata.PackageNotFoundError:
        return None


def _major(version: str) -> int:
    return int(version.split(".")[0])


def default_backend() -> str:
    """The backend the installed TransformerLens provides: ``"hooked"`` for 3.x,
    ``"bridge"`` for 4.x."""
    version = installed_transformer_lens()
    if version is None:
        raise InputError("TransformerLens is not installed; pip install "
                         "'transformer-lens>=3.9,<5'")
    major = _major(version)
    for name, (needed, _) in BACKENDS.items():
        if major == needed:
            return name
    raise InputError(f"TransformerLens {version} is not supported; install "
                     f"'transformer-lens>=3.9,<5' (3.9: backend 'hooked', 4.x: backend 'bridge')")


def resolve_backend(requested: str | None = None) -> str:
    """``requested`` checked against the installed TransformerLens, or the default when None /
    ``"auto"``."""
    if requested in (None, "auto"):
        return default_backend()
    if requested not in BACKENDS:
        raise InputError(f"backend must be one of {sorted(BACKENDS)} or 'auto', got "
                         f"{requested!r}")
    version = installed_transformer_lens()
    needed, requirement = BACKENDS[requested]
    if version is None or _major(version) != needed:
        raise InputError(f"backend {requested!r} needs TransformerLens {needed}.x, but "
                         f"{'none' if version is None else version} is installed; "
                         f"pip install '{requirement}' (or use backend='auto')")
    return requested
