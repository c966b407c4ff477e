"""Schemathesis hooks for Pulse's contract tests (tests/contract.rs).

The ingest routes take NDJSON (`application/x-ndjson`) as well as JSON. Its
document describes an NDJSON body as text, so generated text is sent as is.
"""

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")
