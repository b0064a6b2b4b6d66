"""A tiny WordPiece tokenizer for the synthetic task, loadable by ``AutoTokenizer`` and vLLM.

Words of the task are whole tokens; numbers are split into single digits (``"16"`` ->
``"1" "@@6"``: a leading-digit token and a continuation-digit token, the WordPiece decoder
glues them back), so decode(encode(text)) == text for space-separated task text.  The
continuation prefix is ``@@`` rather than ``##`` because ``####`` is a word of the task.
"""

from __future__ import annotations

import json
import os

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
USER, ASSISTANT = "<user>", "<assistant>"
SPECIALS = [PAD, BOS, EOS, UNK, USER, ASSISTANT]
PREFIX = "@@"

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<assistant> {{ message['content'] }} {{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def vocab_list(words=None) -> list[str]:
    from .task import WORDS

    words = WORDS if words is None else words
    digits = [str(d) for d in range(10)]
    cont = [PREFIX + d for d in digits]
    out = list(SPECIALS) + digits + cont
    out += [w for w in words if w not in out]
    return out


def build_tokenizer(out_dir: str, model_max_length: int = 1024) -> str:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json to ``out_dir``."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(vocab_list())}
    tk = Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix=PREFIX,
                                    max_input_chars_per_word=100))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix=PREFIX, cleanup=False)
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    os.makedirs(out_dir, exist_ok=True)
    tk.save(os.path.join(out_dir, "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "additional_special_tokens": [USER, ASSISTANT],
        "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
                   "additional_special_tokens": [USER, ASSISTANT]}, f, indent=2)
    return out_dir


def vocab_size() -> int:
    return len(vocab_list())
