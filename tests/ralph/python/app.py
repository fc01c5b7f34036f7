"""A small Python service of a Ralph loop iteration (tests/ralph_loop.rs).

Run under the stock OpenTelemetry SDK as `opentelemetry-instrument python app.py`
(opentelemetry-distro): exporters, endpoint, protocol (grpc or http/protobuf)
and resource come from the OTEL_* environment, which `wisp-agent exec` fills
in. It prints log lines to stdout, each with the trace and span ids of the span
it is printed in, makes spans, and logs a warning and an error with `logging`
(sent as OTLP log records when OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED
is true).

For the test's bookkeeping only, when RALPH_RECORDS names a folder, every line
printed is also written to RALPH_RECORDS/python-<pid>.log, after a first line
holding TRACEPARENT and OTEL_RESOURCE_ATTRIBUTES as the process got them.
"""

import json
import logging
import os
import sys
import time

from opentelemetry import trace

tracer = trace.get_tracer("ralph-python-app", "1.0.0")
log = logging.getLogger("ralph.app")
record = None
if os.environ.get("RALPH_RECORDS"):
    record = open(
        os.path.join(os.environ["RALPH_RECORDS"], f"python-{os.getpid()}.log"),
        "a",
        encoding="utf-8",
    )
    record.write(
        json.dumps(
            {
                "traceparent": os.environ.get("TRACEPARENT", ""),
                "resource": os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""),
            }
        )
        + "\n"
    )
    record.flush()


def say(level, msg):
    """Prints one log line: a level word first, then the message and the ids
    of the current span (if any)."""
    ctx = trace.get_current_span().get_span_context()
    line = f"{level} {msg} pid={os.getpid()}"
    if ctx.is_valid:
        line += f" trace_id={ctx.trace_id:032x} span_id={ctx.span_id:016x}"
    print(line, flush=True)
    if record:
        record.write(line + "\n")
        record.flush()


def main():
    say("INFO", "python iteration starting")
    with tracer.start_as_current_span("plan"):
        say("INFO", "python reading the task list")
        time.sleep(0.02)
        with tracer.start_as_current_span("read files"):
            say("INFO", "python read 3 files")
        say("WARN", "python the task list has a stale entry")
        log.warning("python: stale entry in the task list")
    with tracer.start_as_current_span("apply"):
        say("ERROR", "python a test failed, retrying")
        log.error("python: a test failed")
        with tracer.start_as_current_span("run tests"):
            say("INFO", "python tests passed")
    say("INFO", "python iteration done")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
