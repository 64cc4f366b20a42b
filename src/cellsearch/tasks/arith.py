"""The arithmetic problem of §3.5: the sum or difference of two integers, with distractors.

A sample is `<input>=<answer>.`, for example `3e36d9-h1h39f94eeh43keg3c=-13991064.` for
3369-13994433 (the paper's example). The input is `<a><op><b>`: two operands, each of 1 to 8
digits (the digit count uniform, no leading zeros) and negative with probability 1/2 (written with
a leading `-`, so `12--34` is 12 - (-34)), and `+` or `-` with probability 1/2. Between successive
input characters, up to and including the `=`, come distractor letters: their number in each gap is
geometric with mean 1 (0 with probability 1/2, 1 with 1/4, ...), each letter uniform over a..z.
The answer is the true result in plain decimal, then `.` ends the sample.

Next-step prediction: only the answer characters and the final `.` are scored (predicted from the
`=` onwards, seeing the true earlier answer digits). The 40 symbols are the paper's: 26 lowercase
letters, 10 digits, `+ - = .`.

Sizes: an epoch is 1,000 fresh training windows of 20 x 35 (about 23,000 samples of about 30
characters); the fixed valid and test sets have 2,000 samples (about 14,000 scored characters) each.
"""

from __future__ import annotations

import string

import numpy as np

from cellsearch.tasks.synthetic import LETTERS, Sample, SyntheticTask

MAX_DIGITS = 8  # "The numbers can have up to 8 digits" (§3.5)


def draw_operand(rng: np.random.Generator) -> int:
    """An integer of 1..8 digits (the count uniform) with a random sign."""
    digits = int(rng.integers(1, MAX_DIGITS + 1))
    low = 0 if digits == 1 else 10 ** (digits - 1)
    value = int(rng.integers(low, 10**digits))
    return -value if rng.random() < 0.5 else value


class Arith(SyntheticTask):
    name = "arith"
    vocabulary = string.ascii_lowercase + string.digits + "+-=."
    boundary = "."
    fixed_seed = 351  # any fixed value; kept constant so the valid/test sets never change
    default_epoch_windows = 1000  # training windows per epoch
    default_valid_samples = 2000
    default_test_samples = 2000

    def generate(self, rng: np.random.Generator) -> Sample:
        a, b = draw_operand(rng), draw_operand(rng)
        add = rng.random() < 0.5
        expression = f"{a}{'+' if add else '-'}{b}"
        answer = a + b if add else a - b
        # One gap after each expression character: the last one sits before the `=`.
        counts = rng.geometric(0.5, size=len(expression)) - 1
        # One string of all the distractors, sliced per gap (cheaper than joining per gap).
        letters = "".join(LETTERS[rng.integers(0, 26, size=int(counts.sum()))].tolist())
        ends = np.cumsum(counts).tolist()
        parts = []
        for char, start, stop in zip(expression, [0, *ends[:-1]], ends, strict=True):
            parts.append(char)
            parts.append(letters[start:stop])
        question = "".join(parts) + "="
        text = f"{question}{answer}."
        return Sample(text, scored_start=len(question), scored_stop=len(text))
