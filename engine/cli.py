"""The `engine` command: verbs wired to the functions in `engine.commands`.

Only the verbs' command modules start an event loop (`asyncio.run`); library code never does.
Every verb returns its exit code; `main(argv)` returns it too, so tests call the CLI without
a subprocess. Heavy libraries are imported by the stages that need them, never here:
`engine --help` and `engine validate` stay fast.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["app", "main"]

app = typer.Typer(
    name="engine",
    help="Declarative LLM pipelines for production: guard, cache, classify, route, generate "
    "and validate — described in one YAML file.\n\n"
    "Start with `engine validate pipelines/*.yaml`, then `engine run FILE --set key=value`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

PipelineFile = Annotated[Path, typer.Argument(help="A pipeline YAML file.", show_default=False)]


class GraphFormat(StrEnum):
    mermaid = "mermaid"
    dot = "dot"


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Pipeline files (globs are fine).")],
) -> int:
    """Compile pipelines without running them; report every problem with file:line:col.

    Exit code 0 when all are valid (warnings allowed), 2 otherwise.
    """
    from engine.commands.validate import validate as command

    return command(files)


@app.command()
def run(
    file: PipelineFile,
    input: Annotated[str | None, typer.Option(
        "--input", "-i", help="JSONL records, one per line ('-' for stdin).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Where to write result lines (default: stdout).")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", "-s", help="One record from key=value pairs, e.g. --set ticket='Hi'.")] = None,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-c", min=1, help="Records in flight at once.")] = 16,
    trace: Annotated[bool, typer.Option(
        "--trace", help="Print each record's stage timeline to stderr.")] = False,
    on: Annotated[str | None, typer.Option(
        "--on", help="Run the records on Ray: 'ray' (a local Ray), 'auto' or "
        "'ray://head:10001' (a cluster; workers need the pipeline's files at the same "
        "path).")] = None,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="With --on: worker actors, each compiling the pipeline "
        "once and running --concurrency records at a time.")] = 2,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue an interrupted run: skip the records --output already "
        "answers, append the rest.")] = False,
    retry_errors: Annotated[bool, typer.Option(
        "--retry-errors", help="With --resume, redo the records that errored too.")] = False,
    redis: Annotated[str | None, typer.Option(
        "--redis", envvar="ENGINE_REDIS_URL",
        help="Share state with every other process using this Redis (redis://HOST:PORT/DB): "
        "circuit breakers, the models' concurrency and rate limits, idempotency keys, and "
        "the caches and budgets left on memory. Ray workers get it too.")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="The run store read by `engine report` [default: $ENGINE_RUNS_DIR "
        "or runs/].", show_default=False)] = None,
    no_store: Annotated[bool, typer.Option(
        "--no-store", help="Do not record this run in the run store.")] = False,
    metrics_port: Annotated[int | None, typer.Option(
        "--metrics-port", min=0, max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics while running.")] = None,
    otlp: Annotated[str | None, typer.Option(
        "--otlp", help="Send traces to this OTLP/HTTP endpoint, e.g. http://127.0.0.1:4318 "
        "[default: $OTEL_EXPORTER_OTLP_ENDPOINT, else no traces].", show_default=False)] = None,
    trace_sample: Annotated[float, typer.Option(
        "--trace-sample", min=0.0, max=1.0,
        help="The share of runs traced (head sampling; a record's traceparent decides for "
        "its own run).")] = 1.0,
    log_json: Annotated[str | None, typer.Option(
        "--log-json", help="Write JSON log lines (run and trace ids, no secrets or personal "
        "data) to this file, or '-' for stderr.")] = None,
) -> int:
    """Run records through a pipeline: exactly one result line per input record.

    Each run is recorded in the run store for `engine report` (timings, tokens, cost, tiers,
    outcomes; never inputs or answers). Exit code 0 when every record succeeded, 1 when some
    errored, 2 for a bad pipeline or command line, 130 when interrupted (finished records are
    kept).
    """
    from engine.commands.run import run as command
    from engine.observe.observers import ObserveOptions, default_store

    options = ObserveOptions(None if no_store else store or default_store(), metrics_port,
                             otlp, log_json, trace_sample)
    from engine.commands.run import Cluster

    if on is not None and on != "ray" and on != "auto" and not on.startswith("ray://"):
        typer.echo(f"error: --on takes ray, auto or ray://HOST:PORT, not {on!r}", err=True)
        return 2
    return command(file, input, output, set_ or [], concurrency, trace, options, resume,
                   retry_errors, Cluster(on, workers, redis))


@app.command()
def graph(
    file: PipelineFile,
    format: Annotated[GraphFormat, typer.Option(
        "--format", "-f", help="mermaid (paste into Markdown) or dot (Graphviz).")
    ] = GraphFormat.mermaid,
) -> int:
    """Print the pipeline's DAG: needs as arrows, route branches and on_error dashed."""
    from engine.commands.graph import graph as command

    return command(file, format.value)


