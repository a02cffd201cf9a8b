import numpy as np

from curation.motion import clip_motion, flow_magnitudes


def _texture(rng, h, w):
    import cv2

    return cv2.GaussianBlur(rng.integers(0, 255, (h, w)).astype(np.uint8), (5, 5), 0)


def test_flow_measures_a_known_shift():
    rng = np.random.default_rng(0)
    big = _texture(rng, 120, 160)
    frames = [np.ascontiguousarray(big[20:84, 20 + 3 * k : 20 + 3 * k + 96]) for k in range(4)]
    mags = flow_magnitudes(frames)
    assert mags.shape == (3,)
    assert np.allclose(mags, 3.0, atol=0.8)  # a 3-pixel pan, measured at the frame size
    assert flow_magnitudes([frames[0]] * 3).max() < 0.05


def test_clip_motion_uses_only_steps_inside_the_clip():
    sample_frames = np.array([0, 12, 24, 36, 48])
    steps = np.array([1.0, 2.0, 10.0, 4.0])  # step i: sample i -> i+1
    assert clip_motion(sample_frames, steps, 0, 30) == (1.5, [1.0, 2.0])
    assert clip_motion(sample_frames, steps, 30, 60) == (4.0, [4.0])  # 24->36 straddles the cut at 30
    score, series = clip_motion(sample_frames, steps, 20, 30)  # one sample only
    assert np.isnan(score) and series == []

