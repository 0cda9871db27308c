"""MNIST loading with checksums, and the pixel permutations of permuted-MNIST tasks.

Nothing here ever downloads. The data set ships with the repository as ``data/mnist.npz``
(provenance and licence in ``data/README.md``), and every array is checked against the
SHA-256 listed there before it is returned.

Conventions
-----------
* Images are ``uint8`` arrays of shape ``(N, 28, 28)`` as stored; :func:`as_tensors`
  flattens them to ``(N, 784)`` float tensors in ``[0, 1]``.
* A *permutation* is an integer array ``perm`` of length 784 and is applied as
  ``x_flat[:, perm]``: output pixel ``j`` takes input pixel ``perm[j]``.
* In :func:`task_permutations` task 0 is the **identity** (plain MNIST) by default, as in
  the paper's Figure 2A where task A is also a random permutation; pass
  ``identity_first=False`` to make every task a random permutation.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import zipfile

import numpy as np

from ._checks import check_int

__all__ = [
    "DEFAULT_PATH",
    "MNIST_SHA256",
    "MNIST_SHAPES",
    "IMAGE_SIDE",
    "NUM_PIXELS",
    "DataFileError",
    "load_mnist",
    "as_tensors",
    "task_permutations",
    "centre_square_permutation",
    "apply_permutation",
]

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE

#: Where the repository keeps the data file (``<repo>/data/mnist.npz``). The environment
#: variable ``EWC_MNIST_PATH`` overrides it.
#:
#: :meta hide-value:
DEFAULT_PATH = pathlib.Path(__file__).resolve().parent.parent / "data" / "mnist.npz"

#: SHA-256 of each array's raw bytes (``hashlib.sha256(a.tobytes())``), as listed in
#: ``data/README.md``.
#:
#: :meta hide-value:
MNIST_SHA256 = {
    "x_train": "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    "y_train": "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    "x_test": "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    "y_test": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}

#: Expected shape of each array (all ``uint8``).
MNIST_SHAPES = {
    "x_train": (60000, IMAGE_SIDE, IMAGE_SIDE),
    "y_train": (60000,),
    "x_test": (10000, IMAGE_SIDE, IMAGE_SIDE),
    "y_test": (10000,),
}


class DataFileError(ValueError):
    """The MNIST file is missing, unreadable, truncated or altered."""


def _resolve(path) -> pathlib.Path:
    if path is None:
        path = os.environ.get("EWC_MNIST_PATH", DEFAULT_PATH)
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    return pathlib.Path(path)


def load_mnist(path=None, *, verify: bool = True):
    """Load MNIST from the repository's ``data/mnist.npz`` and check it.

    Book: :ref:`sec-mnist-data`.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The ``.npz`` file. Default: ``$EWC_MNIST_PATH`` if set, else ``<repo>/data/mnist.npz``.
    verify : bool
        Check each array's shape, dtype and SHA-256 against :data:`MNIST_SHA256`
        (about 0.1 s). Leave it on.

    Returns
    -------
    (x_train, y_train, x_test, y_test) : tuple of numpy.ndarray
        ``uint8`` arrays of shapes (60000, 28, 28), (60000,), (10000, 28, 28), (10000,).

    Raises
    ------
    DataFileError
        (a ``ValueError``) naming the file and what was expected, when the file is missing,
        is not a readable ``.npz``, lacks an array, or an array's shape, dtype or checksum
        differs. The file is never modified and nothing is downloaded.

    Example
    -------
    >>> x_train, y_train, x_test, y_test = load_mnist()
    >>> x_train.shape, int(y_train[0])
    ((60000, 28, 28), 5)
    """
    p = _resolve(path)
    if not p.is_file():
        raise DataFileError(
            f"MNIST file not found: {p}. Expected the repository's data/mnist.npz "
            "(see data/README.md); nothing is downloaded at run time."
        )
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in MNIST_SHA256 if k not in z.files]
            if missing:
                raise DataFileError(
                    f"MNIST file {p} lacks the array(s) {missing}; expected keys {sorted(MNIST_SHA256)}."
                )
            arrays = {k: z[k] for k in MNIST_SHA256}
    except DataFileError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise DataFileError(f"MNIST file {p} is not a readable .npz archive (truncated or corrupted?): {exc}") from exc
    if verify:
        for key, a in arrays.items():
            if a.dtype != np.uint8 or a.shape != MNIST_SHAPES[key]:
                raise DataFileError(
                    f"MNIST file {p}: array {key!r} has dtype {a.dtype} and shape {a.shape}; "
                    f"expected uint8 with shape {MNIST_SHAPES[key]}."
                )
            digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
            if digest != MNIST_SHA256[key]:
                raise DataFileError(
                    f"MNIST file {p}: array {key!r} has SHA-256 {digest}; expected "
                    f"{MNIST_SHA256[key]} (data/README.md). The file was altered."
                )
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def as_tensors(images, labels, *, dtype=None):
    """Turn ``uint8`` images and labels into model-ready tensors.

    Returns ``x`` of shape ``(N, 784)`` with values ``pixel / 255`` in ``[0, 1]`` and
    ``y`` of dtype ``int64``. ``dtype`` defaults to ``torch.get_default_dtype()``.

    >>> x_tr, y_tr, _, _ = load_mnist()
    >>> x, y = as_tensors(x_tr[:5], y_tr[:5])
    >>> tuple(x.shape), y.tolist()
    ((5, 784), [5, 0, 4, 1, 9])
    """
    import torch

    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim < 2 or images.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(
            f"images/labels: expected images (N, 28, 28) or (N, 784) and labels (N,), got "
            f"{images.shape} and {labels.shape}"
        )
    flat = images.reshape(images.shape[0], -1)
    if flat.shape[1] != NUM_PIXELS:
        raise ValueError(f"images: expected {NUM_PIXELS} pixels per image, got {flat.shape[1]}")
    dtype = dtype or torch.get_default_dtype()
    x = torch.as_tensor(flat, dtype=dtype) / 255.0
    y = torch.as_tensor(labels.astype(np.int64))
    return x, y


def task_permutations(
    num_tasks: int, seed: int, *, identity_first: bool = True, num_pixels: int = NUM_PIXELS
) -> list[np.ndarray]:
    """Fixed pixel permutations, one per permuted-MNIST task.

    Book: :ref:`sec-mnist-data`.

    Task ``t`` uses ``perms[t]``. With ``identity_first=True`` (default) task 0 is the
    identity, i.e. plain MNIST; tasks ``1..num_tasks-1`` are uniformly random permutations
    drawn from ``numpy.random.default_rng(seed)``. The same seed gives the same list, and
    the list for ``n`` tasks is a prefix of the list for ``n + 1``.

    >>> p = task_permutations(3, seed=0)
    >>> len(p), bool((p[0] == range(784)).all())
    (3, True)
    """
    check_int("num_tasks", num_tasks, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("num_pixels", num_pixels, minimum=1)
    rng = np.random.default_rng(seed)
    perms = []
    for t in range(num_tasks):
        if t == 0 and identity_first:
            perms.append(np.arange(num_pixels))
        else:
            perms.append(rng.permutation(num_pixels))
    return perms


def centre_square_permutation(size: int, seed: int, *, image_side: int = IMAGE_SIDE) -> np.ndarray:
    """Permute only the central ``size x size`` square of the image; other pixels stay.

    Book: :ref:`sec-mnist-data`.

    This is the paper's Fisher-overlap task family (Figure 2C: ``size=8`` and ``size=26``).
    The square is rows and columns ``[o, o + size)`` with ``o = (image_side - size) // 2``.
    The pixels inside are shuffled with ``numpy.random.default_rng(seed)``.

    >>> perm = centre_square_permutation(8, seed=1)
    >>> int((perm != range(784)).sum()) <= 64
    True
    """
    check_int("size", size, minimum=1)
    check_int("seed", seed, minimum=0)
    check_int("image_side", image_side, minimum=1)
    if size > image_side:
        raise ValueError(f"size: expected at most image_side={image_side}, got {size}")
    o = (image_side - size) // 2
    idx = np.arange(image_side * image_side).reshape(image_side, image_side)
    inside = idx[o : o + size, o : o + size].ravel()
    perm = np.arange(image_side * image_side)
    perm[inside] = inside[np.random.default_rng(seed).permutation(inside.size)]
    return perm


def apply_permutation(x, perm):
    """Apply ``perm`` to the pixels of flattened images: ``x[:, perm]``.

    ``x`` is a numpy array or torch tensor of shape ``(N, 784)`` (or ``(N, 28, 28)``, which
    is flattened first); ``perm`` is a permutation of ``range(784)``.
    """
    perm = np.asarray(perm)
    n_pix = perm.shape[0] if perm.ndim == 1 else -1
    if perm.ndim != 1 or not np.array_equal(np.sort(perm), np.arange(n_pix)):
        raise ValueError("perm: expected a 1-D permutation of range(num_pixels)")
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[1] != n_pix:
        raise ValueError(f"x: expected {n_pix} pixels per row, got {flat.shape[1]}")
    if hasattr(flat, "index_select"):  # torch tensor
        import torch

        return flat[:, torch.as_tensor(perm, dtype=torch.long)]
    return flat[:, perm]
