"""TinyGPT: a decoder-only character/byte-level language model small enough to train on a CPU in minutes.

What a user's transformer has, in miniature: token and position embeddings, pre-norm blocks of causal
``nn.MultiheadAttention`` and a GELU MLP with ``LayerNorm``, and an LM head tied to the token embedding (one
Parameter, two modules). Batches are ``(x, y)`` token tensors of shape ``(B, T)`` with ``y`` the next token of
each position. It logs ``train_loss``, ``val_loss`` and ``test_loss`` (mean cross-entropy per token, in nats;
the perplexity is ``exp(val_loss)``, which ``CompressionMonitor`` logs as ``compress/perplexity``).

Example::

    from lightning_compress.zoo import TextDataModule, TinyGPT
    import lightning.pytorch as pl

    pl.Trainer(max_epochs=1).fit(TinyGPT(), datamodule=TextDataModule())   # Debian's fortunes, byte-level
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F

from lightning_compress.validation import check_choice, check_fraction, check_int, check_number, fail
from lightning_compress.zoo.models import OptimizerName, SchedulerName, make_optimizers

_OWNER = "TinyGPT"


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``, causal attention."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False, is_causal=True)[0]
        return x + self.mlp(self.ln2(x))


class TinyGPT(pl.LightningModule):
    """Decoder-only transformer language model with a tied LM head.

    Args:
        vocab_size: number of token ids (256 for bytes; ``TextDataModule(level="char").vocab_size`` for chars).
        context: longest sequence (positions) the model reads.
        d_model, n_layers, n_heads, mlp_ratio, dropout: the usual transformer sizes.
        optimizer, lr, weight_decay, lr_scheduler, momentum, step_size, gamma: as for the image models.
    """

    def __init__(
        self,
        vocab_size: int = 256,
        context: int = 64,
        d_model: int = 128,
        n_layers: int = 2,
        n_heads: int = 4,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        optimizer: OptimizerName = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        lr_scheduler: SchedulerName = "cosine",
        momentum: float = 0.9,
        step_size: int = 10,
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context", context), ("d_model", d_model),
                            ("n_layers", n_layers), ("n_heads", n_heads), ("mlp_ratio", mlp_ratio)):
            check_int(_OWNER, name, value, low=1)
        if d_model % n_heads:
            fail(_OWNER, f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        check_fraction(_OWNER, "dropout", dropout, high_open=True)
        check_number(_OWNER, "lr", lr, low=0, low_open=True)
        check_number(_OWNER, "weight_decay", weight_decay, low=0)
        check_choice(_OWNER, "optimizer", optimizer, ("sgd", "adam", "adamw"))
        self.save_hyperparameters()
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp_ratio, dropout) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied: one Parameter, compressed once
        self.apply(_init)
        self.example_input_array = torch.zeros(1, context, dtype=torch.long)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, vocab_size)`` of the next token at each position."""
        t = tokens.shape[-1]
        if t > self.hparams.context:
            raise ValueError(f"TinyGPT: sequence of {t} tokens is longer than context={self.hparams.context}")
        x = self.tok(tokens) + self.pos(torch.arange(t, device=tokens.device))
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.log(f"{stage}_loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def configure_optimizers(self):
        return make_optimizers(self, self.hparams)


def _init(module: nn.Module) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases (smaller logits at the start, steadier loss)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


__all__ = ["Block", "TinyGPT"]
