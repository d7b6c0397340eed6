"""What a stage trains is what ships: for each pooling, the vectors the losses see during training equal the
vectors of the exported sentence-transformers folder and of ``jtcse.load`` on it (issue 22, mean pooling end to
end)."""

from __future__ import annotations

import pytest
import torch

SENTENCES = ["a man is playing a guitar .", "the cat sleeps on the warm mat", "stocks fell"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_the_exported_tower_gives_the_vectors_its_losses_were_computed_on(tiny_bert, tmp_path, pooling):
    from sentence_transformers import SentenceTransformer

    import jtcse
    from jtcse.modeling.towers import load_tower, pool
    from jtcse.release.export import export_sentence_transformer
    from jtcse.training.objectives import SimCSEObjective

    tower, tokenizer = load_tower(str(tiny_bert), attn_implementation="eager")
    objective = SimCSEObjective(tower, tokenizer, pooling=pooling, max_length=32, eval_max_length=32)
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-3)
    for _ in range(2):  # a trained tower, not the checkpoint it started from
        optimizer.zero_grad()
        objective(SENTENCES)["loss"].backward()
        optimizer.step()
    objective.eval()
    with torch.no_grad():  # the training path: the objective's own pooling of the tower's states
        batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=32, return_tensors="pt")
        trained = pool(objective.tower(**batch).last_hidden_state, batch["attention_mask"], pooling)
    objective.save_model(tmp_path / "tower")
    export_sentence_transformer(tmp_path / "tower", tmp_path / "st", pooling=pooling, max_seq_length=32)

    shipped = SentenceTransformer(str(tmp_path / "st"), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    loaded = jtcse.load(tmp_path / "st", device="cpu").encode(SENTENCES, convert_to_tensor=True)
    other = "mean" if pooling == "cls" else "cls"
    assert torch.allclose(shipped, trained, atol=1e-5)
    assert torch.allclose(loaded, trained, atol=1e-5)
    assert not torch.allclose(pool(objective.tower(**batch).last_hidden_state, batch["attention_mask"], other), trained)
