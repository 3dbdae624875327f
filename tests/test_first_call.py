"""The first call of a process: what it compiles, what it runs in Python instead, and
``otlabel.compile()``, which fills Numba's cache so that later processes compile
nothing.  Processes with a cache of their own (``NUMBA_CACHE_DIR``) where a cold
cache is what is tested."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import otlabel
from otlabel import rounding
from otlabel.kernels import stamp

pytest.importorskip("numba")
from otlabel.kernels.numba import backend as numba_backend
from otlabel.kernels.numba import repair as numba_repair
from otlabel.kernels.numba import rounding as numba_rounding
from otlabel.kernels.numba.cache import at_hand, recording


def run_python(code: str, cache: str) -> str:
    """``code`` in a new process whose Numba cache is the folder ``cache``; its stdout."""
    env = {**os.environ, "NUMBA_CACHE_DIR": cache}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def cache(monkeypatch):
    """Whether compiled kernels count as at hand (``cache["warm"]``): the choices a
    warm or a cold cache makes, whatever this process's cache holds."""
    state = {"warm": False}
    monkeypatch.setattr(numba_repair, "at_hand", lambda kernel, *args: state["warm"])
    monkeypatch.setattr(numba_rounding, "at_hand", lambda kernel, *args: state["warm"])
    return state


@pytest.fixture
def repairs(monkeypatch):
    """The calls of the compiled repair, counted."""
    calls = []
    compiled = numba_repair.repair

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return compiled(*args, **kwargs)

    monkeypatch.setattr(numba_repair, "repair", counted)
    return calls


