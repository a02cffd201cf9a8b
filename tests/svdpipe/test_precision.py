import warnings

import pytest
import torch

from curation.clip_models import inference_device
from svdpipe.config import load_config
from svdpipe.precision import cpu_has_native
from training.device import inference_dtype


def _emulation_warned(fn):
    """(fn's result, whether it warned that the precision is emulated)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        result = fn()
    return result, any("emulated" in str(w.message) for w in seen)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_reduced_precision_on_a_cpu_without_its_instructions_warns_in_scoring_and_sampling(dtype):
    # This machine answers both ways (AVX-512 BF16, no FP16); elsewhere each case still checks its own branch.
    slow = not cpu_has_native(dtype)
    scoring, scoring_warned = _emulation_warned(lambda: inference_device("cpu", dtype))
    cfg = load_config("tiny", overrides=["compute.device=cpu", f"compute.dtype={dtype}"], environ={})
    sampling, sampling_warned = _emulation_warned(lambda: inference_dtype(cfg))
    assert scoring == ("cpu", getattr(torch, dtype)) and sampling == getattr(torch, dtype)
    assert scoring_warned == slow and sampling_warned == slow


def test_float32_runs_natively_without_a_warning():
    assert cpu_has_native("float32")
    assert _emulation_warned(lambda: inference_device("cpu", "float32")) == (("cpu", torch.float32), False)
