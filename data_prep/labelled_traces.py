"""Labelled reasoning traces: worked solutions whose first wrong step is known, for checking step credit.

ACPO credits step ``i`` of a solution with ``C_i = L_{i+1} - L_i``, where ``L_i`` is the log-probability of the
correct answer given the question and the steps before step ``i``. A benchmark of that credit needs traces in which
the first wrong step is labelled: the step with the lowest credit should be that step. A file of them is JSONL, one
object per line::

    {"question": "Tom has 12 apples. ...", "steps": ["First, 3 * 4 = 12 apples.", ..., "The answer is 19."],
     "target": "19", "mistake_index": 1}

- ``question``: the problem, a non-empty string;
- ``steps``: the solution, one step per item (non-empty strings); the last states the final (possibly wrong) value;
- ``target``: the correct final answer, a non-empty string (the generated traces: a plain integer);
- ``mistake_index``: the 0-based index into ``steps`` of the first wrong step, or null when no step is wrong.

``read_labelled_traces`` checks every row and names the file and line of each one that is wrong;
``generate_traces`` writes multi-step arithmetic word problems (several problem shapes) in which about 80% of the
traces carry exactly one arithmetic slip, with every later step following on consistently from the wrong value;
``trace_token_inputs`` turns a trace into token ids for scoring, with the token index where each step starts.

``python -m data_prep.labelled_traces OUT.jsonl [--num 120] [--seed 0]`` writes generated traces; the same arguments
give the same file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_prep.arithmetic import evaluate
from data_prep.cli import module_parser, run_tool
from data_prep.schema import DataError

__all__ = [
    "FIELDS",
    "MISTAKE_RATE",
    "SHAPE_NAMES",
    "LabelledTrace",
    "TraceTokens",
    "generate_traces",
    "read_labelled_traces",
    "summary",
    "trace_token_inputs",
    "write_labelled_traces",
]

FIELDS = ("question", "steps", "target", "mistake_index")
MISTAKE_RATE = 0.8
# At most this many bad lines are listed in the error of ``read_labelled_traces`` (all of them are counted).
_MAX_LISTED_ERRORS = 10


@dataclass(frozen=True)
class LabelledTrace:
    """One labelled trace; ``line`` is its 1-based line in the file it was read from (or will be written to).

    ``steps`` is a tuple so that the trace is immutable (and hashable); it is written as a JSON list.
    """

    question: str
    steps: tuple[str, ...]
    target: str
    mistake_index: int | None
    line: int

    def to_json(self) -> dict[str, Any]:
        """The JSONL object of this trace (``line`` is where it is, not part of it)."""
        return {
            "question": self.question,
            "steps": list(self.steps),
            "target": self.target,
            "mistake_index": self.mistake_index,
        }


# ---------------------------------------------------------------------------------------------------------------------
# Reading and writing


def _non_empty_string(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _row_problem(row: Any) -> str | None:
    """What is wrong with one decoded row, or None when it is a valid trace."""
    if not isinstance(row, dict):
        return f"expected a JSON object, got {type(row).__name__}"
    missing = [key for key in FIELDS if key not in row]
    if missing:
        return f"missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
    unknown = sorted(set(row) - set(FIELDS))
    if unknown:
        return f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (allowed: {FIELDS})"
    for key in ("question", "target"):
        if not _non_empty_string(row[key]):
            return f"{key!r} must be a non-empty string, got {row[key]!r}"
    steps = row["steps"]
    if not isinstance(steps, list) or not steps:
        return f"'steps' must be a non-empty list of non-empty strings, got {steps!r}"
    for index, step in enumerate(steps):
        if not _non_empty_string(step):
            return f"'steps'[{index}] must be a non-empty string, got {step!r}"
    mistake = row["mistake_index"]
    if mistake is None:
        return None
    if isinstance(mistake, bool) or not isinstance(mistake, int):
        return f"'mistake_index' must be null or an integer, got {mistake!r}"
    if not 0 <= mistake < len(steps):
        return f"'mistake_index' {mistake} is out of range for {len(steps)} steps (0..{len(steps) - 1})"
    return None


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError(f"duplicate key{'s' if len(duplicates) > 1 else ''} {', '.join(map(repr, duplicates))}")
    return dict(pairs)


def _parse_line(raw: bytes) -> tuple[Any, str | None]:
    """The decoded row of one line and None, or None and what is wrong with the line."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return None, f"not valid UTF-8 ({err.reason} at byte {err.start})"
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys), None
    except json.JSONDecodeError as err:
        return None, f"invalid JSON: {err.msg} (column {err.colno})"
    except ValueError as err:  # a duplicate key
        return None, f"invalid row: {err}"


