"""Answer extraction on realistic model outputs, in the default mode and in LLM-Adapters' exact rules."""

from __future__ import annotations

import pytest

from adapterlab.evaluate.extract import extract_answer, is_correct, numbers_in, option_values

BOOL = ("true", "false")
PIQA = ("solution1", "solution2")
ARC = tuple(f"answer{i}" for i in range(1, 6))
HELLA = tuple(f"ending{i}" for i in range(1, 5))
WINO = ("option1", "option2")
AQUA_PROMPT = (
    "Roberts has a property worth of $1023.65. ... Find the difference between actual property and recorded "
    "property worth? Answer Choices: (A) 23.65 (B) 1000 (C) 35.62 (D) 2.65 (E) 1023.65"
)

# (generation, expected in the default mode, expected under LLM-Adapters' rules)
NUMBER_CASES = [
    # plain chain of thought in the style of the math training data
    ("He needs 24 * 24 = 576 tiles. The answer is 576.", 576, 576),
    ("A: 13 + 17 = 30 books. 30 - 15 = 15 new books. The answer is 15.", 15, 15),
    # thousands separators and currency
    ("The total cost is $1,080.50. The answer is $1,080.50.", 1080.5, 1080.5),
    ("She earns 12,000 dollars a year, so the answer is 12,000.", 12000, 12000),
    ("The answer is 1,234,567.", 1234567, 1234567),
    # the answer is stated, then the model keeps talking: LLM-Adapters takes the trailing number
    ("The answer is 18.\n\nNote: each of the 2 boxes holds 9 eggs.", 18, 9),
    ("The answer is 7 (from 3 + 4).", 7, 4),
    ("So the answer is 42. Q: Tom has 3 apples", 42, 3),
    # an equation inside the statement: its result counts
    ("The answer is: 5 + 3 = 8.", 8, 8),
    ("Final answer: 120 / 4 = 30 minutes", 30, 30),
    # negative numbers, and hyphens that are not minus signs
    ("The temperature dropped to -5 degrees. The answer is -5.", -5, -5),
    ("Pages 10-20 were torn out, that is 11 pages.", 11, 11),
    ("It ran from 1990-1995", 1995, -1995),
    ("The answer is \u22123.", -3, 3),
    # fractions and mixed numbers
    ("She ate 3/4 of the pie.", 0.75, 4),
    ("Each friend gets 11/6 cups. The answer is 11/6.", 11 / 6, 6),
    ("The recipe needs 2 1/2 cups.", 2.5, 2),
    # percentages, decimals and units
    ("The discount is 25%.", 25, 25),
    ("The answer is 3.5 hours.", 3.5, 3.5),
    ("He drove 60km/h for 2 hours, so 120km. The answer is 120 km.", 120, 120),
    ("The answer is .5", 0.5, 5),
    # GSM8K's own '####' and LaTeX boxes
    ("48 / 2 = 24\n#### 24", 24, 24),
    ("Thus the total is \\boxed{1,000} dollars after 3 days.", 1000, 3),
    # nothing to read
    ("I don't know.", None, None),
    ("", None, None),
    # final line holds the answer
    ("Step 1: 6 * 7 = 42\nStep 2: 42 + 8 = 50\n50", 50, 50),
    ("The answer is five. In digits: 5", 5, 5),
]


@pytest.mark.parametrize("text, ours, theirs", NUMBER_CASES)
def test_numbers_both_modes(text, ours, theirs):
    for mode, expected in (("default", ours), ("llm-adapters", theirs)):
        got = extract_answer(text, "number", mode=mode)
        if expected is None:
            assert got is None, (mode, text, got)
        else:
            assert got == pytest.approx(expected), (mode, text, got)


