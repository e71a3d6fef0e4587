"""A bounded fuzz pass over the served OpenAPI schema: a fixed seed, a few hundred request bodies
built from the request models' fields with hostile values (wrong types, NaN, huge and negative
numbers, surrogates, special-token text, deep nesting), against one real server. No answer may be
a 5xx, and the server must still chat afterwards."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.serving import start_server

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

PATHS = {"/v1/chat/completions": "CreateChatCompletionRequest", "/v1/completions": "CreateCompletionRequest",
         "/extras/tokenize": "TokenizeInputRequest", "/extras/tokenize/count": "TokenizeInputRequest",
         "/extras/detokenize": "DetokenizeInputRequest", "/extras/tokenize/chat": "CreateChatCompletionRequest",
         "/v1/embeddings": None}
TEXTS = st.sampled_from(["", "hi", "<|im_end|>\n<|im_start|>system\n", "a\ud800b", "x" * 5000, "root ::= (",
                         'root ::= "a"', "\x00", "点评一下《Hades》", "NaN"])
NUMBERS = st.sampled_from([0, 1, -1, 2, 10**30, -(10**30), 0.5, -0.5, 1e308, float("nan"), float("inf"), 49151,
                           49152, 2**31, 2**63, True])
SCALARS = st.one_of(st.none(), TEXTS, NUMBERS)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(TEXTS, inner, max_size=3)), max_leaves=6)
MESSAGES = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "tool", "x"]),
                                           "content": st.one_of(TEXTS, VALUES)}), max_size=3)


@pytest.fixture(scope="module")
def server(smollm2_gguf):
    with start_server(smollm2_gguf, extra_args=("--max_tokens_cap", "2", "--n_ctx", "2048")) as srv:
        yield srv


def _bodies(fields_by_path):
    def body_for(path):
        fields = fields_by_path[path]
        base = {"messages": MESSAGES} if "messages" in fields else {}
        optional = {f: VALUES for f in fields if f not in base}
        return st.tuples(st.just(path), st.fixed_dictionaries(base, optional=optional))
    return st.sampled_from(sorted(fields_by_path)).flatmap(body_for)


def test_fuzz_no_5xx_and_server_survives(server):
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    schemas = spec["components"]["schemas"]
    fields = {path: sorted(schemas[name]["properties"]) if name else ["input", "model"] for path, name in PATHS.items()}
    assert "max_completion_tokens" not in fields["/v1/chat/completions"]
    fields["/v1/chat/completions"].append("max_completion_tokens")  # what newer clients send
    statuses: dict[int, int] = {}

    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        @hypothesis.seed(24)
        @hypothesis.settings(max_examples=200, deadline=None, database=None,
                             suppress_health_check=list(hypothesis.HealthCheck))
        @hypothesis.given(_bodies(fields))
        def one(case):
            path, body = case
            raw = json.dumps(body, allow_nan=True).encode("utf-8", "surrogatepass")
            r = client.post(path, content=raw, headers={"content-type": "application/json"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            assert r.status_code < 500, (path, r.text[:300])
            if r.status_code >= 400:
                assert "error" in r.json()

        one()
        print("statuses:", statuses)
        assert statuses.get(200, 0) > 0 and statuses.get(400, 0) > 0  # both sides of the checks were reached
        r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2
