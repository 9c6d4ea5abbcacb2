"""The ``rnn`` engine, the paper's behaviour: the recurrent decoder re-predicts the vertices after the edited
one from it until it rejoins the old outline (Castrejón et al. 2017, annotator in the loop)."""

from __future__ import annotations

import numpy as np
import torch

from polyrnn.encoding import BoxEncoding
from polyrnn.engines.base import Engine, EngineConfig, State
from polyrnn.modeling.polygon_rnn import DecodeCursor


class Rnn(Engine):
    name = "rnn"

    def propose(
        self, encoding: BoxEncoding, config: EngineConfig, before: State, manual: State, index: int
    ) -> State | None:
        """Re-predict the vertices after ``index`` with the recurrent decoder until it rejoins the old outline
        (vertices before ``index`` kept); a fixed vertex after the edit is never passed over."""
        enc = encoding
        crop, m = enc.crop, enc.polygon_model
        static, _ = enc._polygon
        p, fixed = manual.polygon, manual.fixed
        tokens = [int(t) for t in crop.cells_to_tokens(crop.image_to_cells(p))]
        cell = tokens[index]
        kept = [k for k in range(index) if tokens[k] != cell and tokens[k] not in tokens[:k]]
        after = [k for k in range(index + 1, len(p)) if tokens[k] != cell]
        stop = next((j for j, k in enumerate(after) if fixed[k]), len(after))  # the next fixed vertex
        prefix = [tokens[k] for k in kept] + [cell]
        with torch.inference_mode():
            cur = DecodeCursor(
                m,
                static,
                prefix,
                eos_threshold=config.eos_threshold,
                max_len=len(prefix) + m.max_len,
                follow=[tokens[k] for k in after],
                rejoin=config.rejoin,
            )
            cur.ensure(10**9)
        new = cur.tokens[len(prefix) : len(cur.tokens) - len(cur.followed)]
        rest = [after[j] for j in cur.followed] if cur.followed else []
        if not rest or rest[0] not in after[: stop + 1]:  # rejoined past a fixed vertex: keep from it on
            rest = after[stop:]
        centres = crop.cells_to_image(crop.tokens_to_cells(np.array(new, dtype=np.int64))).reshape(-1, 2)
        keep_idx = kept + [index]
        poly = np.concatenate([p[keep_idx], centres, p[rest]])
        flags = np.concatenate([fixed[keep_idx], np.zeros(len(centres), bool), fixed[rest]])
        return State(
            poly, flags
        )  # a fixed vertex lost before the edit (it shared a cell) is refused by _guard
