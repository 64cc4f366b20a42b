import re
import string
from collections import Counter

import numpy as np
import pytest

from cellsearch.tasks.arith import MAX_DIGITS, Arith

QUESTION = re.compile(r"(-?)(\d+)([+-])(-?)(\d+)")


def solve(question: str) -> tuple[int, int, str, int]:
    """An independent reading of an input: drop the distractors, parse, compute."""
    plain = "".join(c for c in question if c not in string.ascii_lowercase)
    match = QUESTION.fullmatch(plain)
    assert match, plain
    sign_a, a, op, sign_b, b = match.groups()
    a, b = int(sign_a + a), int(sign_b + b)
    return a, b, op, a + b if op == "+" else a - b


@pytest.fixture(scope="module")
def samples():
    task = Arith()
    rng = np.random.default_rng(12345)
    return [task.generate(rng) for _ in range(4000)]


def test_the_papers_example_reads_as_stated():
    assert solve("3e36d9-h1h39f94eeh43keg3c") == (3369, 13994433, "-", -13991064)


def test_vocabulary_is_the_papers_40_symbols():
    assert sorted(Arith.vocabulary) == sorted(string.ascii_lowercase + string.digits + "+-=.")
    assert Arith().input_size == Arith().output_size == 40


def test_every_answer_is_the_true_result(samples):
    for sample in samples:
        question, answer = sample.text.split("=")
        assert answer.endswith(".")
        assert int(answer[:-1]) == solve(question)[3], sample.text
        assert answer[:-1] == str(int(answer[:-1]))  # plain decimal, no leading zeros or "+"
        # Scored: exactly the answer characters and the final ".".
        assert sample.text[sample.scored_start : sample.scored_stop] == answer
        assert sample.scored_stop == len(sample.text)


def test_distractors_only_between_input_characters(samples):
    for sample in samples:
        question = sample.text.split("=")[0]
        assert question[0] not in string.ascii_lowercase
        answer = sample.text.split("=")[1]
        assert not any(c in string.ascii_lowercase for c in answer)


def test_operands_cover_the_stated_range(samples):
    lengths, signs, ops, gaps = Counter(), Counter(), Counter(), Counter()
    for sample in samples:
        a, b, op, _ = solve(sample.text.split("=")[0])
        for value in (a, b):
            digits = len(str(abs(value)))
            assert 1 <= digits <= MAX_DIGITS
            lengths[digits] += 1
            signs[value < 0] += 1
        ops[op] += 1
        gaps.update(len(run) for run in re.findall(r"[a-z]+", sample.text))
    assert set(lengths) == set(range(1, MAX_DIGITS + 1))
    assert min(lengths.values()) > 0.08 * sum(lengths.values())  # the digit count is uniform
    assert signs[True] > 0.4 * sum(signs.values()) and signs[False] > 0.4 * sum(signs.values())
    assert set(ops) == {"+", "-"}
    assert max(gaps) >= 4  # runs of several distractors occur


def test_both_operands_may_be_negative(samples):
    pairs = Counter()
    for sample in samples:
        a, b, op, _ = solve(sample.text.split("=")[0])
        pairs[(a < 0, b < 0, op)] += 1
    assert len(pairs) == 8


def test_scored_targets_in_batches_are_the_answers():
    task = Arith(epoch_windows=20)
    for split in ("train", "valid"):
        batches = list(task.batches(split, batch_size=4, num_steps=35))
        inputs = np.concatenate([b.inputs for b in batches]).T
        targets = np.concatenate([b.targets for b in batches]).T
        mask = np.concatenate([b.mask for b in batches]).T
        for row_inputs, row_targets, row_mask in zip(inputs, targets, mask):
            # Re-read the row: the scored characters are those after each "=" up to its ".".
            text = task.decode(row_inputs[:1]) + task.decode(row_targets)
            expected = np.zeros(len(text) - 1, bool)
            for match in re.finditer(r"=[^.]*(?:\.|$)", text):
                expected[match.start() : match.end() - 1] = True
            if split == "valid":
                # Padding at the end of a fixed-set row repeats token 0 and is not scored.
                expected[len(text.rstrip("a")) - 1 :] = False
            np.testing.assert_array_equal(row_mask == 1, expected)
