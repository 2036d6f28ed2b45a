"""Tokenizer, chat template and end-of-sequence ids of the served model."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ..errors import InvalidRequest

log = logging.getLogger(__name__)

_FALLBACK_TEMPLATE_WARNED = False


class TextCodec:
    """Everything text-shaped about the model. Cheap calls; safe to run on the event loop."""

    def __init__(self, tokenizer: Any | None, config: Any) -> None:
        self.tokenizer = tokenizer
        eos: set[int] = set()
        for value in (getattr(config, "eos_token_id", None),
                      getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None):
            if isinstance(value, int):
                eos.add(value)
            elif isinstance(value, (list, tuple)):
                eos.update(int(v) for v in value)
        self.eos_ids = frozenset(eos)
        self.vocab_size = int(config.vocab_size)

    def _require(self) -> Any:
        if self.tokenizer is None:
            raise InvalidRequest("this model has no tokenizer: send the prompt as a list of token ids", "prompt")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        return list(self._require()(text)["input_ids"])

    def encode_chat(self, messages: Sequence[dict[str, str]]) -> list[int]:
        tok = self._require()
        if getattr(tok, "chat_template", None):
            try:
                text = tok.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
            except Exception as exc:  # jinja errors from the model's own template
                raise InvalidRequest(f"the model's chat template rejected the messages: {exc}", "messages") \
                    from exc
        else:
            global _FALLBACK_TEMPLATE_WARNED
            if not _FALLBACK_TEMPLATE_WARNED:
                log.warning("model has no chat template; using a plain 'role: content' format")
                _FALLBACK_TEMPLATE_WARNED = True
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        if self.tokenizer is None:
            return "".join(f"<{i}>" for i in ids)
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary [0, {self.vocab_size})", "prompt")