def read_labelled_traces(path: str | os.PathLike[str]) -> list[LabelledTrace]:
    """Every trace of the JSONL file ``path``, in order; blank lines are skipped.

    Raises ``DataError`` (a ``ValueError``) when any line is wrong, naming the file and, for each bad line (up to
    ten, all counted), its 1-based number and what is wrong; also when the file holds no trace. The file is split on
    ``\\n`` only (not ``str.splitlines``), so that a U+2028 inside a JSON string does not split a row.
    """
    path = Path(path)
    traces: list[LabelledTrace] = []
    errors: list[tuple[int, str]] = []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        row, problem = _parse_line(raw)
        if problem is None:
            problem = _row_problem(row)
        if problem is not None:
            errors.append((number, problem))
            continue
        steps = tuple(row["steps"])
        traces.append(LabelledTrace(row["question"], steps, row["target"], row["mistake_index"], number))
    if len(errors) == 1:
        number, problem = errors[0]
        raise DataError(f"{path}: line {number}: {problem}")
    if errors:
        listed = "\n".join(f"  line {number}: {problem}" for number, problem in errors[:_MAX_LISTED_ERRORS])
        more = f"\n  ... and {len(errors) - _MAX_LISTED_ERRORS} more" if len(errors) > _MAX_LISTED_ERRORS else ""
        raise DataError(f"{path}: {len(errors)} bad lines:\n{listed}{more}")
    if not traces:
        raise DataError(f"{path}: no traces (the file is empty or holds only blank lines)")
    return traces


def write_labelled_traces(traces: Iterable[LabelledTrace], path: str | os.PathLike[str]) -> Path:
    """Write ``traces`` to ``path`` as JSONL, one per line in the given order (UTF-8, keys in ``FIELDS`` order).

    Every trace is checked as ``read_labelled_traces`` would check it, so a written file always reads back;
    the parent folder is created. Returns the path.
    """
    out = Path(path)
    lines = []
    for position, trace in enumerate(traces, start=1):
        row = trace.to_json()
        problem = _row_problem(row)
        if problem is not None:
            raise DataError(f"trace {position} (line {trace.line}) is not valid: {problem}")
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(lines), encoding="utf-8")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Generation

_NAMES = (
    ("Tom", "he", "his"),
    ("Maria", "she", "her"),
    ("Liam", "he", "his"),
    ("Aisha", "she", "her"),
    ("Ken", "he", "his"),
    ("Sofia", "she", "her"),
    ("Omar", "he", "his"),
    ("Emma", "she", "her"),
    ("Ravi", "he", "his"),
    ("Chloe", "she", "her"),
)
_ITEMS = ("apples", "oranges", "marbles", "stickers", "cookies", "pencils", "cards", "shells")
_ANSWER_LINES = ("The answer is {}.", "So the answer is {}.", "Therefore, the answer is {}.", "The final answer is {}.")
# The slip of a wrong step: its result is off by one of these (tried in a random order until every later value stays
# non-negative and the final value differs from the correct one).
_SLIPS = (1, -1, 2, -2, 3, -3, 10, -10)


class _Writer:
    """Records the steps of one solution; the ``slip_at``-th equation (0-based) gets its result off by ``slip``.

    Every later step is computed from the values the writer returns, so it follows on consistently from the wrong
    value. ``negative`` says whether any result came out below zero (such a solution is not used).
    """

    def __init__(self, slip_at: int | None = None, slip: int = 0) -> None:
        self.slip_at = slip_at
        self.slip = slip
        self.steps: list[str] = []
        self.num_equations = 0
        self.mistake_index: int | None = None
        self.wrong_result: int | None = None
        self.negative = False
        self.final: int | None = None

    def eq(self, template: str, left: int, operator: str, right: int) -> int:
        """Append a step stating ``left OP right = result`` (``{eq}`` in ``template``; ``{a}``/``{b}``/``{r}`` too)."""
        result = evaluate(left, operator, right)
        if result is None:
            raise AssertionError(f"inexact division {left} / {right}")
        if self.num_equations == self.slip_at:
            result += self.slip
            self.mistake_index = len(self.steps)
            self.wrong_result = result
        self.num_equations += 1
        self.negative = self.negative or result < 0
        equation = f"{left} {operator} {right} = {result}"
        self.steps.append(template.format(eq=equation, a=left, b=right, r=result))
        return result

    def say(self, text: str) -> None:
        """Append a step with no equation (a restatement)."""
        self.steps.append(text)

    def answer(self, rng: random.Random, value: int) -> None:
        """Append the last step, which states the final value."""
        self.final = value
        self.steps.append(rng.choice(_ANSWER_LINES).format(value))


