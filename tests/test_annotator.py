from polyrnn.evaluation.annotator import chessboard, threshold_protocol

D = 28


def tok(c, r):
    return r * D + c


GT = [tok(5, 5), tok(15, 5), tok(20, 12), tok(15, 20), tok(5, 20)]


class ShiftedModel:
    """Always predicts the ground truth shifted 3 cells right, but obeys a given prefix: after a prefix of
    length k it predicts the shifted ground truth from vertex k on (the same error every time)."""

    def __init__(self, gt, shift=3, extra=0, short=0):
        self.gt, self.shift, self.extra, self.short = gt, shift, extra, short
        self.calls = 0

    def first(self):
        return self.gt[0] + self.shift

    def complete(self, prefix):
        self.calls += 1
        k = len(prefix)
        n = len(self.gt) - self.short
        rest = [t + self.shift for t in self.gt[k:n]] + [tok(25, 25)] * self.extra
        return list(prefix) + rest


def test_threshold_counts_every_vertex_past_threshold():
    m = ShiftedModel(GT, shift=3)
    poly, clicks = threshold_protocol(m, GT, threshold=2, grid_size=D)
    assert clicks == 5 and poly == GT
    m = ShiftedModel(GT, shift=3)
    poly, clicks = threshold_protocol(m, GT, threshold=3, grid_size=D)
    assert clicks == 0 and poly == [t + 3 for t in GT]


def test_threshold_aligns_start_and_handles_short_and_long():
    rotated = GT[2:] + GT[:2]
    m = ShiftedModel(rotated, shift=0)
    poly, clicks = threshold_protocol(m, GT, threshold=1, grid_size=D)
    assert clicks == 0 and poly == rotated  # matching starts at the GT vertex nearest the first prediction
    poly, clicks = threshold_protocol(ShiftedModel(GT, shift=0, short=2), GT, threshold=1, grid_size=D)
    assert clicks == 2 and poly == GT  # two missing vertices added
    poly, clicks = threshold_protocol(ShiftedModel(GT, shift=0, extra=3), GT, threshold=1, grid_size=D)
    assert clicks == 1 and poly == GT  # the tail cut once


def test_chessboard():
    assert chessboard(tok(1, 1), tok(4, 3), D) == 3


def test_model_session_reuses_states_and_matches_fresh_decodes():
    import numpy as np
    import torch

    from polyrnn.build import build_model
    from polyrnn.evaluation.annotator import ModelSession

    torch.manual_seed(0)
    model = build_model("tiny").eval()
    crop = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    s = ModelSession(model, crop, eos_threshold=2.0)  # never ends early: long polygons
    model.max_len = 12
    a = s.complete([s.first()])
    b = s.complete(a[:3] + [tok(1, 1)])
    fresh = ModelSession(model, crop, eos_threshold=2.0).complete(a[:3] + [tok(1, 1)])
    assert b == fresh and b[:4] == a[:3] + [tok(1, 1)]
