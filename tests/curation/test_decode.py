import numpy as np

from curation.decode import decode_once, scaled_size


def test_one_pass_gives_every_frame_and_the_samples(corpus):
    folder, truth = corpus
    name, t = next(iter(truth["videos"].items()))
    seen = []
    decoded = decode_once(folder / name, sample_fps=2.0, score_short_side=96, flow_short_side=32, detect_width=128,
                          on_frame=lambda i, bgr: seen.append((i, bgr.shape)))
    assert decoded.num_frames == t["num_frames"] and [i for i, _ in seen] == list(range(t["num_frames"]))
    assert {shape for _, shape in seen} == {(72, 128, 3)}  # 256x144 source at width 128
    step = t["fps"] / 2.0
    assert [s.index for s in decoded.samples] == [int(round(k * step)) for k in range(len(decoded.samples))]
    assert decoded.samples[-1].index + step > t["num_frames"] - 1
    assert decoded.samples[0].rgb.shape == (96, 170, 3) and decoded.samples[0].gray.shape == (32, 56)
    assert decoded.samples[0].rgb.dtype == np.uint8


def test_scaled_size_keeps_aspect_even_and_never_upscales():
    assert scaled_size(1920, 1080, short_side=256) == (456, 256)
    assert scaled_size(640, 360, width_to=256) == (256, 144)
    assert scaled_size(100, 50, short_side=256) == (100, 50)
