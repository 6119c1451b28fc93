"""The same job as sms-webhook / status-callback, written the way a Python user would:
twilio's RequestValidator, Powertools idempotency on DynamoDB, boto3 SQS.

Baseline for scripts/bench/coldstart/run.py (cold start and AWS round trips); not shipped.
Run by the real runtime interface client: `python -m awslambdaric handler.lambda_handler`.

Environment: TWILIO_AUTH_TOKEN, IDEMPOTENCY_TABLE (partition key `id`), WORK_QUEUE_URL.
"""

import base64
import json
import os
from urllib.parse import parse_qsl

import boto3
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from twilio.request_validator import RequestValidator

EVENT_TTL_SECONDS = 7 * 24 * 3600  # same lifetime as the Rust functions' default
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'

validator = RequestValidator(os.environ["TWILIO_AUTH_TOKEN"])
persistence = DynamoDBPersistenceLayer(table_name=os.environ["IDEMPOTENCY_TABLE"])
config = IdempotencyConfig(
    event_key_jmespath="key",  # dedup on the Twilio id, not on the whole payload
    expires_after_seconds=EVENT_TTL_SECONDS,
)
sqs = boto3.client("sqs")
QUEUE_URL = os.environ["WORK_QUEUE_URL"]


def reply(status, body="", content_type="text/plain"):
    return {
        "statusCode": status,
        "headers": {"content-type": content_type},
        "body": body,
        "isBase64Encoded": False,
    }


@idempotent_function(data_keyword_argument="event", persistence_store=persistence, config=config)
def record(event):
    """Runs once per dedup key: enqueue for the worker; the reply is stored by Powertools."""
    sqs.send_message(QueueUrl=QUEUE_URL, MessageBody=json.dumps(event))
    return {"twiml": TWIML}


def dedup_key(path, params):
    if path == "/sms" and params.get("MessageSid"):
        return "sms#" + params["MessageSid"]
    if path == "/status" and params.get("MessageSid") and params.get("MessageStatus"):
        return "msgstatus#{}#{}".format(params["MessageSid"], params["MessageStatus"])
    return None


def lambda_handler(event, context):
    config.register_lambda_context(context)
    headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    params = dict(parse_qsl(body, keep_blank_values=True))

    # The URL Twilio signed: https:// + Host + rawPath (+ ?rawQueryString).
    url = "https://" + headers.get("host", "") + event.get("rawPath", "/")
    if event.get("rawQueryString"):
        url += "?" + event["rawQueryString"]
    if not validator.validate(url, params, headers.get("x-twilio-signature", "")):
        return reply(403, "invalid signature")

    key = dedup_key(event.get("rawPath"), params)
    if key is None:
        return reply(400, "unsupported webhook")
    result = record(event={"key": key, "url": url, "params": params})
    return reply(200, result["twiml"], "text/xml")
