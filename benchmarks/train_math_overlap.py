"""How many train_math_3k.json records share their question with each math test set (normalised-question match),
and how many distinct test questions that covers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapterlab.data.decontaminate import decontaminate, normalize_question, overlap_counts, question_set
from adapterlab.data.instruction import read_instructions

MATH = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/datasets/math")
TESTS = ["addsub", "aqua", "gsm8k", "mawps", "multiarith", "singleeq"]

if __name__ == "__main__":
    train = read_instructions([MATH / "train_math_3k.json"])
    files = [MATH / f"{name}.json" for name in TESTS]
    per_set = overlap_counts(train, files)
    kept, _ = decontaminate(train, files)
    train_questions = {normalize_question(r) for r in train}
    covered = {f.stem: len(question_set(f) & train_questions) for f in files}
    print(json.dumps({"train_records": len(train), "overlap_per_test_set": {Path(k).stem: v for k, v in per_set.items()},
                      "test_questions_seen_in_training": covered,
                      "test_set_sizes": {f.stem: len(read_instructions([f])) for f in files},
                      "kept_after_decontaminating_all": len(kept)}, indent=2))
