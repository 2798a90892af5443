"""Evaluates flags through the official OpenFeature Python SDK and its OFREP provider,
unchanged, against the base URL given on the command line; prints one JSON line per
evaluation. Driven by tests/ofrep_python.rs."""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def main() -> None:
    base_url, token = sys.argv[1], sys.argv[2]
    api.set_provider(
        OFREPProvider(base_url, headers_factory=lambda: {"Authorization": f"Bearer {token}"})
    )
    client = api.get_client()
    staff = EvaluationContext(targeting_key="user-1", attributes={"email": "ann@shop.example"})
    guest = EvaluationContext(targeting_key="user-2", attributes={"app_version": "2.3.0"})
    cases = [
        ("new-checkout", "boolean", False, staff),
        ("banner-color", "string", "#000", guest),
        ("banner-color", "string", "#000", staff),
        ("max-items", "integer", 0, guest),
        ("old-thing", "boolean", False, staff),
        ("no-such-flag", "boolean", True, staff),
        ("new-checkout", "boolean", False, EvaluationContext()),
    ]
    for key, kind, default, ctx in cases:
        details = getattr(client, f"get_{kind}_details")(key, default, ctx)
        print(
            json.dumps(
                {
                    "key": key,
                    "value": details.value,
                    "variant": details.variant,
                    "reason": str(details.reason.value if hasattr(details.reason, "value") else details.reason),
                    "error": details.error_code.value if details.error_code else None,
                    "metadata": dict(details.flag_metadata or {}),
                }
            )
        )


if __name__ == "__main__":
    main()
