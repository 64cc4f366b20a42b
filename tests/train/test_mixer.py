"""`steps.Mixer`: which populations share a step. Populations of a task that start an epoch
together form a cohort and keep one shared step (captured once on a GPU) from epoch to epoch; a
population back early waits for its mates, one arriving mid-epoch waits (so long) to join its
task's cohort at its next epoch, and one that leaves takes its shared steps with it."""

from types import SimpleNamespace

import pytest
import torch

from cellsearch.train import steps as steps_module
from cellsearch.train.steps import Mixer


class Counted:
    calls = 0
    graph = None  # (captured: a CUDA graph)

    def __call__(self):
        self.calls += 1


class Shared:
    """Stands in for MixedSteps: counts the steps each shared step runs."""

    def __init__(self, populations, capture, warmup):
        self.populations = populations
        self.device = "cuda"
        self.train_step, self.eval_step = Counted(), Counted()

    @property
    def calls(self) -> int:
        return self.train_step.calls + self.eval_step.calls


@pytest.fixture
def mixer(monkeypatch):
    monkeypatch.setattr(steps_module, "MixedSteps", Shared)
    return Mixer(capture=False)


def population(task="arith"):
    return SimpleNamespace(task=SimpleNamespace(name=task))


def ask(mixer, population, phase, first=False):
    """The population's request, asked (keep it: a request dropped is a run stopped)."""
    run = mixer.step(population, phase, first)
    next(run)
    return run


def ran(run) -> bool:
    """Whether the flush ran the step asked for (else the population still waits)."""
    try:
        next(run)
    except StopIteration:
        return True
    return False


def shared(mixer, phase, *populations):
    return mixer.memberships[(phase, tuple(id(p) for p in populations))]


def test_a_cohort_keeps_its_shared_step_from_epoch_to_epoch(mixer):
    a, b = population(), population()
    runs = [ask(mixer, a, "train", first=True), ask(mixer, b, "train", first=True)]
    mixer.flush()
    assert all(ran(run) for run in runs)
    train = shared(mixer, "train", a, b)
    runs = [ask(mixer, a, "train"), ask(mixer, b, "train")]
    mixer.flush()
    assert all(ran(run) for run in runs) and train.calls == 2
    runs = [ask(mixer, a, "valid"), ask(mixer, b, "valid")]
    mixer.flush()
    assert all(ran(run) for run in runs)

    # a runs a test pass that b does not: b, back first, waits for it
    b_back = ask(mixer, b, "train", first=True)
    a_test = ask(mixer, a, "test")
    mixer.flush()
    assert ran(a_test) and not ran(b_back)
    a_back = ask(mixer, a, "train", first=True)
    mixer.flush()
    assert ran(a_back) and ran(b_back)
    assert shared(mixer, "train", a, b) is train and train.calls == 3  # the same step, again
    assert mixer.summary() == ("3 shared steps made, run 5 times, 0% past their warmup, "
                               "1.8 populations each")  # (train, valid, and a's test)


def test_a_population_arriving_mid_epoch_waits_to_join_its_tasks_cohort(mixer):
    a, b, late, other_task = population(), population(), population(), population("xml")
    runs = [ask(mixer, p, "train", first=True) for p in (a, b, other_task)]
    mixer.flush()
    assert all(ran(run) for run in runs)
    train = shared(mixer, "train", a, b)  # tasks apart: their epochs differ in length
    assert shared(mixer, "train", other_task).populations == [other_task]
    late_run = ask(mixer, late, "train", first=True)
    runs = [ask(mixer, a, "train"), ask(mixer, b, "train")]
    mixer.flush()
    assert all(ran(run) for run in runs) and not ran(late_run)
    assert shared(mixer, "train", a, b) is train and train.calls == 2
    runs = [ask(mixer, a, "train", first=True), ask(mixer, b, "train", first=True)]
    mixer.flush()  # a and b's next epoch: late joins them
    assert all(ran(run) for run in runs) and ran(late_run)
    assert mixer.cohort(late) == (a, b, late)
    assert shared(mixer, "train", a, b, late).calls == 1


def test_a_late_population_waits_a_whole_epoch_to_join_or_starts_when_no_cohort_is_left(mixer):
    a, b, late, later = population(), population(), population(), population()
    runs = [ask(mixer, p, "train", first=True) for p in (a, b)]
    mixer.flush()
    assert all(ran(run) for run in runs)
    late_run = ask(mixer, late, "train", first=True)
    for _ in range(500):  # an epoch of 500 windows
        runs = [ask(mixer, a, "train"), ask(mixer, b, "train")]
        mixer.flush()
        assert all(ran(run) for run in runs) and not ran(late_run)
    runs = [ask(mixer, a, "train", first=True), ask(mixer, b, "train", first=True)]
    mixer.flush()
    assert all(ran(run) for run in runs) and ran(late_run)
    assert mixer.cohort(late) == (a, b, late)
    # a population that arrives while the only cohort of its task ends does not wait for it
    later_run = ask(mixer, later, "train", first=True)
    mixer.flush()
    assert not ran(later_run)
    for population_ in (a, b, late):
        mixer.leave(population_)
    mixer.flush()
    assert ran(later_run) and mixer.cohort(later) == (later,)


