"""Feature flags: `flag('name')` in any template or condition, evaluated through OpenFeature.

A pipeline's `flags:` block names a provider — engine's file provider (`file_provider.py`:
a YAML or JSON file of flags with per-user targeting and sticky percentage rollouts, re-read
when it changes), or any OpenFeature provider (flagd, LaunchDarkly...) by the dotted path of
its class or of a function that makes it — and how each record's evaluation context is
rendered (`targeting_key`, `attributes`). The
compiler registers the provider under an OpenFeature domain of its own (`setup.py`), so the
SDK's hooks apply and several pipelines with different providers share one process. A run
evaluates through the pipeline's client (`client.py`), once per flag and record.

Editing the flags file switches behaviour without a restart or a redeploy: a kill switch.
An unknown flag, a provider error or a broken edit never fails a run: the default answers
and a warning is logged once.

Only `functions.py` is imported when no pipeline has flags: the OpenFeature SDK loads with the
first `flags:` block.
"""
