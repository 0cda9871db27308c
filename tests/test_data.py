"""Tests of ewc_lib.data (MNIST loading with checksums, permutations), ewc_lib.tasks and
ewc_lib.models.mlp."""

from __future__ import annotations

import hashlib
import pathlib
import re
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ewc_lib.data import (
    MNIST_SHA256,
    MNIST_SHAPES,
    DataFileError,
    apply_permutation,
    as_tensors,
    centre_square_permutation,
    load_mnist,
    task_permutations,
)
from ewc_lib.models import mlp
from ewc_lib.tasks import Task, centre_square_tasks, permuted_mnist_tasks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "data" / "README.md"
MNIST_FILE = ROOT / "data" / "mnist.npz"
IDENTITY = np.arange(784)

# The published MNIST mean pixel intensity (0.1307 in [0, 1]); data/README.md gives 33.318/255.
MNIST_MEAN_PIXEL = 0.1307
MEAN_PIXEL_TOL = 5e-5  # the published value is rounded to 4 decimals


def file_sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def mnist_arrays(mnist):
    x_tr, y_tr, x_te, y_te = mnist
    return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}


# --------------------------------------------------------------------------- load_mnist
def test_load_mnist_shapes_dtypes_and_first_labels(mnist):
    x_tr, y_tr, x_te, y_te = mnist
    assert x_tr.shape == (60000, 28, 28) and x_te.shape == (10000, 28, 28)
    assert y_tr.shape == (60000,) and y_te.shape == (10000,)
    for a in mnist:
        assert a.dtype == np.uint8
    assert y_tr[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert y_te[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert set(np.unique(y_tr).tolist()) == set(range(10)) == set(np.unique(y_te).tolist())
    assert int(x_tr.max()) == 255 and int(x_tr.min()) == 0


def test_load_mnist_mean_pixel(mnist):
    x_tr = mnist[0]
    mean = float(x_tr.mean(dtype=np.float64)) / 255.0
    assert abs(mean - MNIST_MEAN_PIXEL) < MEAN_PIXEL_TOL, mean


def test_load_mnist_class_counts_published(mnist):
    # Published MNIST training-set class counts.
    counts = np.bincount(mnist[1], minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(mnist[3], minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_load_mnist_accepts_path_and_env(tmp_path, monkeypatch):
    a = load_mnist(MNIST_FILE)
    b = load_mnist(str(MNIST_FILE))
    assert a[1][:5].tolist() == b[1][:5].tolist()
    monkeypatch.setenv("EWC_MNIST_PATH", str(tmp_path / "nowhere.npz"))
    with pytest.raises(DataFileError, match="nowhere.npz"):
        load_mnist()


def test_load_mnist_path_type_checked():
    with pytest.raises(TypeError, match="path"):
        load_mnist(123)


def _readme_table() -> dict[str, str]:
    """Parse the ``| `key` | sha256 |`` rows of data/README.md."""
    rows = {}
    for line in README.read_text().splitlines():
        m = re.fullmatch(r"\|\s*`(\w+)`\s*\|\s*([0-9a-f]{64})\s*\|", line.strip())
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def test_checksum_table_matches_readme():
    table = _readme_table()
    assert table == MNIST_SHA256, "data/README.md and ewc_lib/data.py (MNIST_SHA256) list different checksums"
    assert set(table) == set(MNIST_SHAPES)


def test_checksums_match_the_shipped_arrays(mnist_arrays):
    for key, a in mnist_arrays.items():
        assert hashlib.sha256(a.tobytes()).hexdigest() == MNIST_SHA256[key], key


def test_file_checksum_matches_readme():
    m = re.search(r"SHA-256 of the file itself:\s*([0-9a-f]{64})", README.read_text())
    assert m, "data/README.md should state the SHA-256 of data/mnist.npz"
    assert file_sha256(MNIST_FILE) == m.group(1), "data/mnist.npz differs from data/README.md"


# --------------------------------------------------------------------------- bad files
def _assert_bad(path: pathlib.Path, *expected_fragments: str):
    """load_mnist(path) must raise DataFileError naming the file; the file stays as it was."""
    before = file_sha256(path) if path.exists() else None
    with pytest.raises(DataFileError) as info:
        load_mnist(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in msg, f"the error should name the file: {msg}"
    for frag in expected_fragments:
        assert frag in msg, f"the error should say {frag!r}: {msg}"
    after = file_sha256(path) if path.exists() else None
    assert before == after, "load_mnist modified the file"
    assert not any(p.name != path.name for p in path.parent.iterdir()), "load_mnist wrote something next to the file"
    return msg


def test_missing_file(tmp_path):
    p = tmp_path / "mnist.npz"
    _assert_bad(p, "not found", "data/README.md")
    assert not p.exists(), "load_mnist must not create (download) the file"


def test_truncated_file(tmp_path):
    raw = MNIST_FILE.read_bytes()
    p = tmp_path / "mnist.npz"
    p.write_bytes(raw[: len(raw) // 2])
    _assert_bad(p, "not a readable .npz")


def test_not_an_npz_file(tmp_path):
    p = tmp_path / "mnist.npz"
    p.write_text("this is not a zip archive\n")
    _assert_bad(p, "not a readable .npz")


def test_altered_pixel(tmp_path, mnist_arrays):
    arrays = {k: v.copy() for k, v in mnist_arrays.items()}
    arrays["x_train"][123, 14, 14] ^= 1  # one pixel changed by one grey level
    p = tmp_path / "mnist.npz"
    np.savez(p, **arrays)
    _assert_bad(p, "'x_train'", MNIST_SHA256["x_train"], "altered")


def test_altered_label(tmp_path, mnist_arrays):
    arrays = dict(mnist_arrays)
    y = arrays["y_test"].copy()
    y[0] = (y[0] + 1) % 10
    arrays["y_test"] = y
    p = tmp_path / "mnist.npz"
    np.savez(p, **arrays)
    _assert_bad(p, "'y_test'", MNIST_SHA256["y_test"])


def test_missing_key(tmp_path, mnist_arrays):
    arrays = {k: v for k, v in mnist_arrays.items() if k != "y_test"}
    p = tmp_path / "mnist.npz"
    np.savez(p, **arrays)
    _assert_bad(p, "y_test", "expected keys")


@pytest.mark.parametrize("bad", ["dtype", "shape"])
def test_wrong_dtype_or_shape(tmp_path, mnist_arrays, bad):
    arrays = dict(mnist_arrays)
    if bad == "dtype":
        arrays["y_train"] = arrays["y_train"].astype(np.int64)
    else:
        arrays["x_test"] = arrays["x_test"].reshape(10000, 784)
    p = tmp_path / "mnist.npz"
    np.savez(p, **arrays)
    _assert_bad(p, "expected uint8 with shape")


def test_original_file_untouched_by_tests():
    m = re.search(r"SHA-256 of the file itself:\s*([0-9a-f]{64})", README.read_text())
    assert file_sha256(MNIST_FILE) == m.group(1)


def test_copy_of_good_file_loads(tmp_path):
    p = tmp_path / "copy.npz"
    shutil.copyfile(MNIST_FILE, p)
    x_tr, y_tr, x_te, y_te = load_mnist(p)
    assert y_te[:3].tolist() == [7, 2, 1]


# --------------------------------------------------------------------------- as_tensors
def test_as_tensors(mnist):
    x, y = as_tensors(mnist[0][:7], mnist[1][:7])
    assert tuple(x.shape) == (7, 784) and x.dtype == torch.get_default_dtype()
    assert y.dtype == torch.int64 and y.tolist() == [5, 0, 4, 1, 9, 2, 1]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    np.testing.assert_array_equal(x.numpy(), mnist[0][:7].reshape(7, 784).astype(np.float32) / np.float32(255))
    x64, _ = as_tensors(mnist[0][:2].reshape(2, 784), mnist[1][:2], dtype=torch.float64)
    assert x64.dtype == torch.float64


@pytest.mark.parametrize(
    "images,labels",
    [
        (np.zeros((3, 28, 28), np.uint8), np.zeros(2, np.uint8)),  # N mismatch
        (np.zeros((3, 27, 27), np.uint8), np.zeros(3, np.uint8)),  # wrong pixel count
        (np.zeros((3, 28, 28), np.uint8), np.zeros((3, 1), np.uint8)),  # 2-D labels
        (np.zeros(784, np.uint8), np.zeros(1, np.uint8)),  # 1-D images
    ],
)
def test_as_tensors_bad_shapes(images, labels):
    with pytest.raises(ValueError):
        as_tensors(images, labels)


# --------------------------------------------------------------------------- permutations
def _is_bijection(perm, n=784):
    perm = np.asarray(perm)
    return perm.shape == (n,) and np.array_equal(np.sort(perm), np.arange(n))


def test_task_permutations_identity_first_and_seeded():
    p = task_permutations(4, seed=3)
    assert len(p) == 4
    np.testing.assert_array_equal(p[0], IDENTITY)
    for q in p[1:]:
        assert _is_bijection(q) and not np.array_equal(q, IDENTITY)
    again = task_permutations(4, seed=3)
    for a, b in zip(p, again):
        np.testing.assert_array_equal(a, b)
    other = task_permutations(4, seed=4)
    assert not np.array_equal(p[1], other[1])
    assert len({q.tobytes() for q in p}) == 4  # all distinct


def test_task_permutations_prefix_property():
    short, long = task_permutations(3, seed=11), task_permutations(7, seed=11)
    for a, b in zip(short, long):
        np.testing.assert_array_equal(a, b)


def test_task_permutations_identity_first_false():
    p = task_permutations(3, seed=0, identity_first=False)
    assert all(_is_bijection(q) and not np.array_equal(q, IDENTITY) for q in p)


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(num_tasks=0, seed=0), ValueError),
        (dict(num_tasks=-2, seed=0), ValueError),
        (dict(num_tasks=2.0, seed=0), TypeError),
        (dict(num_tasks=True, seed=0), TypeError),
        (dict(num_tasks=2, seed=-1), ValueError),
        (dict(num_tasks=2, seed="0"), TypeError),
        (dict(num_tasks=2, seed=None), TypeError),
    ],
)
def test_task_permutations_bad_args(kwargs, exc):
    with pytest.raises(exc, match="num_tasks|seed"):
        task_permutations(**kwargs)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 6), seed=st.integers(0, 2**32 - 1), first=st.booleans())
def test_task_permutations_are_bijections(n, seed, first):
    perms = task_permutations(n, seed, identity_first=first)
    assert len(perms) == n and all(_is_bijection(q) for q in perms)


def _square_mask(size, side=28):
    o = (side - size) // 2
    m = np.zeros((side, side), bool)
    m[o : o + size, o : o + size] = True
    return m.ravel()


@pytest.mark.parametrize("size", [8, 26])
def test_centre_square_permutation_paper_sizes(size):
    perm = centre_square_permutation(size, seed=1)
    assert _is_bijection(perm)
    inside = _square_mask(size)
    np.testing.assert_array_equal(perm[~inside], IDENTITY[~inside])  # outside fixed
    assert set(perm[inside].tolist()) == set(IDENTITY[inside].tolist())  # stays in the square
    moved = int((perm != IDENTITY).sum())
    # a uniform shuffle of size**2 pixels leaves about one fixed point
    assert size * size - 6 <= moved <= size * size, moved
    assert np.array_equal(perm, centre_square_permutation(size, seed=1))
    assert not np.array_equal(perm, centre_square_permutation(size, seed=2))


def test_centre_square_geometry_8():
    perm = centre_square_permutation(8, seed=0)
    moved = np.flatnonzero(perm != IDENTITY)
    rows, cols = moved // 28, moved % 28
    assert rows.min() >= 10 and rows.max() <= 17 and cols.min() >= 10 and cols.max() <= 17


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 28), seed=st.integers(0, 2**32 - 1))
def test_centre_square_permutation_is_bijection_inside_square(size, seed):
    perm = centre_square_permutation(size, seed)
    inside = _square_mask(size)
    assert _is_bijection(perm)
    assert np.array_equal(perm[~inside], IDENTITY[~inside])
    assert inside[perm[inside]].all()


