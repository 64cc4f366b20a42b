"""The synthetic XML modelling problem of §3.5: predict the next character of nested tags.

The paper's generator: tag names are 2 to 10 random lowercase letters (length and letters
uniform); "with 50% probability or after 50 iterations, we either close the most recently opened
tag, or stop if no open tags remain; otherwise, open a new random tag". Two readings were needed:

- the first iteration always opens a tag, and the sample stops as soon as no tag is open, so a
  sample is exactly one well-nested root element (an empty sample would only be a lone newline);
- iterations count opens and closes alike, so a sample opens at most 50 tags.

Tags follow each other with no whitespace; the paper's printed sample breaks lines only for
layout, and separators after every tag would be trivially predictable characters inflating the
accuracy. Each sample ends with a newline, which separates samples in the stream. The vocabulary
is the 26 letters and `<`, `/`, `>`, newline (30 symbols), and every character is scored.

Samples are about 100 characters long on average (half of them a single pair of tags, a few near
the 50-tag limit). Sizes: an epoch is 1,000 fresh training windows of 20 x 35 (about 7,000
samples); the fixed valid and test sets have 500 samples (about 50,000 characters) each.
"""

from __future__ import annotations

import string

import numpy as np

from cellsearch.tasks.synthetic import LETTERS, Sample, SyntheticTask

MIN_NAME_LENGTH, MAX_NAME_LENGTH = 2, 10
CLOSE_PROBABILITY = 0.5
MAX_ITERATIONS = 50  # after this many iterations, only closes


class Xml(SyntheticTask):
    name = "xml"
    vocabulary = string.ascii_lowercase + "</>\n"
    boundary = "\n"
    fixed_seed = 352  # any fixed value; kept constant so the valid/test sets never change
    default_epoch_windows = 1000  # training windows per epoch
    default_valid_samples = 500
    default_test_samples = 500

    def generate(self, rng: np.random.Generator) -> Sample:
        # Drawn up front for all iterations (one numpy call each instead of one per iteration).
        closes = rng.random(MAX_ITERATIONS) < CLOSE_PROBABILITY
        lengths = rng.integers(MIN_NAME_LENGTH, MAX_NAME_LENGTH + 1, size=MAX_ITERATIONS)
        letters = LETTERS[rng.integers(0, 26, size=(MAX_ITERATIONS, MAX_NAME_LENGTH))]
        parts, stack = [], []
        iteration = 0
        while True:
            if iteration > 0 and (iteration >= MAX_ITERATIONS or closes[iteration]):
                parts.append(f"</{stack.pop()}>")
                if not stack:
                    break
            else:
                name = "".join(letters[iteration, : lengths[iteration]])
                stack.append(name)
                parts.append(f"<{name}>")
            iteration += 1
        text = "".join(parts) + "\n"
        return Sample(text, scored_start=0, scored_stop=len(text))

    def render(self, sample: Sample) -> str:
        return sample.text.rstrip("\n")
