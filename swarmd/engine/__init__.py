"""The model engine: the only package that imports torch and transformers.

Public surface: :class:`swarmd.engine.runtime.Engine` (loads a span, runs steps off the event
loop) and :class:`swarmd.engine.text.TextCodec` (tokenizer, chat template, detokenisation).
"""
