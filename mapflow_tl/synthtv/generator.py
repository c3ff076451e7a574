"""SynthTV: procedural 8-frame videos with temporal multiple-choice questions.

Five temporal tasks named after TVBench's (Action Antonym, Action Sequence, Scene Transition,
Moving Direction, Object Count) and four single-frame "image" tasks (colour, shape, position, scene)
used to pre-train the image-only model. Every video is described by a list of per-frame scene
*states* (background + objects); pixels are rendered from the states, and every answer is derived
from the states by the same oracle that the single-frame check uses.

The vocabulary separates spatial words (colours, shapes, places) from temporal words (directions,
before/after, grows/shrinks, appears/disappears): :data:`SPATIAL_WORDS` and :data:`TEMPORAL_WORDS`,
so a logit-lens analysis can count them per layer as Map the Flow does (Finding 2).

Everything is deterministic in ``seed``: item ``i`` of task ``k`` draws from its own generator
``numpy.random.default_rng((seed, k, i))``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

__all__ = [
    "N_FRAMES", "FRAME_SIZE", "TEMPORAL_TASKS", "IMAGE_TASKS", "TASK_FILES",
    "COLOURS", "SHAPES", "SCENES", "PLACES", "DIRECTIONS", "NUMBERS",
    "SPATIAL_WORDS", "TEMPORAL_WORDS", "OTHER_WORDS", "ALL_WORDS",
    "ObjectState", "FrameState", "Item",
    "make_item", "generate_task", "generate", "ALL_TASKS", "render", "check_item", "answer_from_states",
    "write_benchmark", "write_mp4", "transition_phrase", "TRANSITION_FORMS",
]

N_FRAMES = 8
FRAME_SIZE = 32
# Each generated frame is written this many times to the .mp4 so that a reader sampling 8 frames
from ..errors import InputError
# by segment midpoints (TVBench / MVBench evaluation code) lands on each original frame exactly.
MP4_REPEAT = 4
MP4_FPS = 8

# ----------------------------------------------------------------------------------- vocabulary
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 45, 45),
    "yellow": (245, 225, 40),
    "white": (250, 250, 250),
    "cyan": (40, 230, 235),
    "pink": (250, 120, 220),
}
SHAPES = ("square", "circle", "triangle")
# Scenes are places: each is a background colour.
SCENES: dict[str, tuple[int, int, int]] = {
    "forest": (25, 90, 35),
    "sea": (20, 45, 125),
    "desert": (140, 105, 45),
    "night": (20, 18, 30),
}
PLACES = ("top", "bottom", "left", "right")      # where an object is inside one frame
DIRECTIONS = ("leftward", "rightward", "upward", "downward")
DIRECTION_STEP = {"leftward": (-1, 0), "rightward": (1, 0), "upward": (0, -1), "downward": (0, 1)}
NUMBERS = ("one", "two", "three")
ACTIONS = ("grows", "shrinks", "appears", "disappears")
ANTONYM = {"grows": "shrinks", "shrinks": "grows", "appears": "disappears",
           "disappears": "appears"}

SPATIAL_WORDS: tuple[str, ...] = (*COLOURS, *SHAPES, *SCENES, *PLACES)
TEMPORAL_WORDS: tuple[str, ...] = (*DIRECTIONS, *ACTIONS, "before", "after", "first", "last",
                                   "move", "change", "changes")
# Function words of the questions and options (neither spatial nor temporal).
OTHER_WORDS: tuple[str, ...] = (
    "what", "which", "where", "how", "many", "does", "do", "is", "the", "this", "it", "objects",
    "object", "colour", "shape", "scene", "way", "to", *NUMBERS,
)
ALL_WORDS: tuple[str, ...] = (*SPATIAL_WORDS, *TEMPORAL_WORDS, *OTHER_WORDS)

TEMPORAL_TASKS = ("action_antonym", "action_sequence", "scene_transition", "moving_direction",
                  "object_count")
IMAGE_TASKS = ("colour", "shape", "position", "scene")
# TVBench's file names: json/<task>.json, video/<task>/<name>.mp4
TASK_FILES = {task: f"{task}.json" for task in TEMPORAL_TASKS + IMAGE_TASKS}


# ----------------------------------------------------------------------------------- states
@dataclass(frozen=True)
class ObjectState:
    """One object in one frame: centre (x, y) in pixels, half-size ``radius``, visibility."""

    colour: str
    shape: str
    x: float
    y: float
    radius: float
    visible: bool = True

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class FrameState:
    scene: str
    objects: tuple[ObjectState, ...]


@dataclass
class Item:
    """One multiple-choice question about one video (or one image: a 1-frame video)."""

    task: str
    index: int
    question: str
    candidates: list[str]
    answer: str
    states: list[FrameState]
    meta: dict[str, Any] = field(default_factory=dict)
    _frames: np.ndarray | None = field(default=None, repr=False)

    @property
    def answer_index(self) -> int:
        return self.candidates.index(self.answer)

    @property
    def name(self) -> str:
        return f"{self.task}_{self.index:05d}"

    @property
    def named_answer(self) -> str:
        """The answer as named without options (open-ended training): the right option's text,
        except that a Scene Transition phrased "B after A" is named "A to B"."""
        return str(self.meta.get("named_answer", self.answer))

    @property
    def frames(self) -> np.ndarray:
        """Rendered frames, uint8 ``[T, FRAME_SIZE, FRAME_SIZE, 3]`` (cached)."""
        if self._frames is None:
            self._frames = render(self.states, seed=self.meta["noise_seed"])
        return self._frames

    def to_tvbench(self) -> dict[str, Any]:
        return {"video": f"{self.name}.mp4", "question": self.question,
                "candidates": list(self.candidates), "answer": self.answer}


# ----------------------------------------------------------------------------------- rendering
_YY, _XX = np.mgrid[0:FRAME_SIZE, 0:FRAME_SIZE].astype(np.float32) + 0.5


def _shape_mask(obj: ObjectState) -> np.ndarray:
    dx, dy = _XX - obj.x, _YY - obj.y
    r = obj.radius
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r + 0.5
    if obj.shape == "triangle":      # apex up, base down
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2 + 0.5)
    raise ValueError(f"unknown shape {obj.shape!r}; known: {SHAPES}")


def render(states: Sequence[FrameState], seed: int = 0) -> np.ndarray:
    """Render scene states to uint8 frames ``[T, H, W, 3]`` (a little per-pixel noise per frame)."""
    rng = np.random.default_rng(seed)
    frames = np.empty((len(states), FRAME_SIZE, FRAME_SIZE, 3), dtype=np.float32)
    for t, state in enumerate(states):
        frame = np.broadcast_to(np.array(SCENES[state.scene], np.float32),
                                (FRAME_SIZE, FRAME_SIZE, 3)).copy()
        frame += rng.normal(0.0, 6.0, size=frame.shape).astype(np.float32)
        for obj in state.objects:
            if obj.visible:
                frame[_shape_mask(obj)] = COLOURS[obj.colour]
        frames[t] = frame
    return np.clip(frames, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------- helpers
def _layout(index: int, lo: int, hi: int) -> tuple[int, int]:
    """(number of options, answer position) for item ``index``: cycles through every pair so
    that, for each number of options, every answer letter is equally frequent."""
    pairs = [(n, position) for n in range(lo, hi + 1) for position in range(n)]
    return pairs[index % len(pairs)]


def _letter_balanced(rng: np.random.Generator, layout: tuple[int, int], candidates: list[str],
                     answer: str, keep: Sequence[str] = ()) -> list[str]:
    """``layout[0]`` options: the answer at position ``layout[1]``, the others drawn from
    ``candidates`` (those in ``keep`` always included)."""
    n_options, position = layout
    kept = [str(c) for c in keep if c != answer]
    others = [str(c) for c in candidates if c != answer and c not in kept]
    rng.shuffle(others)
    others = kept + others
    others = others[: n_options - 1]
    rng.shuffle(others)
    return others[:position] + [str(answer)] + others[position:]


def _distinct_objects(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """n (colour, shape) pairs with distinct colours and distinct shapes where possible."""
    colours = list(rng.permutation(list(COLOURS)))[:n]
    shapes = [SHAPES[i % len(SHAPES)] for i in rng.permutation(len(SHAPES))]
    shapes = [shapes[i % len(shapes)] for i in range(n)]
    return list(zip(colours, shapes))


def _free_spot(rng: np.random.Generator, taken: list[tuple[float, float]], radius: float,
               margin: float = 4.0, lo: float | None = None, hi: float | None = None,
               box: tuple[float, float, float, float] | None = None) -> tuple[float, float]:
    """A centre inside the frame (or ``box`` = x0, x1, y0, y1) away from the ``taken`` centres."""
    x0, x1, y0, y1 = box or (radius + 1, FRAME_SIZE - radius - 1, radius + 1,
                             FRAME_SIZE - radius - 1)
    for _ in range(200):
        x, y = float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1))
        if all(abs(x - a) > 2 * radius + margin or abs(y - b) > 2 * radius + margin
               for a, b in taken):
            return x, y
    return x, y


def _static(objects: Iterable[ObjectState], scene: str, n_frames: int = N_FRAMES) -> list[FrameState]:
    return [FrameState(scene, tuple(objects)) for _ in range(n_frames)]


def _scene(rng: np.random.Generator) -> str:
    return str(rng.choice(list(SCENES)))


# ----------------------------------------------------------------------------------- oracles
# Each oracle reads the answer back from the per-frame states (None when the states do not
# support any candidate). They are what the generator checks against, and what makes the
# single-frame-unanswerable check meaningful: the same oracle on reversed states must disagree.
def _track(states: Sequence[FrameState], name: str) -> list[ObjectState | None]:
    return [next((o for o in s.objects if o.name == name), None) for s in states]


def _oracle_antonym(states, meta) -> str | None:
    track = _track(states, meta["object"])
    visible = [o is not None and o.visible for o in track]
    if all(visible):
        first, last = track[0].radius, track[-1].radius
        return None if first == last else ("grows" if last > first else "shrinks")
    if not visible[0] and visible[-1]:
        return "appears"
    if visible[0] and not visible[-1]:
        return "disappears"
    return None


def _events(states, names) -> list[tuple[int, str]]:
    """(frame, object name) of every appear/disappear event of the named objects, in time
    order."""
    events = []
    for name in names:
        track = _track(states, name)
        visible = [o is not None and o.visible for o in track]
        for t in range(1, len(states)):
            if visible[t] != visible[t - 1]:
                events.append((t, name))
    return sorted(events)


def _oracle_sequence(states, meta) -> str | None:
    events = _events(states, meta["objects"])
    if len(events) != 2 or events[0][0] == events[1][0]:
        return None
    return events[0][1]


def _oracle_transition(states, meta) -> str | None:
    first, last = states[0].scene, states[-1].scene
    return None if first == last else transition_phrase(first, last, meta.get("form", "to"))


def _oracle_direction(states, meta) -> str | None:
    track = _track(states, meta["object"])
    dx, dy = track[-1].x - track[0].x, track[-1].y - track[0].y
    if abs(dx) < 1 and abs(dy) < 1:
        return None
    if abs(dx) > abs(dy):
        return "rightward" if dx > 0 else "leftward"
    return "downward" if dy > 0 else "upward"


def _oracle_count(states, meta) -> str | None:
    names = [o.name for o in states[0].objects]
    moving = sum(1 for name in names
                 if len({(o.x, o.y) for o in _track(states, name)}) > 1)
    return NUMBERS[moving - 1] if 1 <= moving <= len(NUMBERS) else None


def _oracle_image(states, meta) -> str | None:
    return meta["true"]


ORACLES: dict[str, Callable[[Sequence[FrameState], dict], str | None]] = {
    "action_antonym": _oracle_antonym,
    "action_sequence": _oracle_sequence,
    "scene_transition": _oracle_transition,
    "moving_direction": _oracle_direction,
    "object_count": _oracle_count,
    **{task: _oracle_image for task in IMAGE_TASKS},
}


def answer_from_states(item: Item, states: Sequence[FrameState] | None = None) -> str | None:
    """The answer the item's oracle reads from ``states`` (default: the item's own states)."""
    meta = dict(item.meta, candidates=item.candidates)
    return ORACLES[item.task](item.states if states is None else states, meta)


# ----------------------------------------------------------------------------------- tasks
def _gen_action_antonym(rng, index):
    scene = _scene(rng)
    (colour, shape), (colour2, shape2) = _distinct_objects(rng, 2)
    action = str(rng.choice(ACTIONS))
    x, y = _free_spot(rng, [], 6.5)
    dx2, dy2 = _free_spot(rng, [(x, y)], 3.5)
    distractor = ObjectState(colour2, shape2, dx2, dy2, float(rng.uniform(2.5, 4.0)))
    states = []
    if action in ("grows", "shrinks"):
        small, big = float(rng.uniform(2.0, 3.0)), float(rng.uniform(5.5, 6.5))
        radii = np.linspace(small, big, N_FRAMES)
        if action == "shrinks":
            radii = radii[::-1]
        visible = [True] * N_FRAMES
    else:
        radius = float(rng.uniform(3.0, 5.5))
        radii = np.full(N_FRAMES, radius)
        switch = int(rng.integers(2, N_FRAMES - 1))
        visible = [t >= switch for t in range(N_FRAMES)]
        if action == "disappears":
            visible = visible[::-1]
    for t in range(N_FRAMES):
        objects = [ObjectState(colour, shape, x, y, float(radii[t]), visible[t])]
        if index % 3:   # two items in three carry a static distractor
            objects.append(distractor)
        states.append(FrameState(scene, tuple(objects)))
    true = action
    # The antonym is always an option (TVBench's Action Antonym design).
    candidates = _letter_balanced(rng, _layout(index, 2, 3), list(ACTIONS), true,
                                  keep=[ANTONYM[action]])
    question = f"what does the {colour} {shape} do ?"
    return question, candidates, true, states, {"object": f"{colour} {shape}", "action": action}


def _gen_action_sequence(rng, index):
    scene = _scene(rng)
    pairs = _distinct_objects(rng, 2)
    # Two objects, each appearing or disappearing once (the kind drawn for each), at two
    # different frames.
    times = sorted(rng.choice(np.arange(1, N_FRAMES), size=2, replace=False).tolist())
    taken: list[tuple[float, float]] = []
    tracks, names = [], []
    for k, (colour, shape) in enumerate(pairs):
        radius = float(rng.uniform(3.0, 4.5))
        x, y = _free_spot(rng, taken, radius)
        taken.append((x, y))
        kind = str(rng.choice(["appears", "disappears"]))
        visible = [(t >= times[k]) == (kind == "appears") for t in range(N_FRAMES)]
        names.append(f"{colour} {shape}")
        tracks.append([ObjectState(colour, shape, x, y, radius, v) for v in visible])
    states = [FrameState(scene, tuple(track[t] for track in tracks)) for t in range(N_FRAMES)]
    # "Which of two events happened first": both options are objects that change in the video,
    # so no frame — nor the set of frames without their order, since each object may appear or
    # disappear — tells them apart: an order-blind model is at chance (50 %). Asking "first" or
    # "last" at random instead was not learnt in a whole video stage (docs/synthtv.md, seventh
    # session).
    true, other = names
    candidates = _letter_balanced(rng, _layout(index, 2, 2), [other], true)
    return "which object changes first ?", candidates, true, states, {"objects": names}


TRANSITION_FORMS = ("to", "after")


def transition_phrase(first: str, second: str, form: str = "to") -> str:
    """The option naming a change of scene from ``first`` to ``second``: "forest to sea" (form
    ``"to"``) or, naming the places the other way round, "sea after forest" (form ``"after"``)."""
    if form == "to":
        return f"{first} to {second}"
    if form == "after":
        return f"{second} after {first}"
    raise ValueError(f"unknown transition form {form!r}; known: {list(TRANSITION_FORMS)}")


def _gen_scene_transition(rng, index):
    first, second = (str(s) for s in rng.choice(list(SCENES), size=2, replace=False))
    switch = int(rng.integers(2, N_FRAMES - 1))
    pairs = _distinct_objects(rng, int(rng.integers(1, 3)))
    taken: list[tuple[float, float]] = []
    objects = []
    for colour, shape in pairs:
        radius = float(rng.uniform(2.5, 4.5))
        x, y = _free_spot(rng, taken, radius)
        taken.append((x, y))
        objects.append(ObjectState(colour, shape, x, y, radius))
    states = [FrameState(first if t < switch else second, tuple(objects)) for t in range(N_FRAMES)]
    # TVBench's design: the only other option is the same change reversed (A to B vs B to A), so
    # both options name exactly the video's two places and no frame, nor the set of frames
    # without their order, tells them apart; an order-blind model is at chance (50 %).
    # Half the items (alternating in pairs, so every answer letter meets both forms equally
    # often) name the places the other way round, "B after A": the place named first in an
    # option is the video's first place as often as its last. With "A to B" alone, a reader of
    # the last frame that matches the first-named place scored 0 % and one of the first frame
    # 100 %: synthtv-image, which attends to the nearest frame, chose "B to A" in 157 of 200
    # (docs/synthtv.md, eighth session).
    form = TRANSITION_FORMS[(index // 2) % 2]
    true = transition_phrase(first, second, form)
    candidates = _letter_balanced(rng, _layout(index, 2, 2),
                                  [transition_phrase(second, first, form)], true)
    # Asked without options, the model names the change one way: "A to B".
    meta = {"switch": switch, "form": form, "named_answer": transition_phrase(first, second)}
    return "how does the scene change ?", candidates, true, states, meta


def _gen_moving_direction(rng, index):
    scene = _scene(rng)
    (colour, shape), (colour2, shape2) = _distinct_objects(rng, 2)
    direction = str(rng.choice(DIRECTIONS))
    ux, uy = DIRECTION_STEP[direction]
    radius = float(rng.uniform(3.0, 4.5))
    speed = float(rng.uniform(2.0, 2.6))
    travel = speed * (N_FRAMES - 1)
    lo, hi = radius + 1, FRAME_SIZE - radius - 1
    # The start is drawn so that the whole path fits: the distribution of positions in any one
    # frame is the same for opposite directions (mirror-symmetric), so one frame gives no answer.
    along = float(rng.uniform(lo, hi - travel))
    across = float(rng.uniform(lo, hi))
    if ux:
        x0, y0 = (along if ux > 0 else FRAME_SIZE - along), across
    else:
        x0, y0 = across, (along if uy > 0 else FRAME_SIZE - along)
    path = [(x0 + ux * speed * t, y0 + uy * speed * t) for t in range(N_FRAMES)]
    distractor = None
    if index % 2:
        dx, dy = _free_spot(rng, path[::3], 3.0, margin=2.0)
        distractor = ObjectState(colour2, shape2, dx, dy, 3.0)
    states = []
    for x, y in path:
        objects = [ObjectState(colour, shape, x, y, radius)]
        if distractor is not None:
            objects.append(distractor)
        states.append(FrameState(scene, tuple(objects)))
    true = direction
    opposite = {"leftward": "rightward", "rightward": "leftward", "upward": "downward",
                "downward": "upward"}[direction]
    # The opposite direction is always an option.
    candidates = _letter_balanced(rng, _layout(index, 2, 4), list(DIRECTIONS), true,
                                  keep=[opposite])
    question = f"which way does the {colour} {shape} move ?"
    return question, candidates, true, states, {"object": f"{colour} {shape}",
                                                "direction": direction}


COUNT_TOTAL = 4   # objects in every frame, whatever the answer


def _gen_object_count(rng, index):
    scene = _scene(rng)
    n_moving = int(rng.integers(1, 4))
    pairs = _distinct_objects(rng, COUNT_TOTAL)
    radius = 2.5
    tracks = []
    # Objects live in the four quadrants so that their paths never cross.
    quadrants = [(0, 0), (1, 0), (0, 1), (1, 1)]
    movers = set(rng.choice(COUNT_TOTAL, size=n_moving, replace=False).tolist())
    half = FRAME_SIZE / 2
    for k, (colour, shape) in enumerate(pairs):
        qx, qy = quadrants[k]
        if k in movers:
            ux, uy = DIRECTION_STEP[str(rng.choice(DIRECTIONS))]
            speed = 1.0
            travel = speed * (N_FRAMES - 1)
            lo, hi = radius + 1, half - radius - 1
            along = float(rng.uniform(lo, hi - travel))
            across = float(rng.uniform(lo, hi))
            if ux:
                x0 = along if ux > 0 else half - along
                y0 = across
            else:
                x0, y0 = across, (along if uy > 0 else half - along)
            path = [(qx * half + x0 + ux * speed * t, qy * half + y0 + uy * speed * t)
                    for t in range(N_FRAMES)]
        else:
            x = qx * half + float(rng.uniform(radius + 1, half - radius - 1))
            y = qy * half + float(rng.uniform(radius + 1, half - radius - 1))
            path = [(x, y)] * N_FRAMES
        tracks.append([ObjectState(colour, shape, x, y, radius) for x, y in path])
    states = [FrameState(scene, tuple(track[t] for track in tracks)) for t in range(N_FRAMES)]
    true = NUMBERS[n_moving - 1]
    candidates = _letter_balanced(rng, _layout(index, 2, 3), list(NUMBERS), true)
    return "how many objects move ?", candidates, true, states, {"n_moving": n_moving}


def _image_scene(rng, n_objects, place=None):
    scene = _scene(rng)
    pairs = _distinct_objects(rng, n_objects)
    objects: list[ObjectState] = []
    taken: list[tuple[float, float]] = []
    for k, (colour, shape) in enumerate(pairs):
        radius = float(rng.uniform(3.0, 5.0))
        box = None
        if k == 0 and place is not None:
            edge, middle = radius + 1, (FRAME_SIZE / 2 - 3, FRAME_SIZE / 2 + 3)
            box = {"left": (edge, edge + 3, *middle), "right": (FRAME_SIZE - edge - 3,
                   FRAME_SIZE - edge, *middle), "top": (*middle, edge, edge + 3),
                   "bottom": (*middle, FRAME_SIZE - edge - 3, FRAME_SIZE - edge)}[place]
        x, y = _free_spot(rng, taken, radius, box=box)
        if k > 0 and place is not None:    # keep the other objects away from the target region
            x, y = _free_spot(rng, taken, radius)
        taken.append((x, y))
        objects.append(ObjectState(colour, shape, x, y, radius))
    return scene, objects


def _gen_colour(rng, index):
    scene, objects = _image_scene(rng, int(rng.integers(1, 3)))
    target = objects[0]
    true = target.colour
    candidates = _letter_balanced(rng, _layout(index, 2, 4), list(COLOURS), true)
    return (f"what colour is the {target.shape} ?", candidates, true,
            _static(objects, scene, 1), {"true": true})


def _gen_shape(rng, index):
    scene, objects = _image_scene(rng, int(rng.integers(1, 3)))
    target = objects[0]
    true = target.shape
    candidates = _letter_balanced(rng, _layout(index, 2, 3), list(SHAPES), true)
    return (f"what shape is the {target.colour} object ?", candidates, true,
            _static(objects, scene, 1), {"true": true})


def _gen_position(rng, index):
    place = str(rng.choice(PLACES))
    scene, objects = _image_scene(rng, 1, place=place)
    target = objects[0]
    candidates = _letter_balanced(rng, _layout(index, 2, 4), list(PLACES), place)
    return (f"where is the {target.colour} {target.shape} ?", candidates, place,
            _static(objects, scene, 1), {"true": place})


def _gen_scene(rng, index):
    scene, objects = _image_scene(rng, int(rng.integers(1, 3)))
    candidates = _letter_balanced(rng, _layout(index, 2, 4), list(SCENES), scene)
    return ("where is this ?", candidates, scene, _static(objects, scene, 1), {"true": scene})


GENERATORS = {
    "action_antonym": _gen_action_antonym,
    "action_sequence": _gen_action_sequence,
    "scene_transition": _gen_scene_transition,
    "moving_direction": _gen_moving_direction,
    "object_count": _gen_object_count,
    "colour": _gen_colour,
    "shape": _gen_shape,
    "position": _gen_position,
    "scene": _gen_scene,
}
ALL_TASKS = TEMPORAL_TASKS + IMAGE_TASKS


# ----------------------------------------------------------------------------------- checks
def check_item(item: Item) -> None:
    """Raise ``ValueError`` unless the item is well formed and, for a temporal task, cannot be
    answered from a single frame.

    - the answer is one of 2–4 distinct candidates and the oracle reads it back from the states;
    - direction, sequence, transition and antonym items: the same oracle on the *reversed* frames
      gives a different answer (the order of frames, not their content, decides);
    - object count: every frame shows the same number of objects (``COUNT_TOTAL``), and the frames
      reversed give the same answer (counting motion needs two frames, not their order).
    """
    where = f"{item.name}"
    if not 2 <= len(item.candidates) <= 4 or len(set(item.candidates)) != len(item.candidates):
        raise ValueError(f"{where}: needs 2-4 distinct candidates, got {item.candidates}")
    if item.answer not in item.candidates:
        raise ValueError(f"{where}: answer {item.answer!r} is not among {item.candidates}")
    read_back = answer_from_states(item)
    if read_back != item.answer:
        raise ValueError(f"{where}: the states say {read_back!r}, the item says {item.answer!r}")
    if item.task in IMAGE_TASKS:
        if len(item.states) != 1:
            raise ValueError(f"{where}: an image task must have exactly one frame")
        return
    if len(item.states) != N_FRAMES:
        raise ValueError(f"{where}: expected {N_FRAMES} frames, got {len(item.states)}")
    if item.task == "object_count":
        counts = {sum(o.visible for o in s.objects) for s in item.states}
        if counts != {COUNT_TOTAL}:
            raise ValueError(f"{where}: frames show {sorted(counts)} objects; a single frame "
                             f"must not reveal the count (expected {COUNT_TOTAL} in each)")
        return
    reversed_answer = answer_from_states(item, item.states[::-1])
    if reversed_answer == item.answer:
        raise ValueError(f"{where}: the reversed video has the same answer {item.answer!r}: "
                         f"the question is answerable without the frame order")


# ----------------------------------------------------------------------------------- API
def make_item(task: str, seed: int, index: int) -> Item:
    """Item ``index`` of ``task`` for ``seed`` (drawn from ``default_rng((seed, task_id, index))``),
    checked with :func:`check_item`."""
    if task not in GENERATORS:
        raise InputError(f"unknown SynthTV task {task!r}; known: {list(GENERATORS)}")
    rng = np.random.default_rng((seed, ALL_TASKS.index(task), index))
    question, candidates, answer, states, meta = GENERATORS[task](rng, index)
    meta["noise_seed"] = int(rng.integers(2**31))
    item = Item(task, index, question, [str(c) for c in candidates], str(answer), states, meta)
    check_item(item)
    return item


def generate_task(task: str, n: int, seed: int, start: int = 0) -> list[Item]:
    """Items ``start … start + n - 1`` of one task (see :func:`make_item`)."""
    return [make_item(task, seed, index) for index in range(start, start + n)]


def generate(tasks: Iterable[str], per_task: int, seed: int) -> dict[str, list[Item]]:
    return {task: generate_task(task, per_task, seed) for task in tasks}


def write_mp4(frames: np.ndarray, path: str | Path, *, repeat: int = MP4_REPEAT,
              fps: int = MP4_FPS) -> None:
    """Write uint8 ``[T, H, W, 3]`` frames to an H.264 .mp4 (each frame ``repeat`` times)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv444p"
        stream.options = {"crf": "0", "preset": "veryfast"}
        for frame in frames:
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for _ in range(repeat):
                for packet in stream.encode(video_frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_benchmark(out: str | Path, items_by_task: dict[str, list[Item]], *,
                    write_videos: bool = True) -> dict[str, int]:
    """Write TVBench's layout: ``out/json/<task>.json`` (a list of {video, question, candidates,
    answer}) and ``out/video/<task>/<name>.mp4``. Returns the item count per task."""
    out = Path(out)
    (out / "json").mkdir(parents=True, exist_ok=True)
    counts = {}
    for task, items in items_by_task.items():
        video_dir = out / "video" / task
        video_dir.mkdir(parents=True, exist_ok=True)
        if write_videos:
            for item in items:
                write_mp4(item.frames, video_dir / f"{item.name}.mp4")
        with open(out / "json" / TASK_FILES[task], "w") as handle:
            json.dump([item.to_tvbench() for item in items], handle, indent=1)
        counts[task] = len(items)
    return counts
