"""Model adapters: one model family behind one small contract (see ``pipelines.base``).

``pipelines.registry.load_adapter(spec)`` turns a model spec (``tiny-sd``, ``emoji-gan``, a hub
id, a folder, a checkpoint file) into a loaded adapter. This package never imports gradio.
"""
