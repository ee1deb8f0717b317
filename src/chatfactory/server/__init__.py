"""The chat service: an OpenAI-compatible API over the seven-step chat flow, with every exchange
recorded in a database (SQLite by default, PostgreSQL through DATABASE_URL).

Routes (all /v1 routes take `Authorization: Bearer KEY`; see auth.py for when a key is needed):

- `POST /v1/chat/completions` — OpenAI's request and response, streaming as SSE
  `chat.completion.chunk` events ending in `data: [DONE]`; n, stop, seed, temperature, top_p,
  max_tokens / max_completion_tokens, stream_options.include_usage. finish_reason is
  "content_filter" when moderation replaced or cut the answer.
- `POST /v1/completions` — raw text completion (no chat template, no hidden instructions),
  moderated on both sides like chat.
- `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/moderations` (OpenAI's schema),
  `GET /health`, `GET /metrics` (Prometheus text; no key needed).
- `/v1/conversations`: `GET` (list yours, newest first: limit, after, source), `POST` (create:
  title, model), `GET /{id}` (with its messages), `PATCH /{id}` (rename: title), `DELETE /{id}`,
  and `POST /{id}/messages` with just `{"content": "..."}` (+ sampling fields, `stream`) to
  continue it: the server holds the history and answers exactly like /v1/chat/completions.
  Another user's conversation is 404, the same as a missing one.

Extensions to OpenAI's bodies (extra fields, which the official clients keep and ignore):
- `moderation: {"input": ..., "output": ...}` on the completion object and on each choice's
  finishing chunk, in the shape OpenAI's current API uses for moderated completions: each side
  `{"type": "moderation_results", "model", "results": [{flagged, categories, category_scores,
  category_applied_input_types, model, "type": "moderation_result"}]}` (output: one result per
  choice), or `{"type": "error", "code": "not_generated", "message"}` for the output when a
  flagged input meant the model was never called.
- `template_used: "input" | "output" | null` on each choice: a template answer was shown.
- `conversation_id` (on the completion and the first chunk) and `message_id` (the stored
  assistant message): every exchange, stateless ones included, is stored, so it can be read,
  continued through /v1/conversations/{id}/messages, or rated for the feedback loop.

Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 (bad request; FastAPI's
422 is remapped), 401 (missing or wrong key), 404 (unknown model or conversation), 429 (too many
requests in flight), 500.
"""
