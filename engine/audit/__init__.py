"""The audit log: one tamper-evident record per served request, with retention and erasure.

```python
log = AuditLog.from_env(Path("audit"), writer="replica-1", content=True)   # key: ENGINE_AUDIT_KEY
log.append(AuditEntry(user="u-1", tenant="acme", pipeline="support-triage", version="3f2a…",
                      outcome="ok", tiers=["cheap"], tokens={"input": 10, "output": 5},
                      input_text=guarded_text, output_text=answer))
log.verify().ok; log.purge(); log.forget("u-1")
```

Each record holds the time, a pseudonym of the user (an HMAC of the id), the tenant, pipeline
and version, tiers, tokens, cost, guard findings, outcome, request id and SHA-256 hashes of
input and output; the content itself only with `content=True`, AES-GCM encrypted. Records are
hash-chained (HMAC with the key) per writer: `verify` names the first edited, deleted or
reordered line as `file:line`. `purge` drops records past the retention (every hour on
append, and at open) and `forget` erases one user's pseudonym and content, both keeping the
chains verifiable. Layout and the reasons for it: `segments.py`; line format: `records.py`;
keys: `keys.py`. `OptOuts` is the list of users whose requests must take the guard's
no-consent path.
"""

from engine.audit.keys import ENV, generate_key, key_from_env
from engine.audit.log import AuditLog
from engine.audit.optouts import OptOuts
from engine.audit.records import AuditEntry, AuditError
from engine.audit.verify import Head, Problem, VerifyReport

__all__ = [
    "ENV",
    "AuditEntry",
    "AuditError",
    "AuditLog",
    "Head",
    "OptOuts",
    "Problem",
    "VerifyReport",
    "generate_key",
    "key_from_env",
]
