from pathlib import Path

import numpy as np
import pytest
import torch

from polyrnn.build import (
    VARIANTS,
    CheckpointError,
    build_model,
    checkpoint_dict,
    load_weights,
    save_checkpoint,
)
from polyrnn.config import ModelConfig
from polyrnn.data.crop import CropBox
from polyrnn.data.sequence import polygon_to_tokens
from polyrnn.modeling.conv_lstm import ConvGRUCell, ConvLSTMCell
from polyrnn.modeling.decoder import PolygonDecoder
from polyrnn.modeling.losses import PolygonLoss
from polyrnn.modeling.polygon_rnn import PolygonRNN
from polyrnn.predictor import PolygonPredictor
from polyrnn.session import State

D = 28


def batch_of(tokens_list):
    t = max(len(t) for t in tokens_list)
    tokens = torch.full((len(tokens_list), t), -1, dtype=torch.long)
    for i, tk in enumerate(tokens_list):
        tokens[i, : len(tk)] = torch.as_tensor(tk)
    b = {"tokens": tokens, "lengths": torch.tensor([len(t) for t in tokens_list])}
    b["boundary"] = torch.zeros(len(tokens_list), D, D)
    b["vertices"] = torch.zeros(len(tokens_list), D, D)
    for i, tk in enumerate(tokens_list):
        for v in tk[:-1]:
            b["vertices"][i].view(-1)[v] = 1
            b["boundary"][i].view(-1)[v] = 1
    return b


def square_tokens(x0=5, y0=6, s=12):
    cells = [(x0, y0), (x0 + s, y0), (x0 + s, y0 + s), (x0, y0 + s)]
    return [r * D + c for c, r in cells] + [D * D]


def square_mask_model():
    """A mask model whose mask is always the same square: mask pixels [12, 44) x [10, 46) of 56."""
    from polyrnn.modeling.mask_net import MaskNet

    class SquareMask(MaskNet):
        def _views(self, images, *, flip):  # every view's probability: the square (the mirror's mirrored)
            m = torch.zeros(images.shape[0], 56, 56)
            m[:, 10:46, 12:44] = 1.0
            x = torch.cat([images, images.flip(-1)]) if flip else images
            return self.encoder(x), torch.cat([m, m.flip(-1)]) if flip else m

    tiny_mask = build_model("tiny-mask")
    return SquareMask(encoder=tiny_mask.encoder, head=tiny_mask.head)


@pytest.mark.parametrize("variant", ["tiny", "lite"])
def test_shapes_and_every_parameter_gets_a_gradient(variant):
    torch.manual_seed(0)
    model = build_model(variant)
    model.train()
    images = torch.rand(2, 3, 224, 224) * 255
    batch = batch_of([square_tokens(), square_tokens(3, 3, 20)[:3] + [D * D]])
    out = model(images, batch["tokens"])
    assert out["step_logits"].shape == (2, 4, D * D + 1)
    assert out["boundary_logits"].shape == (2, D, D) and out["vertex_logits"].shape == (2, D, D)
    loss = PolygonLoss(grid_size=D)(out, batch)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []


def test_peephole_and_gru_variants_train():
    for cfg in [
        ModelConfig(
            encoder="tiny",
            pretrained=False,
            tap_channels=8,
            feat_channels=16,
            hidden=8,
            peephole=True,
            head="fc",
        ),
        ModelConfig(encoder="tiny", pretrained=False, tap_channels=8, feat_channels=16, hidden=8, cell="gru"),
    ]:
        model = build_model(cfg)
        batch = batch_of([square_tokens()])
        out = model(torch.rand(1, 3, 224, 224) * 255, batch["tokens"])
        PolygonLoss(grid_size=D)(out, batch)["loss"].backward()
        assert all(p.grad is not None for p in model.parameters())


def test_conv_lstm_cell_matches_equations():
    torch.manual_seed(1)
    cell = ConvLSTMCell(hidden=2, kernel=3, size=4, peephole=True)
    with torch.no_grad():
        for p in (cell.w_ci, cell.w_cf, cell.w_co):
            p.normal_()
    x_conv = torch.randn(1, 8, 4, 4)
    h, c = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    h2, (_, c2) = cell(x_conv, (h, c))
    w = cell.conv_h.weight  # (8, 2, 3, 3)
    hp = torch.nn.functional.pad(h, (1, 1, 1, 1))
    wh = torch.zeros(1, 8, 4, 4)
    for o in range(8):  # the convolution written out
        for y in range(4):
            for x in range(4):
                wh[0, o, y, x] = (w[o] * hp[0, :, y : y + 3, x : x + 3]).sum()
    g = x_conv + wh
    i = torch.sigmoid(g[:, 0:2] + cell.w_ci * c)
    f = torch.sigmoid(g[:, 2:4] + cell.w_cf * c)
    c_new = f * c + i * torch.tanh(g[:, 4:6])
    o = torch.sigmoid(g[:, 6:8] + cell.w_co * c_new)
    torch.testing.assert_close(c2, c_new, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h2, o * torch.tanh(c_new), atol=1e-5, rtol=1e-5)


