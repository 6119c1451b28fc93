#!/usr/bin/env python3
"""Create the event table and work queues (same design as template.yaml) in a local moto
server, for `cargo lambda watch`. Idempotent. Prints the environment to export.
`create_resources` is also used by the cold-start benchmark."""
import json
import os
import sys


def create_resources(ddb, sqs, table: str) -> str:
    """The event table (pk, TTL expires_at, sparse pending-index) and the work queue with its
    DLQ (5 receives). Returns the work queue URL."""
    if table not in ddb.list_tables()["TableNames"]:
        ddb.create_table(
            TableName=table, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": t}
                                  for n, t in [("pk", "S"), ("pending", "S"), ("lock_until", "N")]],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{
                "IndexName": "pending-index",
                "KeySchema": [{"AttributeName": "pending", "KeyType": "HASH"},
                              {"AttributeName": "lock_until", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["sweeps"]}}])
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={
            "Enabled": True, "AttributeName": "expires_at"})
    dlq = sqs.create_queue(QueueName="twilio-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs.create_queue(QueueName="twilio-work", Attributes={
        "VisibilityTimeout": "180",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})})["QueueUrl"]


if __name__ == "__main__":
    import boto3

    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:5000")
    kw = dict(endpoint_url=endpoint, region_name=os.environ.get("AWS_REGION", "us-east-1"),
              aws_access_key_id="test", aws_secret_access_key="test")
    table = sys.argv[1] if len(sys.argv) > 1 else "twilio-events"
    queue = create_resources(boto3.client("dynamodb", **kw), boto3.client("sqs", **kw), table)
    print(f"export EVENT_TABLE={table} WORK_QUEUE_URL={queue}")
