"""`glmtui serve`: an OpenAI-compatible API over one base model and every P-tuning prefix made on it.

`registry` (which model ids exist: the base, `<run>`, `<run>/checkpoint-N`), `batching` (the engine: continuous
batching with a prefix per row, the memory budget, the queue), `openai_api` (request bodies, prompts, answers
and errors in the API's shapes), `http` (the Starlette app), `servers` (server folders, keys, detached start and
stop; no torch), `main` (the server process). docs/serve.md describes it for users.
"""