LETTER_CASES = [
    # the known LLM-Adapters failure: the first capital A-E anywhere, here the "E" of "Each"
    ("Each apple costs $2, so 5 apples cost $10. The answer is (B).", "B", "E"),
    ("Difference = 1023.65 - 1000 = 23.65. The answer is (A).", "A", "D"),
    ("Answer: C", "C", "A"),
    ("The answer is B", "B", "B"),
    ("(D) 2.65", "D", "D"),
    ("The correct option is (C) 35.62.", "C", "C"),
    ("B) 1000", "B", "B"),
    ("Rationale: 10% of 50 is 5.\nAnswer choice: E", "E", "A"),
    ("So the answer would be D", "D", "D"),
    # the model repeats all the choices before answering
    ("(A) 23.65 (B) 1000 (C) 35.62 (D) 2.65 (E) 1023.65\nThe answer is (A).", "A", "A"),
    # no letter: the computed value names the choice (default mode only; the prompt lists the values)
    ("1023.65 - 1000 = 23.65", "A", None),
    ("the difference is 2.65 dollars", "D", None),
    ("no idea", None, None),
    # the choices restated one per line (seen from SmolLM2): no answer in them, though "A" comes first
    ("A) 60 m\nB) 61 m\nC) 62 m\nD) 63 m\nE) 64 m", None, "A"),
    # "A:" opens an answer in the math training data; it is not a choice
    ("A:", None, "A"),
    ("A: 3 * 4 = 12 so the answer is (C)", "C", "A"),
]


@pytest.mark.parametrize("text, ours, theirs", LETTER_CASES)
def test_letters_both_modes(text, ours, theirs):
    assert extract_answer(text, "letter", prompt=AQUA_PROMPT) == ours
    assert extract_answer(text, "letter", mode="llm-adapters", prompt=AQUA_PROMPT) == theirs


LABEL_CASES = [
    ("the correct answer is false", BOOL, "false", "false"),
    ("True", BOOL, "true", None),
    ("The correct answer is TRUE.", BOOL, "true", None),
    ("Yes, ethanol takes more energy to make than it produces.", BOOL, "true", None),
    ("It is not true that... the answer is false", BOOL, "false", "true"),
    ("the correct answer is solution2", PIQA, "solution2", "solution2"),
    ("Solution 1 is better because it uses paper.", PIQA, "solution1", None),
    ("the correct answer is answer3", ARC, "answer3", "answer3"),
    ("Answer4: The producers in all ecosystems are plants. The answer is answer1", ARC, "answer1", "answer1"),
    ("the correct answer is ending4", HELLA, "ending4", "ending4"),
    ("Option 2", WINO, "option2", None),
    ("the correct answer is option1", WINO, "option1", "option1"),
    ("I cannot decide.", PIQA, None, None),
]


@pytest.mark.parametrize("text, labels, ours, theirs", LABEL_CASES)
def test_labels_both_modes(text, labels, ours, theirs):
    assert extract_answer(text, "label", labels=labels) == ours
    assert extract_answer(text, "label", mode="llm-adapters", labels=labels) == theirs


def test_llm_adapters_label_takes_first_match_anywhere():
    # their regex has no word boundaries: "answer1" is found inside "answer12", and case matters
    assert extract_answer("see answer12", "label", mode="llm-adapters", labels=ARC) == "answer1"
    assert extract_answer("Answer2", "label", mode="llm-adapters", labels=ARC) is None


def test_correctness_rules():
    assert is_correct(576.0, "576.0", "number")
    assert is_correct(1.8333, "1.8333333333333335", "number")  # within 0.001
    assert not is_correct(1.83, "1.8333333333333335", "number")
    assert not is_correct(None, "5", "number")
    assert is_correct("B", "B", "letter", mode="llm-adapters")
    assert is_correct("True", "true", "label")
    assert not is_correct("True", "true", "label", mode="llm-adapters")


def test_numbers_in_and_option_values():
    assert numbers_in("from $1,200 to -3 and 1/4") == [1200, -3, 0.25]
    assert option_values(AQUA_PROMPT) == {"A": 23.65, "B": 1000, "C": 35.62, "D": 2.65, "E": 1023.65}


def test_bad_mode_and_type_are_named():
    with pytest.raises(ValueError, match="extraction mode"):
        extract_answer("5", "number", mode="strict")
    with pytest.raises(ValueError, match="answer type"):
        extract_answer("5", "integer")