@app.command()
def plugins() -> int:
    """List the stage types found (built-ins and plugins) with their config fields."""
    from engine.commands.plugins import plugins as command

    return command()


@app.command()
def schema(
    builtin_only: Annotated[bool, typer.Option(
        "--builtin-only", help="Leave out stage types from installed plugins.")] = False,
) -> int:
    """Print the JSON Schema of pipeline files (for editors: yaml-language-server)."""
    from engine.commands.schema import schema as command

    return command(builtin_only)


@app.command("stub-provider")
def stub_provider(
    port: Annotated[int, typer.Option(
        "--port", "-p", min=0, max=65535, help="Port on 127.0.0.1 (0: any free port).")] = 9100,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A stub YAML file: rules, faults, per-model profiles.")] = None,
    latency: Annotated[str | None, typer.Option(
        "--latency", help="Added latency: 50ms, or a range 20ms..200ms.")] = None,
    failure_rate: Annotated[float | None, typer.Option(
        "--failure-rate", min=0.0, max=1.0, help="Share of requests that fail.")] = None,
    faults: Annotated[str | None, typer.Option(
        "--faults", help="Fault mix: 429,500,503,hang,malformed,cut,cut_before_first_token "
        "(weights: 429:3,500:1).")] = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed for latency and fault draws.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Do not log each request to stderr.")] = False,
) -> int:
    """Serve the chaos stub provider: an OpenAI-compatible server with scripted answers and
    injected faults, on 127.0.0.1 until Ctrl-C."""
    from engine.commands.stub_provider import stub_provider as command

    return command(port, config, latency, failure_rate, faults, seed, quiet)


class CacheAction(StrEnum):
    clear = "clear"
    stats = "stats"


@app.command()
def cache(
    action: Annotated[CacheAction, typer.Argument(help="clear, or stats.")],
    file: PipelineFile,
    scope: Annotated[list[str] | None, typer.Option(
        "--scope", help="Clear only entries whose scope starts with these values.")] = None,
) -> int:
    """Clear or inspect a pipeline's shared cache: `engine cache clear FILE [--scope T]`."""
    from engine.commands.cache import cache as command

    return command(action.value, file, scope or [])


class ReportBy(StrEnum):
    variant = "variant"


@app.command()
def report(
    path: Annotated[Path, typer.Argument(
        help="A run-store folder (searched recursively) or one stored run file.")
    ] = Path("runs"),
    pipeline: Annotated[str | None, typer.Option(
        "--pipeline", "-p", help="Only this pipeline's runs (by its `name:`).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the report as JSON instead of tables.")] = False,
    html: Annotated[Path | None, typer.Option(
        "--html", help="Also write a self-contained HTML page with charts to this file.")
    ] = None,
    by: Annotated[ReportBy | None, typer.Option(
        "--by", help="variant: an A/B analysis instead — per variant (weighted routes, "
        "engine compare) golden pass rate, feedback, errors, latency and cost, each against "
        "the first variant with 95% intervals (Newcombe for rates, bootstrap for latency "
        "and cost).", show_default=False)] = None,
) -> int:
    """Latency, time to first token, tokens, cost, cache, fallback, timeout and parse rates
    of stored runs, checked against each pipeline's `slo:` targets.

    Exit code 0 when every target is met, 1 when one is breached, 2 when there is nothing
    to report (no such path, no stored records; with --by variant, no record with a variant).
    """
    from engine.commands.report import report as command

    return command(path, pipeline, as_json, html, by.value if by else None)


