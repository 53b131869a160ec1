"""ChatGLM-6B (v1.1): configuration, model and tokenizer, implemented natively for transformers 5."""

from glmcore.models.chatglm6b.configuration import ChatGLMConfig
from glmcore.models.chatglm6b.modeling import ChatGLMForConditionalGeneration, ChatGLMModel
from glmcore.models.chatglm6b.tokenization import ChatGLMTokenizer

__all__ = ["ChatGLMConfig", "ChatGLMForConditionalGeneration", "ChatGLMModel", "ChatGLMTokenizer"]
