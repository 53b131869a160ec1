"""glmtui: a terminal workbench for fine-tuning ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B and GLM-4-9B (the Textual
app and the CLI)."""

__version__ = "0.1.0"