def test_conv_gru_cell_matches_equations():
    torch.manual_seed(2)
    cell = ConvGRUCell(hidden=2, kernel=1)
    x_conv = torch.randn(1, 6, 3, 3)
    h = torch.randn(1, 2, 3, 3)
    h2, _ = cell(x_conv, (h, h))
    wzr, wn = cell.conv_zr.weight[:, :, 0, 0], cell.conv_n.weight[:, :, 0, 0]  # 1x1 kernels: matrices
    hz = torch.einsum("oc,bcyx->boyx", wzr, h)
    z = torch.sigmoid(x_conv[:, 0:2] + hz[:, 0:2])
    r = torch.sigmoid(x_conv[:, 2:4] + hz[:, 2:4])
    n = torch.tanh(x_conv[:, 4:6] + torch.einsum("oc,bcyx->boyx", wn, r * h))
    torch.testing.assert_close(h2, (1 - z) * n + z * h, atol=1e-6, rtol=1e-6)


def test_static_part_is_computed_once():
    dec = PolygonDecoder(feat_channels=4, hidden=2, grid_size=6)
    calls = []
    dec.static_conv.register_forward_hook(lambda *a: calls.append(1))
    static = dec.prepare(torch.randn(1, 4, 6, 6))
    dec(static, torch.tensor([[1, 2, 3, 4, 36]]))
    assert len(calls) == 1


def _overfit(steps=150):
    torch.manual_seed(0)
    model = build_model("tiny")
    images = torch.rand(1, 3, 224, 224) * 255
    tokens = square_tokens(4, 5, 15)
    batch = batch_of([tokens])
    loss_fn = PolygonLoss(grid_size=D)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(images, batch["tokens"]), batch)["loss"]
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    return model.eval(), images, tokens, first, loss.item()


def test_overfit_one_batch_and_greedy_reproduces_polygon():
    model, images, tokens, first, last = _overfit()
    assert last < 0.5 * first
    _, static, vertex = model.encode(images)
    idx, _ = model.first_vertices(vertex)
    assert int(idx[0, 0]) in tokens[:-1]
    dec = model.decode(static, [tokens[0]])
    assert dec.tokens == tokens[:-1] and dec.ended
    # a correction keeps the vertices before it, puts the corrected one where asked, and re-predicts
    corrected = model.decode(static, [tokens[0], tokens[1], 10 * D + 25], prefix_states=dec.states)
    assert corrected.tokens[:3] == [tokens[0], tokens[1], 10 * D + 25]
    assert len(set(corrected.tokens)) == len(corrected.tokens)  # never revisits a cell
    fresh = model.decode(static, [tokens[0], tokens[1], 10 * D + 25])
    assert fresh.tokens == corrected.tokens  # cached states give the same answer as a full re-run


def test_predictor_correction_and_errors():
    torch.manual_seed(0)
    pred = PolygonPredictor(build_model("tiny"))
    with pytest.raises(RuntimeError, match="set_image"):
        pred.predict((0, 0, 10, 10))
    with pytest.raises(ValueError, match="RGB uint8"):
        pred.set_image(np.zeros((10, 10), np.float32))
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    pred.set_image(img)
    with pytest.raises(ValueError, match="x2 > x1"):
        pred.predict((50, 50, 40, 60))
    with pytest.raises(ValueError, match="outside"):
        pred.predict((500, 500, 600, 600))
    p = pred.predict((20, 30, 120, 100))
    assert p.vertices.shape[1] == 2 and len(p.vertices) == len(p.probs) >= 3
    n = len(p.vertices)
    k = min(2, n - 1)
    q = pred.correct(k, (70.0, 40.0))
    np.testing.assert_allclose(q.vertices[:k], p.vertices[:k])
    assert q.vertices[k].tolist() == [70.0, 40.0]  # the annotator's point, exactly
    assert q.fixed.tolist()[: k + 1] == [False] * k + [True] and q.fixed.sum() == 1
    with pytest.raises(IndexError):
        pred.correct(999, (1.0, 1.0))


