"""SynthTV: a synthetic temporal VideoQA benchmark and two tiny trained VideoLLMs.

- :mod:`.generator` — procedural 8-frame videos, five temporal tasks named after TVBench's and
  four single-frame image tasks; TVBench-format JSON and .mp4 output; spatial / temporal word lists.
- :mod:`.build` — word-level tokenizer, processor configuration, the
  ``LlavaNextVideoForConditionalGeneration`` of the given size, prompt construction.
- :mod:`.train` — the two training stages (``image`` → ``synthtv-image``, ``video`` →
  ``synthtv-video-ft``).
- :mod:`.evaluate` — per-task accuracy and the cross-frame knockout study.
- :mod:`.card` — measurements and model cards; :mod:`.cli` — ``mapflow-tl synthtv …``.
"""

from .generator import ALL_TASKS, IMAGE_TASKS, SPATIAL_WORDS, TEMPORAL_TASKS, TEMPORAL_WORDS
from .train import CHECKPOINT_DIR, MODEL_NAMES, checkpoint_path

__all__ = ["ALL_TASKS", "IMAGE_TASKS", "TEMPORAL_TASKS", "SPATIAL_WORDS", "TEMPORAL_WORDS",
           "CHECKPOINT_DIR", "MODEL_NAMES", "checkpoint_path"]
