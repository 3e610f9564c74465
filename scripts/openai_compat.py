"""Checks `pixlm serve` with the official `openai` Python client.

Run through scripts/openai_compat.sh (which creates a venv, installs openai and starts the
server); expects PIXLM_URL (http://127.0.0.1:PORT/v1), PIXLM_API_KEY and PIXLM_PNG.
"""

import base64
import os
import sys

import openai
from openai import OpenAI

url = os.environ["PIXLM_URL"]
key = os.environ["PIXLM_API_KEY"]
png = os.environ["PIXLM_PNG"]
client = OpenAI(base_url=url, api_key=key, max_retries=0)
failures = []
passed = []


def check(name, cond, detail=""):
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""))
    (passed if cond else failures).append(name)


models = client.models.list()
model = models.data[0].id
check("models.list", len(models.data) == 1 and model)

msgs = [{"role": "user", "content": "Describe a blue square."}]
r = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0)
text = r.choices[0].message.content
check("chat.completions.create", r.object == "chat.completion" and isinstance(text, str))
check("usage", r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 0
      and r.usage.prompt_tokens_details.cached_tokens == 0, str(r.usage))
check("finish_reason", r.choices[0].finish_reason in ("stop", "length"))

stream = client.chat.completions.create(model=model, messages=msgs, max_tokens=10, temperature=0,
                                        stream=True, stream_options={"include_usage": True})
parts, usage, finish = [], None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for c in chunk.choices:
        if c.delta.content:
            parts.append(c.delta.content)
        if c.finish_reason:
            finish = c.finish_reason
check("stream text equals the plain answer", "".join(parts) == text, repr(("".join(parts), text)))
check("stream usage", usage is not None and usage.completion_tokens == r.usage.completion_tokens)
check("stream finish_reason", finish == r.choices[0].finish_reason)

data = base64.b64encode(open(png, "rb").read()).decode()
r = client.chat.completions.create(model=model, max_tokens=4, temperature=0, messages=[{
    "role": "user", "content": [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
        {"type": "text", "text": "What shape is this?"}]}])
check("image request", r.usage.prompt_tokens > 20)

r2 = client.chat.completions.with_raw_response.create(model=model, messages=msgs, max_tokens=10,
                                                      temperature=0)
check("response cache hit", r2.headers.get("x-pixlm-cache") == "hit"
      and r2.parse().choices[0].message.content == text)

for name, kwargs, exc in [
    ("unknown model -> NotFoundError", {"model": "gpt-4o"}, openai.NotFoundError),
    ("bad temperature -> BadRequestError", {"temperature": 5}, openai.BadRequestError),
    ("remote image -> BadRequestError", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}]},
     openai.BadRequestError),
]:
    args = {"model": model, "messages": msgs, "max_tokens": 2, **kwargs}
    try:
        client.chat.completions.create(**args)
        check(name, False, "no error")
    except exc as e:
        check(name, isinstance(e.body, dict) and "message" in e.body, str(e.body))

try:
    OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()
    check("wrong key -> AuthenticationError", False, "no error")
except openai.AuthenticationError:
    check("wrong key -> AuthenticationError", True)

print(f"{len(passed)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
