"""The memorization filter of §3.1: read 5 symbols out of 26, then reproduce them in order.

A sample reads `abcde=abcde.`: the 5 letters (drawn independently and uniformly), `=` marking the
end of the read phase, the same letters again, and `.` ending the sample. It is next-step
prediction with teacher forcing (the model sees the true earlier letters while reproducing), and
only the 5 reproduced letters are scored; the read phase is unpredictable and `=`/`.` sit at fixed
positions, so scoring them would only flatter the model. The paper discards a candidate cell whose
accuracy here is below 95%.

The default sizes let an LSTM of 25K parameters pass within a few minutes on a CPU, as the paper
reports: 500 training windows of 20 x 35 per epoch (about 29,000 fresh samples) and fixed valid and
test sets of 1,000 samples (5,000 scored letters) each.
"""

from __future__ import annotations

import string

import numpy as np

from cellsearch.tasks.synthetic import LETTERS, Sample, SyntheticTask

SYMBOLS = 5  # letters to memorize (§3.1)


class Memorize(SyntheticTask):
    name = "memorize"
    vocabulary = string.ascii_lowercase + "=."
    boundary = "."
    fixed_seed = 31  # any fixed value; kept constant so the valid/test sets never change
    # Training windows per epoch: long enough that the search schedule's 3-epoch patience does not
    # end a run during the plateau before an LSTM starts to memorize (seen with 150).
    default_epoch_windows = 500
    default_valid_samples = 1000
    default_test_samples = 1000

    def generate(self, rng: np.random.Generator) -> Sample:
        word = "".join(LETTERS[rng.integers(0, 26, size=SYMBOLS)])
        text = f"{word}={word}."
        return Sample(text, scored_start=SYMBOLS + 1, scored_stop=2 * SYMBOLS + 1)
