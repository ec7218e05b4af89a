"""The caption head: prompt and labels, what trains, overfitting, adapters, the paper code path."""

import copy

import pytest
import torch
from paper_tiny import save_llama
from safetensors.torch import load_file

from unifashion_core.config import CaptionerConfig
from unifashion_core.errors import UserError
from unifashion_core.models.captioner import (
    IGNORE_INDEX,
    MINILM_PIN,
    MINILM_WEIGHTS,
    STYLES,
    Captioner,
    _principal_projection,
    build_captioner,
    instruction_for,
)
from unifashion_core.models.weights import resolve_local_file

WIDTH = 16  # query width of the tests' fake Q-Former
CAPTIONS = ["red dress", "blue coat"]



def _tiny(seed: int = 0, **kwargs) -> Captioner:
    torch.manual_seed(seed)
    return build_captioner(CaptionerConfig(llm="tiny", **kwargs), WIDTH)


def _train(captioner: Captioner, queries: torch.Tensor, captions: list[str], steps: int,
           lr: float = 1e-2, check_every: int = 0) -> int:
    """AdamW on the trainable parameters; stops early once greedy captions match (if checked)."""
    params = [p for p in captioner.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr)
    for step in range(1, steps + 1):
        loss = captioner.loss(queries, captions, "short")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if check_every and step % check_every == 0 and captioner.generate(queries, "short") == captions:
            return step
    return steps


@pytest.fixture(scope="module")
def trained() -> tuple[Captioner, torch.Tensor]:
    """A tiny captioner (LoRA on q/v) overfit to caption two different query inputs."""
    captioner = _tiny(lora_dropout=0.0)
    queries = torch.randn(2, 4, WIDTH, generator=torch.Generator().manual_seed(1))  # (B, Q, H)
    captioner.steps_taken = _train(captioner, queries, CAPTIONS, steps=200, check_every=25)
    return captioner, queries


def test_instructions_follow_the_paper():
    assert instruction_for("short") == "Short description."
    assert instruction_for("professional") == (
        "Write a detail and professional description for the cloth.")
    assert instruction_for("detailed") == (
        "Describe the cloth's style, color, design... and other key points.")
    assert set(STYLES) == {"short", "professional", "detailed"}
    with pytest.raises(UserError, match="short, professional, detailed"):
        instruction_for("poetic")