def _person(rng: random.Random) -> tuple[str, str, str]:
    return rng.choice(_NAMES)


def _shape_buy_and_give(rng: random.Random, w: _Writer) -> str:
    """Has some items, buys bags of them, gives some away (and maybe uses some more): 3-4 equations."""
    name, he, _his = _person(rng)
    item = rng.choice(_ITEMS)
    have, bags, per = rng.randint(5, 30), rng.randint(2, 6), rng.randint(3, 9)
    give = rng.randint(2, have)
    extra = rng.random() < 0.5
    lose = rng.randint(1, 5)
    question = (
        f"{name} has {have} {item}. {he.capitalize()} buys {bags} bags of {per} {item} each and gives away {give}."
        + (f" Later {he} loses {lose} of them." if extra else "")
        + f" How many {item} does {name} have now?"
    )
    bought = w.eq(rng.choice(("First, ", "")) + f"{bags} bags of {per} {item} is {{eq}} {item}.", bags, "*", per)
    total = w.eq(f"So {name} has {{eq}} {item}.", have, "+", bought)
    value = w.eq(f"After giving away {give}, {he} has {{eq}} {item}.", total, "-", give)
    if extra:
        value = w.eq(f"After losing {lose}, {he} has {{eq}} {item}.", value, "-", lose)
    w.answer(rng, value)
    return question


def _shape_change(rng: random.Random, w: _Writer) -> str:
    """Goes shopping with some money: notebooks at a unit price plus a pen, then the change: 3 equations."""
    name, he, _his = _person(rng)
    count, price, pen = rng.randint(2, 6), rng.randint(2, 9), rng.randint(1, 6)
    money = count * price + pen + rng.randint(5, 40)
    intro = rng.random() < 0.4
    question = (
        f"{name} goes to the store with {money} dollars. {he.capitalize()} buys {count} notebooks that cost "
        f"{price} dollars each and a pen that costs {pen} dollars. How much money does {he} have left?"
    )
    if intro:
        w.say(f"{name} starts with {money} dollars.")
    notebooks = w.eq("The notebooks cost {eq} dollars.", count, "*", price)
    spent = w.eq(f"Together with the pen, {he} spends {{eq}} dollars.", notebooks, "+", pen)
    left = w.eq(f"So {he} has {{eq}} dollars left.", money, "-", spent)
    w.answer(rng, left)
    return question