@pytest.mark.parametrize(
    "kwargs,exc",
    [
        (dict(size=0, seed=0), ValueError),
        (dict(size=29, seed=0), ValueError),
        (dict(size=8.0, seed=0), TypeError),
        (dict(size=8, seed=-3), ValueError),
        (dict(size=8, seed=1.5), TypeError),
    ],
)
def test_centre_square_permutation_bad_args(kwargs, exc):
    with pytest.raises(exc, match="size|seed"):
        centre_square_permutation(**kwargs)


# --------------------------------------------------------------------------- apply_permutation
def test_apply_permutation_numpy_and_torch(mnist):
    x = mnist[0][:5]
    perm = task_permutations(2, seed=5)[1]
    out = apply_permutation(x, perm)
    flat = x.reshape(5, 784)
    assert out.shape == (5, 784)
    for j in (0, 100, 783):
        np.testing.assert_array_equal(out[:, j], flat[:, perm[j]])
    xt, _ = as_tensors(x, mnist[1][:5])
    out_t = apply_permutation(xt, perm)
    assert isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), (flat[:, perm] / np.float32(255)).astype(np.float32))
    inverse = np.argsort(perm)
    np.testing.assert_array_equal(apply_permutation(out, inverse), flat)
    torch.testing.assert_close(apply_permutation(out_t, inverse), xt, rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_apply_permutation_preserves_pixel_multiset(seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(3, 784))
    perm = rng.permutation(784)
    out = apply_permutation(x, perm)
    np.testing.assert_array_equal(np.sort(out, axis=1), np.sort(x, axis=1))


@pytest.mark.parametrize(
    "perm",
    [
        np.arange(783),  # too short for 784 pixels
        np.zeros(784, int),  # not a permutation
        np.arange(784).reshape(28, 28),  # 2-D
    ],
)
def test_apply_permutation_bad_perm(perm):
    with pytest.raises(ValueError, match="perm|x"):
        apply_permutation(np.zeros((2, 784)), perm)


# --------------------------------------------------------------------------- tasks
def test_permuted_mnist_tasks_small(mnist):
    tasks = permuted_mnist_tasks(3, seed=2, n_train=50, n_test=20)
    assert [t.name for t in tasks] == ["A", "B", "C"]
    x0, y0 = as_tensors(mnist[0][:50], mnist[1][:50])
    perms = task_permutations(3, seed=2)
    for t, p in zip(tasks, perms):
        assert isinstance(t, Task)
        assert tuple(t.x_train.shape) == (50, 784) and tuple(t.x_test.shape) == (20, 784)
        assert t.y_train.tolist() == y0.tolist()
        np.testing.assert_array_equal(t.permutation, p)
        torch.testing.assert_close(t.x_train, x0[:, torch.as_tensor(p)], rtol=0, atol=0)
    torch.testing.assert_close(tasks[0].x_train, x0, rtol=0, atol=0)  # task A is plain MNIST
    assert [t.name for t in permuted_mnist_tasks(12, n_train=2, n_test=2)][9:] == ["J", "T10", "T11"]


@pytest.mark.parametrize("kwargs", [dict(n_train=0), dict(n_test=10001), dict(n_train=1.5)])
def test_permuted_mnist_tasks_bad_sizes(kwargs):
    with pytest.raises(ValueError, match="n_train|n_test"):
        permuted_mnist_tasks(2, **kwargs)


def test_centre_square_tasks_small():
    tasks = centre_square_tasks(8, num_tasks=3, seed=0, n_train=10, n_test=5)
    assert [t.name for t in tasks] == ["sq8-0", "sq8-1", "sq8-2"]
    np.testing.assert_array_equal(tasks[0].permutation, IDENTITY)
    inside = _square_mask(8)
    for t in tasks[1:]:
        assert np.array_equal(t.permutation[~inside], IDENTITY[~inside])
        assert not np.array_equal(t.permutation, IDENTITY)
        # pixels outside the square are the same as task 0's
        torch.testing.assert_close(
            t.x_train[:, torch.as_tensor(~inside)], tasks[0].x_train[:, torch.as_tensor(~inside)], rtol=0, atol=0
        )
    assert not np.array_equal(tasks[1].permutation, tasks[2].permutation)


def test_task_rejects_empty_split():
    with pytest.raises(ValueError, match="x_train"):
        Task(
            "bad",
            torch.zeros(0, 784),
            torch.zeros(0, dtype=torch.long),
            torch.zeros(1, 784),
            torch.zeros(1, dtype=torch.long),
            IDENTITY,
        )


# --------------------------------------------------------------------------- models.mlp
def test_mlp_paper_net_parameter_count():
    net = mlp([784, 400, 400, 10], seed=0)
    assert sum(p.numel() for p in net.parameters()) == 478410
    assert sum(p.numel() for p in net.parameters()) == 784 * 400 + 400 + 400 * 400 + 400 + 4010
    assert isinstance(net[-1], torch.nn.Linear)
    out = net(torch.zeros(3, 784))
    assert tuple(out.shape) == (3, 10)


def test_mlp_dropout_layout():
    net = mlp([784, 400, 400, 10], dropout_input=0.2, dropout_hidden=0.5, seed=0)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Dropout", "Linear"]
    assert net[0].p == 0.2 and net[3].p == 0.5
    assert [type(m).__name__ for m in mlp([4, 3, 2], activation="tanh")] == ["Linear", "Tanh", "Linear"]


def test_mlp_seed_reproducible_and_rng_untouched():
    state = torch.random.get_rng_state()
    a, b = mlp([10, 7, 3], seed=4), mlp([10, 7, 3], seed=4)
    c = mlp([10, 7, 3], seed=5)
    assert torch.equal(torch.random.get_rng_state(), state), "mlp(seed=...) moved the global RNG"
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_mlp_dtype_and_no_bias():
    net = mlp([5, 4, 2], dtype=torch.float64, bias=False, seed=0)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == 5 * 4 + 4 * 2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sizes=[784]),
        dict(sizes=[784, 0, 10]),
        dict(sizes=[784, 400.0, 10]),
        dict(sizes=[784, True, 10]),
        dict(sizes=[784, 10], activation="gelu"),
        dict(sizes=[784, 10], dropout_input=1.0),
        dict(sizes=[784, 10], dropout_hidden=-0.1),
    ],
)
def test_mlp_bad_args(kwargs):
    with pytest.raises(ValueError, match="sizes|activation|dropout"):
        mlp(**kwargs)