def test_seeded_golden_numbers_tiny():
    torch.manual_seed(1234)
    model = build_model("tiny")
    images = torch.arange(3 * 224 * 224, dtype=torch.float32).view(1, 3, 224, 224) % 255
    batch = batch_of([square_tokens()])
    with torch.no_grad():
        out = model(images, batch["tokens"])
        losses = PolygonLoss(grid_size=D)(out, batch)
    got = [
        round(float(losses["polygon"]), 4),
        round(float(losses["first_vertex"]), 4),
        round(float(out["step_logits"].sum()), 3),
    ]
    # pinned from a seeded run: a refactor that changes the numbers must say so here
    assert got == pytest.approx([5.6661, 1.2314, -69.406], rel=1e-3, abs=1e-3)


def test_checkpoint_round_trip_and_strictness(tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny")
    path = tmp_path / "w.pt"
    save_checkpoint(path, checkpoint_dict(model, VARIANTS["tiny"]))
    again = build_model("tiny", path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(build_model("tiny"), state)
    state.pop("extra.weight")
    state.pop("decoder.vertex_conv.weight")
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(build_model("tiny"), state)
    with pytest.raises(CheckpointError, match="not a polyrnn checkpoint"):
        torch.save({"a": 1}, tmp_path / "x.pt")
        build_model("tiny", tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        build_model("tiny", tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="checkpoint is for"):
        build_model("lite", path)


def test_vgg16_names_match_torchvision(tmp_path):
    from polyrnn.modeling.encoder import VGG16Taps

    vgg = VGG16Taps()
    names = [k for k in vgg.state_dict()]
    expected = [
        f"features.{i}.{w}"
        for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
        for w in ("weight", "bias")
    ]
    assert names == expected
    fake = {k: torch.randn_like(v) for k, v in vgg.state_dict().items()}
    fake["classifier.0.weight"] = torch.zeros(2, 2)
    torch.save(fake, tmp_path / "vgg16.pth")
    vgg.load_torchvision(tmp_path / "vgg16.pth")
    assert torch.equal(vgg.features[28].bias, fake["features.28.bias"])


def test_tokens_from_real_polygon_feed_the_model():
    crop = CropBox.around((10, 10, 100, 80))
    t = np.linspace(0, 2 * np.pi, 30, endpoint=False)
    poly = np.column_stack([60 + 50 * np.cos(t), 50 + 40 * np.sin(t)])
    tokens = polygon_to_tokens(poly, crop).tolist()
    out = build_model("tiny")(torch.rand(1, 3, 224, 224) * 255, torch.tensor([tokens]))
    assert out["step_logits"].shape[1] == len(tokens) - 1


def test_mask_model_shapes_target_and_polygon_round_trip():
    from polyrnn.data.dataset import crop_mask_target
    from polyrnn.evaluation.metrics import instance_iou
    from polyrnn.modeling.mask_net import MaskNet, mask_polygon

    model = build_model("tiny-mask").eval()
    assert isinstance(model, MaskNet)
    out = model(torch.rand(2, 3, 224, 224) * 255)["mask_logits"]
    assert out.shape == (2, 56, 56)
    # a target rasterised over the crop and traced back lands on the ground truth in image pixels
    from polyrnn.data.instance import Instance

    poly = np.array([[40, 30], [160, 50], [120, 140], [50, 120]], float)
    inst = Instance(
        image_path=Path("x.png"),
        image_size=(200, 180),
        class_name="a",
        box=(40, 30, 120, 110),
        polygons=[poly],
    )
    crop = CropBox.around(inst.box)
    target = crop_mask_target([poly], [], crop, 112)
    assert target.shape == (112, 112) and 0.2 < target.mean() < 0.8
    back = mask_polygon(target, crop)
    assert back is not None and instance_iou([back], inst) > 0.93
    assert mask_polygon(np.zeros((56, 56)), crop) is None


def test_mask_model_learns_a_fixed_target():
    from polyrnn.modeling.mask_net import MaskLoss

    torch.manual_seed(0)
    model = build_model("tiny-mask")
    x = torch.rand(2, 3, 224, 224) * 255
    target = torch.zeros(2, 56, 56)
    target[:, 10:40, 15:45] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = MaskLoss()
    first = None
    for _ in range(30):
        loss = loss_fn(model(x), {"mask": target})["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_predictor_with_mask_model_starts_from_its_outline_and_corrects_with_the_decoder():
    mask_model = square_mask_model()
    torch.manual_seed(0)
    pred = PolygonPredictor(build_model("tiny"), mask_model=mask_model, eos_threshold=2.0)
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    pred.set_image(img)
    p = pred.predict((20, 10, 140, 110))
    crop = CropBox.around((20, 10, 120, 100))
    # the square's corners, in image pixels (mask pixel = 4 crop pixels)
    corners = crop.crop_to_image(np.array([[12, 10], [44, 10], [44, 46], [12, 46]], float) * 4)
    assert len(p.vertices) == 4 and p.source == "mask"
    assert {tuple(np.round(v, 3)) for v in p.vertices} == {tuple(np.round(c, 3)) for c in corners}
    before = p.vertices.copy()
    q = pred.correct(2, (90.0, 100.0))
    assert np.allclose(q.vertices[:2], before[:2])  # kept exactly
    assert tuple(q.vertices[2]) == (90.0, 100.0)  # the annotator's point, not snapped
    assert q.fixed.tolist()[:3] == [False, False, True] and q.fixed.sum() == 1
    assert len(q.vertices) >= 4 and q.source == "mask"  # the automatic polygon came from the mask


def test_shipped_weights_load_by_default_and_are_checked(tmp_path, monkeypatch):
    import shutil

    from polyrnn import build
    from polyrnn.modeling.mask_net import MaskNet

    if not (build.WEIGHTS_DIR / "lite.pt").is_file():
        pytest.skip("no shipped weights in this checkout")
    model = build_model("lite")  # the shipped weights, sha256 checked
    assert isinstance(model, PolygonRNN)
    shipped = torch.load(build.WEIGHTS_DIR / "lite.pt", weights_only=True)["model"]
    k = "decoder.static_conv.weight"
    assert torch.equal(model.state_dict()[k], shipped[k].float())
    assert isinstance(build_model("lite-mask"), MaskNet)
    assert (build.WEIGHTS_DIR / "lite.pt").stat().st_size + (
        build.WEIGHTS_DIR / "lite-mask.pt"
    ).stat().st_size < 25e6
    # a modified file is refused
    folder = tmp_path / "weights"
    shutil.copytree(build.WEIGHTS_DIR, folder)
    monkeypatch.setattr(build, "WEIGHTS_DIR", folder)
    monkeypatch.setattr(build, "_verified", set())
    assert build.default_weights("lite") == folder / "lite.pt"
    build._verified.clear()
    with open(folder / "lite.pt", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    with pytest.raises(CheckpointError, match="sha256"):
        build.default_weights("lite")
    with pytest.raises(CheckpointError, match="no trained weights"):
        build.default_weights("vgg16")


def test_decoder_rejoins_the_old_outline_and_keeps_its_rest():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    _, static, _ = model.encode(torch.rand(1, 3, 224, 224) * 255)
    prefix = [5 * D + 5]
    free = model.decode(static, prefix, eos_threshold=2.0, max_len=12)
    assert (
        model.decode(static, prefix, eos_threshold=2.0, max_len=12, follow=free.tokens[1:]).tokens
        == free.tokens
    )
    # an old outline next to the decoder's own second vertex: it is met there and kept from there on
    nxt = free.tokens[1]
    r, c = divmod(nxt, D)
    near = (r + (1 if r < D - 1 else -1)) * D + c  # one cell away
    old = [20 * D + 20, near, 22 * D + 3, 24 * D + 9]
    dec = model.decode(static, prefix, eos_threshold=2.0, max_len=12, follow=old, rejoin=1)
    assert dec.tokens == [*prefix, near, 22 * D + 3, 24 * D + 9] and dec.followed == [1, 2, 3] and dec.ended
    assert len(dec.probs) == 3
    # too far for rejoin=0: decoded as before until it meets nothing
    assert (
        model.decode(static, prefix, eos_threshold=2.0, max_len=12, follow=old, rejoin=0).tokens[:2]
        == free.tokens[:2]
    )


def test_predictor_correction_rejoins_the_mask_outline_with_its_exact_points():
    mask_model = square_mask_model()
    torch.manual_seed(0)
    img = (np.random.default_rng(0).random((120, 160, 3)) * 255).astype(np.uint8)
    box = (20, 10, 140, 110)
    # rejoin everywhere (28 cells): the first re-predicted vertex lands on the old outline
    pred = PolygonPredictor(build_model("tiny"), mask_model=mask_model, eos_threshold=2.0, rejoin=D)
    pred.set_image(img)
    before = pred.predict(box).vertices.copy()
    q = pred.correct(1, (100.0, 30.0))
    assert tuple(q.vertices[1]) == (100.0, 30.0) and np.allclose(q.vertices[0], before[0])
    n_old = len(q.vertices) - 2
    assert 1 <= n_old <= 2  # the rest is old vertices 2.. (from where it met them), at their exact points
    assert all(any(np.allclose(v, b) for b in before[2:]) for v in q.vertices[2:])
    # off: everything after the corrected vertex comes from the decoder (cell centres)
    off = PolygonPredictor(  # the paper: no rejoin, and no guard on how far the re-prediction runs
        build_model("tiny"), mask_model=mask_model, eos_threshold=2.0, rejoin=None, confine=10.0
    )
    off.set_image(img)
    off.predict(box)
    session = off.session(box)
    manual = State(before.copy(), np.arange(len(before)) == 1)
    manual.polygon[1] = (100.0, 30.0)
    from polyrnn.engines import ENGINES

    # what the engine proposes (the guard may still refuse it)
    proposal = ENGINES["rnn"].propose(session.encoding, session.engine, session.state, manual, 1)
    assert proposal is not None and tuple(proposal.polygon[1]) == (100.0, 30.0)
    assert not any(np.allclose(v, b) for v in proposal.polygon[2:] for b in before[2:])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_truncated_backprop_cuts_gradients_through_the_state_only(cell):
    torch.manual_seed(0)
    d = 6
    dec = PolygonDecoder(feat_channels=4, hidden=3, grid_size=d, cell=cell)
    feats = torch.randn(2, 4, d, d)
    tokens = torch.tensor([[7, 9, 21, 19, 13, 36], [1, 4, 28, 25, 12, 36]])

    def run(tbptt):
        f = feats.clone().requires_grad_(True)
        logits = dec(dec.prepare(f), tokens, tbptt=tbptt)
        logits[:, -1].logsumexp(-1).sum().backward()  # a loss on the last step only
        return logits.detach(), f.grad.clone()

    full_logits, full_grad = run(0)
    cut_logits, cut_grad = run(1)
    long_logits, long_grad = run(tokens.shape[1])  # longer than the sequence: nothing is cut
    torch.testing.assert_close(cut_logits, full_logits)  # the forward pass is unchanged
    torch.testing.assert_close(long_grad, full_grad)
    assert not torch.allclose(cut_grad, full_grad)  # earlier steps no longer reach the loss through the state
    assert cut_grad.abs().sum() > 0  # the last step's own input still does


def test_load_models_returns_networks_ready_to_use():
    """A script that never calls .eval() gets the same polygons as the tool (BatchNorm in inference mode)."""
    from polyrnn.build import load_models

    m = load_models()
    assert not m.polygon.training and m.mask is not None and not m.mask.training
    assert m.refiner is not None and not m.refiner.training
    assert not any(mod.training for mod in m.mask.modules())


def test_lite0_taps_load_the_package_weights_strictly():
    from polyrnn.modeling.encoder import EfficientNetLite0Taps

    taps = EfficientNetLite0Taps()
    taps.load_pretrained()  # strict: every block matches the package's weights
    taps.eval()
    with torch.no_grad():
        out = taps(torch.randn(1, 3, 224, 224))
    assert [o.shape[1] for o in out] == taps.channels
    assert [o.shape[-1] for o in out] == [56, 28, 14, 7]  # strides 4, 8, 16, 32
    assert all(torch.isfinite(o).all() for o in out)
    # pretrained, not random: the stem's filters are the package's
    assert not torch.equal(EfficientNetLite0Taps()._conv_stem.weight, taps._conv_stem.weight)


def test_unknown_encoder_is_refused():
    with pytest.raises(ValueError, match="encoder"):
        ModelConfig(encoder="efficientnet_lite9")


def test_folded_networks_give_the_same_masks_and_refinements_and_cannot_be_saved():
    """load_models folds every batch norm of the mask model and the refiners into its convolution (inference
    only): the same probabilities and refined logits, no batch norm left, and no checkpoint of it."""
    from torch import nn

    from polyrnn.build import load_models
    from polyrnn.modeling.inference import fold_for_inference, is_folded

    plain, fast = load_models(fold=False), load_models(precision="float32")
    assert plain.mask is not None and fast.mask is not None and plain.refiner and fast.refiner
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.mask.modules()) and not is_folded(plain.mask)
    nets = [fast.mask, fast.refiner] + ([fast.refiner.focus_pass.refiner] if fast.refiner.focus_pass else [])
    for net in nets:
        assert is_folded(net) and not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
        assert fold_for_inference(net) == 0  # idempotent
    torch.manual_seed(0)
    images = torch.rand(2, 3, 224, 224) * 255
    with torch.inference_mode():
        f0, p0 = plain.mask.features_and_masks(images, flip=True)
        f1, p1 = fast.mask.features_and_masks(images, flip=True)
        assert torch.allclose(f0, f1, atol=1e-4) and torch.allclose(p0, p1, atol=1e-4)
        maps = torch.rand(2, 5, plain.refiner.size, plain.refiner.size)
        assert torch.allclose(plain.refiner(f0, maps), fast.refiner(f1, maps), atol=1e-3)
    with pytest.raises(ValueError, match="folded for inference"):
        checkpoint_dict(fast.mask, ModelConfig(kind="mask"))


def test_bfloat16_networks_compute_in_bfloat16_and_give_float32_close_to_float32():
    """precision="bfloat16": the mask model's and the refiners' convolutions hold bfloat16 weights, their
    entry points take and give float32, and the masks and refinements agree with float32's almost everywhere;
    the polygon model stays float32; a network folded in one type is not folded again in another."""
    from polyrnn.build import load_models
    from polyrnn.modeling.inference import compute_dtype, fold_for_inference

    f32, b16 = load_models(precision="float32"), load_models(precision="bfloat16")
    assert (f32.precision, b16.precision, load_models(fold=False).precision) == (
        "float32",
        "bfloat16",
        "float32",
    )
    assert (
        b16.mask is not None and b16.refiner is not None and f32.mask is not None and f32.refiner is not None
    )
    nets = [b16.mask, b16.refiner] + ([b16.refiner.focus_pass.refiner] if b16.refiner.focus_pass else [])
    assert all(compute_dtype(n) == torch.bfloat16 for n in nets) and compute_dtype(f32.mask) == torch.float32
    assert compute_dtype(b16.polygon) == torch.float32
    assert b16.mask.encoder.mean.dtype == torch.float32  # buffers stay float32: normalised in float32
    with pytest.raises(ValueError, match="already folded"):
        fold_for_inference(b16.mask, dtype=torch.float32)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        fold_for_inference(b16.polygon, dtype=torch.float16)
    torch.manual_seed(0)
    images = torch.rand(2, 3, 224, 224) * 255
    with torch.inference_mode():
        f0, p0 = f32.mask.features_and_masks(images, flip=True)
        f1, p1 = b16.mask.features_and_masks(images, flip=True)
        assert f1.dtype == p1.dtype == torch.float32
        assert (
            float((p0 - p1).abs().mean()) < 0.01 and float(((p0 > 0.5) == (p1 > 0.5)).float().mean()) > 0.99
        )
        maps = torch.rand(2, 5, f32.refiner.size, f32.refiner.size)
        r0, r1 = f32.refiner(f0, maps), b16.refiner(f0, maps)
        assert r1.dtype == torch.float32 and float(((r0 > 0) == (r1 > 0)).float().mean()) > 0.98
        assert not torch.equal(p0, p1)  # computed in another type, not float32 again
    from polyrnn.predictor import PolygonPredictor

    assert PolygonPredictor(b16.polygon, mask_model=b16.mask, refiner=b16.refiner).precision == "bfloat16"
    assert PolygonPredictor(f32.polygon, mask_model=f32.mask, refiner=f32.refiner).precision == "float32"


def test_same_padding_without_a_padded_copy_equals_tensorflow_same():
    """Conv2dSame at stride 1 with an odd kernel lets the convolution pad; it equals TF "same" padding."""
    import torch.nn.functional as F

    from polyrnn.modeling.encoder import Conv2dSame

    torch.manual_seed(0)
    for k, groups in ((1, 1), (3, 1), (5, 8)):
        conv = Conv2dSame(8, 8, k, groups=groups, bias=False)
        x = torch.randn(1, 8, 13, 10)
        p = k - 1  # TF "same" at stride 1: k - 1 in all, the odd one at the end
        ref = F.conv2d(F.pad(x, [p // 2, p - p // 2, p // 2, p - p // 2]), conv.weight, None, 1, 0, 1, groups)
        assert torch.allclose(conv(x), ref, atol=1e-5)