def _shape_bakery(rng: random.Random, w: _Writer) -> str:
    """Bakes trays of muffins, sells some twice, maybe bakes more: 3-4 equations."""
    shop = rng.choice(("A bakery", "A cafe", "Grandma's kitchen", "The school canteen"))
    good = rng.choice(("muffins", "cupcakes", "rolls", "pies"))
    trays, per = rng.randint(3, 8), rng.randint(6, 12)
    made = trays * per
    morning = rng.randint(2, made // 3)
    afternoon = rng.randint(2, made // 3)
    more = rng.randint(4, 20) if rng.random() < 0.5 else None
    question = (
        f"{shop} bakes {trays} trays of {per} {good}. It sells {morning} {good} in the morning and {afternoon} in "
        f"the afternoon."
        + (f" Then it bakes {more} more {good} for the evening." if more is not None else "")
        + f" How many {good} does it have now?"
    )
    baked = w.eq("It bakes {eq} " + good + ".", trays, "*", per)
    sold = w.eq(rng.choice(("In total it sells ", "It sells ")) + f"{{eq}} {good}.", morning, "+", afternoon)
    value = w.eq("That leaves {eq} " + good + ".", baked, "-", sold)
    if more is not None:
        value = w.eq(f"After baking {more} more, it has {{eq}} {good}.", value, "+", more)
    w.answer(rng, value)
    return question


def _shape_trip(rng: random.Random, w: _Writer) -> str:
    """Two legs of a trip at given speeds, the total, and maybe the distance still to go: 3-4 equations."""
    vehicle = rng.choice(("A train", "A bus", "A truck", "A cyclist"))
    slow = vehicle == "A cyclist"
    speed1 = rng.randint(8, 20) if slow else rng.randint(4, 12) * 10
    speed2 = rng.randint(8, 20) if slow else rng.randint(4, 12) * 10
    hours1, hours2 = rng.randint(2, 5), rng.randint(1, 4)
    covered = speed1 * hours1 + speed2 * hours2
    length = covered + rng.randint(5, 60) if rng.random() < 0.5 else None
    question = (
        f"{vehicle} travels at {speed1} km per hour for {hours1} hours, then at {speed2} km per hour for "
        f"{hours2} hours. "
        + (
            f"The whole trip is {length} km long. How many km are still left to go?"
            if length is not None
            else "How many km does it travel in total?"
        )
    )
    first = w.eq(rng.choice(("First, it covers ", "In the first part it covers ")) + "{eq} km.", speed1, "*", hours1)
    second = w.eq(rng.choice(("Then it covers ", "In the second part it covers ")) + "{eq} km.", speed2, "*", hours2)
    value = w.eq("Altogether that is {eq} km.", first, "+", second)
    if length is not None:
        value = w.eq("So {eq} km are left.", length, "-", value)
    w.answer(rng, value)
    return question


def _shape_reading(rng: random.Random, w: _Writer) -> str:
    """Reads pages a day for some days and more at the weekend; the pages left: 3 equations."""
    name, he, his = _person(rng)
    per_day, days, weekend = rng.randint(5, 25), rng.randint(3, 7), rng.randint(10, 40)
    pages = per_day * days + weekend + rng.randint(10, 120)
    intro = rng.random() < 0.4
    question = (
        f"{name}'s book has {pages} pages. {he.capitalize()} reads {per_day} pages a day for {days} days, and then "
        f"{weekend} pages on the weekend. How many pages does {he} have left to read?"
    )
    if intro:
        w.say(f"The book has {pages} pages and {name} reads for {days} days before the weekend.")
    weekdays = w.eq(f"In {days} days {he} reads {{eq}} pages.", per_day, "*", days)
    read = w.eq(f"Adding the weekend, {he} has read {{eq}} pages of {his} book.", weekdays, "+", weekend)
    left = w.eq("So {eq} pages are left.", pages, "-", read)
    w.answer(rng, left)
    return question


def _shape_boxes(rng: random.Random, w: _Writer) -> str:
    """Packs a harvest equally into boxes (an exact division), sells some boxes, keeps the rest: 3 equations."""
    name, he, _his = _person(rng)
    fruit = rng.choice(("apples", "pears", "peaches", "lemons", "plums"))
    boxes, per_box = rng.randint(3, 9), rng.randint(4, 15)
    harvest = boxes * per_box
    sold = rng.randint(1, boxes - 1)
    question = (
        f"{name} picks {harvest} {fruit} and packs them equally into {boxes} boxes. {he.capitalize()} sells {sold} "
        f"of the boxes. How many {fruit} does {he} keep?"
    )
    each = w.eq(rng.choice(("Each box holds ", "First, each box gets ")) + f"{{eq}} {fruit}.", harvest, "/", boxes)
    gone = w.eq(f"{sold} boxes hold {{eq}} {fruit}.", sold, "*", each)
    kept = w.eq(f"So {he} keeps {{eq}} {fruit}.", harvest, "-", gone)
    w.answer(rng, kept)
    return question


def _shape_savings(rng: random.Random, w: _Writer) -> str:
    """Saves money each week, gets a gift, maybe spends some: 2-3 equations."""
    name, he, his = _person(rng)
    weekly, weeks, gift = rng.randint(3, 15), rng.randint(3, 10), rng.randint(5, 30)
    spend = rng.randint(5, weekly * weeks) if rng.random() < 0.5 else None
    question = (
        f"{name} saves {weekly} dollars every week for {weeks} weeks and gets {gift} dollars for {his} birthday."
        + (f" Then {he} spends {spend} dollars on a game." if spend is not None else "")
        + f" How much money does {he} have now?"
    )
    saved = w.eq(f"Saving {weekly} dollars for {weeks} weeks gives {{eq}} dollars.", weekly, "*", weeks)
    value = w.eq(f"With the birthday money, {he} has {{eq}} dollars.", saved, "+", gift)
    if spend is not None:
        value = w.eq(f"After buying the game, {he} has {{eq}} dollars.", value, "-", spend)
    w.answer(rng, value)
    return question


def _shape_garden(rng: random.Random, w: _Writer) -> str:
    """Two kinds of flowers in rows, some picked, maybe more planted: 4-5 equations."""
    rows1, per1, rows2, per2 = rng.randint(2, 8), rng.randint(3, 12), rng.randint(2, 8), rng.randint(3, 12)
    picked = rng.randint(2, (rows1 * per1 + rows2 * per2) // 2)
    planted = rng.randint(3, 25) if rng.random() < 0.5 else None
    question = (
        f"A garden has {rows1} rows of {per1} tulips and {rows2} rows of {per2} roses. {picked} flowers are picked."
        + (f" The gardener then plants {planted} more flowers." if planted is not None else "")
        + " How many flowers are in the garden now?"
    )
    tulips = w.eq(rng.choice(("First, the tulips are ", "The tulips are ")) + "{eq} flowers.", rows1, "*", per1)
    roses = w.eq("The roses are {eq} flowers.", rows2, "*", per2)
    total = w.eq("Together that is {eq} flowers.", tulips, "+", roses)
    value = w.eq(f"After {picked} are picked, {{eq}} flowers are left.", total, "-", picked)
    if planted is not None:
        value = w.eq(f"Planting {planted} more gives {{eq}} flowers.", value, "+", planted)
    w.answer(rng, value)
    return question


_SHAPES: tuple[Callable[[random.Random, _Writer], str], ...] = (
    _shape_buy_and_give,
    _shape_change,
    _shape_bakery,
    _shape_trip,
    _shape_reading,
    _shape_boxes,
    _shape_savings,
    _shape_garden,
)
SHAPE_NAMES = tuple(shape.__name__.removeprefix("_shape_") for shape in _SHAPES)


def _one_trace(rng: random.Random, line: int) -> LabelledTrace | None:
    """One trace drawn from ``rng`` (None when no slip keeps the values sensible; the caller draws again).

    The shape is run twice from the same random state, once without and once with the slip, so the question and
    the wording are the same and only the values from the slip on differ.
    """
    shape = rng.choice(_SHAPES)
    with_mistake = rng.random() < MISTAKE_RATE
    start = rng.getstate()
    correct = _Writer()
    question = shape(rng, correct)
    if correct.negative or correct.final is None:
        return None
    target = str(correct.final)
    if not with_mistake:
        return LabelledTrace(question, tuple(correct.steps), target, None, line)
    slip_at = rng.randrange(correct.num_equations)
    slips = rng.sample(_SLIPS, len(_SLIPS))
    after = rng.getstate()
    chosen: _Writer | None = None
    for slip in slips:
        rng.setstate(start)
        wrong = _Writer(slip_at, slip)
        same_question = shape(rng, wrong) == question
        if not same_question or len(wrong.steps) != len(correct.steps):
            raise AssertionError(f"{shape.__name__} draws differently after a slip")
        if not wrong.negative and wrong.final != correct.final and (wrong.wrong_result or 0) > 0:
            chosen = wrong
            break
    rng.setstate(after)
    if chosen is None:
        return None
    return LabelledTrace(question, tuple(chosen.steps), target, chosen.mistake_index, line)


def generate_traces(num: int, seed: int) -> list[LabelledTrace]:
    """``num`` labelled traces of multi-step arithmetic word problems; the same ``(num, seed)`` gives the same ones.

    Each trace has 3-6 steps: one equation ``a OP b = c`` per step (a shape may open with a restating step that has
    none), then a last step stating the final value. About ``MISTAKE_RATE`` of them get exactly one arithmetic slip:
    a random equation's result is off by a small amount (1-3, or 10), every later step is computed from the wrong
    value (so its own arithmetic is right), and the final stated value is wrong; ``mistake_index`` is that step. The
    others are right throughout (``mistake_index`` None). ``target`` is the correct final value, as a plain integer
    string. Questions are distinct; all values stay non-negative integers. ``line`` is the trace's position, 1-based.
    """
    if num < 0:
        raise DataError(f"num must be >= 0, got {num}")
    rng = random.Random(seed)
    traces: list[LabelledTrace] = []
    seen: set[str] = set()
    attempts = 0
    while len(traces) < num:
        attempts += 1
        if attempts > 100 * num + 1000:
            raise DataError(f"could not draw {num} distinct traces")
        trace = _one_trace(rng, len(traces) + 1)
        if trace is None or trace.question in seen:
            continue
        seen.add(trace.question)
        traces.append(trace)
    return traces


# ---------------------------------------------------------------------------------------------------------------------
# Token inputs


@dataclass(frozen=True)
class TraceTokens:
    """A trace as token ids: the prompt, the response (all steps) and where in the response each step starts.

    Step ``i`` is ``response_ids[step_starts[i]:step_starts[i + 1]]`` (the last one runs to the end); the prefix
    ``prompt_ids + response_ids[:step_starts[i]]`` is the question and the steps before step ``i``.
    """

    prompt_ids: list[int]
    response_ids: list[int]
    step_starts: list[int]

    def step_ids(self, index: int) -> list[int]:
        """The token ids of step ``index`` (with its trailing ``\\n`` for every step but the last)."""
        end = self.step_starts[index + 1] if index + 1 < len(self.step_starts) else len(self.response_ids)
        return self.response_ids[self.step_starts[index] : end]


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _prompt_ids(question: str, tokenizer: Any, chat_template: bool) -> list[int]:
    if chat_template and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        # The template writes its own special tokens (BOS included, where it has one) into the text.
        return _encode(tokenizer, text)
    text = question + "\n"
    ids = _encode(tokenizer, text)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        # Keep the BOS of a tokenizer that opens every sequence with one (Llama-style), and never add an EOS.
        with_special = list(tokenizer(text, add_special_tokens=True)["input_ids"])
        if with_special[:1] == [bos] and ids[:1] != [bos]:
            ids = [bos, *ids]
    return ids


def trace_token_inputs(trace: LabelledTrace, tokenizer: Any, chat_template: bool) -> TraceTokens:
    """The token inputs for scoring ``trace`` with a causal LM whose Hugging Face tokenizer is ``tokenizer``.

    ``prompt_ids``: with ``chat_template`` and a tokenizer that has a chat template, the question as a user message
    with ``add_generation_prompt=True``; otherwise the raw question followed by ``"\\n"`` (with the tokenizer's BOS
    in front when it adds one to every sequence).

    ``response_ids``: the steps joined with ``"\\n"``, without special tokens. They are tokenised step by step and
    concatenated, so every step starts on a token boundary by construction; convention: each step but the last
    carries the ``"\\n"`` that follows it (``"step 1\\n"``, ``"step 2\\n"``, ..., ``"last step"``). The newline
    goes with the step before it rather than the one after because byte-level BPE tokenizers (Qwen's, SmolLM2's,
    GPT-2's) merge ``".\\n"`` into one token: with this convention the concatenation is exactly the tokenisation of
    the joined text whenever a step starts with a letter or digit, and the prefix before step ``i`` ends with the
    newline, as it would when the model wrote it. ``step_starts[0]`` is 0 and the starts strictly increase.

    Raises ``ValueError`` when a step gives no token.
    """
    steps = trace.steps
    response_ids: list[int] = []
    step_starts: list[int] = []
    for index, step in enumerate(steps):
        text = step + "\n" if index + 1 < len(steps) else step
        ids = _encode(tokenizer, text)
        if not ids:
            raise ValueError(f"line {trace.line}: step {index} ({step!r}) gives no token")
        step_starts.append(len(response_ids))
        response_ids.extend(ids)
    return TraceTokens(_prompt_ids(trace.question, tokenizer, chat_template), response_ids, step_starts)


# ---------------------------------------------------------------------------------------------------------------------
# Command line


def summary(traces: Sequence[LabelledTrace]) -> list[str]:
    """Lines counting the traces: with and without a mistake, by ``mistake_index`` and by number of steps."""
    mistakes = Counter(t.mistake_index for t in traces if t.mistake_index is not None)
    lengths = Counter(len(t.steps) for t in traces)
    with_mistake = sum(mistakes.values())
    return [
        f"{len(traces)} traces: {with_mistake} with a mistake, {len(traces) - with_mistake} without",
        "  mistake_index: " + ", ".join(f"{k}: {v}" for k, v in sorted(mistakes.items())),
        "  steps per trace: " + ", ".join(f"{k}: {v}" for k, v in sorted(lengths.items())),
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = module_parser("data_prep.labelled_traces", __doc__)
    parser.add_argument("out", metavar="OUT.jsonl", help="the JSONL file to write (its folder is created)")
    parser.add_argument("--num", type=int, default=120, help="how many traces (default 120)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); the same seed, the same file")
    parser.epilog = "Example: python -m data_prep.labelled_traces benchmarks/data/labelled_arithmetic_traces.jsonl"
    return parser


def run(args: argparse.Namespace) -> None:
    traces = generate_traces(args.num, args.seed)
    out = write_labelled_traces(traces, args.out)
    print(f"wrote {len(traces)} traces (seed {args.seed}) to {out}")
    for line in summary(traces):
        print(line)


def main(argv: Sequence[str] | None = None) -> None:
    run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    main()