@app.command()
def estimate(
    file: PipelineFile,
    requests_per_day: Annotated[int, typer.Option(
        "--requests-per-day", "-n", min=0, help="Expected traffic.")] = 10_000,
    cache_hit_rate: Annotated[float, typer.Option(
        "--cache-hit-rate", min=0.0, max=1.0, help="Share of requests a cache stage answers: "
        "the stages after it are skipped for them.")] = 0.0,
    input_tokens: Annotated[int, typer.Option(
        "--input-tokens", min=0, help="Tokens assumed per call for the rendered variables "
        "(the ticket, retrieved passages...), unknown before launch; added to the prompt's "
        "counted static text.")] = 200,
    output_tokens: Annotated[int, typer.Option(
        "--output-tokens", min=0, help="Expected tokens per generated answer (a tier's "
        "max_tokens param is shown as the upper bound).")] = 250,
    llm_share: Annotated[float, typer.Option(
        "--llm-share", min=0.0, max=1.0, help="Share of requests for which a cascade "
        "classify asks a model (the local embeddings decide the rest).")] = 0.3,
    reask_rate: Annotated[float, typer.Option(
        "--reask-rate", min=0.0, max=1.0, help="Share of answers a validate stage re-asks "
        "(0: re-asks not estimated).")] = 0.0,
    compare: Annotated[tuple[Path, Path] | None, typer.Option(
        "--compare", metavar="OLD NEW", help="Two versions of a prompt template: their "
        "tokens and what the rewrite saves at the first tier's input price.",
        show_default=False)] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the estimate as JSON instead of tables.")] = False,
) -> int:
    """What a pipeline will cost before launch: per request, per day and per month, by tier.

    Counts every prompt template's tokens offline (tiktoken), prices each tier (its `price`,
    else litellm's cost map; local/ models are free). Exit code 0, or 2 for a bad pipeline
    or an unreadable --compare template.
    """
    from engine.commands.estimate import estimate as command
    from engine.cost import Assumptions

    assume = Assumptions(requests_per_day, cache_hit_rate, input_tokens, output_tokens,
                         llm_share, reask_rate)
    return command(file, assume, compare, as_json)


@app.command()
def test(
    dataset: Annotated[Path, typer.Option(
        "--dataset", "-d", help="A golden dataset: YAML (cases with inputs and assertions) "
        "or JSONL, one case per line.", show_default=False)],
    file: Annotated[Path | None, typer.Argument(
        help="The pipeline file [default: the dataset's `pipeline:`].", show_default=False)
    ] = None,
    repeat: Annotated[int, typer.Option(
        "--repeat", "-n", min=1, help="Run every case N times and report each case's "
        "consistency (the share of identical results).")] = 1,
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-c", min=1, help="Cases in flight at once.")] = 8,
    min_pass_rate: Annotated[float, typer.Option(
        "--min-pass-rate", min=0.0, max=1.0, help="The share of cases that must pass.")] = 1.0,
    min_consistency: Annotated[float, typer.Option(
        "--min-consistency", min=0.0, max=1.0, help="With --repeat: the consistency every "
        "case must reach.")] = 0.9,
    judge: Annotated[list[str] | None, typer.Option(
        "--judge", help="The model tier(s) grading `rubric` assertions that name none: a "
        "tier of the pipeline, or a litellm model (provider/model). Repeat for a fallback "
        "chain.")] = None,
    as_json: Annotated[Path | None, typer.Option(
        "--json", help="Also write the results as JSON to this file.")] = None,
    junit: Annotated[Path | None, typer.Option(
        "--junit", help="Also write JUnit XML (one testcase per case) for CI.")] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="The run store read by `engine report` [default: $ENGINE_RUNS_DIR "
        "or runs/].", show_default=False)] = None,
    no_store: Annotated[bool, typer.Option(
        "--no-store", help="Do not record the runs in the run store.")] = False,
) -> int:
    """Test a whole pipeline on a golden dataset: each case's input run, its assertions
    checked (equals, one_of, contains, regex, json_schema, superset_of, subset_of,
    min_count, max_count, min, max, similar_to, rubric; cost and latency bounds; the stage
    that finished the run).

    Exit code 0 when the pass rate reaches --min-pass-rate (and every case --min-consistency
    with --repeat), 1 when not (the failing cases are named), 2 for a bad dataset, pipeline
    or command line.
    """
    from engine.commands.test import Targets, golden
    from engine.observe.observers import default_store

    return golden(file, dataset, repeat=repeat, concurrency=concurrency,
                  targets=Targets(min_pass_rate, min_consistency), judges=judge or (),
                  json_file=as_json, junit_file=junit,
                  store=None if no_store else store or default_store())


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code instead of exiting."""
    try:
        result = app(args=argv, prog_name="engine", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except (typer.Abort, KeyboardInterrupt):
        return 130
    except typer.TyperException as exc:  # usage errors: unknown option, bad value...
        exc.show()  # type: ignore[attr-defined]
        return 2
    return result if isinstance(result, int) else 0


audit_app = typer.Typer(
    name="audit",
    help="Operate an audit directory written by `engine serve`: verify its hash chains, purge "
    "expired records, erase one user, manage the opt-out list. The key is read from "
    "ENGINE_AUDIT_KEY.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(audit_app)

AuditDir = Annotated[Path, typer.Argument(help="The audit directory.", show_default=False)]
RetentionDays = Annotated[float, typer.Option(
    "--retention-days", help="Records older than this many days are expired "
    "(match the writers' setting).")]


class OptOutAction(StrEnum):
    add = "add"
    remove = "remove"
    list = "list"


@audit_app.command("verify")
def audit_verify(directory: AuditDir, retention_days: RetentionDays = 30.0) -> int:
    """Check every writer's chain; name the first edited, deleted or reordered line.

    Prints each writer's last record (seq, hash): keep a copy elsewhere to detect records cut
    off the end. Exit code 0 when all verify, 1 when one is broken, 2 for a usage error (no
    such directory, missing or wrong ENGINE_AUDIT_KEY).
    """
    from engine.commands.audit import verify as command

    return command(directory, retention_days)


@audit_app.command("purge")
def audit_purge(directory: AuditDir, retention_days: RetentionDays = 30.0) -> int:
    """Drop the records older than the retention now (writers also do it every hour)."""
    from engine.commands.audit import purge as command

    return command(directory, retention_days)


@audit_app.command("forget")
def audit_forget(
    directory: AuditDir,
    user: Annotated[str, typer.Option("--user", "-u", help="The user id, as the gateway "
                                      "received it.", show_default=False)],
) -> int:
    """Erase one user's pseudonym and stored content from every record; chains still verify."""
    from engine.commands.audit import forget as command

    return command(directory, user)


