"""Numerics and memory: invariants under reduced precision, bytes per weight of the callback state, and a
global magnitude threshold that never holds a second copy of the weights.

Precision on CPU (Lightning 2.6): ``bf16-mixed``, ``bf16-true`` and ``16-true`` run as asked;
``precision="16-mixed"`` is silently turned into ``bf16-mixed`` by the Trainer (no fp16 AMP on CPU), so the
real fp16 path (autocast to float16 + ``GradScaler`` with skipped steps) is tested by passing the
``MixedPrecision("16-mixed", "cpu", GradScaler("cpu"))`` plugin explicitly.
"""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from helpers import TinyNet, image_data

from lightning_compress import GradualMagnitudePruning, WeightSharing
from lightning_compress.core.masks import global_magnitude_masks
from lightning_compress.core.sharing import cluster_weight, index_dtype


def data(n: int = 48) -> DataLoader:
    return image_data(n)


BITS = 3


class InvariantProbe(pl.Callback):
    """After every batch: pruned weights exactly zero, shared layers at most 2^bits values and W = C[I]."""

    def __init__(self, prune: GradualMagnitudePruning, share: WeightSharing) -> None:
        self.prune, self.share = prune, share
        self.checked = self.shared_checks = self.applied = 0

    def on_fit_start(self, trainer, pl_module):
        for opt in trainer.optimizers:
            opt.register_step_post_hook(lambda *a: setattr(self, "applied", self.applied + 1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for t in self.prune.targets:
            assert (t.param[~self.prune.masks[t.name]] == 0).all(), f"{t.name}: pruned weight off zero"
        for name, shared in self.share.codebooks.items():
            w = pl_module.get_parameter(name)
            assert torch.isfinite(w).all(), name
            assert int(torch.unique(w[w != 0]).numel()) <= 2**BITS, name
            assert torch.equal(w, shared.decode().to(w.dtype)), name
            self.shared_checks += 1
        self.checked += 1


def run(precision=None, plugins=None, max_epochs: int = 4):
    torch.manual_seed(0)
    model = TinyNet()
    prune = GradualMagnitudePruning(0.7, start_epoch=0, end_epoch=1, update_every=0.5, include=["conv", "fc1"])
    share = WeightSharing(BITS, start_epoch=2, include=["fc1", "fc2"], evaluate=False, log_histograms=False)
    probe = InvariantProbe(prune, share)
    kw = {"precision": precision} if precision else {"plugins": plugins}
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, limit_train_batches=4, callbacks=[prune, share, probe],
                         logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, **kw)
    trainer.fit(model, data())
    for t in prune.targets:  # the scheduled sparsity is reached exactly
        assert int((t.param == 0).sum()) >= round(0.7 * t.param.numel()), t.name
    assert probe.checked == 4 * max_epochs and probe.shared_checks == 2 * 4 * (max_epochs - 2)
    return trainer, model, probe


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true", "16-true"])
def test_invariants_under_reduced_precision(precision):
    trainer, model, probe = run(precision)
    expected = {"bf16-true": torch.bfloat16, "16-true": torch.float16}.get(precision, torch.float32)
    assert model.fc1.weight.dtype == expected
    assert probe.applied == probe.checked  # every step was applied


def test_16_mixed_on_cpu_falls_back_to_bf16_mixed():
    with pytest.warns(UserWarning, match="bf16-mixed"):
        trainer = pl.Trainer(accelerator="cpu", precision="16-mixed", logger=False, enable_progress_bar=False)
    assert trainer.precision == "bf16-mixed"


def test_invariants_under_fp16_autocast_with_grad_scaler_and_skipped_steps():
    # a huge initial scale overflows float16 gradients: the scaler skips those steps (inf/NaN grads reach the
    # callbacks' on_before_optimizer_step, which must neither raise nor leak them into the weights)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=3)
    trainer, model, probe = run(plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert 0 < probe.applied < probe.checked, (probe.applied, probe.checked)  # some steps skipped, some applied
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_callback_state_costs_at_most_one_byte_per_weight():
    trainer, model, probe = run("bf16-mixed", max_epochs=3)
    prune, share = probe.prune, probe.share
    for name, mask in prune.masks.items():
        assert mask.dtype == torch.bool and mask.element_size() == 1 and mask.shape == model.get_parameter(name).shape
    storage = {m.untyped_storage().data_ptr() for m in prune.masks.values()}
    for _param, mult in prune._held:  # the fast uint8 view shares the mask's bytes
        assert mult.untyped_storage().data_ptr() in storage
    for name, shared in share.codebooks.items():
        assert shared.assignment.dtype == torch.uint8 and shared.assignment.element_size() == 1, name
    for name, packed in prune.state_dict()["masks"].items():  # checkpoints: bit-packed, 1/8 byte per weight
        assert packed.dtype == torch.uint8 and packed.numel() == -(-model.get_parameter(name).numel() // 8), name
    saved = [e["assignment"] for e in share.state_dict()["layers"].values()]
    assert saved and all(t.element_size() == 1 for t in saved)


def test_assignment_dtype_by_codebook_size():
    w = torch.randn(64, 64)
    assert cluster_weight(w, 256).assignment.dtype == torch.uint8  # 8 bits, nothing pruned: 256 codes
    w[w.abs() < 0.5] = 0
    assert cluster_weight(w, 128).assignment.dtype == torch.uint8  # 7 bits + the pruned code: 129 symbols
    # documented limit: 8 bits on a pruned layer needs 257 symbols (256 centroids + "pruned"): 2 bytes per weight
    assert cluster_weight(w, 256).assignment.dtype == torch.int16 and index_dtype(257) == torch.int16


def _reference_global_masks(weights, sparsity, masks):
    """Exact reference: sort every alive |w| together (concatenated copy), ties by layer then flat index."""
    total = sum(w.numel() for w in weights)
    alive = torch.cat([m.reshape(-1) for m in masks])
    need = round(sparsity * total) - int((~alive).sum())
    out = alive.clone()
    if need > 0:
        scores = torch.cat([w.abs().float().reshape(-1) for w in weights])
        candidates = torch.nonzero(alive & ~scores.isnan()).view(-1)
        order = torch.sort(scores[candidates], stable=True).indices
        out[candidates[order[:need]]] = False
        value = torch.kthvalue(scores[candidates], min(need, candidates.numel())).values
        assert scores[candidates[order[need - 1]]] == value  # the same threshold kthvalue gives
    return list(torch.split(out, [w.numel() for w in weights]))


@pytest.mark.parametrize("seed", range(30))
def test_global_threshold_equals_the_exact_kthvalue_reference(seed):
    g = torch.Generator().manual_seed(seed)
    weights = []
    for _ in range(int(torch.randint(1, 5, (1,), generator=g))):
        n = int(torch.randint(1, 40, (1,), generator=g))
        w = torch.randint(-6, 7, (n,), generator=g).float() * [1.0, 1e-3, 3.7e5][seed % 3]  # ties, zeros, scales
        if seed % 5 == 0:
            w = w.to(torch.bfloat16)
        weights.append(w)
    masks = [torch.rand(w.shape, generator=g) > 0.3 for w in weights]
    sparsity = float(torch.rand(1, generator=g))
    got = global_magnitude_masks(weights, sparsity, masks)
    want = _reference_global_masks(weights, sparsity, masks)
    for a, b in zip(got, want):
        assert torch.equal(a, b.reshape(a.shape))


def _peak_extra_bytes(fn) -> int:
    """Peak bytes allocated by ``fn`` on top of what existed before (torch's CPU allocator, via the profiler)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action, MemoryProfile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    current = peak = 0
    for _time, action, _key, size in MemoryProfile(prof.profiler.kineto_results).timeline:
        current += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, current)
    return peak


def test_global_threshold_needs_no_second_copy_of_the_weights():
    layers, per_layer = 16, 125_000  # 2M float32 weights = 8 MB
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(per_layer, generator=g) for _ in range(layers)]
    masks = [torch.rand(per_layer, generator=g) > 0.5 for _ in range(layers)]
    weight_bytes = layers * per_layer * 4
    result = []
    peak = _peak_extra_bytes(lambda: result.extend(global_magnitude_masks(weights, 0.8, masks)))
    new_masks_bytes = layers * per_layer  # the returned bool masks
    # the rest is one layer's scratch at a time (|w| as float32, its bit pattern compare, the selection)
    assert peak <= new_masks_bytes + 4 * per_layer * 4, peak
    assert peak < weight_bytes / 2, peak  # a concatenation or a list of every |w| alone would be weight_bytes
    assert sum(int((~m).sum()) for m in result) == round(0.8 * layers * per_layer)


def test_eight_bit_sharing_of_a_pruned_layer_costs_one_byte_per_weight():
    """The paper's conv setting (8 bits after pruning): 255 centroids + zero's code, uint8 assignments."""
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_compress import WeightSharing
    from lightning_compress.zoo import LeNet300100

    torch.manual_seed(0)
    model = LeNet300100(in_features=16, lr=1e-3, lr_scheduler="none")
    with torch.no_grad():
        model.fc1.weight[model.fc1.weight.abs() < 0.05] = 0  # pruned by hand
    pruned = model.fc1.weight == 0
    sharing = WeightSharing(bits=8, include=["fc1", "fc2"], start_epoch=0, evaluate=False, log_histograms=False)
    data = DataLoader(TensorDataset(torch.randn(64, 16), torch.randint(0, 10, (64,))), batch_size=16)
    pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, callbacks=[sharing]).fit(model, data)
    fc1, fc2 = sharing.codebooks["fc1.weight"], sharing.codebooks["fc2.weight"]
    assert fc1.assignment.dtype == torch.uint8 and fc1.k == 255  # pruned layer: zero takes the 256th code
    assert fc2.assignment.dtype == torch.uint8 and fc2.k == 256  # dense layer: all 256 codes are centroids
    w = model.fc1.weight.detach()
    assert torch.equal(w == 0, pruned) and torch.unique(w[w != 0]).numel() <= 255
