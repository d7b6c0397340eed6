"""What each stage optimises: the module the trainer steps, how it is evaluated and what it ships.

An objective takes a batch of raw sentences, feeds each twice (rows 2k and 2k+1 are two dropout views of
sentence k) and returns a dict of losses whose "loss" entry is minimised.

Under torchrun each process gets the whole global batch, tokenises all of it (so every rank pads to the same
length, as one process would) and encodes only its own rows; the pooled vectors are gathered back before the
loss, so the loss sees the whole batch (see :mod:`jtcse.training.distributed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from jtcse.encoding import Encoder, TowerEncoder, TwinEncoder, combine_vectors
from jtcse.formats import TWIN_MANIFEST
from jtcse.losses import DistillationLoss, InfoNCELoss, JTCSELoss
from jtcse.modeling.towers import pool, save_tower
from jtcse.modeling.twin import BridgedTwin, TowerOutput
from jtcse.training import diagnostics
from jtcse.training.distributed import gather_rows, shard_rows


def tokenize_views(
    tokenizer,
    sentences: list[str],
    max_length: int,
    device: torch.device,
    second_view: Callable[[str], str] | None = None,
) -> dict[str, torch.Tensor]:
    """Token ids of this process's rows of the doubled batch (all rows outside torchrun); ``second_view`` edits
    the second view of each sentence (an augmentation), every process drawing the same edits."""
    doubled = [v for s in sentences for v in (s, second_view(s) if second_view else s)]
    batch = tokenizer(doubled, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    # Shard by sentence, so both views of a sentence stay in the same process.
    return {k: shard_rows(v.view(len(sentences), 2, -1)).reshape(-1, v.shape[-1]).to(device) for k, v in batch.items()}


def gather_output(out: TowerOutput) -> TowerOutput:
    return TowerOutput(*(gather_rows(t) if t is not None else None for t in (out.embedding, out.pooler, out.cross)))


class Objective(nn.Module):
    loss_names: tuple[str, ...] = ()

    def __init__(self, tokenizer, *, pooling: str, max_length: int, eval_max_length: int):
        super().__init__()
        self.tokenizer, self.pooling = tokenizer, pooling
        self.max_length, self.eval_max_length = max_length, eval_max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    #: The edit of each sentence's second view (stage 1's augmentation); None: the views differ by dropout only.
    second_view: Callable[[str], str] | None = None

    def views(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        return tokenize_views(self.tokenizer, sentences, self.max_length, self.device, self.second_view)

    def dev_encoder(self) -> Encoder:  # pragma: no cover - abstract
        raise NotImplementedError

    def save_model(self, directory: Path) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


class SimCSEObjective(Objective):
    """Stage 1: unsupervised SimCSE on one tower."""

    loss_names = ("loss_nce",)

    def __init__(
        self,
        tower,
        tokenizer,
        *,
        temperature: float = 0.05,
        pooling: str = "cls",
        max_length: int = 32,
        eval_max_length: int = 128,
        second_view: Callable[[str], str] | None = None,
    ):
        super().__init__(tokenizer, pooling=pooling, max_length=max_length, eval_max_length=eval_max_length)
        self.tower = tower
        self.loss = InfoNCELoss(temperature)
        self.second_view = second_view

    def forward(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        batch = self.views(sentences)
        h = gather_rows(pool(self.tower(**batch).last_hidden_state, batch["attention_mask"], self.pooling))
        loss = self.loss(h)
        return {"loss": loss, "loss_nce": loss.detach()}

    def dev_encoder(self) -> TowerEncoder:
        return TowerEncoder(self.tower, self.tokenizer, self.pooling, self.eval_max_length)

    def save_model(self, directory: Path) -> None:
        save_tower(self.tower, self.tokenizer, directory)


class JTCSEObjective(Objective):
    """Stage 2: both towers with the cross-attention bridge and the weighted JTCSE loss."""

    loss_names = ("loss_nce", "loss_icnce", "loss_cross", "loss_tm")
    diagnostic_names = diagnostics.COLUMNS[1:]

    def __init__(
        self,
        twin: BridgedTwin,
        tokenizer,
        loss: JTCSELoss,
        *,
        max_length: int = 32,
        eval_max_length: int = 128,
        combine: str = "sum",
        normalize: bool = False,
    ):
        super().__init__(tokenizer, pooling=twin.poolings[0], max_length=max_length, eval_max_length=eval_max_length)
        self.twin, self.loss, self.combine, self.normalize = twin, loss, combine, normalize
        # A zero-weight bridge term is not computed at all where it cannot change the towers (stream, side).
        twin.compute_cross = loss.weights["cross"] > 0

    def forward(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        batch = self.views(sentences)
        out_a, out_b = self.twin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
        return self.loss(gather_output(out_a), gather_output(out_b))

    def diagnostics(self, batch_sentences: list[str], probe_sentences: list[str]) -> dict[str, float]:
        """Loss terms, their gradient norms and the probe-set statistics (see :mod:`jtcse.training.diagnostics`).

        Single-process only (under torchrun the gathers need every rank); the RNG is forked, the gradients are
        taken with autograd.grad (nothing accumulates in .grad), so training continues exactly as without it.
        """
        was_training, computed = self.training, self.twin.compute_cross
        devices = [self.device] if self.device.type == "cuda" else []
        row: dict[str, float] = {}
        with torch.random.fork_rng(devices=devices):
            try:
                self.twin.compute_cross = bool(self.twin.bridged)  # measured even when its weight is 0
                self.train()
                batch = self.views(batch_sentences)
                out_a, out_b = self.twin(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
                parts = self.loss.parts(out_a, out_b, flip=False)
                row |= {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
                params = [p for p in self.parameters() if p.requires_grad]
                row |= diagnostics.gradient_norms(parts, self.loss.weights, params)
                self.eval()
                with torch.no_grad():
                    row |= self._probe(probe_sentences)
            finally:
                self.twin.compute_cross = computed
                self.train(was_training)
        return row

    def _probe(self, sentences: list[str]) -> dict[str, float]:
        enc = self.tokenizer(
            sentences, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        mask = enc["attention_mask"]
        states = [t(**enc).last_hidden_state for t in (self.twin.tower_a, self.twin.tower_b)]
        h_a, h_b = (pool(st, mask, pooling) for st, pooling in zip(states, self.twin.poolings))
        row = {
            "cos_towers": float(torch.nn.functional.cosine_similarity(h_a, h_b).mean()),
            "aniso_h": 0.5 * (diagnostics.anisotropy(h_a) + diagnostics.anisotropy(h_b)),
            "e_cls_a": float(diagnostics.e_cls(states[0], mask).mean()),
            "e_cls_b": float(diagnostics.e_cls(states[1], mask).mean()),
        }
        if self.twin.bridged:  # the bridge's vectors need the layer-by-layer pass; the towers' are above
            out_a, out_b = self.twin(enc["input_ids"], mask, enc.get("token_type_ids"))
            row["aniso_c"] = 0.5 * (diagnostics.anisotropy(out_a.cross) + diagnostics.anisotropy(out_b.cross))
        return row

    def dev_encoder(self) -> TwinEncoder:
        return TwinEncoder(
            TowerEncoder(self.twin.tower_a, self.tokenizer, self.twin.poolings[0], self.eval_max_length),
            TowerEncoder(self.twin.tower_b, self.tokenizer, self.twin.poolings[1], self.eval_max_length),
            self.combine,
            self.normalize,
        )

    def save_model(self, directory: Path) -> None:
        save_twin(
            self.twin.tower_a,
            self.twin.tower_b,
            self.tokenizer,
            directory,
            poolings=self.twin.poolings,
            combine=self.combine,
            normalize=self.normalize,
        )


class DistillObjective(Objective):
    """Stage 3 (JTCSE-D): a student tower matches the frozen twin teacher's similarity rows."""

    loss_names = ("loss_kl", "loss_nce")

    def __init__(
        self,
        student,
        teacher: TwinEncoder,
        tokenizer,
        loss: DistillationLoss,
        *,
        pooling: str = "cls",
        max_length: int = 32,
        eval_max_length: int = 128,
    ):
        super().__init__(tokenizer, pooling=pooling, max_length=max_length, eval_max_length=eval_max_length)
        self.student, self.loss = student, loss
        # Registered as a sub-module so .to(device) moves it; frozen and kept in eval mode (no dropout), so
        # both views of a sentence get the same teacher vector.
        self.teacher_towers = nn.ModuleList([teacher.tower_a.model, teacher.tower_b.model])
        self.teacher_towers.requires_grad_(False)
        self.teacher = teacher
        # A student from another checkpoint (distill.student_init) may tokenise differently: the teacher then
        # gets its own token ids, or its vectors would be computed from the wrong vocabulary.
        teacher_tokenizer = teacher.tower_a.tokenizer
        self.teacher_tokenizer = None if _same_tokenization(tokenizer, teacher_tokenizer) else teacher_tokenizer

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher_towers.eval()
        return self

    def forward(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        batch = self.views(sentences)
        t_batch = (
            batch
            if self.teacher_tokenizer is None
            else tokenize_views(self.teacher_tokenizer, sentences, self.max_length, self.device)
        )
        with torch.no_grad():
            a = pool(
                self.teacher_towers[0](**t_batch).last_hidden_state,
                t_batch["attention_mask"],
                self.teacher.tower_a.pooling,
            )
            b = pool(
                self.teacher_towers[1](**t_batch).last_hidden_state,
                t_batch["attention_mask"],
                self.teacher.tower_b.pooling,
            )
            teacher = gather_rows(combine_vectors(a, b, self.teacher.combine, self.teacher.normalize))
        student = gather_rows(pool(self.student(**batch).last_hidden_state, batch["attention_mask"], self.pooling))
        return self.loss(student, teacher)

    def dev_encoder(self) -> TowerEncoder:
        return TowerEncoder(self.student, self.tokenizer, self.pooling, self.eval_max_length)

    def save_model(self, directory: Path) -> None:
        save_tower(self.student, self.tokenizer, directory)


def _same_tokenization(a, b) -> bool:
    probe = "Tokenizers differ in Case, accents (café) and rare-words: 1234!"
    return a is b or (a.get_vocab() == b.get_vocab() and a(probe)["input_ids"] == b(probe)["input_ids"])


def save_twin(
    tower_a, tower_b, tokenizer, directory: Path, *, poolings: tuple[str, str], combine: str, normalize: bool = False
) -> None:
    """A twin folder: tower_a/, tower_b/ (plain HF encoders) and twin.json saying how each pools and how they
    combine (``pooling`` is one name when both towers pool alike, else one per tower)."""
    directory = Path(directory)
    save_tower(tower_a, tokenizer, directory / "tower_a")
    save_tower(tower_b, tokenizer, directory / "tower_b")
    (directory / TWIN_MANIFEST).write_text(
        json.dumps(
            {
                "format": "jtcse-twin",
                "format_version": 1,
                "towers": ["tower_a", "tower_b"],
                "pooling": poolings[0] if poolings[0] == poolings[1] else list(poolings),
                "combine": combine,
                "normalize": normalize,
            },
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
