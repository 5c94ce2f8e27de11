"""The official OpenAI Python SDK meets mediagate's money limits, as a customer's code
would, with the SDK's default retries on: a request past the balance raises the SDK's
status error for 402 at once (the SDK retries 429 and 5xx, never 402), for chat and for
images alike, with the limit in the error body.

argv: base URL (http://host:port/v1), API key. Prints what it saw as JSON."""

import json
import sys

import openai

base_url, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base_url, api_key=key, max_retries=2)
report = {}


def refused(call):
    try:
        call()
    except openai.APIStatusError as e:
        return {"class": type(e).__name__, "status": e.status_code, "body": e.body}
    return None


report["chat"] = refused(lambda: client.chat.completions.create(
    model="local/chat", max_tokens=30000,
    messages=[{"role": "user", "content": "tell me about red foxes"}]))
report["image"] = refused(lambda: client.images.generate(
    model="local/image", prompt="a red fox", n=10, size="256x256"))
print(json.dumps(report))