@audit_app.command("optout")
def audit_optout(
    action: Annotated[OptOutAction, typer.Argument(help="add, remove, or list.")],
    file: Annotated[Path, typer.Argument(help="The opt-out list (one user id per line).",
                                         show_default=False)],
    user: Annotated[str | None, typer.Argument(help="The user id (add, remove).",
                                               show_default=False)] = None,
) -> int:
    """Manage the users who opted out of AI processing (they take the guard's no-consent path).
    """
    from engine.commands.audit import optout as command

    return command(action.value, file, user)


@audit_app.command("keygen")
def audit_keygen() -> int:
    """Print a new random key for ENGINE_AUDIT_KEY (keep it in your secret store)."""
    from engine.commands.audit import keygen as command

    return command()


@app.command()
def serve(
    paths: Annotated[list[Path], typer.Argument(
        help="Pipeline files, or folders of *.yaml files.", show_default=False)],
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8000,
    workers: Annotated[int, typer.Option(
        "--workers", min=1, help="Worker processes; each compiles the pipelines once.")] = 1,
    redis: Annotated[str | None, typer.Option(
        "--redis", help="redis://host:6379/0: rate limits, caches, breakers, budgets and "
        "idempotency keys shared by every replica.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="A YAML file of per-pipeline settings: the chat mapping, a shadow "
        "or canary candidate.")
    ] = None,
    keys: Annotated[Path | None, typer.Option(
        "--keys", help="API keys file (SHA-256 digests) [default: $ENGINE_API_KEYS].",
        show_default=False)] = None,
    no_auth: Annotated[bool, typer.Option(
        "--no-auth", help="Serve without API keys on a non-loopback address.")] = False,
    rate_per_key: Annotated[str | None, typer.Option(
        "--rate-per-key", help="Requests per API key, e.g. 600/min ('none': no limit).")
    ] = "600/min",
    rate_per_ip: Annotated[str | None, typer.Option(
        "--rate-per-ip", help="Requests per client address ('none': no limit).")] = "1200/min",
    trusted_proxy: Annotated[list[str] | None, typer.Option(
        "--trusted-proxy", help="A proxy address or network whose X-Forwarded-For is "
        "believed (repeat for several).")] = None,
    max_body: Annotated[int, typer.Option(
        "--max-body", min=1, help="Largest request body, in bytes (413 above).")] = 1_000_000,
    max_inflight: Annotated[int, typer.Option(
        "--max-inflight", min=1, help="Pipeline requests run at once per worker; more get "
        "503 with Retry-After.")] = 256,
    body_timeout: Annotated[float, typer.Option(
        "--body-timeout", min=0.1, help="Seconds for the whole body to arrive (408).")] = 30.0,
    header_timeout: Annotated[float, typer.Option(
        "--header-timeout", min=0.1, help="Seconds for the request headers to arrive.")] = 10.0,
    keep_alive: Annotated[int, typer.Option(
        "--keep-alive", min=1, help="Seconds an idle connection is kept open.")] = 5,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", help="TLS certificate (PEM).")
                        ] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", help="TLS private key (PEM).")
                       ] = None,
    store: Annotated[Path | None, typer.Option(
        "--store", help="The run store for `engine report`, feedback included [default: "
        "$ENGINE_RUNS_DIR or runs/].", show_default=False)] = None,
    no_store: Annotated[bool, typer.Option("--no-store", help="Do not store runs.")] = False,
    audit_dir: Annotated[Path | None, typer.Option(
        "--audit-dir", help="Write the audit log (one record per request) here.")] = None,
    audit_content: Annotated[bool, typer.Option(
        "--audit-content", help="Also store inputs and answers, encrypted (ENGINE_AUDIT_KEY)."
    )] = False,
    opt_out: Annotated[Path | None, typer.Option(
        "--opt-out", help="Users listed in this file get 403, no AI processing.")] = None,
) -> int:
    """Serve pipelines over HTTP as OpenAI-compatible models: `model` is the pipeline's name.

    Routes: /v1/chat/completions (stream too), /v1/pipelines/{name}/runs, /v1/pipelines,
    /v1/models, /v1/feedback, /metrics, /healthz, /readyz. Exit code 2 for a bad pipeline
    or option (nothing is served), 0 after Ctrl-C.
    """
    from engine.commands.serve import expand
    from engine.commands.serve import serve as command
    from engine.observe.observers import default_store
    from engine.serve.config import ConfigError, ServeConfig, load_settings

    try:
        settings = ServeConfig(
            files=expand(paths), host=host, port=port, workers=workers, redis=redis,
            keys=keys, no_auth=no_auth, trusted_proxies=tuple(trusted_proxy or ()),
            rate_per_key=None if rate_per_key == "none" else rate_per_key,
            rate_per_ip=None if rate_per_ip == "none" else rate_per_ip,
            max_body=max_body, max_inflight=max_inflight, body_timeout=body_timeout,
            header_timeout=header_timeout, keep_alive=keep_alive, tls_cert=tls_cert,
            tls_key=tls_key, pipelines=load_settings(config) if config else {},
            store=None if no_store else store or default_store(), audit_dir=audit_dir,
            audit_content=audit_content, opt_out=opt_out)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    return command(settings)


