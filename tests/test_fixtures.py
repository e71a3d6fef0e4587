"""The shared tiny-model fixtures load back and carry the right end-of-turn tokens."""

from transformers import AutoModelForCausalLM, AutoTokenizer


def test_tiny_qwen2(tiny_qwen2_dir):
    tok = AutoTokenizer.from_pretrained(tiny_qwen2_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert model.get_input_embeddings().weight.shape == (151936, 64)
    assert len(tok) <= 151936


def test_tiny_llama(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id == tok.eos_token_id
    assert "<|im_start|>" in tok.chat_template
