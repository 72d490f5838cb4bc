"""Drives the official `openai` Python SDK through the gateway to `infergate sim`.

Usage: python3 tests/openai_sdk.py BASE_URL   (e.g. http://127.0.0.1:8000/v1)
Exits non-zero, with the reason, when the SDK cannot parse an answer or a field is off.
Run by tests/it/sim.rs; .ci/run installs the SDK.
"""
import sys

from openai import OpenAI

client = OpenAI(base_url=sys.argv[1], api_key="not-needed", max_retries=0, timeout=30)
image = (
    "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAcAAAAHACAYAAAAAAAAA"
)
messages = [{"role": "user", "content": [
    {"type": "text", "text": "What is in this image?"},
    {"type": "image_url", "image_url": {"url": image}},
]}]

answer = client.chat.completions.create(model="glm-4v-flash", messages=messages, max_tokens=4)
assert answer.object == "chat.completion", answer
assert answer.choices[0].message.role == "assistant", answer
assert answer.choices[0].message.content == "The image shows a", answer
assert answer.choices[0].finish_reason == "length", answer
assert answer.usage.completion_tokens == 4, answer.usage
assert answer.usage.prompt_tokens == 6 + 256, answer.usage  # 448x448 image: 256 image tokens

stream = client.chat.completions.create(
    model="glm-4v-flash", messages=messages, max_tokens=3, stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage = "", None, None
for chunk in stream:
    assert chunk.object == "chat.completion.chunk", chunk
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
    if chunk.usage:
        usage = chunk.usage
assert text == "The image shows", text
assert finish == "length", finish
assert usage is not None and usage.completion_tokens == 3, usage
print("openai SDK: ok")
