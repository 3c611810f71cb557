"""Chat ↔ pipeline: how an OpenAI conversation becomes one input record, and a run's output an
assistant message.

Input, per pipeline (overridable in the `--config` file, see `engine.serve.config`):
- `text`: the last user message's content goes to this property. Default: the input schema's
  single required string property (else its single string property).
- `messages`: the whole conversation (`[{role, content}]`, content as text) goes here.
  Default: a property named `messages`, when the schema declares one.
- The caller's identity fills `user_id`, `tenant` and `ip` when the schema declares them,
  replacing whatever the client sent: a guard's per-user limit must not be dodged by
  claiming to be someone else. The same holds for `/v1/pipelines/{name}/runs`.

Output: a string is the answer as is; an object's `reply` field (configurable), else its
`text` field, when a string; anything else is sent as JSON text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.compile import CompiledPipeline
from engine.results import RunResult
from engine.serve.config import PipelineSettings
from engine.serve.keys import Identity
from engine.serve.openai import ApiError, Message

__all__ = ["IDENTITY_FIELDS", "ChatInput", "answer_text", "usage"]

IDENTITY_FIELDS = ("user_id", "tenant", "ip")
_REPLY_FIELDS = ("reply", "text")


def _is_string(schema: Any) -> bool:
    kind = schema.get("type") if isinstance(schema, dict) else None
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


@dataclass(frozen=True, slots=True)
class ChatInput:
    """One pipeline's resolved mapping; `problem` says why chat cannot reach it (then only
    `/v1/pipelines/{name}/runs` can)."""

    pipeline: str
    text: str | None
    messages: str | None
    reply: str | None
    declared: frozenset[str]

    @classmethod
    def resolve(cls, pipeline: CompiledPipeline, mapping: PipelineSettings | None
                ) -> ChatInput:
        schema = pipeline.loaded.spec.input.schema_
        properties = schema.get("properties") or {}
        mapping = mapping or PipelineSettings()
        text = mapping.text or _default_text(schema)
        messages = mapping.messages or ("messages" if "messages" in properties else None)
        return cls(pipeline.name, text, messages, mapping.reply, frozenset(properties))

    @property
    def problem(self) -> str | None:
        if self.text is None and self.messages is None:
            return (f"pipeline '{self.pipeline}' has no input property for a chat message; "
                    f"map one in the --config file (pipelines: {{{self.pipeline}: "
                    "{text: PROPERTY}}), or call /v1/pipelines/{name}/runs with a record")
        return None

    def record(self, messages: list[Message], identity: Identity, ip: str) -> dict[str, Any]:
        """The input record for a conversation (checked against `input.schema` by the caller)."""
        problem = self.problem
        if problem is not None:
            raise ApiError(400, problem, param="model")
        record: dict[str, Any] = {}
        if self.text is not None:
            users = [m for m in messages if m.role == "user"]
            if not users:
                raise ApiError(400, "messages: at least one message with role 'user' is "
                               "needed", param="messages")
            record[self.text] = users[-1].text()
        if self.messages is not None:
            record[self.messages] = [{"role": m.role, "content": m.text()} for m in messages]
        return self.with_identity(record, identity, ip)

    def with_identity(self, record: dict[str, Any], identity: Identity, ip: str
                      ) -> dict[str, Any]:
        """`record` with the declared identity fields set from the authenticated caller."""
        values = {"user_id": identity.user, "tenant": identity.tenant, "ip": ip}
        for name in IDENTITY_FIELDS:
            if name in self.declared:
                record[name] = values[name]
        return record

    def answer(self, output: Any) -> str:
        return answer_text(output, self.reply)


def _default_text(schema: dict[str, Any]) -> str | None:
    properties = schema.get("properties") or {}
    strings = [name for name, sub in properties.items()
               if _is_string(sub) and name not in IDENTITY_FIELDS and name != "messages"]
    required = [name for name in strings if name in (schema.get("required") or ())]
    for candidates in (required, strings):
        if len(candidates) == 1:
            return str(candidates[0])
    return None


def answer_text(output: Any, reply: str | None = None) -> str:
    """The assistant's content for a run's output (see the module docstring)."""
    if isinstance(output, str):
        return output
    if output is None:
        return ""
    if isinstance(output, dict):
        for name in (reply,) if reply else _REPLY_FIELDS:
            if isinstance(output.get(name), str):
                return str(output[name])
    return json.dumps(output, ensure_ascii=False, default=str)


def usage(result: RunResult) -> dict[str, int]:
    """OpenAI `usage` summed over every model call the run made (re-asks, classify calls)."""
    prompt, completion, _ = result.usage()
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
