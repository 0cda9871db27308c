"""Named tolerances and thresholds shared by the tests, the notebooks and the chapters.

Each constant says why it has its size. Import them instead of writing a number again:

>>> from ewc_lib.testing import REPLAY_RTOL
>>> REPLAY_RTOL
0.0001
"""

from __future__ import annotations

__all__ = ["REPLAY_RTOL", "OVERLAP_INIT_RTOL", "CLAIM_MARGIN"]

#: Replaying the first steps of a recorded float32 training run on the same kind of CPU with
#: the recorded thread count gives the same weights up to the summation order of the BLAS
#: kernels; a different seed, learning rate or data order moves them by ~1e-1 of their norm.
#: Compared relative to each parameter's norm.
REPLAY_RTOL = 1e-4

#: The Fisher overlap at initialisation recomputed from the recorded config, with float32
#: forward passes and float64 sums over 10,000 images, rounded to 6 digits in the file.
OVERLAP_INIT_RTOL = 1e-4

#: A qualitative claim about recorded accuracies ("EWC keeps A", "L2 ends below EWC on B")
#: must hold by at least this margin (accuracy in [0, 1]), more than the test-set standard
#: error of one accuracy near 0.9 measured on 10,000 images (sqrt(0.9 * 0.1 / 10000) = 0.003).
CLAIM_MARGIN = 0.01
