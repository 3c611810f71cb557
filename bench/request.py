"""The production-shaped request that bench/serve.py and bench/observe.py both measure:
guard (token limit, PII, injection) → cache (exact) → generate (`transport: direct`, a plain
HTTP POST to the stub), one model tier on the stub at `base_url`."""

from __future__ import annotations


def pipeline_yaml(base_url: str, *, name: str, cache_entries: int = 10_000,
                  control: str | None = None) -> str:
    """The pipeline; `control`: the cache stage's Cache-Control (no-store keeps every
    request a miss when the same records come round again)."""
    control_key = f", control: {control}" if control else ""
    return f"""\
version: 1
name: {name}
models:
  tier: {{model: openai/fast, api_base: "{base_url}", api_key: stub, timeout: 5s,
         transport: direct}}
defaults: {{timeout: 10s, retry: {{attempts: 1}}}}
resources:
  responses: {{type: cache, backend: memory, max_entries: {cache_entries}}}
input:
  schema:
    type: object
    required: [question]
    properties: {{question: {{type: string, minLength: 1}}, user_id: {{type: string}}}}
stages:
  guard:
    type: guard
    with:
      text: "{{{{ input.question }}}}"
      max_tokens: {{limit: 2000, action: block}}
      pii: {{action: pseudonymize}}
      injection: {{action: block}}
  lookup:
    type: cache
    needs: [guard]
    with: {{resource: responses, key: "{{{{ stages.guard.output.text }}}}"{control_key}}}
  answer:
    type: generate
    needs: [lookup]
    with:
      models: [tier]
      messages: [{{role: user, content: "{{{{ stages.guard.output.text }}}}"}}]
output:
  reply: "{{{{ stages.answer.output.text }}}}"
"""