def test_labels_cover_exactly_the_caption_tokens_and_eos():
    captioner = _tiny()
    captions = ["red dress", "a much longer blue wool coat", ""]
    queries = torch.randn(3, 4, WIDTH)
    embeds, mask, labels = captioner.prepare_inputs(queries, captions, "detailed")
    tok = captioner.tokenizer
    prompt = tok(f"USER: <Img>{'x' * 4}</Img> {STYLES['detailed']} ASSISTANT:")["input_ids"]
    prompt_len = 1 + len(prompt)  # BOS + text, with the 4 'x' bytes standing for 4 soft tokens
    assert embeds.shape[:2] == labels.shape == mask.shape
    for row, caption in enumerate(captions):
        expected = tok(caption, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        end = prompt_len + len(expected)
        assert labels[row, :prompt_len].eq(IGNORE_INDEX).all()
        assert labels[row, prompt_len:end].tolist() == expected
        assert labels[row, end:].eq(IGNORE_INDEX).all()
        assert mask[row].tolist() == [1] * end + [0] * (labels.shape[1] - end)
        ids = torch.tensor(expected)
        torch.testing.assert_close(embeds[row, prompt_len:end],
                                   captioner.llm.get_input_embeddings()(ids))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_the_loss_is_the_llms_own_causal_loss_over_the_caption_tokens(lora_r):
    # the head runs only where a caption token is predicted; the value is transformers' own loss
    captioner = _tiny(lora_r=lora_r, lora_dropout=0.0).eval()
    captions = ["red dress", "a much longer blue wool coat with buttons", ""]
    queries = torch.randn(3, 4, WIDTH)
    embeds, mask, labels = captioner.prepare_inputs(queries, captions, "short")
    expected = captioner.llm(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(captioner.loss(queries, captions, "short"), expected, rtol=1e-5, atol=1e-6)


def test_gradients_reach_adapter_and_lora_but_not_the_frozen_llm():
    captioner = _tiny()
    loss = captioner.loss(torch.randn(2, 4, WIDTH), ["red dress", "Café 红色 👗 “soie”"], "short")
    assert torch.isfinite(loss)
    loss.backward()
    named = dict(captioner.named_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for n, p in named.items() if n.startswith("adapter."))
    lora_b = [p for n, p in named.items() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)
    base = [p for n, p in named.items() if "lora_" not in n and n.startswith("llm.")]
    assert base and all(not p.requires_grad and p.grad is None for p in base)


def test_lora_r0_trains_the_whole_llm():
    captioner = _tiny(lora_r=0)
    assert not captioner.has_lora
    assert all(p.requires_grad for p in captioner.llm.parameters())


def test_empty_and_non_ascii_captions_give_a_finite_loss():
    captioner = _tiny()
    loss = captioner.loss(torch.randn(3, 4, WIDTH), ["", "   ", "Ärmel 袖子 🧥"], "professional")
    assert torch.isfinite(loss)


def test_overfits_two_inputs_to_two_captions_and_stops_at_eos(trained):
    captioner, queries = trained
    assert captioner.steps_taken < 200
    assert captioner.generate(queries, "short", max_new_tokens=30) == CAPTIONS  # EOS ended both
    assert captioner.generate(queries.flip(0), "short") == CAPTIONS[::-1]
    assert captioner.generate(queries, "short", num_beams=2) == CAPTIONS


def test_save_and_load_adapter_round_trip(trained, tmp_path):
    captioner, queries = trained
    captioner.save_adapter(tmp_path / "adapter")
    assert {p.name for p in (tmp_path / "adapter").iterdir()} == {"adapter.safetensors", "lora"}
    fresh = _tiny(lora_dropout=0.0)  # same seed: same random base LLM, untrained adapter + LoRA
    assert fresh.generate(queries, "short") != CAPTIONS
    fresh.load_adapter(tmp_path / "adapter")
    assert fresh.generate(queries, "short") == captioner.generate(queries, "short")
    with pytest.raises(UserError, match="different captioner"):
        build_captioner(CaptionerConfig(llm="tiny"), WIDTH + 1).load_adapter(tmp_path / "adapter")
    with pytest.raises(UserError, match="save_adapter"):
        fresh.load_adapter(tmp_path / "nothing")


def _logits(captioner: Captioner, queries: torch.Tensor) -> torch.Tensor:
    embeds, mask, _ = captioner.prepare_inputs(queries, CAPTIONS, "short")
    with torch.no_grad():
        return captioner.llm(inputs_embeds=embeds, attention_mask=mask).logits  # (B, L, V)


def test_an_llm_without_lora_is_saved_whole(tmp_path):
    captioner = _tiny(lora_r=0)
    queries = torch.randn(2, 4, WIDTH)
    captioner.save_adapter(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"adapter.safetensors", "llm.safetensors"}
    other = _tiny(seed=1, lora_r=0)
    assert not torch.allclose(_logits(other, queries), _logits(captioner, queries))
    other.load_adapter(tmp_path)
    torch.testing.assert_close(_logits(other, queries), _logits(captioner, queries))
    with pytest.raises(UserError, match="no LoRA weights"):
        _tiny().load_adapter(tmp_path)


def test_merge_lora_keeps_generations(trained):
    captioner, queries = trained
    merged = copy.deepcopy(captioner)
    merged.merge_lora()
    assert not merged.has_lora and captioner.has_lora
    assert merged.generate(queries, "short") == captioner.generate(queries, "short")
    torch.testing.assert_close(_logits(merged, queries), _logits(captioner, queries),
                               atol=1e-4, rtol=1e-4)


def test_generation_length_is_capped():
    captioner = _tiny()
    queries = torch.randn(2, 4, WIDTH)
    captions = captioner.generate(queries, "short", max_new_tokens=3, num_beams=2)
    assert len(captions) == 2 and all(len(c) <= 3 for c in captions)  # byte tokens: <= 1 char
    with pytest.raises(UserError, match="256"):
        captioner.generate(queries, "short", max_new_tokens=257)


def test_bad_lora_targets_and_missing_weights_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="lora_target_modules"):
        build_captioner(CaptionerConfig(llm="tiny", lora_target_modules=("no_such_proj",)), WIDTH)
    with pytest.raises(UserError, match="could not load"):
        build_captioner(CaptionerConfig(llm=str(tmp_path)), WIDTH)  # an empty directory


def test_small_preset_uses_minilm_tokens_and_embeddings():
    torch.manual_seed(0)
    captioner = build_captioner(CaptionerConfig(llm="small", lora_r=0, llm_layers=1), WIDTH)
    tok = captioner.tokenizer
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("[CLS]", "[SEP]", "[PAD]")
    config = captioner.llm.config
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (101, 102, 0)
    words = load_file(resolve_local_file(MINILM_WEIGHTS, pin=MINILM_PIN))
    torch.testing.assert_close(captioner.llm.get_input_embeddings().weight,
                               words["embeddings.word_embeddings.weight"])
    loss = captioner.loss(torch.randn(2, 4, WIDTH), ["", "Robe en soie brodée 红色 👗"], "short")
    assert torch.isfinite(loss)
    ids = tok("embroidered silk", add_special_tokens=False)["input_ids"]
    assert captioner._decode(ids + [tok.eos_token_id, 2000, 2001]) == "embroidered silk"


def test_principal_projection_keeps_a_low_rank_geometry():
    basis = torch.randn(2, 6)
    points = torch.randn(50, 2) @ basis + torch.randn(6)  # (50, 6) on a 2-D affine plane
    projected = _principal_projection(points, 2)  # (50, 2)
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(projected, projected, compute_mode=exact),
                               torch.cdist(points, points, compute_mode=exact), atol=1e-4, rtol=1e-4)
    assert _principal_projection(points, 6) is points


