"""Schemathesis hooks for the receiver: every 4xx/5xx with a body is RFC 9457
problem+json whose `status` is the response's and whose `type` is a known slug
(the closed list in docs/openapi.yaml)."""

import json

import schemathesis


@schemathesis.check
def problem_json_on_errors(ctx, response, case):
    """Every 4xx and 5xx (but a HEAD's) carries a problem+json body."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.split(";")[0].strip() != "application/problem+json":
        raise AssertionError(
            f"{response.status_code} with Content-Type {content_type!r}, not application/problem+json"
        )
    try:
        body = json.loads(response.content)
    except ValueError as e:
        raise AssertionError(f"{response.status_code} body is not JSON: {e}")
    for key in ("type", "title", "status", "detail"):
        if key not in body:
            raise AssertionError(f"problem body lacks {key!r}: {body}")
    if body["status"] != response.status_code:
        raise AssertionError(f"problem status {body['status']} on a {response.status_code}")
    return None
