"""bezoar's forward levers give TRL's numbers: the compact LM head and the shared-prompt DPO forward
match TRL's own fused head on the real embedded model, values and gradients."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")


@pytest.fixture(scope="module")
def pairs_batch(data_dir):
    """Three real HH-RLHF pairs, tokenized by bezoar, collated by TRL's preference collator."""
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from bezoar.llm.weights import resolve_model_dir
    from bezoar.train.encoding import encode_pair, load_tokenizer
    from bezoar.hh_rlhf import read_hh_pairs

    tokenizer = load_tokenizer(resolve_model_dir(None))
    pairs, _ = read_hh_pairs(data_dir / "preferences/hh-rlhf/harmless-base/test.jsonl.gz")
    examples = [encode_pair(tokenizer, pair, 96) for pair in pairs[:3]]
    assert all(examples)
    batch = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id)(examples)
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return examples, batch, labels, tokenizer.pad_token_id


def _model():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from bezoar.llm.weights import resolve_model_dir

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_dir(None), dtype=torch.float32)
    add_fused_lm_head(model, outputs=OUTPUTS)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    return get_peft_model(model, config)


def _run(model, batch, labels, extra=None):
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                fused_lm_head=True, **(extra or {}))
    (-out.log_probs.sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out, grads


def test_compact_and_shared_prompt_heads_match_trl(pairs_batch):
    from bezoar.train.lm_head import install_compact_head, shared_prompt_layout

    examples, batch, labels, pad = pairs_batch
    model = _model()
    reference, ref_grads = _run(model, batch, labels)
    assert install_compact_head(model.get_base_model(), OUTPUTS)
    compact, compact_grads = _run(model, batch, labels)
    shared, shared_grads = _run(model, batch, labels, shared_prompt_layout(examples, pad, torch.bool))  # sdpa
    additive, _ = _run(model, batch, labels, shared_prompt_layout(examples, pad, torch.float32))  # eager-style

    mask = labels[:, 1:] != -100
    assert mask.sum() > 20  # real replies, not a degenerate batch
    for name in ("log_probs", "entropy", "mean_logits"):
        ref = getattr(reference, name)
        assert torch.allclose(getattr(compact, name), ref, atol=1e-5)
        # The packed sequence attends over different padding, so sums differ by float rounding only.
        assert torch.allclose(getattr(shared, name)[mask], ref[mask], atol=2e-3)
        assert (getattr(shared, name)[~mask] == 0).all()
    assert torch.equal(shared.is_top1[mask], reference.is_top1[mask])
    assert torch.allclose(additive.log_probs, shared.log_probs, atol=1e-4)
    for name, grad in ref_grads.items():
        assert torch.allclose(compact_grads[name], grad, atol=1e-5, rtol=1e-4), name
        assert torch.allclose(shared_grads[name], grad, atol=1e-3, rtol=2e-2), name


def test_shared_prompt_layout_hides_the_chosen_reply():
    from bezoar.train.lm_head import shared_prompt_layout

    layout = shared_prompt_layout([{"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9], "rejected_ids": [10]}], 0,
                                  torch.bool)
    assert layout["packed_input_ids"].tolist() == [[5, 6, 7, 8, 9, 10]]
    assert layout["packed_position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]
    sees = layout["packed_attention_mask"][0, 0].int().tolist()
    assert sees[5] == [1, 1, 1, 0, 0, 1]  # the rejected token sees the prompt and itself, not the chosen reply
    assert sees[4] == [1, 1, 1, 1, 1, 0]
    # chosen 8 and rejected 10 are both predicted from the last prompt token (column 2)
    assert list(zip(layout["packed_src_col"].tolist(), layout["packed_targets"].tolist())) == [(2, 8), (3, 9), (2, 10)]
    assert layout["packed_dst_row"].tolist() == [0, 0, 1]
