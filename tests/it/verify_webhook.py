"""Verifies one webhook delivery as a customer's server would: with the reference
Standard Webhooks library and with the official OpenAI SDK's `webhooks.unwrap()`.

argv[1] is the signing secret (`whsec_...`); stdin is {"headers": {...}, "body": "..."}.
Prints what both libraries parsed, as JSON; exits non-zero if either rejects it."""

import json
import sys

import openai
from standardwebhooks import Webhook

delivery = json.load(sys.stdin)
secret = sys.argv[1]
body, headers = delivery["body"], delivery["headers"]

payload = Webhook(secret).verify(body, headers)
event = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=secret)
print(json.dumps({
    "standardwebhooks": {"id": payload["id"], "type": payload["type"]},
    "openai": {"id": event.id, "type": event.type, "object": event.object},
}))
