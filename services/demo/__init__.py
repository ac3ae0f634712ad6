"""The demo model: a tiny Llama-architecture checkpoint with random weights and a BPE tokenizer.

Built deterministically from text shipped with the package, so two builds give identical files. Its
answers mean nothing; it exists so that the whole stack can run anywhere without downloading a model.
"""

from services.demo.build import DEMO_MODEL_ID, build_demo_model, default_demo_dir, demo_model_is_built

__all__ = ["DEMO_MODEL_ID", "build_demo_model", "default_demo_dir", "demo_model_is_built"]