PROBLEMS = {
    "normal": ({}, lambda rng: rng.standard_normal((3000, 12), dtype=np.float32)),
    "head scores": ({}, lambda rng: otlabel.make_scores(2500, 20, seed=1)),
    "bounded sizes": (
        {"min_size": 0.05, "max_size": 0.12},
        lambda rng: rng.normal(size=(2000, 10)),
    ),
    "partial mass": ({"mass": 0.8}, lambda rng: rng.normal(size=(2000, 10)).astype(np.float32)),
    "tied rows": ({}, lambda rng: rng.integers(0, 3, (2000, 8)).astype(np.float32)),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_a_cold_cache_rounds_small_problems_in_python_to_the_same_labels(
    name, cache, repairs, monkeypatch
):
    """With the kernels at hand, the compiled repair and passes; with none (a cold
    cache), a small excess is repaired in Python and the matrix read by NumPy's
    passes: the same labels, a certificate at rounding level either way."""
    passes = []
    rounding_passes = numba_backend.NumbaBackend.rounding_passes

    def spy(self, scores):
        chosen = rounding_passes(self, scores)
        passes.append(chosen[0].name)
        return chosen

    monkeypatch.setattr(numba_backend.NumbaBackend, "rounding_passes", spy)
    options, make = PROBLEMS[name]
    scores = make(np.random.default_rng(0))
    cache["warm"] = True
    warm = otlabel.assign(scores, 0.05, **options)
    assert len(repairs) == 1 and set(passes) == {"numba"}
    cache["warm"], passes[:] = False, []
    cold = otlabel.assign(scores, 0.05, **options)
    assert len(repairs) == 1 and set(passes) == {"numpy"}
    assert cold.gap <= 1e-9 and warm.gap <= 1e-9
    if name != "tied rows":  # one optimum
        np.testing.assert_array_equal(cold.labels, warm.labels)
    else:  # many: the compiled repair merges identical rows, and may pick another
        np.testing.assert_array_equal(cold.counts, warm.counts)
        assert cold.cost == pytest.approx(warm.cost, rel=1e-12)


def test_a_large_excess_compiles_the_repair_even_when_the_cache_is_cold(cache, repairs):
    """Identical rows all in one cluster at the start: COMPILE_EXCESS units or more to
    move, which the Python repair would take a path each for."""
    n = 2 * numba_repair.COMPILE_EXCESS
    few = otlabel.assign(np.zeros((n // 2, 2), np.float32), 0.05)  # excess n / 4
    assert repairs == [] and few.counts.tolist() == [n // 4, n // 4]
    out = otlabel.assign(np.zeros((n, 2), np.float32), 0.05)
    assert (n, 2) in repairs and out.counts.tolist() == [n // 2, n // 2]


def test_large_matrices_take_the_compiled_repair_and_passes_even_when_the_cache_is_cold(
    cache, repairs, monkeypatch
):
    """COMPILE_ENTRIES entries or more: the rounding's kernels serve every later
    process once compiled, and the Python paths would take seconds a call."""
    scores = np.random.default_rng(3).normal(size=(300, 30)).astype(np.float32)
    assert not numba_rounding.passes_pay(scores)
    otlabel.assign(scores, 0.05)
    assert repairs == []
    monkeypatch.setattr(numba_rounding, "COMPILE_ENTRIES", scores.size)
    monkeypatch.setattr(numba_repair, "COMPILE_ENTRIES", scores.size)
    assert numba_rounding.passes_pay(scores)
    assert numba_rounding.passes_pay(rounding.WithColumn(scores, np.zeros(300)))
    otlabel.assign(scores, 0.05)
    assert repairs == [(300, 30)]


def test_compiled_false_and_true_override_the_choice(cache, repairs):
    scores = np.random.default_rng(2).normal(size=(500, 5))
    bounds = otlabel.count_bounds(500, np.full(5, 0.2))
    for compiled, calls in ((None, 0), (False, 0), (True, 1)):
        out = rounding.balanced_labels(
            scores, np.zeros(5), bounds, rows_per_block=100, compiled=compiled
        )
        assert len(repairs) == calls and np.bincount(out.labels).tolist() == [100] * 5


def test_at_hand_loads_a_cached_kernel_and_never_compiles(tmp_path):
    """A new process: not at hand, and nothing compiled by asking; compiled by a call;
    a later process finds it in the cache, loads it, and compiles nothing."""
    probe = """
        import numpy as np
        from otlabel.kernels.numba.cache import at_hand, recording
        from otlabel.kernels.numba.rounding import NumbaPasses, _argmax_rows
        block, potential = np.eye(4, dtype=np.float32), np.zeros(4)
        arguments = (block, np.zeros(0), potential, np.zeros(4, np.int64), 0, 4)
        with recording() as compiled:
            print(at_hand(_argmax_rows, *arguments), len(_argmax_rows.signatures))
        print(compiled)
        NumbaPasses.argmax(block, potential)
        print(at_hand(_argmax_rows, *arguments))
    """
    first = run_python(probe, str(tmp_path)).split("\n")
    assert first[:3] == ["False 0", "[]", "True"]
    later = run_python(probe, str(tmp_path)).split("\n")
    assert later[:2] == ["True 1", "[]"]


def test_at_hand_tells_types_apart():
    floats = np.zeros((3, 2))
    arguments = (np.zeros(0), np.zeros(2), np.zeros(3, np.int64), 0, 3)
    numba_rounding.NumbaPasses.argmax(floats, np.zeros(2))
    assert at_hand(numba_rounding._argmax_rows, floats, *arguments)
    read_only = floats.copy()
    read_only.flags.writeable = False
    with recording() as compiled:
        at_hand(numba_rounding._argmax_rows, read_only, *arguments)
        at_hand(numba_rounding._argmax_rows, floats.astype(np.int8), *arguments)
    assert compiled == []


def test_compile_fills_the_cache_for_later_processes(tmp_path):
    """``python -m otlabel.compile`` in a new cache; then a new process: compiling again
    compiles nothing, and calls down the usual paths (the sparse kernel and its finish,
    the compiled repair and passes of a small problem, partial mass, relaxed sizes,
    read-only scores) neither."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "otlabel.compile", "--dtypes", "float32"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("compiled ") and str(tmp_path) in done.stdout
    later = run_python(
        """
        import numpy as np
        import otlabel
        from otlabel.kernels.numba.cache import recording
        scores = otlabel.make_scores(60_000, 100, seed=5).astype(np.float32)
        with recording() as compiled:
            print(otlabel.compile(dtypes=["float32"]))
            result = otlabel.assign(scores)
            otlabel.assign(scores[:3000], size_penalty=0.2)
            otlabel.assign(scores[:3000], mass=0.9)
            otlabel.predict(scores[:10], result)
            scores.flags.writeable = False
            otlabel.assign(scores[:3000])
        print(compiled)
        """,
        str(tmp_path),
    )
    assert later.split("\n")[:2] == ["[]", "[]"]


def test_a_changed_kernel_file_makes_every_cached_kernel_stale(tmp_path):
    """A kernel compiles the kernels it calls from other files into itself: its cache
    entry must not outlive a change to any kernel file.  A process compiles a kernel;
    a later one whose kernel files differ (their digest, here replaced) finds it stale;
    one with the same files loads it."""
    compile_it = """
        import numpy as np
        {patch}
        from otlabel.kernels.numba.cache import at_hand
        from otlabel.kernels.numba.rounding import NumbaPasses, _argmax_rows
        block, potential = np.eye(4, dtype=np.float32), np.zeros(4)
        arguments = (block, np.zeros(0), potential, np.zeros(4, np.int64), 0, 4)
        print(at_hand(_argmax_rows, *arguments))
        NumbaPasses.argmax(block, potential)
    """
    changed = "from otlabel.kernels import stamp; stamp.kernel_digest = lambda: 'edited'"
    assert run_python(compile_it.format(patch=""), str(tmp_path)).split() == ["False"]
    assert run_python(compile_it.format(patch=changed), str(tmp_path)).split() == ["False"]
    assert run_python(compile_it.format(patch=changed), str(tmp_path)).split() == ["True"]
    assert run_python(compile_it.format(patch=""), str(tmp_path)).split() == ["False"]


def test_the_kernel_digest_covers_every_file_with_kernels(tmp_path):
    """Every file of the kernels package that compiles with Numba is in the digest, and
    a change to any one of them (a callee's too) changes it."""
    package = Path(stamp.__file__).parent
    with_numba = {
        path
        for path in package.rglob("*.py")
        if re.search(r"^(from|import) numba", path.read_text(), re.M)
    }
    assert with_numba and with_numba <= set(stamp.kernel_files())
    copy = tmp_path / "kernels"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = stamp.kernel_digest(copy)
    assert before == stamp.kernel_digest()
    for name in ("numba/repair_losses.py", "_fastmath.py"):
        edited = copy / name
        edited.write_text(edited.read_text() + "\n")
        stamp.kernel_digest.cache_clear()
        assert stamp.kernel_digest(copy) != before
        before = stamp.kernel_digest(copy)


def test_every_kernel_is_located_by_the_stamped_locator():
    """The cache locators registered before the kernels: a kernel's stamp is its file's
    and the kernel files' digest."""
    assert stamp.stamp_kernel_caches()
    locator = numba_repair._repair._cache._impl.locator
    assert type(locator).__name__.startswith("Stamped")
    assert locator.get_source_stamp()[1] == stamp.kernel_digest()