@app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="Version A (the current one).", metavar="A.yaml",
                                      show_default=False)],
    b: Annotated[Path, typer.Argument(help="Version B (the candidate).", metavar="B.yaml",
                                      show_default=False)],
    input: Annotated[str, typer.Option(
        "--input", "-i", help="JSONL records for both ('-' for stdin).", show_default=False)],
    concurrency: Annotated[int, typer.Option(
        "--concurrency", "-c", min=1, help="Records in flight per version.")] = 8,
    fields: Annotated[str | None, typer.Option(
        "--fields", help="Output fields to compare, e.g. category,urgency [default: every "
        "top-level key, or the whole output].", show_default=False)] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the comparison, every disagreement included, to this "
        "file.")] = None,
    min_agreement: Annotated[float | None, typer.Option(
        "--min-agreement", min=0.0, max=1.0, help="Exit 1 when a field agrees less than "
        "this (0..1).")] = None,
    show: Annotated[int, typer.Option(
        "--show", min=0, help="Disagreeing cases to print.")] = 20,
    store: Annotated[Path | None, typer.Option(
        "--store", help="The run store [default: $ENGINE_RUNS_DIR or runs/].",
        show_default=False)] = None,
    no_store: Annotated[bool, typer.Option(
        "--no-store", help="Do not record the two runs in the run store.")] = False,
) -> int:
    """Shadow two versions of a pipeline offline: the same records through both, side by side.

    Prints agreement per output field, the disagreeing cases, and B's latency p50/p95, cost
    and tokens per record against A's with 95% intervals (paired bootstrap), then a verdict
    line. Both runs are stored, labelled as variants, for `engine report --by variant`.
    Exit code 0 when done, 1 when a field agrees less than --min-agreement, 2 for a bad
    pipeline, input file or option.
    """
    from engine.commands.compare import CompareOptions
    from engine.commands.compare import compare as command
    from engine.observe.observers import default_store

    names = tuple(name.strip() for name in (fields or "").split(",") if name.strip())
    options = CompareOptions(concurrency, names, json_out, min_agreement,
                             None if no_store else store or default_store(), show)
    return command(a, b, input, options)
