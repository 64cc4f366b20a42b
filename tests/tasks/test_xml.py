import re
import xml.etree.ElementTree as ElementTree
from collections import Counter

import numpy as np
import pytest

from cellsearch.tasks.xml import MAX_ITERATIONS, MAX_NAME_LENGTH, MIN_NAME_LENGTH, Xml

TAG = re.compile(r"<(/?)([a-z]+)>")


@pytest.fixture(scope="module")
def samples():
    task = Xml()
    rng = np.random.default_rng(2015)
    return [task.generate(rng) for _ in range(3000)]


def check_nesting(text: str) -> tuple[int, int]:
    """Walk the tags with a stack; return (tags opened, maximal depth)."""
    assert text.endswith("\n") and "\n" not in text[:-1]
    body = text[:-1]
    assert TAG.sub("", body) == "", "only tags, no other characters"
    stack, opened, depth = [], 0, 0
    for position, match in enumerate(TAG.finditer(body)):
        closing, name = match.groups()
        assert MIN_NAME_LENGTH <= len(name) <= MAX_NAME_LENGTH
        if position > 0:
            assert stack, "one root element: nothing after the root closes"
        if closing:
            assert stack.pop() == name, "closes the most recently opened tag"
        else:
            stack.append(name)
            opened += 1
            depth = max(depth, len(stack))
    assert not stack, "every tag is closed"
    return opened, depth


def test_every_sample_is_well_nested_with_short_names(samples):
    opened, depths, lengths = [], [], Counter()
    for sample in samples:
        count, depth = check_nesting(sample.text)
        opened.append(count)
        depths.append(depth)
        lengths.update(len(name) for closing, name in TAG.findall(sample.text) if not closing)
        # An independent parser agrees that it is one well-formed element.
        ElementTree.fromstring(sample.text)
        assert (sample.scored_start, sample.scored_stop) == (0, len(sample.text))
    assert set(lengths) == set(range(MIN_NAME_LENGTH, MAX_NAME_LENGTH + 1))
    assert max(opened) <= MAX_ITERATIONS
    assert max(depths) >= 8 and min(depths) == 1


def test_half_of_the_steps_close():
    # After an open, the next step closes with probability 1/2: count what follows each open tag.
    rng = np.random.default_rng(7)
    task = Xml()
    follows = Counter()
    for _ in range(2000):
        tags = TAG.findall(task.generate(rng).text)
        for iteration, ((closing, _), (next_closing, _)) in enumerate(zip(tags, tags[1:])):
            if not closing and iteration + 1 < MAX_ITERATIONS:  # a free choice, not forced
                follows[next_closing] += 1
    assert abs(follows["/"] / sum(follows.values()) - 0.5) < 0.03


def test_every_character_of_the_stream_is_scored():
    task = Xml(epoch_windows=5)
    batches = list(task.batches("train", batch_size=3, num_steps=35))
    assert all(b.mask.all() for b in batches)
    text = task.decode(batches[0].inputs[:1, 0]) + task.decode(
        np.concatenate([b.targets[:, 0] for b in batches])
    )
    assert text.startswith("\n<")
    complete = text[1 : text.rindex("\n") + 1]
    for line in complete.splitlines(keepends=True):
        check_nesting(line)