def test_tiny_llama_checkpoint_goes_through_the_paper_code_path(tmp_path):
    save_llama(tmp_path / "llm")
    torch.manual_seed(0)
    captioner = build_captioner(CaptionerConfig(llm=str(tmp_path / "llm"), lora_r=4, lora_alpha=8,
                                lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj")), WIDTH)
    assert captioner.has_lora and captioner.tokenizer.pad_token == "<unk>"
    lora_before = {n: p.clone() for n, p in captioner.named_parameters() if "lora_B" in n}
    queries = torch.randn(2, 4, WIDTH)
    _train(captioner, queries, ["a red dress", "blue denim jacket 红"], steps=2, lr=1e-3)
    assert any(not torch.equal(p, lora_before[n])
               for n, p in captioner.named_parameters() if n in lora_before)
    captioner.save_adapter(tmp_path / "adapter")
    captions = captioner.generate(queries, "professional", max_new_tokens=8)
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    torch.manual_seed(1)  # a different random LoRA/adapter init, replaced by the saved one
    reloaded = build_captioner(CaptionerConfig(llm=str(tmp_path / "llm"), lora_r=4, lora_alpha=8,
                               lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj")), WIDTH)
    reloaded.load_adapter(tmp_path / "adapter")
    assert reloaded.generate(queries, "professional", max_new_tokens=8) == captions


def test_small_preset_decodes_hyphenated_words_as_written():
    captioner = build_captioner(CaptionerConfig(llm="small", lora_r=0, llm_layers=1), WIDTH)
    ids = captioner.tokenizer("red short-sleeve t-shirt, the cloth's collar", add_special_tokens=False)["input_ids"]
    assert captioner._decode(ids) == "red short-sleeve t-shirt, the cloth's collar"