def test_a_population_arriving_mid_epoch_waits_only_so_long(monkeypatch):
    monkeypatch.setattr(steps_module, "MixedSteps", Shared)
    mixer = Mixer(capture=False, join_within=2)
    a, late = population(), population()
    run = ask(mixer, a, "train", first=True)
    mixer.flush()
    assert ran(run)
    late_run = ask(mixer, late, "train", first=True)
    for _ in range(2):
        run = ask(mixer, a, "train")
        mixer.flush()
        assert ran(run) and not ran(late_run)
    run = ask(mixer, a, "train")
    mixer.flush()
    assert ran(run) and ran(late_run)
    assert mixer.cohort(late) == (late,) and shared(mixer, "train", a).calls == 4


def test_a_population_that_leaves_frees_its_mates(mixer):
    a, b = population(), population()
    runs = [ask(mixer, p, "train", first=True) for p in (a, b)]
    mixer.flush()
    assert all(ran(run) for run in runs)
    b_back = ask(mixer, b, "train", first=True)
    mixer.flush()
    assert not ran(b_back)  # waits for a
    mixer.leave(a)  # a's training ended instead
    assert not mixer.memberships and mixer.cohort(b) == (b,)
    mixer.flush()
    assert ran(b_back)
    assert shared(mixer, "train", b).calls == 1


def test_a_stopped_run_stops_asking_for_its_step(mixer):
    a = population()
    run = ask(mixer, a, "train")
    assert [entry[0] for entry in mixer.waiting] == [a]
    run.close()
    assert mixer.waiting == []


def test_a_population_that_leaves_leaves_no_failure_behind(monkeypatch):
    class Fails(Counted):
        def __call__(self):
            raise RuntimeError("CUDA out of memory in a shared step")

    class Failing(Shared):
        def __init__(self, *args):
            super().__init__(*args)
            self.train_step = self.eval_step = Fails()

    monkeypatch.setattr(steps_module, "MixedSteps", Failing)
    mixer = Mixer(capture=False)
    a = population()
    run = ask(mixer, a, "train", first=True)
    mixer.flush()
    assert id(a) in mixer.failures
    run.close()  # stopped (cancelled) before it learnt of the failure
    mixer.leave(a)
    assert not mixer.failures  # (another population may get a's id)


def test_a_captured_step_dropped_is_kept_until_the_gpu_has_run_its_replays(mixer, monkeypatch):
    class Event:  # the point a stream had reached; the test says when the GPU gets there
        def __init__(self):
            self.done = False

        def query(self):
            return self.done

    events = []
    monkeypatch.setattr(steps_module, "_queued_so_far",
                        lambda device: events.append(Event()) or events[-1])
    a, b, c = population(), population(), population("xml")
    runs = [ask(mixer, p, "train", first=True) for p in (a, b, c)]
    mixer.flush()
    assert all(ran(run) for run in runs)
    captured = shared(mixer, "train", a, b)
    captured.train_step.graph = "a CUDA graph"
    mixer.leave(a)
    mixer.leave(c)  # its step never captured: no replay of it can be queued
    assert not mixer.memberships
    assert [kept for _, kept in mixer.retired] == [captured] and len(events) == 1
    mixer.flush()
    assert [kept for _, kept in mixer.retired] == [captured]  # the GPU is not there yet
    events[0].done = True
    mixer.flush()
    assert mixer.retired == []


def test_the_windows_of_the_populations_whose_steps_run_load_together_then(mixer, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # (`kernels.copies`, as on a GPU)
    a, b, late = population(), population(), population()
    runs = [ask(mixer, p, "train", first=True) for p in (a, b)]
    mixer.flush()
    assert all(ran(run) for run in runs)

    def window(seed):
        tokens = torch.arange(12).view(3, 4) * seed
        return [(torch.zeros(3, 4, dtype=torch.int64), tokens),
                (torch.zeros(3, 4), tokens.float() / 7), (torch.zeros(4, dtype=torch.bool),
                                                          tokens[0] % 2 == 0),
                (torch.zeros(3, 4), tokens.to(torch.int32))]  # (converted as copied)

    loads = {id(p): window(seed) for seed, p in enumerate((a, b, late), start=1)}
    for p in (a, b, late):
        mixer.loading(p, loads[id(p)])
    runs = [ask(mixer, a, "train"), ask(mixer, b, "train"), ask(mixer, late, "train", True)]
    assert not any(buffer.any() for pairs in loads.values() for buffer, _ in pairs)
    mixer.flush()  # a and b's steps run, late waits for their cohort to form again
    assert [ran(run) for run in runs] == [True, True, False]
    for p in (a, b):
        assert all(torch.equal(buffer, value.to(buffer.dtype)) for buffer, value in loads[id(p)])
    assert not any(buffer.any() for buffer, _ in loads[id(late)])  # loaded when it runs
    assert list(mixer.loads) == [id(late)]
    mixer.leave(late)
    assert not mixer.loads


def test_a_load_that_fails_fails_the_steps_of_that_flush(mixer):
    a = population()
    run = ask(mixer, a, "train", first=True)
    mixer.loading(a, [(torch.zeros(3), torch.zeros(4))])  # (shapes that cannot be copied)
    mixer.flush()
    with pytest.raises(RuntimeError):
        next(run)
    assert shared_steps_run(mixer) == 0


def shared_steps_run(mixer) -> int:
    return sum(together.calls for together in mixer.memberships.values())
