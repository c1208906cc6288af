"""Schemathesis hooks for tests/it/api_clients.rs: two API clients on one server.

The run authenticates as client A. Path parameters naming a company or a webhook are drawn
from A's own ids (so the data routes are fuzzed against real data), client B's ids (which A
must never reach), and whatever Schemathesis generates. A custom check fails the run when an
answer to A carries anything of B's, or when a request naming B's company or webhook is
answered with anything but 404.

Environment: ST_OWN_COMPANY, ST_OWN_WEBHOOK, ST_OTHER_COMPANY, ST_OTHER_WEBHOOK, and
ST_OTHER_MARKERS (strings only B's data holds, separated by '|').
"""

import os

import schemathesis
from hypothesis import strategies as st

OWN = {"companyId": os.environ["ST_OWN_COMPANY"], "webhookId": os.environ["ST_OWN_WEBHOOK"]}
OTHER = {"companyId": os.environ["ST_OTHER_COMPANY"], "webhookId": os.environ["ST_OTHER_WEBHOOK"]}
MARKERS = [m for m in os.environ["ST_OTHER_MARKERS"].split("|") if m]


@schemathesis.hook
def flatmap_path_parameters(ctx, path_parameters):
    if not path_parameters:
        return st.just(path_parameters)
    choices = []
    for name in ("companyId", "webhookId"):
        # a value the document refuses stays as generated: it is a negative test case
        value = path_parameters.get(name)
        if isinstance(value, str) and 1 <= len(value) <= 200:
            choices.append(
                st.sampled_from([OWN[name], OWN[name], OTHER[name], path_parameters[name]]).map(
                    lambda value, name=name: (name, value)
                )
            )
    if not choices:
        return st.just(path_parameters)
    return st.tuples(*choices).map(lambda pairs: {**path_parameters, **dict(pairs)})


@schemathesis.check
def never_another_clients_data(ctx, response, case):
    """Client B's companies and webhooks answer 404 to client A, and nothing of B's leaks."""
    params = case.path_parameters or {}
    text = response.text or ""
    for name, value in OTHER.items():
        if params.get(name) == value and response.status_code < 400:
            raise AssertionError(
                f"client A reached client B's {name} {value}: {response.status_code} {text[:300]}"
            )
    for marker in MARKERS:
        if marker in text:
            raise AssertionError(f"an answer to client A holds client B's {marker!r}: {text[:300]}")
