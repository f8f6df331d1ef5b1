"""Built-in arithmetic word problems with worked answers, for demos and smoke runs without downloads.

Records use the LLM-Adapters math format: instruction (the question), input "", output (a short worked
rationale ending "The answer is N."), answer ("N"). Train and test are disjoint by construction: each
underlying problem, a template with its numbers, belongs to one split by a fixed hash, whatever the seed;
names and objects only vary the wording. Numbers stay small so a 135M model can learn the patterns.
"""

from __future__ import annotations

import itertools
import json
import random
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from ..errors import UsageError

SPLITS = ("train", "test")
TEST_SHARE = 5  # one underlying problem in five belongs to the test split

NAMES = ("Tom", "Ana", "Ben", "Mia", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Omar", "Nina", "Raj", "Eva",
         "Kai", "Sara", "Hugo", "Maya", "Finn", "Lena")
OBJECTS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "shells", "cards", "stamps", "eggs",
           "oranges", "crayons", "coins", "buttons", "candies", "balloons", "toy cars", "beads", "plums", "cupcakes")


@dataclass(frozen=True)
class Template:
    """One kind of problem: the ranges of its numbers, its wording, and its worked solution."""

    name: str
    numbers: Callable[[], Iterator[tuple[int, ...]]]  # every number tuple the template can use
    question: str  # format fields: the numbers a, b, c, names p, q and object x
    solve: Callable[..., tuple[list[str], int]]  # numbers -> (equations of the rationale, answer)


def _pairs(lo: int, hi: int, lo2: int, hi2: int) -> Callable[[], Iterator[tuple[int, ...]]]:
    return lambda: itertools.product(range(lo, hi + 1), range(lo2, hi2 + 1))


def _add(a: int, b: int) -> tuple[list[str], int]:
    return [f"{a} + {b} = {a + b}"], a + b


def _sub(a: int, b: int) -> tuple[list[str], int]:
    return [f"{a} - {b} = {a - b}"], a - b


TEMPLATES: tuple[Template, ...] = (
    Template("add", _pairs(2, 50, 2, 50),
             "{p} has {a} {x}. {q} gives {p} {b} more {x}. How many {x} does {p} have now?", _add),
    Template("sub", lambda: ((a, b) for a in range(5, 61) for b in range(1, a)),
             "{p} had {a} {x} and gave {b} of them to {q}. How many {x} does {p} have left?", _sub),
    Template("more-than", lambda: ((a, b) for a in range(5, 41) for b in range(2, a)),
             "{p} has {a} {x} and {q} has {b} {x}. How many more {x} does {p} have than {q}?", _sub),
    Template("mul", _pairs(2, 12, 2, 12),
             "{p} buys {a} packs of {x}. Each pack holds {b} {x}. How many {x} does {p} buy?",
             lambda a, b: ([f"{a} * {b} = {a * b}"], a * b)),
    Template("div", _pairs(2, 12, 2, 10),
             "{p} shares {ab} {x} equally among {b} friends. How many {x} does each friend get?",
             lambda a, b: ([f"{a * b} / {b} = {a}"], a)),
    Template("add-add", lambda: itertools.product(range(1, 21), repeat=3),
             "{p} collects {a} {x} on Monday, {b} on Tuesday and {c} on Wednesday. "
             "How many {x} does {p} collect in all?",
             lambda a, b, c: ([f"{a} + {b} = {a + b}", f"{a + b} + {c} = {a + b + c}"], a + b + c)),
    Template("mul-sub", lambda: ((a, b, c) for a in range(2, 10) for b in range(2, 13) for c in range(2, min(a * b, 21))),
             "{p} has {a} boxes with {b} {x} in each box and gives {c} {x} to {q}. How many {x} does {p} have left?",
             lambda a, b, c: ([f"{a} * {b} = {a * b}", f"{a * b} - {c} = {a * b - c}"], a * b - c)),
    Template("add-mul", lambda: itertools.product(range(2, 10), range(2, 10), range(2, 7)),
             "Each bag holds {a} red {x} and {b} blue {x}. {p} has {c} bags. How many {x} does {p} have?",
             lambda a, b, c: ([f"{a} + {b} = {a + b}", f"{a + b} * {c} = {(a + b) * c}"], (a + b) * c)),
)


def split_of(template: str, numbers: tuple[int, ...]) -> str:
    """The split an underlying problem belongs to: a fixed hash of (template, numbers), independent of any seed."""
    key = f"{template}:{','.join(map(str, numbers))}".encode()
    return "test" if zlib.crc32(key) % TEST_SHARE == 0 else "train"


def _render(template: Template, numbers: tuple[int, ...], rng: random.Random) -> dict[str, str]:
    p, q = rng.sample(NAMES, 2)
    x = rng.choice(OBJECTS)
    fields = dict(zip("abc", numbers), p=p, q=q, x=x)
    if template.name == "div":
        fields["ab"] = numbers[0] * numbers[1]
    equations, answer = template.solve(*numbers)
    return {"instruction": template.question.format(**fields), "input": "",
            "output": f"{'. '.join(equations)}. The answer is {answer}.", "answer": str(answer)}


def generate_problems(n: int, split: str = "train", seed: int = 0) -> list[dict[str, str]]:
    """`n` distinct problems of `split`, the templates taking turns; the same (n, split, seed) gives the same list."""
    if split not in SPLITS:
        raise UsageError(f"Unknown split {split!r}; choose train or test.")
    rng = random.Random(f"{split}:{seed}")
    pools = []
    for template in TEMPLATES:
        pool = [nums for nums in template.numbers() if split_of(template.name, nums) == split]
        rng.shuffle(pool)
        pools.append((template, pool))
    available = sum(len(pool) for _, pool in pools)
    if n > available:
        raise UsageError(f"Asked for {n} {split} problems but only {available} distinct ones exist; ask for fewer.")
    chosen: list[tuple[Template, tuple[int, ...]]] = []
    while len(chosen) < n:
        for template, pool in pools:
            if pool and len(chosen) < n:
                chosen.append((template, pool.pop()))
    rng.shuffle(chosen)
    return [_render(template, numbers, rng) for template, numbers in chosen]


def write_problems(path: str | Path, n: int, split: str = "train", seed: int = 0) -> Path:
    """Write `generate_problems(n, split, seed)` as a JSON list (the LLM-Adapters file format) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(generate_problems(n, split, seed), indent=1) + "\n")
    tmp.replace(path)
    return path
