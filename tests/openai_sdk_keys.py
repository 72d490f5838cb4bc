"""Drives the official `openai` Python SDK through a gateway whose location needs API keys.

Usage: python3 tests/openai_sdk_keys.py BASE_URL ADMIN_URL GOOD_KEY LIMITED_KEY BUDGETED_KEY STREAM_KEY LEAVING_KEY
GOOD_KEY may call freely; LIMITED_KEY has a rate of one request a minute; BUDGETED_KEY 20 tokens a
day; STREAM_KEY and LEAVING_KEY are free, and their usage is read back from the admin API's
`/usage`. Exits non-zero, with the reason, when the SDK does not see what a client of OpenAI itself
would, or the gateway records other usage than the model's. Run by tests/it/keys.rs.
"""
import json
import sys
import urllib.request

import openai
from openai import OpenAI

base, admin, good, limited, budgeted, streaming, leaving = sys.argv[1:8]
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


def usage_of(key_name):
    with urllib.request.urlopen(admin + "/usage", timeout=10) as answer:
        rows = json.load(answer)["usage"]
    return [row["since_start"] for row in rows if row["key"] == key_name]


# A stream's recorded usage is what the model reported in the stream itself.
reported = None
for chunk in client(streaming).chat.completions.create(
    model="glm-4v-flash",
    messages=[{"role": "user", "content": "describe the picture in a few words"}],
    max_tokens=9,
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        reported = chunk.usage
assert reported is not None and reported.completion_tokens == 9, reported
[recorded] = usage_of("streaming")
assert (recorded["prompt_tokens"], recorded["completion_tokens"]) == (
    reported.prompt_tokens,
    reported.completion_tokens,
), (recorded, reported)

# A client that leaves a 300-token stream after two deltas is charged the prompt and the tokens
# that reached it (the few in flight as it closed), not the whole stream.
stream = client(leaving).chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=300, stream=True)
deltas = 0
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        deltas += 1
    if deltas == 2:
        break
stream.close()
for _ in range(500):
    charged = usage_of("leaving")
    if charged:
        break
    __import__("time").sleep(0.01)
[charged] = charged
assert charged["prompt_tokens"] == 1 and 2 <= charged["completion_tokens"] < 100, charged
print("openai SDK with keys: ok")
