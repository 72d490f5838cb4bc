"""Drives the official `openai` Python SDK through a gateway whose location needs API keys.

Usage: python3 tests/openai_sdk_keys.py BASE_URL GOOD_KEY LIMITED_KEY BUDGETED_KEY
GOOD_KEY may call freely; LIMITED_KEY has a rate of one request a minute; BUDGETED_KEY 20 tokens a
day. Exits non-zero, with the
reason, when the SDK does not see what a client of OpenAI itself would. Run by tests/it/keys.rs.
"""
import sys

import openai
from openai import OpenAI

base, good, limited, budgeted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
messages = [{"role": "user", "content": "hi"}]


def client(key):
    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=30)


answer = client(good).chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=3)
assert answer.usage.completion_tokens == 3, answer.usage
text = "".join(
    chunk.choices[0].delta.content or ""
    for chunk in client(good).chat.completions.create(
        model="glm-4v-flash", messages=messages, max_tokens=2, stream=True
    )
    if chunk.choices
)
assert text == "The image", text

try:
    client("ig-wrong").chat.completions.create(model="glm-4v-flash", messages=messages)
    raise SystemExit("a wrong key was accepted")
except openai.AuthenticationError as error:
    assert error.status_code == 401 and error.code == "invalid_api_key", error

client(limited).chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=1)
try:
    client(limited).chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=1)
    raise SystemExit("the key's rate was not enforced")
except openai.RateLimitError as error:
    assert error.status_code == 429 and error.code == "rate_limit_exceeded", error
    assert int(error.response.headers["retry-after"]) >= 1, error.response.headers
# "hi" is one prompt token; with max_tokens 5 each request reserves and uses 6 of the 20.
left = []
for _ in range(3):
    raw = client(budgeted).chat.completions.with_raw_response.create(
        model="glm-4v-flash", messages=messages, max_tokens=5
    )
    assert raw.parse().usage.completion_tokens == 5
    assert raw.headers["x-ratelimit-limit-tokens"] == "20", raw.headers
    left.append(int(raw.headers["x-ratelimit-remaining-tokens"]))
assert left == [14, 8, 2], left
try:
    client(budgeted).chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=5)
    raise SystemExit("a spent token budget was not enforced")
except openai.RateLimitError as error:
    assert error.status_code == 429 and error.code == "rate_limit_exceeded", error
    assert error.type == "tokens", error
print("openai SDK with keys: ok")
