"""The Gradio studio: ``app`` lays out and wires, ``handlers`` does the work through the Session, ``server`` serves.

This package is the only part of ``studio`` that imports gradio; start it with ``studio ui``.
"""
