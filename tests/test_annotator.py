"""The paper's threshold protocol, acting through a session (the editor's own operations)."""

import types

import numpy as np
import torch

from polyrnn.data.crop import CropBox
from polyrnn.evaluation.annotator import chessboard, threshold_protocol

D = 28
CROP = CropBox.around((0.0, 0.0, 224.0, 224.0), context=0.0, crop_size=224, grid_size=D)


def tok(c, r):
    return r * D + c


def centres(tokens):
    return CROP.cells_to_image(CROP.tokens_to_cells(np.array(tokens, dtype=np.int64))).reshape(-1, 2)


GT = [tok(5, 5), tok(15, 5), tok(20, 12), tok(15, 20), tok(5, 20)]


class ShiftedSession:
    """A session whose model always predicts the ground truth shifted ``shift`` cells right, but keeps what
    the annotator placed: after an edit of vertex k it re-predicts the shifted ground truth from k + 1 on
    (the same error every time). ``short`` / ``extra``: it stops early / runs past the end."""

    def __init__(self, gt, shift=3, extra=0, short=0):
        self.gt, self.shift, self.extra, self.short = gt, shift, extra, short
        self.encoding = types.SimpleNamespace(crop=CROP)
        self.polygon = self._predict([], 0)
        self.edits = 0

    def _predict(self, kept, k):
        n = len(self.gt) - self.short
        rest = [t + self.shift for t in self.gt[k:n]] + [tok(25, 25) + i for i in range(self.extra)]
        return (
            np.concatenate([np.array(kept, dtype=np.float64).reshape(-1, 2), centres(rest)])
            if rest
            else (np.array(kept, dtype=np.float64).reshape(-1, 2))
        )

    def move(self, index, xy):
        self.edits += 1
        self.polygon = self._predict([*self.polygon[:index].tolist(), list(xy)], index + 1)

    def insert(self, edge, xy):
        self.edits += 1
        self.polygon = np.concatenate([self.polygon[: edge + 1], [xy], self.polygon[edge + 1 :]])

    def delete(self, index):
        self.edits += 1
        self.polygon = np.delete(self.polygon, index, axis=0)


def test_threshold_counts_every_vertex_past_threshold():
    poly, clicks = threshold_protocol(ShiftedSession(GT, shift=3), GT, threshold=2)
    assert clicks == 5 and np.array_equal(poly, centres(GT))
    poly, clicks = threshold_protocol(ShiftedSession(GT, shift=3), GT, threshold=3)
    assert clicks == 0 and np.array_equal(poly, centres([t + 3 for t in GT]))


def test_threshold_aligns_start_and_handles_short_and_long():
    rotated = GT[2:] + GT[:2]
    poly, clicks = threshold_protocol(ShiftedSession(rotated, shift=0), GT, threshold=1)
    assert clicks == 0 and np.array_equal(poly, centres(rotated))  # matching starts at the nearest GT vertex
    poly, clicks = threshold_protocol(ShiftedSession(GT, shift=0, short=2), GT, threshold=1)
    assert clicks == 2 and np.array_equal(poly, centres(GT))  # two missing vertices added
    s = ShiftedSession(GT, shift=0, extra=3)
    poly, clicks = threshold_protocol(s, GT, threshold=1)
    assert clicks == 1 and np.array_equal(poly, centres(GT)) and s.edits == 3  # the tail cut: one correction


def test_chessboard():
    assert chessboard(tok(1, 1), tok(4, 3), D) == 3


def test_the_protocol_drives_a_real_session():
    """Through a BoxSession (the manual engine: a moved vertex and nothing else), every vertex 3 cells off is
    corrected at T = 2 and none at T = 3; the session's history holds each correction."""
    from polyrnn.build import build_model
    from polyrnn.encoding import BoxEncoding
    from polyrnn.session import BoxSession, EngineConfig, State

    torch.manual_seed(0)
    img = (np.random.default_rng(0).random((224, 224, 3)) * 255).astype(np.uint8)
    enc = BoxEncoding(img, (24.0, 24.0, 200.0, 200.0), polygon_model=build_model("tiny"), context=0.0)
    gt = [int(t) for t in enc.crop.cells_to_tokens(np.array([[5, 5], [15, 5], [20, 12], [15, 20], [5, 20]]))]
    off = enc.crop.cells_to_image(np.array([[8, 5], [18, 5], [23, 12], [18, 20], [8, 20]]))
    for t, want in ((2, 5), (3, 0)):
        s = BoxSession(enc, EngineConfig(name="manual"), state=State(off.copy(), np.zeros(5, bool)))
        poly, clicks = threshold_protocol(s, gt, t)
        assert clicks == want and len(s.history) == want
        if want:
            assert np.array_equal(poly, enc.crop.cells_to_image(enc.crop.tokens_to_cells(np.array(gt))))
